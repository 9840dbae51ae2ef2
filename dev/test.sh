#!/usr/bin/env bash
# Runs every hotdog test on a fresh Debian machine with the Rust toolchain.
#
# The integration tests need a Kafka-protocol broker: the one in HOTDOG_TEST_KAFKA (host:port)
# when it is set, otherwise a tansu broker that the tests start themselves (installed here first).
# They also run Debian's rsyslogd (installed here with its TLS driver) and HAProxy.
set -euo pipefail
cd "$(dirname "$0")/.."
. dev/deps.sh
ensure_build_deps
ensure_test_deps
if [ -z "${HOTDOG_TEST_KAFKA:-}" ]; then
    ensure_tansu
fi
# The test hooks (HOTDOG_TEST_* variables) are a feature that only the tests enable.
cargo test --locked --workspace --features test-hooks "$@"
