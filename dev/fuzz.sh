#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets) for SECONDS each (default 20) on a copy of its
# checked-in seed corpus (fuzz/seeds/TARGET), with the nightly toolchain and cargo-fuzz.
# Any panic, abort, stack overflow, input taking over 10 s, or use of over 4 GB fails the run;
# the input that did it is in fuzz/artifacts/TARGET/.
#
#   dev/fuzz.sh [SECONDS] [TARGET...]
#
# While developing, run a target for longer (at least 10 minutes) and keep what it found:
#   cargo +nightly fuzz run --sanitizer none -O config fuzz/corpus/config -- -max_total_time=600
set -euo pipefail
cd "$(dirname "$0")/.."
. dev/deps.sh
CARGO_FUZZ_VERSION=0.13.2

seconds=${1:-20}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(framing syslog config template proxy relp)

export PATH="$HOME/.cargo/bin:$PATH"
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION" ||
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked

# No sanitizer: hotdog has no unsafe code; what is hunted is panics, aborts, overflows and hangs.
cargo +nightly fuzz build --sanitizer none -O
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for t in "${targets[@]}"; do
    cp -r "fuzz/seeds/$t" "$work/$t"
    echo "fuzzing $t for ${seconds}s" >&2
    status=0
    cargo +nightly fuzz run --sanitizer none -O "$t" "$work/$t" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1 \
        >"$work/$t.log" 2>&1 || status=$?
    grep -E '^(stat::number_of_executed_units|Done )' "$work/$t.log" >&2 || true
    if [ "$status" -ne 0 ]; then
        tail -n 40 "$work/$t.log" >&2
        echo "fuzz target $t failed (exit $status)" >&2
        exit 1
    fi
done
