#!/usr/bin/env python3
"""Memory of idle connections: a benchmark that prints figures, not a test.

Starts hotdog (release build by default) with a status server, opens N connections that each
send one syslog line and then stay idle, and prints hotdog's RSS: at start, with N idle
connections, after they close, and after WAVES more waves of N/2 connections opened and closed.

    contrib/idle-connections.py [--hotdog target/release/hotdog] [--connections 10000]
                                [--waves 3] [--broker HOST:PORT]

Without --broker, hotdog is pointed at a closed port: the lines wait in librdkafka, which
holds them (a few hundred KB) like any broker outage would.
"""

import argparse
import json
import os
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

# hotdog gives free heap memory back every 5 s: measure after that.
SETTLE = 6


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def stats(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=10) as r:
        return json.load(r)["stats"]


def wait_stat(port, name, ok, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = stats(port).get(name, 0)
        if ok(v):
            return v
        time.sleep(0.2)
    sys.exit(f"{name} never got there (last {v})")


def open_idle(addr, n, first):
    conns = []
    for i in range(n):
        s = socket.create_connection(addr)
        s.sendall(f"<13>Nov 23 12:00:00 host{(first + i) % 100} app: idle {first + i}\n".encode())
        conns.append(s)
    return conns


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hotdog", default="target/release/hotdog")
    p.add_argument("--connections", type=int, default=10000)
    p.add_argument("--waves", type=int, default=3)
    p.add_argument("--broker", default=None)
    a = p.parse_args()

    want = a.connections + 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < want:
        sys.exit(f"the file descriptor limit ({hard}) is below {want}: raise it (ulimit -Hn)")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))

    broker = a.broker
    if broker is None:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        broker = f"127.0.0.1:{s.getsockname()[1]}"
        s.close()
    work = tempfile.mkdtemp(prefix="hotdog-idle-")
    config = os.path.join(work, "hotdog.yml")
    with open(config, "w") as f:
        f.write(
            "global:\n"
            "  listen: {address: 127.0.0.1, port: 0, max_connections: 100000}\n"
            f"  kafka:\n    conf: {{bootstrap.servers: '{broker}'}}\n    topic: logs\n"
            "  status: {address: 127.0.0.1, port: 0}\n"
            "rules:\n"
            "  - regex: '^(?P<word>\\w+)'\n"
            "    actions:\n"
            "      - {type: forward, topic: logs}\n"
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
        time.sleep(1)
        base = rss_kb(hotdog.pid)
        print(f"baseline: {base / 1024:.1f} MB RSS")

        conns = open_idle(addr, a.connections, 0)
        wait_stat(status, "lines", lambda v: v >= a.connections)
        wait_stat(status, "connections", lambda v: v >= a.connections)
        time.sleep(2)
        idle = rss_kb(hotdog.pid)
        print(
            f"{a.connections} idle connections: {idle / 1024:.1f} MB RSS "
            f"({(idle - base) * 1024 / a.connections / 1024:.1f} KB each)"
        )
        for c in conns:
            c.close()
        wait_stat(status, "connections", lambda v: v == 0)
        time.sleep(SETTLE)
        after = rss_kb(hotdog.pid)
        print(f"after they closed: {after / 1024:.1f} MB RSS ({after / base:.2f}x baseline)")

        sent = a.connections
        for w in range(a.waves):
            n = a.connections // 2
            conns = open_idle(addr, n, sent)
            sent += n
            wait_stat(status, "lines", lambda v: v >= sent)
            for c in conns:
                c.close()
            wait_stat(status, "connections", lambda v: v == 0)
            time.sleep(SETTLE)
            print(f"after wave {w + 1} of {n} connections: {rss_kb(hotdog.pid) / 1024:.1f} MB RSS")
        final = rss_kb(hotdog.pid)
        print(f"result: idle={idle / 1024:.1f}MB closed={after / 1024:.1f}MB "
              f"final={final / 1024:.1f}MB baseline={base / 1024:.1f}MB")
    finally:
        hotdog.terminate()
        try:
            hotdog.wait(timeout=60)
        except subprocess.TimeoutExpired:
            hotdog.kill()


if __name__ == "__main__":
    main()
