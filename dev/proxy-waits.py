#!/usr/bin/env python3
"""Connections waiting for a PROXY header: a benchmark that prints figures, not a test.

Starts hotdog (release build by default) with two `proxy_protocol` listeners (load balancer
127.0.0.1): one on 127.0.0.1 with `max_connections: 100`, one on 127.0.0.2. Then:
1. 100 connections from the load balancer send `P` and close: are they all closed (none left in
   CLOSE-WAIT), and is a real load balancer's connection still served after them?
2. hotdog's CPU with nothing waiting, then with 300 connections from elsewhere (127.0.0.3) that
   sent `P` and wait.
3. How long SIGTERM takes with those 300 still open.

    dev/proxy-waits.py [--hotdog target/release/hotdog]
"""

import argparse
import os
import re
import socket
import subprocess
import time

from hotdog_run import Hotdog

CONFIG = """global:
  listen:
    - {address: 127.0.0.1, port: 0, max_connections: 100, proxy_protocol: {from: ['127.0.0.1/32']}}
    - {address: 127.0.0.2, port: 0, max_connections: 10000, proxy_protocol: {from: ['127.0.0.1/32']}}
  kafka: {conf: {bootstrap.servers: '127.0.0.1:9'}, topic: logs}
  status: {address: 127.0.0.1, port: 0}
rules: []
"""


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().split(")")[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_share(pid, seconds=5):
    start = cpu_seconds(pid)
    time.sleep(seconds)
    return 100 * (cpu_seconds(pid) - start) / seconds


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hotdog", default="target/release/hotdog")
    a = p.parse_args()
    with Hotdog(a.hotdog, CONFIG) as h:
        h.log.seek(0)
        listeners = h.log.read().split(" listening on ", 1)[1].split(" with ", 1)[0]
        first, second = (int(port) for port in re.findall(r":(\d+)", listeners))
        for _ in range(100):
            s = socket.create_connection(("127.0.0.1", first))
            s.sendall(b"P")
            s.shutdown(socket.SHUT_WR)
            s.close()
        time.sleep(1)
        waiting = subprocess.run(
            ["ss", "-tan", "state", "close-wait"], capture_output=True, text=True
        ).stdout.count(f":{first}")
        st = h.stats()
        print(
            f"100 x P then close: {waiting} left in CLOSE-WAIT, "
            f"refused.proxy_protocol={st.get('connections.refused.proxy_protocol')}, "
            f"refused.listener_limit={st.get('connections.refused.listener_limit')}"
        )
        s = socket.create_connection(("127.0.0.1", first))
        s.sendall(b"PROXY TCP4 192.0.2.7 127.0.0.1 5000 514\r\n<13>through\n")
        h.wait_stat("lines", lambda v: v >= 1, timeout=10)
        print(f"a load balancer's connection after them: lines={h.stats().get('lines')}")
        print(f"CPU with nothing waiting: {cpu_share(h.pid):.1f}% of a core")
        held = []
        for _ in range(300):
            c = socket.socket()
            c.bind(("127.0.0.3", 0))
            c.connect(("127.0.0.2", second))
            c.sendall(b"P")
            held.append(c)
        time.sleep(1)
        print(f"CPU with 300 connections waiting after P: {cpu_share(h.pid):.1f}% of a core")
        start = time.time()
        h.process.terminate()
        h.process.wait()
        print(f"SIGTERM to exit with them open: {time.time() - start:.2f} s")


if __name__ == "__main__":
    main()
