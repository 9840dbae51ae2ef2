#!/usr/bin/env python3
"""Reloading a large rule set: how long a 1,000-rule configuration takes to load (`--check`) and
to reload (`POST /reload`), and a reload storm: a SIGHUP every 100 ms for as long as 1,000,000
lines flow (paced to last 10 s) over one connection into a local tansu broker, then every
sequence number read back: each must be there exactly once.

    dev/reload-bench.py [--rules 1000] [-n 1000000] [--seconds 10]

Needs a release build (`cargo build --release --bin hotdog --example count`) and tansu.
"""
import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import Broker, lines, many_rules  # noqa: E402
from hotdog_run import Hotdog  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOTDOG = f"{ROOT}/target/release/hotdog"


def config(broker, topic, rules):
    return (f"global:\n  listen:\n    port: 0\n  kafka:\n    conf:\n"
            f"      bootstrap.servers: '{broker}'\n      linger.ms: '5'\n"
            f"      batch.num.messages: '10000'\n    topic: '{topic}'\n"
            f"  status:\n    port: 0\nrules:\n{rules.replace('TOPIC', topic)}")


def paced_send(addr, data, seconds):
    """Sends `data` over one connection, spread evenly over `seconds`."""
    s = socket.create_connection(addr)
    step = max(1, len(data) // (seconds * 100))
    start = time.time()
    for i, at in enumerate(range(0, len(data), step)):
        s.sendall(data[at:at + step])
        wait = start + (i + 1) * 0.01 - time.time()
        if wait > 0:
            time.sleep(wait)
    s.shutdown(socket.SHUT_WR)
    s.recv(1)
    s.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rules", type=int, default=1000)
    ap.add_argument("-n", "--lines", type=int, default=1_000_000)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--tansu", default="tansu")
    args = ap.parse_args()
    rules = many_rules(args.rules)
    broker = Broker(args.tansu, None)
    try:
        with tempfile.TemporaryDirectory() as work:
            path = os.path.join(work, "hotdog.yml")
            with open(path, "w") as f:
                f.write(config(broker.addr, "unused", rules))
            checks = []
            for _ in range(5):
                t0 = time.time()
                subprocess.run([HOTDOG, "--check", "-c", path], check=True,
                               stdout=subprocess.DEVNULL)
                checks.append(time.time() - t0)
            print(f"{args.rules} rules: --check (load and validate) "
                  f"median {statistics.median(checks):.3f} s, max {max(checks):.3f} s")

        topic = broker.topic(f"storm-{int(time.time() * 1000)}")
        with Hotdog(HOTDOG, config(broker.addr, topic, rules)) as h:
            reloads = []
            for _ in range(5):
                t0 = time.time()
                req = urllib.request.Request(f"http://127.0.0.1:{h.status}/reload",
                                             method="POST")
                with urllib.request.urlopen(req, timeout=30) as r:
                    r.read()
                reloads.append(time.time() - t0)
            print(f"{args.rules} rules: POST /reload median {statistics.median(reloads):.3f} s, "
                  f"max {max(reloads):.3f} s")

            data = ("\n".join(lines(args.lines)) + "\n").encode()
            sender = threading.Thread(target=paced_send, args=(h.addr, data, args.seconds))
            t0 = time.time()
            sender.start()
            signals = 0
            while sender.is_alive():
                os.kill(h.pid, signal.SIGHUP)
                signals += 1
                time.sleep(0.1)
            sender.join()
            h.wait_stat("kafka.delivered", lambda v: v >= args.lines, timeout=300)
            took = time.time() - t0
            s = h.stats()
            print(f"storm: {signals} SIGHUPs in {took:.1f} s, {s.get('config.reloads', 0)} "
                  f"reloads ({s.get('config.reload_failed', 0)} failed), "
                  f"{s.get('kafka.delivered', 0)} delivered")
        records, present = broker.count(topic, args.lines)
        ok = records == args.lines and present == args.lines
        print(f"storm: {records} records in Kafka, {present}/{args.lines} sequence numbers: "
              + ("every line exactly once" if ok else "NOT exactly once"))
        if not ok:
            sys.exit(1)
    finally:
        broker.stop()


if __name__ == "__main__":
    main()
