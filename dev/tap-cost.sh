#!/usr/bin/env bash
# What an open `hotdog tap` costs: hotdog's CPU time (from /proc) for 400,000 lines sent at
# 50,000 lines/s over one TCP connection, forward-all, to a local tansu, without and with a tap
# that keeps 2% of the lines (about 1,000 a second), in pairs, RUNS pairs (default 10). MATCH
# is the tap's --match instead ('no line has this': a tap that keeps nothing).
#
#   dev/tap-cost.sh [RUNS] [MATCH]
set -euo pipefail
cd "$(dirname "$0")/.."
. dev/deps.sh
ensure_build_deps
ensure_tansu
cargo build --release --locked --bin hotdog
runs=${1:-10}
match=${2:-'number.[0-9]*[05]0.with'}
hotdog=$PWD/target/release/hotdog
work=$(mktemp -d)
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
kafka=$(port); listen=$(port); status=$(port)
tansu broker --listener-url "tcp://127.0.0.1:$kafka" --advertised-listener-url "tcp://127.0.0.1:$kafka" \
    --storage-engine memory://tansu/ > "$work/tansu.log" 2>&1 &
broker=$!
trap 'kill $broker 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 50); do (echo > "/dev/tcp/127.0.0.1/$kafka") 2>/dev/null && break; sleep 0.2; done
tansu topic create tapcost --broker "tcp://127.0.0.1:$kafka" > /dev/null
cat > "$work/hotdog.yml" <<YAML
global:
  listen:
    address: '127.0.0.1'
    port: $listen
  kafka:
    conf:
      bootstrap.servers: '127.0.0.1:$kafka'
      linger.ms: '5'
      batch.num.messages: '10000'
    topic: 'tapcost'
  status:
    address: '127.0.0.1'
    port: $status
rules:
  - regex: '.*'
    actions:
      - type: forward
        topic: 'tapcost'
YAML
cat > "$work/send.py" <<'PY'
import socket, sys, time
port, rate, seconds = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
s = socket.create_connection(("127.0.0.1", port))
lines = [(f'<165>1 2024-05-01T12:00:00.123Z web{i % 7}.example.com app 1234 ID47 [ex@32473 iut="3"] '
          f'number {i} with seq={i} user login ok from 10.0.0.{i % 255}\n').encode() for i in range(10000)]
start, n = time.time(), rate * seconds
for k in range(0, n, 100):
    s.sendall(b"".join(lines[(k + j) % 10000] for j in range(100)))
    ahead = start + (k + 100) / rate - time.time()
    if ahead > 0:
        time.sleep(ahead)
PY
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
one() { # one TAP: prints the CPU ticks of one run, with a tap (1) or without (0)
    "$hotdog" -c "$work/hotdog.yml" > "$work/hotdog.log" 2>&1 &
    local pid=$! tap=""
    for _ in $(seq 50); do curl -sf "http://127.0.0.1:$status/health" > /dev/null && break; sleep 0.2; done
    if [ "$1" = 1 ]; then
        "$hotdog" tap --url "http://127.0.0.1:$status" --match "$match" \
            --duration 30s > "$work/tap.out" 2>/dev/null &
        tap=$!
        sleep 0.3
    fi
    local c0; c0=$(ticks $pid)
    python3 "$work/send.py" "$listen" 50000 8
    sleep 1.5
    echo $(( $(ticks $pid) - c0 ))
    kill $pid; wait $pid 2>/dev/null || true
    if [ -n "$tap" ]; then kill $tap 2>/dev/null; wait $tap 2>/dev/null || true; echo "  tap events: $(wc -l < "$work/tap.out")" >&2; fi
}
ratios=()
for i in $(seq "$runs"); do
    off=$(one 0); on=$(one 1)
    ratio=$(python3 -c "print(f'{$on / $off:.3f}')")
    echo "run $i: CPU ticks without a tap $off, with $on: ${ratio}x"
    ratios+=("$ratio")
done
python3 -c "import statistics, sys; r = sorted(map(float, sys.argv[1:])); print(f'with a tap / without: median {statistics.median(r):.2f}x, {r[0]:.2f}x-{r[-1]:.2f}x over {len(r)} pairs')" "${ratios[@]}"
