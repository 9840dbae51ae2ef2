#!/usr/bin/env python3
"""Distinct rendered topics: a benchmark that prints figures, not a test.

A rule forwards every line to `PREFIX-{{hostname}}`. One pass sends LINES lines from one
hostname, the other the same number from HOSTS distinct hostnames (so as many topics, past
`global.kafka.max_topics`). For each it prints lines/s (first byte sent -> hotdog's own
`kafka.delivered` + `kafka.dead_lettered` counting every line), RSS, and the sizes of /metrics
and /stats. The topics under the cap and the fallback topic are created first (tansu does not
create topics on first use).

    contrib/topics-bench.py --broker HOST:PORT [--hotdog target/release/hotdog]
                            [--lines 200000] [--hosts 35000] [--max-topics 1000] [--repeat 2]
"""

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
        return r.read()


def stats(port):
    return json.loads(get(port, "/stats"))["stats"]


def done(port):
    s = stats(port)
    return s.get("kafka.delivered", 0) + s.get("kafka.dead_lettered", 0)


def run_pass(addr, status, hosts, lines):
    payload = "".join(
        f"<13>Nov 23 12:00:00 h{i % hosts} app: line {i}\n" for i in range(lines)
    ).encode()
    before = done(status)
    start = time.time()
    with socket.create_connection(addr) as s:
        s.sendall(payload)
    deadline = start + 600
    while done(status) < before + lines:
        if time.time() > deadline:
            sys.exit(f"not every line was accounted for: {done(status) - before} of {lines}")
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
    work = tempfile.mkdtemp(prefix="hotdog-topics-")
    config = os.path.join(work, "hotdog.yml")
    with open(config, "w") as f:
        f.write(
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
    log = open(os.path.join(work, "hotdog.log"), "w+")
    hotdog = subprocess.Popen(
        [a.hotdog, "-c", config],
        stderr=log,
        stdout=subprocess.DEVNULL,
        env={**os.environ, "RUST_LOG": "warn,hotdog=info"},
    )
    try:
        deadline = time.time() + 30
        listen = status = None
        while time.time() < deadline and not (listen and status):
            log.seek(0)
            text = log.read()
            m = re.search(r"listening on tcp 127\.0\.0\.1:(\d+)", text)
            listen = m and int(m.group(1))
            m = re.search(r"status server on http://127\.0\.0\.1:(\d+)", text)
            status = m and int(m.group(1))
            time.sleep(0.1)
        if not (listen and status):
            sys.exit("hotdog did not start:\n" + text)
        addr = ("127.0.0.1", listen)
        time.sleep(2)
        rows = []
        for r in range(a.repeat):
            for hosts in (1, a.hosts):
                rate = run_pass(addr, status, hosts, a.lines)
                rows.append((hosts, rate))
                print(
                    f"{hosts:>6} hostnames: {rate:>9.0f} lines/s  RSS {rss_mb(hotdog.pid):6.1f} MB  "
                    f"/metrics {len(get(status, '/metrics')) / 1024:7.1f} KB  "
                    f"/stats {len(get(status, '/stats')) / 1024:7.1f} KB",
                    flush=True,
                )
        one = sorted(r for h, r in rows if h == 1)
        many = sorted(r for h, r in rows if h != 1)
        ratio = many[len(many) // 2] / one[len(one) // 2]
        over = stats(status).get("kafka.topics_over_limit", 0)
        print(
            f"result: median lines/s one topic {one[len(one) // 2]:.0f}, "
            f"{a.hosts} topics {many[len(many) // 2]:.0f} ({ratio:.2f}x); "
            f"kafka.topics_over_limit {over}"
        )
    finally:
        hotdog.terminate()
        try:
            hotdog.wait(timeout=60)
        except subprocess.TimeoutExpired:
            hotdog.kill()


if __name__ == "__main__":
    main()
