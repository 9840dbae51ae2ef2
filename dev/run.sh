#!/usr/bin/env bash
# Runs hotdog with hotdog.yml (or the config given as $1) against a local broker.
#
# With KAFKA_BROKER=host:port set, that broker is used. Otherwise a tansu broker is installed
# (once) and started on 127.0.0.1:9092 with memory storage, and the topics the config names are
# created. Ctrl-C stops hotdog and the broker.
set -euo pipefail
cd "$(dirname "$0")/.."
config="${1:-hotdog.yml}"
. dev/deps.sh
ensure_build_deps
cargo build --release --locked
if [ -z "${KAFKA_BROKER:-}" ]; then
    ensure_tansu
    export KAFKA_BROKER=127.0.0.1:9092
    if ! (exec 3<>/dev/tcp/127.0.0.1/9092) 2>/dev/null; then
        tansu broker --listener-url tcp://127.0.0.1:9092 \
            --advertised-listener-url tcp://127.0.0.1:9092 \
            --storage-engine memory://tansu/ >tansu.log 2>&1 &
        broker_pid=$!
        trap 'kill $broker_pid 2>/dev/null' EXIT
        for _ in $(seq 50); do
            (exec 3<>/dev/tcp/127.0.0.1/9092) 2>/dev/null && break
            sleep 0.2
        done
        echo "tansu broker on $KAFKA_BROKER (log: tansu.log)" >&2
    fi
    # tansu does not create topics on first use: create every literal topic in the config.
    for topic in $(sed -n "s/^ *\(topic\): *'\{0,1\}\([A-Za-z0-9._-]*\)'\{0,1\} *$/\2/p" "$config" | sort -u); do
        tansu topic create "$topic" --broker "tcp://$KAFKA_BROKER" >/dev/null 2>&1 || true
    done
fi
./target/release/hotdog -c "$config"
