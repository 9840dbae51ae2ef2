#!/usr/bin/env bash
# The side-by-side benchmark: hotdog vs rsyslog (imptcp -> omkafka) vs the kcat floor, and
# hotdog behind rsyslog over TCP (omfwd) and RELP (omrelp), on one
# local tansu broker. Installs what it needs on Debian (rsyslog-kafka, kcat, tansu, and a
# librdkafka new enough for tansu, taken from the confluent-kafka wheel: Debian's 2.0.2 cannot
# talk to tansu).
#
#   dev/bench.sh                      300,000 lines, 1 and 16 connections
#   dev/bench.sh -n 1000000 -c 1 4 16 --tls
set -euo pipefail
cd "$(dirname "$0")/.."
. dev/deps.sh
ensure_build_deps
install_missing python3 python3-pip rsyslog rsyslog-kafka rsyslog-relp kcat
ensure_tansu
lib="$HOME/.cache/hotdog-bench/librdkafka"
if [ ! -e "$lib/librdkafka.so.1" ]; then
    mkdir -p "$lib"
    wheel_dir=$(mktemp -d)
    python3 -m pip download --no-deps --only-binary=:all: -d "$wheel_dir" confluent-kafka >/dev/null
    python3 -m zipfile -e "$wheel_dir"/confluent_kafka-*.whl "$wheel_dir/x"
    cp "$wheel_dir"/x/confluent_kafka.libs/* "$lib/"
    ln -sf "$(cd "$lib" && ls librdkafka-*.so.1 | head -n 1)" "$lib/librdkafka.so.1"
    rm -rf "$wheel_dir"
fi
cargo build --release --locked --bin hotdog --example count
exec python3 dev/bench.py --librdkafka "$lib" "$@"
