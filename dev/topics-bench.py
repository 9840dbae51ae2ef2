#!/usr/bin/env python3
"""Distinct rendered topics: a benchmark that prints figures, not a test.

A rule forwards every line to `PREFIX-{{hostname}}`. One pass sends LINES lines from one
hostname, the other the same number from HOSTS distinct hostnames (so as many topics, past
`global.kafka.max_topics`). For each it prints lines/s (first byte sent -> hotdog's own
`kafka.delivered` + `kafka.dead_lettered` counting every line), RSS, and the sizes of /metrics
and /stats. The topics under the cap and the fallback topic are created first (tansu does not
create topics on first use).

    dev/topics-bench.py --broker HOST:PORT [--hotdog target/release/hotdog]
                            [--lines 200000] [--hosts 35000] [--max-topics 1000] [--repeat 2]
"""

import argparse
import os
import socket
import subprocess
import sys
import time

from hotdog_run import Hotdog


def done(hotdog):
    s = hotdog.stats()
    return s.get("kafka.delivered", 0) + s.get("kafka.dead_lettered", 0)


def run_pass(hotdog, hosts, lines):
    payload = "".join(
        f"<13>Nov 23 12:00:00 h{i % hosts} app: line {i}\n" for i in range(lines)
    ).encode()
    before = done(hotdog)
    start = time.time()
    with socket.create_connection(hotdog.addr) as s:
        s.sendall(payload)
    deadline = start + 600
    while done(hotdog) < before + lines:
        if time.time() > deadline:
            sys.exit(f"not every line was accounted for: {done(hotdog) - before} of {lines}")
        time.sleep(0.05)
    return lines / (time.time() - start)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hotdog", default="target/release/hotdog")
    p.add_argument("--broker", required=True)
    p.add_argument("--lines", type=int, default=200_000)
    p.add_argument("--hosts", type=int, default=35_000)
    p.add_argument("--max-topics", type=int, default=1000)
    p.add_argument("--repeat", type=int, default=2)
    a = p.parse_args()

    prefix = f"tb{os.getpid()}"
    fallback = f"{prefix}-fallback"
    print(f"creating {a.max_topics + 1} topics", file=sys.stderr)
    for name in [fallback] + [f"{prefix}-h{i}" for i in range(a.max_topics)]:
        subprocess.run(
            ["tansu", "topic", "create", name, "--broker", f"tcp://{a.broker}", "--partitions", "1"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    config = (
        "global:\n"
        "  listen: {address: 127.0.0.1, port: 0}\n"
        f"  kafka:\n    conf: {{bootstrap.servers: '{a.broker}'}}\n"
        f"    topic: {fallback}\n    max_topics: {a.max_topics}\n"
        "  status: {address: 127.0.0.1, port: 0}\n"
        "rules:\n"
        "  - regex: '.*'\n"
        "    actions:\n"
        f"      - {{type: forward, topic: '{prefix}-{{{{hostname}}}}'}}\n"
    )
    with Hotdog(a.hotdog, config) as hotdog:
        time.sleep(2)
        rows = []
        for r in range(a.repeat):
            for hosts in (1, a.hosts):
                rate = run_pass(hotdog, hosts, a.lines)
                rows.append((hosts, rate))
                print(
                    f"{hosts:>6} hostnames: {rate:>9.0f} lines/s  RSS {hotdog.rss_mb():6.1f} MB  "
                    f"/metrics {len(hotdog.get('/metrics')) / 1024:7.1f} KB  "
                    f"/stats {len(hotdog.get('/stats')) / 1024:7.1f} KB",
                    flush=True,
                )
        one = sorted(r for h, r in rows if h == 1)
        many = sorted(r for h, r in rows if h != 1)
        ratio = many[len(many) // 2] / one[len(one) // 2]
        over = hotdog.stats().get("kafka.topics_over_limit", 0)
        print(
            f"result: median lines/s one topic {one[len(one) // 2]:.0f}, "
            f"{a.hosts} topics {many[len(many) // 2]:.0f} ({ratio:.2f}x); "
            f"kafka.topics_over_limit {over}"
        )


if __name__ == "__main__":
    main()
