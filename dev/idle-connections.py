#!/usr/bin/env python3
"""Memory of idle connections: a benchmark that prints figures, not a test.

Starts hotdog (release build by default) with a status server, opens N connections that each
send one syslog line and then stay idle, and prints hotdog's RSS: at start, with N idle
connections, after they close, and after WAVES more waves of N/2 connections opened and closed.

    dev/idle-connections.py [--hotdog target/release/hotdog] [--connections 10000]
                                [--waves 3] [--broker HOST:PORT]
                                [--relp [--message-size BYTES]]

With --relp, each connection is a RELP session that sends one message of --message-size bytes
(default: one ordinary line), which no rule forwards: the session's read buffer grows for it, and
what is measured is whether idle sessions give it back (`--relp --connections 20
--message-size 4000000`).

Without --broker, hotdog is pointed at a closed port: the lines wait in librdkafka, which
holds them like any broker outage would (and so they count in the RSS after closing).
"""

import argparse
import resource
import socket
import sys
import time

from hotdog_run import Hotdog

# hotdog gives free heap memory back every 5 s: measure after that.
SETTLE = 6


def open_idle(addr, n, first):
    conns = []
    for i in range(n):
        s = socket.create_connection(addr)
        s.sendall(f"<13>Nov 23 12:00:00 host{(first + i) % 100} app: idle {first + i}\n".encode())
        conns.append(s)
    return conns


def relp_frame(txnr, command, data):
    head = f"{txnr} {command} {len(data)}".encode()
    return head + (b" " + data if data else b"") + b"\n"


def read_frame(s):
    """Reads one RELP frame (the answer to what was sent); returns its data."""
    buf = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            raise RuntimeError("hotdog closed the RELP session")
        buf += chunk
        parts = buf.split(b" ", 3)
        if len(parts) >= 3:
            digits = parts[2].split(b"\n", 1)[0]
            if digits.isdigit():
                size = int(digits)
                header = len(parts[0]) + len(parts[1]) + len(digits) + 2
                if len(buf) >= header + (1 if size else 0) + size + 1:
                    return buf


def open_idle_relp(addr, n, first, size):
    conns = []
    for i in range(n):
        s = socket.create_connection(addr)
        s.sendall(relp_frame(1, "open", b"relp_version=0\nrelp_software=bench\ncommands=syslog"))
        read_frame(s)
        if size:
            # `-` starts the message: no rule forwards it, so nothing is kept for Kafka.
            msg = b"<13>Nov 23 12:00:00 host app: -" + b"x" * size
        else:
            msg = f"<13>Nov 23 12:00:00 host{(first + i) % 100} app: idle {first + i}".encode()
        s.sendall(relp_frame(2, "syslog", msg))
        read_frame(s)
        conns.append(s)
    return conns


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hotdog", default="target/release/hotdog")
    p.add_argument("--connections", type=int, default=10000)
    p.add_argument("--waves", type=int, default=3)
    p.add_argument("--broker", default=None)
    p.add_argument("--relp", action="store_true")
    p.add_argument("--message-size", type=int, default=0)
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
    config = (
        "global:\n"
        "  listen: {address: 127.0.0.1, port: 0, max_connections: 100000"
        + (f", protocol: relp, max_message_size: {max(a.message_size + 1024, 65536)}" if a.relp else "")
        + "}\n"
        f"  kafka:\n    conf: {{bootstrap.servers: '{broker}'}}\n    topic: logs\n"
        "  status: {address: 127.0.0.1, port: 0}\n"
        "rules:\n"
        "  - regex: '^(?P<word>\\w+)'\n"
        "    actions:\n"
        "      - {type: forward, topic: logs}\n"
    )
    with Hotdog(a.hotdog, config) as hotdog:
        time.sleep(1)
        base = hotdog.rss_mb()
        print(f"baseline: {base:.1f} MB RSS")

        if a.relp:
            conns = open_idle_relp(hotdog.addr, a.connections, 0, a.message_size)
        else:
            conns = open_idle(hotdog.addr, a.connections, 0)
        hotdog.wait_stat("lines", lambda v: v >= a.connections)
        hotdog.wait_stat("connections", lambda v: v >= a.connections)
        if a.message_size:
            print(f"just after the messages: {hotdog.rss_mb():.1f} MB RSS")
            # Buffers are given back after a quiet second, and memory to the system every 5 s.
            time.sleep(SETTLE)
        else:
            time.sleep(2)
        idle = hotdog.rss_mb()
        print(
            f"{a.connections} idle connections: {idle:.1f} MB RSS "
            f"({(idle - base) * 1024 / a.connections:.1f} KB each)"
        )
        for c in conns:
            c.close()
        hotdog.wait_stat("connections", lambda v: v == 0)
        time.sleep(SETTLE)
        after = hotdog.rss_mb()
        print(f"after they closed: {after:.1f} MB RSS ({after / base:.2f}x baseline)")

        sent = a.connections
        for w in range(a.waves):
            n = a.connections // 2
            if a.relp:
                conns = open_idle_relp(hotdog.addr, n, sent, a.message_size)
            else:
                conns = open_idle(hotdog.addr, n, sent)
            sent += n
            hotdog.wait_stat("lines", lambda v: v >= sent)
            for c in conns:
                c.close()
            hotdog.wait_stat("connections", lambda v: v == 0)
            time.sleep(SETTLE)
            print(f"after wave {w + 1} of {n} connections: {hotdog.rss_mb():.1f} MB RSS")
        final = hotdog.rss_mb()
        print(f"result: idle={idle:.1f}MB closed={after:.1f}MB final={final:.1f}MB "
              f"baseline={base:.1f}MB")


if __name__ == "__main__":
    main()
