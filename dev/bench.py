#!/usr/bin/env python3
"""Side-by-side benchmark: hotdog, rsyslog (imptcp -> omkafka) and the kcat floor, each moving the
same N mixed syslog lines into its own topic of one local tansu broker.

For each it prints lines/s (first byte sent -> last record acknowledged, or the forwarder's CPU
going idle for rsyslog, which has no delivery counter), CPU-seconds per million lines (from
/proc, every thread), peak RSS, and whether every sequence number arrived (read back from the
broker). With --repeat R every row runs R times, interleaved, and the table shows medians (and the
range of CPU-s/M): on a small machine one run of anything moves by a quarter. With --baseline
BIN, an earlier hotdog build runs beside this one, row for row, for a before/after comparison.
Run through dev/bench.sh, which installs what it needs.
"""
import argparse
import json
import statistics
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOTDOG = f"{ROOT}/target/release/hotdog"
TICK = os.sysconf("SC_CLK_TCK")
# What a structured format may cost, in CPU per line against `raw`, end to end. It is judged on
# rows paced at one rate, the same work for every format: flat out each row runs as fast as the
# broker takes its records, slower for larger ones, so the rows do not do the same work per
# second. A paced row under KEPT_UP of its rate fell behind it, and is not judged either.
TARGET = 1.5
KEPT_UP = 0.95
# The spool rows, named by what they set: fsync once a second (the default), the same with the
# `hotdog.id` header, and fsync after every batch. The target is judged on the default rows.
SPOOL_ROWS = [
    ("fsync 1s", "    fsync: 1s\n"),
    ("fsync 1s id_header true", "    fsync: 1s\n    id_header: true\n"),
    ("fsync always", "    fsync: always\n"),
]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def lines(n, start=0):
    out = []
    for i in range(start, start + n):
        k = i % 3
        if k == 0:
            out.append(f'<165>1 2024-05-01T12:00:00.123Z web{i%7}.example.com app 1234 ID47 [ex@32473 iut="3"] seq={i} user login ok from 10.0.0.{i%255}')
        elif k == 1:
            out.append(f'<34>Oct 11 22:14:15 host{i%9} sshd[4242]: seq={i} Accepted publickey for user{i%100} from 10.1.2.3 port 5555')
        else:
            out.append(f'<14>1 2024-05-01T12:00:00Z db1 api 77 - - {{"seq":{i},"meta":{{"topic":"audit"}},"user":"u{i%50}","ok":true}}')
    return out


def cpu_seconds(pid):
    """utime + stime of the process and every thread, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def peak_rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024
    return 0.0


def hundredths(data, rate):
    """`data` (lines) cut into a hundredth of a second's worth at `rate` lines/s each, for
    `paced`. Cut before the clock starts: cutting 600,000 lines takes a tenth of a second."""
    lines = data.splitlines(keepends=True)
    step = max(rate // 100, 1)
    return [b"".join(lines[k:k + step]) for k in range(0, len(lines), step)]


def paced(s, parts, rate):
    """Writes `parts` (from `hundredths`) at `rate` lines/s: one each hundredth of a second."""
    start, sent = time.time(), 0
    for part in parts:
        s.sendall(part)
        sent += part.count(b"\n")
        ahead = start + sent / rate - time.time()
        if ahead > 0:
            time.sleep(ahead)


def send(port, chunks, use_tls=False, rate=0):
    """Sends each chunk over its own connection, in parallel: at `rate` lines/s, each chunk
    already cut by `hundredths`, or as fast as it is taken. Returns the errors the connections
    met (a forwarder that resets a connection loses what it had not read)."""
    errors = []

    def one(data):
        try:
            s = socket.create_connection(("127.0.0.1", port))
            if use_tls:
                ctx = ssl.create_default_context(cafile=f"{ROOT}/certs/ca.pem")
                ctx.load_cert_chain(f"{ROOT}/certs/client.pem", f"{ROOT}/certs/client.key")
                s = ctx.wrap_socket(s, server_hostname="localhost")
            if rate:
                paced(s, data, rate)
            else:
                s.sendall(data)
            if use_tls:
                s = s.unwrap()
            s.close()
        except OSError as e:
            errors.append(f"sender: {e.strerror or e}")
    threads = [threading.Thread(target=one, args=(c,)) for c in chunks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def chunks_of(all_lines, connections):
    parts = [[] for _ in range(connections)]
    for i, l in enumerate(all_lines):
        parts[i % connections].append(l)
    return [("\n".join(p) + "\n").encode() for p in parts]


class Broker:
    def __init__(self, tansu, lib):
        self.lib = lib
        self.tansu = tansu
        self.start()

    def start(self):
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        url = f"tcp://{self.addr}"
        self.proc = subprocess.Popen(
            [self.tansu, "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not wait_port(self.port):
            sys.exit("tansu did not start")

    def restart(self):
        """An empty broker again: tansu's memory storage slows as it fills, which would make
        each row cost more than the rows before it."""
        self.stop()
        self.start()

    def topic(self, name):
        subprocess.run([self.tansu, "topic", "create", name, "--partitions", "1",
                        "--broker", f"tcp://{self.addr}"],
                       check=True, stdout=subprocess.DEVNULL)
        return name

    def count(self, topic, n):
        """Reads the topic back with kcat: (records, distinct sequence numbers present of n)."""
        out = subprocess.run([f"{ROOT}/target/release/examples/count", self.addr, topic, str(n)],
                             capture_output=True, text=True, timeout=900).stdout.split()
        return int(out[0]), int(out[1])

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def wait_idle(pid, quiet=1.0, timeout=600):
    """Waits until the process's CPU time stops moving; returns when it last moved."""
    last = cpu_seconds(pid)
    last_change = time.time()
    end = time.time() + timeout
    while time.time() < end:
        time.sleep(0.05)
        now = cpu_seconds(pid)
        if now != last:
            last, last_change = now, time.time()
        elif time.time() - last_change > quiet:
            return last_change
    return last_change


def row(name, n, seconds, cpu, rss, records, present, errors=()):
    ok = "all arrived" if records == n and present == n else f"MISSING: {records} records, {present}/{n} sequence numbers"
    if errors:
        ok += f" ({len(errors)} connection(s) failed: {errors[0]})"
    return {"name": name, "lines_per_s": n / seconds if seconds > 0 else 0.0,
            "cpu_per_million": cpu / n * 1e6, "rss_mb": rss, "ok": ok}


def median_row(same):
    """One row from several runs of it: medians, the CPU range, the largest RSS, and every
    check (a row passes only when every run of it did)."""
    cpu = [r["cpu_per_million"] for r in same]
    bad = [r["ok"] for r in same if not r["ok"].startswith("all")]
    return {"name": same[0]["name"],
            "lines_per_s": statistics.median(r["lines_per_s"] for r in same),
            "cpu_per_million": statistics.median(cpu), "cpu_min": min(cpu), "cpu_max": max(cpu),
            "rss_mb": max(r["rss_mb"] for r in same),
            "lost": [r["lost"] for r in same if "lost" in r],
            "judged": same[0].get("judged", True),
            "ok": bad[0] + (f" ({len(bad)} of {len(same)} runs)" if len(same) > 1 else "")
            if bad else "; ".join(sorted({r["ok"] for r in same}))}


def run_kcat(broker, path, n):
    topic = broker.topic(f"kcat-{int(time.time()*1000)}")
    env = dict(os.environ, LD_LIBRARY_PATH=broker.lib)
    t0 = time.time()
    p = subprocess.Popen(["kcat", "-P", "-b", broker.addr, "-t", topic, "-l", path,
                          "-X", "linger.ms=5", "-X", "batch.num.messages=10000"], env=env)
    # wait4 gives the exact CPU time of every thread and the peak RSS once kcat has exited.
    _, _, usage = os.wait4(p.pid, 0)
    p.returncode = 0
    seconds = time.time() - t0
    cpu = usage.ru_utime + usage.ru_stime
    peak = usage.ru_maxrss / 1024
    records, present = broker.count(topic, n)
    return dict(row("kcat -P (floor)", n, seconds, cpu, peak, records, present), judged=False)


def start_rsyslog(broker, workdir, kind):
    """rsyslogd with one input of `kind` (imptcp or imudp) on a free port, every message's text
    to a new topic through omkafka. Returns the process, the port and the topic, once it is
    listening."""
    topic = broker.topic(f"rsyslog-{kind}-{int(time.time()*1000)}")
    port = free_port()
    conf = os.path.join(workdir, f"rsyslog-{kind}.conf")
    with open(conf, "w") as f:
        f.write(f'''global(workDirectory="{workdir}")
module(load="{kind}")
module(load="omkafka")
template(name="body" type="string" string="%msg%")
input(type="{kind}" address="127.0.0.1" port="{port}")
*.* action(type="omkafka" broker=["{broker.addr}"] topic="{topic}" template="body"
  confParam=["linger.ms=5", "batch.num.messages=10000"]
  queue.type="LinkedList" queue.size="1000000")
''')
    env = dict(os.environ, LD_LIBRARY_PATH=broker.lib)
    p = subprocess.Popen(["rsyslogd", "-n", "-f", conf, "-i",
                          os.path.join(workdir, f"rsyslog-{kind}.pid")],
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    end = time.time() + 30
    while not (wait_port(port, 0.1) if kind == "imptcp" else udp_kernel_drops(port) is not None):
        if time.time() > end or p.poll() is not None:
            sys.exit("rsyslogd did not start (is rsyslog-kafka installed?)")
        time.sleep(0.05)
    return p, port, topic


def run_rsyslog(broker, data_chunks, n, workdir):
    p, port, topic = start_rsyslog(broker, workdir, "imptcp")
    time.sleep(0.5)
    cpu0 = cpu_seconds(p.pid)
    t0 = time.time()
    errors = send(port, data_chunks)
    done = wait_idle(p.pid)
    cpu = cpu_seconds(p.pid) - cpu0
    rss = peak_rss_mb(p.pid)
    p.terminate()
    p.wait()
    records, present = broker.count(topic, n)
    # Shown beside hotdog's rows, not judged: a reset by rsyslog fails no run of the bench.
    return dict(row(f"rsyslog imptcp->omkafka ({len(data_chunks)} conn)", n, done - t0, cpu, rss,
                    records, present, errors), judged=False)


def start_relay(workdir, hotdog_port, action, workers, window=0):
    """rsyslogd between the senders and hotdog: imptcp in, `action` (omfwd over TCP or omrelp)
    out to hotdog with `workers` worker threads, each its own connection; `window` is omrelp's
    windowSize (0: librelp's default, 128). Returns the process and its input port."""
    port = free_port()
    conf = os.path.join(workdir, "relay.conf")
    out = {"omfwd": 'type="omfwd" protocol="tcp" TCP_Framing="octet-counted"',
           "omrelp": 'type="omrelp"' + (f' windowSize="{window}"' if window else "")}[action]
    with open(conf, "w") as f:
        f.write(f'''global(workDirectory="{workdir}")
module(load="imptcp")
{'module(load="omrelp")' if action == "omrelp" else ""}
input(type="imptcp" address="127.0.0.1" port="{port}")
*.* action({out} target="127.0.0.1" port="{hotdog_port}" template="RSYSLOG_ForwardFormat"
  queue.type="LinkedList" queue.size="1000000" queue.workerThreads="{workers}"
  queue.workerThreadMinimumMessages="1000" action.resumeRetryCount="-1")
''')
    p = subprocess.Popen(["rsyslogd", "-n", "-f", conf, "-i", os.path.join(workdir, "relay.pid")],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not wait_port(port):
        sys.exit("rsyslogd did not start (are rsyslog and rsyslog-relp installed?)")
    return p, port


def start_hotdog(workdir, name, conf_text, wait_for, status, binary=None):
    """hotdog on the configuration `conf_text` (written to `name` in `workdir`), once port
    `wait_for` answers; returns the process and a function that reads its /stats from
    `status`, the status port the configuration names."""
    conf = os.path.join(workdir, name)
    with open(conf, "w") as f:
        f.write(conf_text)
    p = subprocess.Popen([binary or HOTDOG, "-c", conf],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not wait_port(wait_for):
        sys.exit("hotdog did not start")

    def stats():
        with urllib.request.urlopen(f"http://127.0.0.1:{status}/stats") as r:
            return json.load(r)["stats"]
    return p, stats


def run_hotdog(broker, data_chunks, n, workdir, use_tls, config_rules=None, label="",
               binary=None, conf_extra="", relay=None, window=0, rate=0, global_extra=""):
    """One hotdog run. With `relay` ("omfwd" or "omrelp"), the senders write to an rsyslogd
    that forwards to hotdog with that action, as many connections as there are chunks (the
    listener speaks RELP for omrelp); the CPU measured is still hotdog's own."""
    topic = broker.topic(f"hotdog-{int(time.time()*1000)}")
    port, status = free_port(), free_port()
    tls = ""
    if use_tls:
        tls = (f"    tls:\n      cert: '{ROOT}/certs/server.pem'\n      key: '{ROOT}/certs/server.key'\n"
               f"      ca: '{ROOT}/certs/ca.pem'\n")
    rules = config_rules or FORWARD_ALL
    rules = rules.replace("TOPIC", topic)
    listen = "    protocol: relp\n" if relay == "omrelp" else ""
    p, stats = start_hotdog(
        workdir, "hotdog.yml",
        f"global:\n  listen:\n    port: {port}\n{listen}{tls}  kafka:\n    conf:\n"
        f"      bootstrap.servers: '{broker.addr}'\n      linger.ms: '5'\n"
        f"      batch.num.messages: '10000'\n{conf_extra}    topic: '{topic}'\n"
        f"{global_extra}  status:\n    port: {status}\nrules:\n{rules}", port, status, binary)

    relay_proc = None
    if relay:
        relay_proc, send_port = start_relay(workdir, port, relay, len(data_chunks), window)
    else:
        send_port = port
    time.sleep(0.5)
    if rate:
        data_chunks = [hundredths(c, rate) for c in data_chunks]
    cpu0 = cpu_seconds(p.pid)
    t0 = time.time()
    errors = send(send_port, data_chunks, use_tls and not relay, rate)
    while not errors:
        s = stats()
        if s.get("kafka.delivered", 0) + s.get("kafka.dead_lettered", 0) >= n:
            break
        time.sleep(0.005)
    t1 = time.time()
    cpu = cpu_seconds(p.pid) - cpu0
    rss = peak_rss_mb(p.pid)
    if relay_proc:
        relay_proc.terminate()
        relay_proc.wait()
    p.terminate()
    p.wait()
    records, present = broker.count(topic, n)
    name = f"hotdog{' TLS' if use_tls else ''}{label} ({len(data_chunks)} conn)"
    return row(name, n, t1 - t0, cpu, rss, records, present, errors)


def udp_kernel_drops(port):
    """What the kernel dropped for the UDP socket bound to `port` (/proc/net/udp's last
    column), or None when no socket is bound to it."""
    with open("/proc/net/udp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1].endswith(f":{port:04X}"):
                return int(fields[-1])
    return None


UDP_SIZE = 0


def udp_datagrams(n):
    """The bench lines as datagrams, each padded to at least UDP_SIZE bytes (--udp-size)."""
    out = []
    for l in lines(n):
        d = l.encode()
        if len(d) < UDP_SIZE:
            d += b" " + b"x" * (UDP_SIZE - len(d) - 1)
        out.append(d)
    return out


def send_udp(port, datagrams, rate):
    """Sends `datagrams` to 127.0.0.1:`port` at `rate` a second, paced every 100 (bursts of
    1,000 overflow a receive buffer of the kernel's default size at any rate)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    to = ("127.0.0.1", port)
    start = time.time()
    for k in range(0, len(datagrams), 100):
        for d in datagrams[k:k + 100]:
            s.sendto(d, to)
        ahead = start + (k + 100) / rate - time.time()
        if ahead > 0:
            time.sleep(ahead)
    s.close()
    return time.time() - start


def udp_row(name, n, seconds, cpu, rss, records, present, counted, judged):
    """A UDP row: lost datagrams are expected at some rates, so the check is that every lost
    one was counted (hotdog's udp.dropped and udp.kernel_dropped; the kernel's count for
    rsyslog's socket). Rows of another forwarder are shown, not judged."""
    lost = n - present
    if records != present:
        ok = f"MISSING: {records} records for {present} sequence numbers (duplicates)"
    elif lost == 0:
        ok = "all arrived"
    elif counted == lost:
        ok = f"all lost ones counted: {lost} lost ({lost / n:.3%})"
    else:
        ok = f"MISSING: {lost} lost ({lost / n:.3%}), {counted} counted"
    r = row(name, n, seconds, cpu, rss, n, n)
    r.update(ok=ok, lost=lost, judged=judged)
    return r


def run_udp(broker, n, rate, workdir, global_extra="", label="", binary=None, suffix=""):
    """hotdog with one UDP listener (default settings), `n` datagrams sent at `rate` a second
    from another process. lines/s is what arrived over the time from the first datagram sent
    to the last record delivered."""
    topic = broker.topic(f"udp-{int(time.time()*1000)}")
    port, status = free_port(), free_port()
    p, stats = start_hotdog(
        workdir, "udp.yml",
        f"global:\n  listen:\n  - address: '127.0.0.1'\n    port: {port}\n"
        f"    protocol: udp\n  kafka:\n    conf:\n"
        f"      bootstrap.servers: '{broker.addr}'\n      linger.ms: '5'\n"
        f"      batch.num.messages: '10000'\n    topic: '{topic}'\n"
        f"{global_extra}  status:\n    port: {status}\n"
        f"rules:\n{FORWARD_ALL.replace('TOPIC', topic)}", status, status, binary)

    datagrams = udp_datagrams(n)
    time.sleep(0.5)
    cpu0 = cpu_seconds(p.pid)
    t0 = time.time()
    send_udp(port, datagrams, rate)
    last, moved = None, time.time()
    while True:
        s = stats()
        now = (s.get("lines", 0), s.get("kafka.delivered", 0))
        settled = s.get("kafka.delivered", 0) + s.get("kafka.dead_lettered", 0)
        counted = s.get("udp.dropped", 0) + s.get("udp.kernel_dropped", 0)
        if now != last:
            last, moved = now, time.time()
        if settled + counted >= n or time.time() - moved > 3:
            break
        time.sleep(0.01)
    t1 = moved if settled + counted < n else time.time()
    cpu = cpu_seconds(p.pid) - cpu0
    rss = peak_rss_mb(p.pid)
    p.terminate()
    p.wait()
    records, present = broker.count(topic, n)
    return udp_row(f"hotdog UDP{label} at {rate:,}/s{suffix}", n, t1 - t0, cpu, rss, records, present,
                   counted, True)


def run_rsyslog_udp(broker, n, rate, workdir):
    """rsyslog's imudp -> omkafka on the same datagrams; timed to its CPU going idle."""
    p, port, topic = start_rsyslog(broker, workdir, "imudp")
    time.sleep(0.5)
    datagrams = udp_datagrams(n)
    cpu0 = cpu_seconds(p.pid)
    t0 = time.time()
    send_udp(port, datagrams, rate)
    done = wait_idle(p.pid)
    cpu = cpu_seconds(p.pid) - cpu0
    rss = peak_rss_mb(p.pid)
    kernel = udp_kernel_drops(port) or 0
    p.terminate()
    p.wait()
    records, present = broker.count(topic, n)
    return udp_row(f"rsyslog imudp->omkafka at {rate:,}/s", n, done - t0, cpu, rss, records,
                   present, kernel, False)


def run_spool_drain(broker, n, workdir, spool_parent, rate=20_000, binary=None):
    """Fills a spool with `n` lines while no broker answers and stops hotdog with them in it;
    then starts hotdog on that spool with the broker there. Prints how long the start took (to
    its listener being up) and how fast the spool drained while new lines came at `rate` a
    second over another connection, and checks that every line arrived."""
    topic = broker.topic(f"drain-{int(time.time()*1000)}")
    spool = tempfile.mkdtemp(dir=spool_parent)
    port, status = free_port(), free_port()
    conf = os.path.join(workdir, "drain.yml")

    def start(kafka):
        with open(conf, "w") as f:
            f.write(f"global:\n  listen:\n    port: {port}\n  kafka:\n    conf:\n"
                    f"      bootstrap.servers: '{kafka}'\n    topic: '{topic}'\n"
                    f"  spool:\n    path: '{spool}'\n  shutdown_timeout: 1s\n"
                    f"  status:\n    port: {status}\nrules:\n{FORWARD_ALL.replace('TOPIC', topic)}")
        p = subprocess.Popen([binary or HOTDOG, "-c", conf],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        t0 = time.time()
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return p, time.time() - t0
            except OSError:
                if time.time() - t0 > 120 or p.poll() is not None:
                    sys.exit("hotdog did not start on the spool")
                time.sleep(0.005)

    def stats():
        with urllib.request.urlopen(f"http://127.0.0.1:{status}/stats") as r:
            return json.load(r)["stats"]

    p, _ = start(f"127.0.0.1:{free_port()}")  # nobody there: the broker is away
    step = 200_000
    for at in range(0, n, step):
        m = min(step, n - at)
        send(port, chunks_of(lines(m, at), 4))
    while stats().get("spool.written", 0) < n:
        time.sleep(0.05)
    p.terminate()
    p.wait()
    size = sum(os.path.getsize(os.path.join(spool, f)) for f in os.listdir(spool))
    p, startup = start(broker.addr)
    stop = threading.Event()
    sent = [0]

    def more():
        s = socket.create_connection(("127.0.0.1", port))
        t0 = time.time()
        while not stop.is_set():
            batch = lines(rate // 100, n + sent[0])
            s.sendall(("\n".join(batch) + "\n").encode())
            sent[0] += len(batch)
            ahead = t0 + sent[0] / rate - time.time()
            if ahead > 0:
                time.sleep(ahead)
        s.close()
    sender = threading.Thread(target=more)
    t0 = time.time()
    sender.start()
    cpu0 = cpu_seconds(p.pid)
    while True:
        st = stats()
        if st.get("spool.replayed", 0) >= n and st.get("spool.records", n) < rate // 10:
            break
        time.sleep(0.01)
    drained = time.time() - t0
    cpu = cpu_seconds(p.pid) - cpu0
    stop.set()
    sender.join()
    total = n + sent[0]
    while stats().get("kafka.delivered", 0) < total:
        time.sleep(0.05)
    p.terminate()
    p.wait()
    records, present = broker.count(topic, total)
    shutil.rmtree(spool, ignore_errors=True)
    ok = "all arrived" if records == total and present == total else \
        f"MISSING: {records} records, {present}/{total} sequence numbers"
    print(f"spool of {n:,} records ({size / 1e6:,.0f} MB): start-up {startup:.2f} s; drained in "
          f"{drained:.2f} s, {n / drained:,.0f} lines/s, {cpu / drained * 100:.0f}% of a core, "
          f"while {sent[0]:,} new lines came at {rate:,}/s; {ok}", flush=True)
    return ok.startswith("all")


def rule(regex, actions=""):
    """A rule: lines that `regex` matches go through `actions` (YAML list items), then to TOPIC
    (the run's topic)."""
    return (f"  - regex: '{regex}'\n    actions:\n{actions}"
            "      - type: forward\n        topic: 'TOPIC'\n")


# Every line to TOPIC, as it came.
FORWARD_ALL = rule(".*")


def many_rules(count):
    """`count` regex rules the lines do not match (one per application, tenant or device family,
    as real rule sets have; the same as the criterion benches'), then a catch-all forward."""
    out = []
    for i in range(count):
        re = [f"^tenant{i}: (?P<rest>.*)", f"service-{i} (failed|stopped)",
              f"\\bcode={i}x\\b", f"device{i}\\[(?P<unit>\\d+)\\]"][i % 4]
        out.append(rule(re))
    out.append(FORWARD_ALL)
    return "".join(out)


def shaped_rules(shape, count):
    """`count` rules of one shape that the lines do not match, then a catch-all forward; the same
    shapes as the criterion benches' `rule_shapes`:
    unique: literals that never occur in the lines (`many_rules`);
    shared: literals that occur in most lines, differing only after a variable part;
    classes: no literal to look for (character classes and counted repetitions only);
    jmespath: JMESPath rules on the JSON bodies, every other rule a regex;
    fields: regexes on appname, hostname and an SD param in turn."""
    if shape == "unique":
        return many_rules(count)
    out = []
    for i in range(count):
        k = i % 3
        if shape == "shared":
            re = [f"seq=\\d+ user login (?:denied|locked) code={i}",
                  f"Accepted publickey for user\\S+ from 192\\.168\\.{i}\\.",
                  f'"user":"u\\d+","ok":(?:false|null),"n":{i}'][k]
            out.append(rule(re))
        elif shape == "classes":
            out.append(rule(f"[A-Z]{{3}}[0-9]{{{2 + i % 20}}}[a-z]{{{1 + i // 20}}}"))
        elif shape == "jmespath" and i % 2 == 0:
            out.append(f"  - jmespath: 'meta.t{i}'\n    actions:\n"
                       "      - type: forward\n        topic: 'TOPIC'\n")
        elif shape == "jmespath":
            out.append(rule(f"service-{i} (failed|stopped)"))
        elif shape == "fields":
            re, field = [(f"^svc{i}$", "appname"), (f"^node{i}\\.", "hostname"),
                         (f"^{i}x$", "sd.ex@32473.iut")][k]
            out.append(rule(re).replace("\n    actions:", f"\n    field: {field}\n    actions:", 1))
        else:
            sys.exit(f"no rule shape {shape}")
    out.append(FORWARD_ALL)
    return "".join(out)


RULE_SHAPES = ["unique", "shared", "classes", "jmespath", "fields"]


EXAMPLE_RULES = """  - regex: '^hello\\\\s+(?P<name>\\\\w+)?'
    actions:
      - type: replace
        template: '{{name}} said hello from {{hostname}}'
      - type: forward
        topic: 'TOPIC'
  - jmespath: 'meta.topic'
    actions:
      - type: merge
        json:
          meta:
            hotdog:
              version: '{{version}}'
              host: '{{hostname}}'
      - type: forward
        topic: 'TOPIC'
  - regex: '.*'
    actions:
      - type: forward
        topic: 'TOPIC'
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", "--lines", type=int, default=300_000)
    ap.add_argument("-c", "--connections", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--tls", action="store_true", help="add hotdog over TLS rows (and TLS spool rows, unless --no-spool-rows)")
    ap.add_argument("-r", "--repeat", type=int, default=1,
                    help="run every row this many times and report medians")
    ap.add_argument("--hotdog", metavar="HOTDOG", default=None,
                    help="the hotdog binary measured as this build (default: target/release/hotdog)")
    ap.add_argument("--baseline", metavar="HOTDOG",
                    help="another hotdog binary (an earlier build): its forward-all rows run "
                         "beside this build's, interleaved, for a before/after comparison")
    ap.add_argument("--rules", type=int, nargs="*", default=[200, 1000],
                    help="add rows with this many regex rules that the lines do not match, then "
                         "a catch-all (1 conn)")
    ap.add_argument("--rule-shapes", nargs="*", default=RULE_SHAPES, choices=RULE_SHAPES,
                    help="with --rules, the rule-set shapes to add rows for (the unique shape is "
                         "the plain --rules row)")
    ap.add_argument("--formats", nargs="*", default=["json", "otlp_proto"],
                    help="add forward-all rows in these record formats (1 conn)")
    ap.add_argument("--format-rate", type=int, nargs="*", default=[0, 150_000], metavar="R",
                    help="run the raw, format and padded rows at each of these rates, in lines/s "
                         "(0: as fast as hotdog takes them). A rate every format keeps up with "
                         "compares what each costs hotdog; flat out, the broker is the "
                         "bottleneck, and it takes longest over the largest records")
    ap.add_argument("--no-idempotence-rows", action="store_true",
                    help="leave out the rows with enable.idempotence: 'false' (hotdog's default "
                         "is the idempotent producer)")
    ap.add_argument("--padded", type=int, metavar="BYTES", default=0,
                    help="add a raw forward-all row whose payloads are BYTES longer (a "
                         "template pads them): what moving payloads that large costs, formats "
                         "aside (371 bytes more than raw's is the bench lines' json envelope)")
    ap.add_argument("--no-relp-rows", action="store_true",
                    help="leave out the rows rsyslog -> hotdog over plain TCP (omfwd) and RELP "
                         "(omrelp)")
    ap.add_argument("--relp-window", type=int, nargs="+", default=[0, 10000], metavar="W",
                    help="omrelp windowSize of the RELP rows, one row each (0: librelp's 128); "
                         "hotdog answers once Kafka has a message, so the window must cover "
                         "Kafka's round trip")
    ap.add_argument("--hotdog-only", action="store_true",
                    help="leave out the rsyslog and kcat rows")
    ap.add_argument("--no-spool-rows", action="store_true",
                    help="leave out the rows with a spool (fsync 1s and always)")
    ap.add_argument("--spool-dir", default=None, metavar="DIR",
                    help="where the spool rows keep their spools (default: the temp folder)")
    ap.add_argument("--spool-drain", type=int, default=0, metavar="N",
                    help="also fill a spool with N lines while the broker is away, then "
                    "measure the start-up on it and how fast it drains while new lines come")
    ap.add_argument("--udp-rate", type=int, nargs="*", default=[50_000, 100_000], metavar="R",
                    help="add UDP rows at each of these rates, in datagrams/s (hotdog memory "
                         "only and with a spool, rsyslog imudp unless --hotdog-only)")
    ap.add_argument("--udp-seconds", type=int, default=5, metavar="S",
                    help="how long each UDP row sends (R x S datagrams)")
    ap.add_argument("--udp-size", type=int, default=0, metavar="BYTES",
                    help="pad each UDP datagram to at least BYTES (the bench lines are 100-130)")
    ap.add_argument("--tansu", default="tansu")
    ap.add_argument("--librdkafka", required=True, help="folder holding a librdkafka.so.1 >= 2.1")
    args = ap.parse_args()
    global UDP_SIZE
    UDP_SIZE = args.udp_size
    if args.hotdog:
        global HOTDOG
        HOTDOG = os.path.abspath(args.hotdog)
    n = args.lines
    all_lines = lines(n)
    with tempfile.TemporaryDirectory() as work:
        path = os.path.join(work, "lines.log")
        with open(path, "w") as f:
            f.write("\n".join(all_lines) + "\n")
        broker = Broker(args.tansu, args.librdkafka)
        runs = []
        try:
            for i in range(args.repeat):
                if i:
                    broker.restart()
                rows = [] if args.hotdog_only else [run_kcat(broker, path, n)]
                for c in args.connections:
                    chunks = chunks_of(all_lines, c)
                    if not args.hotdog_only:
                        rows.append(run_rsyslog(broker, chunks, n, work))
                    rows.append(run_hotdog(broker, chunks, n, work, False))
                    if not args.no_idempotence_rows:
                        rows.append(run_hotdog(broker, chunks, n, work, False, None,
                                               " idempotence off", None,
                                               "      enable.idempotence: 'false'\n"))
                    if args.baseline:
                        rows.append(run_hotdog(broker, chunks, n, work, False, None,
                                               " baseline", args.baseline))
                    for label, keys in [] if args.no_spool_rows else SPOOL_ROWS:
                        with tempfile.TemporaryDirectory(dir=args.spool_dir) as spool:
                            rows.append(run_hotdog(
                                broker, chunks, n, work, False, None, f" spool {label}",
                                global_extra=f"  spool:\n    path: '{spool}'\n{keys}"))
                    if args.tls:
                        rows.append(run_hotdog(broker, chunks, n, work, True))
                        for label, keys in [] if args.no_spool_rows else SPOOL_ROWS:
                            with tempfile.TemporaryDirectory(dir=args.spool_dir) as spool:
                                rows.append(run_hotdog(
                                    broker, chunks, n, work, True, None, f" spool {label}",
                                    global_extra=f"  spool:\n    path: '{spool}'\n{keys}"))
                        if args.baseline:
                            rows.append(run_hotdog(broker, chunks, n, work, True, None,
                                                   " baseline", args.baseline))
                    if not args.no_relp_rows:
                        rows.append(run_hotdog(broker, chunks, n, work, False, None,
                                               " via rsyslog omfwd", relay="omfwd"))
                        for w in args.relp_window:
                            rows.append(run_hotdog(broker, chunks, n, work, False, None,
                                                   f" via rsyslog omrelp window {w or 128}",
                                                   relay="omrelp", window=w))
                for binary, twin in [(None, "")] + ([(args.baseline, " baseline")]
                                                    if args.baseline else []):
                    rows.append(run_hotdog(broker, chunks_of(all_lines, 1), n, work, False,
                                           EXAMPLE_RULES, f" example rules{twin}", binary))
                    for count in args.rules:
                        rows.append(run_hotdog(broker, chunks_of(all_lines, 1), n, work, False,
                                               many_rules(count), f" {count} rules{twin}",
                                               binary))
                        for shape in args.rule_shapes:
                            if shape == "unique":
                                continue  # the row above
                            rows.append(run_hotdog(
                                broker, chunks_of(all_lines, 1), n, work, False,
                                shaped_rules(shape, count), f" {count} rules {shape}{twin}",
                                binary))
                for rate in args.format_rate if args.formats or args.padded else []:
                    # The rows compared with each other, in an order turned by one each run,
                    # so that none is always measured after another.
                    at = f" at {rate:,} lines/s" if rate else ""
                    compared = [(None, f" format raw{at}")]
                    for fmt in args.formats:
                        compared.append((FORWARD_ALL + f"        format: {fmt}\n",
                                         f" format {fmt}{at}"))
                    if args.padded:
                        pad = ("      - type: replace\n"
                               f"        template: '{{{{msg}}}} {'x' * args.padded}'\n")
                        compared.append((rule(".*", pad), f" raw padded +{args.padded} B{at}"))
                    compared = [(rules, label, None) for rules, label in compared]
                    if args.baseline:
                        compared += [(rules, f"{label} baseline", args.baseline)
                                     for rules, label, _ in compared]
                    turn = i % len(compared)
                    for rules, label, binary in compared[turn:] + compared[:turn]:
                        # Each on an empty broker: a fuller one answers later, and hotdog holds
                        # more records meanwhile, so a row would cost more for coming later.
                        broker.restart()
                        rows.append(run_hotdog(broker, chunks_of(all_lines, 1), n, work, False,
                                               rules, label, binary, rate=rate))
                for rate in args.udp_rate:
                    m = rate * args.udp_seconds
                    if not args.hotdog_only:
                        broker.restart()
                        rows.append(run_rsyslog_udp(broker, m, rate, work))
                    broker.restart()
                    rows.append(run_udp(broker, m, rate, work))
                    if args.baseline:
                        broker.restart()
                        rows.append(run_udp(broker, m, rate, work, binary=args.baseline,
                                            suffix=" baseline"))
                    if not args.no_spool_rows:
                        broker.restart()
                        with tempfile.TemporaryDirectory(dir=args.spool_dir) as spool:
                            rows.append(run_udp(
                                broker, m, rate, work,
                                f"  spool:\n    path: '{spool}'\n    fsync: 1s\n",
                                " spool fsync 1s"))
                if args.repeat > 1:
                    print(f"run {i + 1}/{args.repeat}: " + ", ".join(
                        f"{r['name']} {r['cpu_per_million']:.2f}" for r in rows), flush=True)
                runs.append(rows)
        finally:
            broker.stop()
    drained_ok = True
    if args.spool_drain:
        with tempfile.TemporaryDirectory() as work:
            broker = Broker(args.tansu, args.librdkafka)
            try:
                drained_ok = run_spool_drain(broker, args.spool_drain, work, args.spool_dir)
            finally:
                broker.stop()
    # Rows by name (the order of the compared rows turns between runs), in the first run's
    # order.
    rows = [median_row([r for run in runs for r in run if r["name"] == first["name"]])
            for first in runs[0]]
    what = f"median of {args.repeat} runs" if args.repeat > 1 else "one run"
    print(f"\n{n} lines, a tansu broker (memory storage) started afresh for each run and for "
          f"each compared row, {what}\n")
    print(f"{'':56} {'lines/s':>10} {'CPU-s/M':>8} {'(range)':>11} {'RSS MB':>7}  check")
    for r in rows:
        spread = f"{r['cpu_min']:.2f}-{r['cpu_max']:.2f}"
        print(f"{r['name']:56} {r['lines_per_s']:>10,.0f} {r['cpu_per_million']:>8.2f} "
              f"{spread:>11} {r['rss_mb']:>7.1f}  {r['ok']}")
    by = {r["name"]: r for r in rows}
    floor = rows[0]
    print()
    for c in [] if args.hotdog_only else args.connections:
        h, rs = by[f"hotdog ({c} conn)"], by[f"rsyslog imptcp->omkafka ({c} conn)"]
        print(f"{c} conn: hotdog/rsyslog lines/s {h['lines_per_s']/rs['lines_per_s']:.2f}x, "
              f"CPU {h['cpu_per_million']/rs['cpu_per_million']:.2f}x; "
              f"hotdog/kcat CPU {h['cpu_per_million']/floor['cpu_per_million']:.2f}x")
    ex, fa = by["hotdog example rules (1 conn)"], by.get("hotdog (1 conn)")
    if fa and fa["cpu_per_million"] > 0:
        print(f"example rules / forward-all CPU: {ex['cpu_per_million']/fa['cpu_per_million']:.2f}x")
        for count in args.rules:
            r = by[f"hotdog {count} rules (1 conn)"]
            print(f"{count} rules / forward-all CPU: {r['cpu_per_million']/fa['cpu_per_million']:.2f}x")
            target = 2 if count <= 200 else 3
            for shape in args.rule_shapes:
                r = by[f"hotdog {count} rules{'' if shape == 'unique' else ' ' + shape} (1 conn)"]
                cpu = r["cpu_per_million"] / fa["cpu_per_million"]
                print(f"{count} rules, shape {shape} / forward-all CPU: {cpu:.2f}x, "
                      f"{r['lines_per_s']:,.0f} lines/s, peak RSS {r['rss_mb']:.0f} MB; "
                      f"target <= {target}x: {'met' if cpu <= target else 'MISSED'}")
    def per_run(name, over):
        """The ratio of two rows' CPU in each run, which measured them minutes apart at most:
        their median and range, steadier than the ratio of the medians on a noisy machine."""
        if len(runs) < 2:
            return ""
        cpu = [{r["name"]: r["cpu_per_million"] for r in run} for run in runs]
        ratios = sorted(c[name] / c[over] for c in cpu)
        return (f" (per run: median {statistics.median(ratios):.2f}x, "
                f"{ratios[0]:.2f}-{ratios[-1]:.2f})")

    for rate in args.format_rate if args.formats or args.padded else []:
        at = f" at {rate:,} lines/s" if rate else ""
        raw_name = f"hotdog format raw{at} (1 conn)"
        raw = by.get(raw_name)
        if not raw:
            continue
        compared = [(f"format {fmt}", f"hotdog format {fmt}{at} (1 conn)") for fmt in args.formats]
        if args.padded:
            compared.append((f"raw padded +{args.padded} B",
                             f"hotdog raw padded +{args.padded} B{at} (1 conn)"))
        for label, name in compared:
            r = by[name]
            ratio = r["cpu_per_million"] / raw["cpu_per_million"]
            verdict = ""
            if not rate:
                verdict = " (rates differ: not the target's measure)"
            elif r["lines_per_s"] < KEPT_UP * rate:
                verdict = (f" (fell behind, {r['lines_per_s']:,.0f} lines/s: not the target's "
                           "measure)")
            elif label.startswith("format "):
                verdict = (f"; target <= {TARGET}x: "
                           f"{'met' if ratio <= TARGET else 'MISSED'}")
            print(f"{label} / raw CPU{at or ' (flat out)'}: {ratio:.2f}x"
                  f"{per_run(name, raw_name)}{verdict}")
    if not args.no_idempotence_rows:
        print("idempotence on / off CPU: " + ", ".join(
            f"{c} conn {by[f'hotdog ({c} conn)']['cpu_per_million'] / by[f'hotdog idempotence off ({c} conn)']['cpu_per_million']:.2f}x"
            for c in args.connections))
    if not args.no_relp_rows:
        for c in args.connections:
            tcp = by[f"hotdog via rsyslog omfwd ({c} conn)"]
            for w in args.relp_window:
                relp = by[f"hotdog via rsyslog omrelp window {w or 128} ({c} conn)"]
                bound = ("" if w >= 1000 else
                         f" (bounded by the window: {w or 128} / Kafka's round trip)")
                print(f"{c} conn: RELP (window {w or 128}) / TCP through rsyslog: lines/s "
                      f"{relp['lines_per_s']/tcp['lines_per_s']:.2f}x, hotdog CPU "
                      f"{relp['cpu_per_million']/tcp['cpu_per_million']:.2f}x{bound}")
    if not args.no_spool_rows:
        for c, tls in [(c, tls) for tls in ["", " TLS"][:1 + args.tls]
                       for c in args.connections]:
            mem_name = f"hotdog{tls} ({c} conn)"
            for label, _ in SPOOL_ROWS:
                name = f"hotdog{tls} spool {label} ({c} conn)"
                r, m = by[name], by[mem_name]
                speed = r["lines_per_s"] / m["lines_per_s"]
                cpu = r["cpu_per_million"] / m["cpu_per_million"]
                verdict = ""
                if label == "fsync 1s":
                    met = speed >= 0.75 and cpu <= 1.3
                    verdict = (f"; target >= 0.75x lines/s, <= 1.3x CPU: "
                               f"{'met' if met else 'MISSED'}")
                print(f"{c} conn{tls}: spool {label} / memory only: lines/s {speed:.2f}x, CPU "
                      f"{cpu:.2f}x{per_run(name, mem_name)}{verdict}")
    for rate in args.udp_rate:
        at = f"at {rate:,}/s"
        for name in [f"rsyslog imudp->omkafka {at}", f"hotdog UDP {at}",
                     f"hotdog UDP spool fsync 1s {at}"]:
            if name in by:
                r = by[name]
                print(f"{name}: lost per run {r['lost']} of {rate * args.udp_seconds:,}, "
                      f"{r['cpu_per_million']:.2f} CPU-s per million datagrams")
        mem, spooled = f"hotdog UDP {at}", f"hotdog UDP spool fsync 1s {at}"
        if mem in by and spooled in by:
            print(f"UDP {at}: spool fsync 1s / memory only: CPU "
                  f"{by[spooled]['cpu_per_million'] / by[mem]['cpu_per_million']:.2f}x"
                  f"{per_run(spooled, mem)}")
    if args.baseline:
        # Every row run with both binaries: this build's CPU and lines/s against the baseline's.
        for r in rows:
            name = r["name"]
            twin = name.replace(" (", " baseline (", 1) if " (" in name else name + " baseline"
            if " baseline" in name or twin not in by:
                continue
            b = by[twin]
            print(f"this build / baseline, {name}: CPU "
                  f"{r['cpu_per_million'] / b['cpu_per_million']:.2f}x"
                  f"{per_run(name, b['name'])}, lines/s {r['lines_per_s'] / b['lines_per_s']:.2f}x")
    if any(r["judged"] and not r["ok"].startswith("all") for r in rows) or not drained_ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
