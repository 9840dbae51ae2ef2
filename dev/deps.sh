# Sourced by the scripts in dev/: installs what building and testing hotdog needs on Debian.
# Safe to source repeatedly; installs only what is missing.

TANSU_VERSION=0.6.0
CARGO_DEB_VERSION=3.8.0

# Debian packages that rdkafka's bundled librdkafka needs to build (C compiler, make, OpenSSL,
# zlib, pkg-config), and python3 for dev/structure.py.
ensure_build_deps() {
    install_missing build-essential pkg-config libssl-dev zlib1g-dev python3
}

install_missing() {
    local missing=()
    for pkg in "$@"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing ${missing[*]}" >&2
        local sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
    fi
}

# What the integration tests run besides hotdog: rsyslog with its TLS driver and omrelp (RELP), HAProxy (a load
# balancer that sends PROXY headers), ss (to see socket options), promtool (Debian's prometheus
# package: it checks the shipped alerting rules), tmux (to drive `hotdog top` as a terminal).
ensure_test_deps() {
    install_missing rsyslog rsyslog-gnutls rsyslog-relp haproxy iproute2 prometheus tmux
    ensure_python_test_deps
}

# The JSON Schema validator and the OpenTelemetry protobuf definitions, from PyPI: the tests check
# hotdog's structured records with them (tests/check_records.py).
ensure_python_test_deps() {
    if python3 -c 'import jsonschema, opentelemetry.proto.collector.logs.v1.logs_service_pb2' 2>/dev/null; then
        return 0
    fi
    command -v python3 >/dev/null 2>&1 || install_missing python3
    python3 -m pip --version >/dev/null 2>&1 || install_missing python3-pip
    python3 -m pip install --quiet jsonschema opentelemetry-proto ||
        python3 -m pip install --quiet --break-system-packages jsonschema opentelemetry-proto
}

# The tansu broker (a Kafka-compatible broker in Rust) in ~/.cargo/bin; built once (minutes).
# With `libsql`: its SQLite storage keeps SCRAM users, for the test of a SASL login that
# succeeds (tests/sasl.rs). A marker beside it says which features it was built with.
TANSU_FEATURES=dynostore,libsql
ensure_tansu() {
    export PATH="$HOME/.cargo/bin:$PATH"
    local marker="$HOME/.cargo/bin/.tansu-features"
    if command -v tansu >/dev/null 2>&1 && tansu --version 2>/dev/null | grep -q "$TANSU_VERSION" &&
        [ "$(cat "$marker" 2>/dev/null)" = "$TANSU_FEATURES" ]; then
        return 0
    fi
    echo "building tansu $TANSU_VERSION with $TANSU_FEATURES once (about 15 minutes on 2 cores)" >&2
    cargo install tansu --version "$TANSU_VERSION" --locked --force --features "$TANSU_FEATURES"
    echo "$TANSU_FEATURES" > "$marker"
}

# cargo-deb, which builds the Debian package (dev/package.sh); built once (a few minutes).
ensure_cargo_deb() {
    export PATH="$HOME/.cargo/bin:$PATH"
    if cargo deb --version 2>/dev/null | grep -q "$CARGO_DEB_VERSION"; then
        return 0
    fi
    cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked
}
