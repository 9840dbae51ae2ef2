#!/usr/bin/env bash
# What an open `hotdog tap` costs: two hotdogs run side by side, fed the same lines at the same
# time (400,000 150-byte lines at 50,000 lines/s, one TCP connection each, to one local tansu,
# with two rules: `fifty` forwards the 2% of lines whose number ends in 00 or 50, the other
# the rest); one of them has a tap open. The ratio of their CPU times (the run time of each
# process's threads, from /proc) is taken within the run, so a busy machine slows both alike.
# Which hotdog is tapped changes from run to run, and each chunk of lines is sent first to one
# and then the other by turns: the one sent a chunk first spends about 10% more on it.
# RUNS runs (default 8). The tap's filter is the rest of the arguments, by default
# `--match 'number.[0-9]*[05]0.with'`: 2% of the lines (about 1,000 a second), by a regex that
# every line goes into. `--rule fifty` keeps the same lines by their rule; `--match 'no line
# has this'` keeps nothing; `-` opens no tap at all, the control that shows what the method
# itself reads. CONNS (default 1) spreads the lines over that many TCP connections to each
# hotdog, each chunk to the next connection; TLS=1 sends them over TLS (certs/server.pem; in
# its first runs one hotdog of a pair sometimes spent 500 ms more than the other, tapped or
# not, so its ratios are not yet to be trusted). UDP=1 sends each line as a datagram instead.
# RELP=1 sends each line as a RELP message (the listener speaks RELP, and answers a message once
# Kafka has its record): the sender keeps at most 10,000 unanswered and reads the answers
# after each chunk.
# LEN=N makes every line N bytes long (at least 80: the header and `number I with seq=I`,
# padded with words); RATE=N sends N lines a second in place of 50,000 (for 8 s). RULES=N puts
# N more rules before the others, named and forwarding, whose literals occur in no line.
# SLOW=1 reads the tap slowly (1 KiB every 100 ms, through a pipe): its events back up into
# hotdog, which leaves out what does not fit in the tap's queue. APART=1 sends to each hotdog
# from a process of its own, on the same schedule, so that a sender blocked on one hotdog's
# full socket does not hold back the other's lines. THREADS=1 prints, for each run, the run
# time and context switches of each hotdog's threads by name, without the tap and with it.
# HOTDOG=PATH runs that build of hotdog instead of this tree's (to compare two builds).
# VERSUS=PATH runs that build as the tapped hotdog, so that with `-` (no tap) the ratio is
# that build's CPU over the other's, within each run. SYSCALLS=1 counts, for each run, the
# system calls that waiting for sockets and timers takes, and the context switches, of both
# hotdogs while the lines are sent (perf's tracepoints; they count the same whatever the build's
# layout, which moves CPU times by a few percent; counting costs CPU too, so take the ratios
# from runs without it).
#
#   [CONNS=N] [TLS=1] [UDP=1] [RELP=1] [LEN=N] [RATE=N] [RULES=N] [SLOW=1] [APART=1] [THREADS=1] [SYSCALLS=1] [HOTDOG=PATH] [VERSUS=PATH] dev/tap-cost.sh [RUNS] [FILTER...]
set -euo pipefail
cd "$(dirname "$0")/.."
. dev/deps.sh
ensure_build_deps
ensure_tansu
[ "${SYSCALLS:-0}" = 1 ] && install_missing linux-perf
cargo build --release --locked --bin hotdog
runs=${1:-8}
shift || true
filter=("$@")
[ ${#filter[@]} -gt 0 ] || filter=(--match 'number.[0-9]*[05]0.with')
hotdog=${HOTDOG:-$PWD/target/release/hotdog}
work=$(mktemp -d)
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
kafka=$(port)
tansu broker --listener-url "tcp://127.0.0.1:$kafka" --advertised-listener-url "tcp://127.0.0.1:$kafka" \
    --storage-engine memory://tansu/ > "$work/tansu.log" 2>&1 &
broker=$!
trap 'kill $broker 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 50); do (echo > "/dev/tcp/127.0.0.1/$kafka") 2>/dev/null && break; sleep 0.2; done
tansu topic create tapcost --broker "tcp://127.0.0.1:$kafka" > /dev/null
transport=""
if [ "${UDP:-0}" = 1 ]; then
    transport="    protocol: udp"
elif [ "${RELP:-0}" = 1 ]; then
    transport="    protocol: relp"
fi
if [ "${TLS:-0}" = 1 ]; then
    transport+="
    tls: {cert: '$PWD/certs/server.pem', key: '$PWD/certs/server.key'}"
fi
more_rules=""
for r in $(seq "${RULES:-0}"); do
    more_rules+="  - name: never$r
    regex: 'absent$r literal'
    actions:
      - type: forward
        topic: 'tapcost'
"
done
config() { # NAME LISTEN STATUS
    cat > "$work/$1.yml" <<YAML
global:
  listen:
    address: '127.0.0.1'
    port: $2
$transport
  kafka:
    conf:
      bootstrap.servers: '127.0.0.1:$kafka'
      linger.ms: '5'
      batch.num.messages: '10000'
    topic: 'tapcost'
  status:
    address: '127.0.0.1'
    port: $3
rules:
$more_rules  - name: fifty
    regex: 'number [0-9]*[05]0 with'
    actions:
      - type: forward
        topic: 'tapcost'
  - regex: '.*'
    actions:
      - type: forward
        topic: 'tapcost'
YAML
}
cat > "$work/send.py" <<'PY'
# The same chunks of 100 lines to each port, paced to RATE lines/s for SECONDS, over CONNS
# connections to each port, each chunk to the next one (TCP), or each line a datagram (UDP).
# APART: one process for each port, each on the same schedule, so that neither waits for the
# other's socket.
import os, socket, ssl, sys, time
ports, rate, seconds = [int(p) for p in sys.argv[1].split(",")], int(sys.argv[2]), int(sys.argv[3])
conns, ca, udp, size = int(sys.argv[4]), sys.argv[5], sys.argv[6] == "1", int(sys.argv[7] or 0)
apart, relp = sys.argv[8] == "1", sys.argv[9] == "1"
tls = ssl.create_default_context(cafile=ca) if ca else None
class Relp:
    # One RELP session: `open`, then each line a `syslog` message; `unanswered` counts those
    # hotdog has not answered yet, and `answers` reads what it has (all of them, at the end).
    WINDOW = 10000
    def __init__(self, s):
        self.s, self.txnr, self.unanswered, self.buf = s, 1, 1, b""
        offer = b"relp_version=0\nrelp_software=tapcost\ncommands=syslog"
        s.sendall(b"1 open %d %s\n" % (len(offer), offer))
        self.answers(True, 0)
    def sendall(self, data):
        frames = []
        for one in data.split(b"\n")[:-1]:
            self.txnr += 1
            frames.append(b"%d syslog %d %s\n" % (self.txnr, len(one), one))
        self.s.sendall(b"".join(frames))
        self.unanswered += len(frames)
        self.answers(self.unanswered > self.WINDOW, self.WINDOW // 2)
    def answers(self, wait, until):
        # Waits at most 30 s for an answer: a hotdog that answers nothing fails the run.
        self.s.settimeout(30 if wait else 0)
        try:
            while self.unanswered:
                data = self.s.recv(1 << 20)
                if not data:
                    raise RuntimeError("hotdog closed the RELP session")
                self.buf += data
                *done, self.buf = self.buf.split(b"\n")
                answered = [d for d in done if b" rsp " in d]
                if any(b" 200 OK" not in d for d in answered):
                    raise RuntimeError(f"hotdog refused a message: {answered}")
                self.unanswered -= len(answered)
                if not wait or self.unanswered <= until:
                    break
        except (BlockingIOError, ssl.SSLWantReadError):
            pass
        self.s.setblocking(True)
def connect(port):
    s = socket.create_connection(("127.0.0.1", port))
    s = tls.wrap_socket(s, server_hostname="localhost") if tls else s
    return Relp(s) if relp else s
def line(i):
    if not size:
        return (f'<165>1 2024-05-01T12:00:00.123Z web{i % 7}.example.com app 1234 ID47 [ex@32473 iut="3"] '
                f'number {i} with seq={i} user login ok from 10.0.0.{i % 255}')
    text = f'<165>1 2024-05-01T12:00:00.123Z web{i % 7}.example.com app 1234 ID47 - number {i} with seq={i}'
    words = " user login ok from host"
    return (text + words * (max(0, size - 1 - len(text)) // len(words) + 1))[:max(size - 1, len(text))]
lines = [(line(i) + "\n").encode() for i in range(10000)]
start, n = time.time(), rate * seconds
if apart:
    children = []
    for p in ports:
        pid = os.fork()
        if pid == 0:
            ports = [p]
            break
        children.append(pid)
    else:
        for pid in children:
            os.waitpid(pid, 0)
        sys.exit(0)
if udp:
    out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    pairs = [("127.0.0.1", p) for p in ports]
else:
    socks = [[connect(p) for p in ports] for _ in range(conns)]
for k in range(0, n, 100):
    chunk = [lines[(k + j) % 10000] for j in range(100)]
    # Each port is sent every other chunk first: the one sent first costs about 10% more.
    if udp:
        for to in (pairs if k // 100 % 2 else pairs[::-1]):
            for one in chunk:
                out.sendto(one, to)
    else:
        pair = socks[k // 100 % conns]
        for s in (pair if k // 100 % 2 else pair[::-1]):
            s.sendall(b"".join(chunk))
    ahead = start + (k + 100) / rate - time.time()
    if ahead > 0:
        time.sleep(ahead)
if relp:
    for pair in socks:
        for s in pair:
            s.answers(True, 0)
PY
threads() { # PID: the run time (µs) and context switches so far of its threads by name, one
    # `name µs switches` a line; a process's run time is their sum (see `total`)
    for t in /proc/"$1"/task/*; do
        printf '%s %s %s\n' "$(tr ' ' _ < "$t/comm")" "$(awk '{print int($1 / 1000)}' "$t/schedstat")" \
            "$(awk '/ctxt_switches/ {n += $2} END {print n}' "$t/status")"
    done 2>/dev/null | awk '{us[$1] += $2; sw[$1] += $3} END {for (n in us) print n, us[n], sw[n]}' | sort
}
total() { # FILE of `threads`: the process's run time, in µs
    awk '{us += $2} END {printf "%d\n", us}' "$1"
}
up() { for _ in $(seq 50); do curl -sf "http://127.0.0.1:$1/health" > /dev/null && return; sleep 0.2; done; }
declare -A pid listen status
ratios=()
for i in $(seq "$runs"); do
    # Odd runs tap b, even runs a.
    if ((i % 2)); then tapped=b plain=a; else tapped=a plain=b; fi
    for name in a b; do
        listen[$name]=$(port)
        status[$name]=$(port)
        config "$name" "${listen[$name]}" "${status[$name]}"
        build=$hotdog
        [ "$name" = "$tapped" ] && build=${VERSUS:-$hotdog}
        "$build" -c "$work/$name.yml" > "$work/$name.log" 2>&1 &
        pid[$name]=$!
    done
    up "${status[a]}"
    up "${status[b]}"
    : > "$work/tap.out"
    tap=""
    if [ "${filter[*]}" != - ]; then
        if [ "${SLOW:-0}" = 1 ]; then
            "$hotdog" tap --url "http://127.0.0.1:${status[$tapped]}" "${filter[@]}" \
                --duration 30s 2>/dev/null | python3 -c 'import sys, time
while data := sys.stdin.buffer.read1(1024):
    sys.stdout.buffer.write(data)
    sys.stdout.flush()
    time.sleep(0.1)' > "$work/tap.out" &
        else
            "$hotdog" tap --url "http://127.0.0.1:${status[$tapped]}" "${filter[@]}" \
                --duration 30s > "$work/tap.out" 2>/dev/null &
        fi
        tap=$!
    fi
    sleep 0.3
    threads "${pid[$tapped]}" > "$work/on0"
    threads "${pid[$plain]}" > "$work/off0"
    declare -A counting=()
    if [ "${SYSCALLS:-0}" = 1 ]; then
        for name in "$plain" "$tapped"; do
            perf stat -x, -o "$work/perf.$name" -p "${pid[$name]}" -e "$(printf 'syscalls:sys_enter_%s,' \
                recvfrom epoll_pwait timerfd_settime epoll_ctl write futex)sched:sched_switch" &
            counting[$name]=$!
        done
    fi
    python3 "$work/send.py" "${listen[a]},${listen[b]}" "${RATE:-50000}" 8 "${CONNS:-1}" \
        "$([ "${TLS:-0}" = 1 ] && echo "$PWD/certs/ca.pem")" "${UDP:-0}" "${LEN:-}" "${APART:-0}" "${RELP:-0}"
    sleep 1.5
    threads "${pid[$tapped]}" > "$work/on1"
    threads "${pid[$plain]}" > "$work/off1"
    on=$(($(total "$work/on1") - $(total "$work/on0")))
    off=$(($(total "$work/off1") - $(total "$work/off0")))
    if [ "${THREADS:-0}" = 1 ]; then
        # Each thread name's run time and context switches in this run, without and with the
        # tap.
        for f in off on; do
            join -a1 -a2 -e0 -o 0,1.2,1.3,2.2,2.3 "$work/${f}0" "$work/${f}1" |
                awk '{print $1, $4 - $2, $5 - $3}' > "$work/$f"
        done
        echo "    thread             without: ms switches    with: ms switches"
        join -a1 -a2 -e0 -o 0,1.2,1.3,2.2,2.3 "$work/off" "$work/on" |
            awk '$2 + $4 > 500 {printf "    %-18s %13.1f %8d %13.1f %8d\n", $1, $2 / 1000, $3, $4 / 1000, $5}'
    fi
    if [ "${SYSCALLS:-0}" = 1 ]; then
        kill -INT "${counting[@]}"
        wait "${counting[@]}" 2>/dev/null || true
        # perf's CSV: count,unit,event,...; the counts without the tap, then with it.
        echo "    event                       without         with"
        join -t, -1 3 -2 3 -o 0,1.1,2.1 <(grep -v '^#' "$work/perf.$plain" | grep , | sort -t, -k3) \
            <(grep -v '^#' "$work/perf.$tapped" | grep , | sort -t, -k3) |
            awk -F, '{sub(/^syscalls:sys_enter_/, "", $1); printf "    %-22s %12d %12d\n", $1, $2, $3}'
    fi
    # What the tapped hotdog left out: by the tap's rate or a slow reader (dropped), and by its
    # CPU budget (frames not looked at), and the last change the budget made.
    counted=$(curl -sf "http://127.0.0.1:${status[$tapped]}/metrics" |
        awk '$1 ~ /tap_dropped_total$/ {d = $2} $1 ~ /tap_skipped_total$/ {s = $2} END {printf "%d dropped, %d frames skipped", d, s}')
    sampled=$(grep -o 'tap: its work was [0-9.]*%.*looks at [a-z]* frame[ a-z]*[0-9]*' "$work/$tapped.log" |
        sed 's/tap: its work was \([0-9.]*%\).*looks at \(.*\)/\1 -> \2/; s/every frame/1/; s/one frame in //' |
        paste -sd, - || true)
    kill "${pid[a]}" "${pid[b]}" 2>/dev/null || true
    wait "${pid[a]}" "${pid[b]}" 2>/dev/null || true
    if [ -n "$tap" ]; then kill "$tap" 2>/dev/null || true; wait "$tap" 2>/dev/null || true; fi
    ratio=$(python3 -c "print(f'{$on / $off:.3f}')")
    echo "run $i: CPU without a tap $((off / 1000)) ms, with $((on / 1000)) ms ($(wc -l < "$work/tap.out") events, $counted): ${ratio}x"
    [ -z "$sampled" ] || echo "    the tap's CPU budget, each change (its work's share -> one frame in N looked at): $sampled"
    ratios+=("$ratio")
done
python3 -c "import statistics, sys; r = sorted(map(float, sys.argv[1:])); print(f'with a tap / without: median {statistics.median(r):.3f}x, {r[0]:.3f}x-{r[-1]:.3f}x over {len(r)} runs')" "${ratios[@]}"
