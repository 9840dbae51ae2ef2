#!/usr/bin/env bash
# Builds the Debian package target/debian/hotdog_<version>_<arch>.deb with cargo-deb: the release
# binary, the man page and shell completions generated from the clap definition, the default
# /etc/hotdog/hotdog.yml, the systemd unit contrib/hotdog.service, and the docs.
set -euo pipefail
cd "$(dirname "$0")/.."
. dev/deps.sh
ensure_build_deps
install_missing dpkg-dev
ensure_cargo_deb
cargo build --release --locked --bin hotdog
rm -rf target/assets
cargo run --release --locked --quiet --example docs -- target/assets >/dev/null
gzip -9n target/assets/hotdog.1
cargo deb --no-build --locked --strip
