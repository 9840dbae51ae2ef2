#!/usr/bin/env bash
# Installs the Debian package built by dev/package.sh on this machine and checks it as an
# operator would use it, then removes it: the files and the `hotdog` user, `hotdog --check` on the
# installed config, `systemd-analyze verify` on the unit, the installed binary run as the
# `hotdog` user with the installed config against a real broker (a tansu started here, or
# HOTDOG_TEST_KAFKA) until a line has gone through, then `dpkg -r` and `dpkg --purge`.
# Needs root (it installs a package). Fails loudly; never skips.
set -euo pipefail
cd "$(dirname "$0")/.."
. dev/deps.sh
install_missing systemd adduser man-db
[ "$(id -u)" -eq 0 ] || { echo "package test: needs root (dpkg -i)" >&2; exit 1; }

deb=$(ls -t target/debian/hotdog_*.deb 2>/dev/null | head -n 1)
[ -n "$deb" ] || { echo "package test: no target/debian/hotdog_*.deb; run dev/package.sh" >&2; exit 1; }
fail() { echo "package test: FAILED: $*" >&2; exit 1; }
ok() { echo "package test: ok: $*"; }
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

dpkg --purge hotdog >/dev/null 2>&1 || true
# apt resolves the package's dependencies (adduser, libssl3, ...).
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "./$deb" >/dev/null
ok "installed $(basename "$deb") ($(stat -c %s "$deb") bytes)"

for f in /usr/bin/hotdog /etc/hotdog/hotdog.yml /usr/lib/systemd/system/hotdog.service \
    /usr/share/man/man1/hotdog.1.gz /usr/share/bash-completion/completions/hotdog \
    /usr/share/zsh/vendor-completions/_hotdog /usr/share/fish/vendor_completions.d/hotdog.fish \
    /usr/share/doc/hotdog/README.adoc /usr/share/doc/hotdog/copyright \
    /usr/share/doc/hotdog/examples/hotdog.yml /usr/share/doc/hotdog/examples/hotdog.test.yml \
    /usr/share/doc/hotdog/contrib/rsyslog/60-hotdog.conf \
    /usr/share/doc/hotdog/contrib/syslog-ng/hotdog.conf /usr/share/doc/hotdog/contrib/hotdog-tls.yml; do
    [ -e "$f" ] || fail "$f is missing"
done
conffiles=$(dpkg-query -W -f='${Conffiles}\n' hotdog)
grep -q '/etc/hotdog/hotdog.yml' <<<"$conffiles" || fail "hotdog.yml is not a conffile"
grep -q 'GNU AFFERO GENERAL PUBLIC LICENSE' /usr/share/doc/hotdog/copyright || fail "no licence in copyright"
ok "files in place, /etc/hotdog/hotdog.yml a conffile"

entry=$(getent passwd hotdog) || fail "no hotdog user"
uid=$(echo "$entry" | cut -d: -f3)
[ "$uid" -lt 1000 ] || fail "hotdog is not a system user (uid $uid)"
[ "$(stat -c '%U:%G %a' /etc/hotdog/hotdog.yml)" = "root:hotdog 640" ] || fail "config owner/mode: $(stat -c '%U:%G %a' /etc/hotdog/hotdog.yml)"
[ "$(stat -c '%U:%G %a' /var/lib/hotdog)" = "hotdog:hotdog 750" ] || fail "state dir: $(stat -c '%U:%G %a' /var/lib/hotdog)"
ok "system user hotdog (uid $uid); config root:hotdog 640; /var/lib/hotdog hotdog:hotdog 750"

page=$(zcat /usr/share/man/man1/hotdog.1.gz)
grep -q 'Validate the configuration' <<<"$page" || fail "the man page lacks --check"
grep -q -- '--config' /usr/share/bash-completion/completions/hotdog || fail "bash completion lacks --config"
version=$(runuser -u hotdog -- /usr/bin/hotdog --version)
grep -q "hotdog $(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)" <<<"$version" || fail "version: $version"
runuser -u hotdog -- /usr/bin/hotdog --check -c /etc/hotdog/hotdog.yml || fail "--check on the installed config"
(cd /usr/share/doc/hotdog/examples && /usr/bin/hotdog test -c hotdog.yml hotdog.test.yml >/dev/null) ||
    fail "hotdog test on the installed example rules"
ok "man page, completions, --version, --check as the hotdog user, the example rule tests"
# The test hooks are a feature only the tests' build has: the packaged binary knows no HOTDOG_TEST_ variable.
! grep -q HOTDOG_TEST_ /usr/bin/hotdog || fail "the packaged binary has the test hooks"
ok "no test hooks in the packaged binary"

verify=$(systemd-analyze verify /usr/lib/systemd/system/hotdog.service 2>&1) || fail "systemd-analyze verify: $verify"
[ -z "$verify" ] || fail "systemd-analyze verify says: $verify"
ok "systemd-analyze verify: clean"

# A broker: HOTDOG_TEST_KAFKA, or a tansu started here.
if [ -n "${HOTDOG_TEST_KAFKA:-}" ]; then
    broker=$HOTDOG_TEST_KAFKA
else
    ensure_tansu
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    tansu broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
        --storage-engine memory://tansu/ >/tmp/hotdog-package-tansu.log 2>&1 &
    pids+=($!)
    broker=127.0.0.1:$port
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.2; done
fi
# The installed config forwards everything to `logs`; tansu creates no topic on first use.
# One partition: the read-back reads partition 0.
tansu topic create logs --partitions 1 --broker "tcp://$broker" >/dev/null 2>&1 || true
cargo build --release --locked --quiet --example count

log=$(mktemp)
runuser -u hotdog -- env KAFKA_BROKER="$broker" /usr/bin/hotdog -c /etc/hotdog/hotdog.yml 2>"$log" &
hotdog_pid=$!
pids+=($hotdog_pid)
for _ in $(seq 100); do grep -q 'listening on' "$log" && break; sleep 0.1; done
grep -q 'listening on tcp 127.0.0.1:1514' "$log" || fail "hotdog did not listen: $(cat "$log")"
# runuser runs hotdog as its child; the process must belong to the hotdog user.
for _ in $(seq 20); do child=$(pgrep -P "$hotdog_pid" || true); [ -n "$child" ] && break; sleep 0.1; done
owner=$(ps -o user= -p "${child:-$hotdog_pid}" | tr -d ' ')
[ "$owner" = "hotdog" ] || fail "hotdog runs as '$owner'"
run=$(date +%s%N)
{
    for i in $(seq 0 99); do printf '<13>Nov 23 10:00:00 pkg app: package test %s seq=%d\n' "$run" "$i"; done
} >/dev/tcp/127.0.0.1/1514
got=$(target/release/examples/count "$broker" logs 100)
[ "$got" = "100 100" ] || fail "read back '$got' of 100 lines: $(cat "$log")"
python3 -c 'import urllib.request; urllib.request.urlopen("http://127.0.0.1:8585/health")' \
    || fail "/health is not 200"
# SIGTERM to hotdog itself (runuser would end its session instead); runuser passes on its exit code.
kill -TERM "$child"
wait "$hotdog_pid" || fail "hotdog exited $? after SIGTERM: $(cat "$log")"
grep -q 'summary: received 100 lines, forwarded 100' "$log" || fail "summary: $(cat "$log")"
ok "the installed hotdog, as user hotdog with the installed config, delivered 100 of 100 lines to $broker"
# The installed config keeps a spool in the state directory; once Kafka has everything, it holds nothing.
[ "$(stat -c '%U' /var/lib/hotdog/spool)" = "hotdog" ] || fail "spool dir: $(ls -la /var/lib/hotdog)"
inspect=$(runuser -u hotdog -- /usr/bin/hotdog spool inspect -c /etc/hotdog/hotdog.yml) || fail "spool inspect: $inspect"
grep -q ', 0 to send' <<<"$inspect" || fail "spool inspect after a clean stop: $inspect"
ok "the spool in /var/lib/hotdog/spool, owned by hotdog; hotdog spool inspect: nothing left to send"

dpkg -r hotdog >/dev/null
[ ! -e /usr/bin/hotdog ] || fail "dpkg -r left /usr/bin/hotdog"
[ ! -e /usr/lib/systemd/system/hotdog.service ] || fail "dpkg -r left the unit"
[ -e /etc/hotdog/hotdog.yml ] || fail "dpkg -r removed the conffile"
ok "dpkg -r: binary and unit gone, /etc/hotdog/hotdog.yml kept"
dpkg --purge hotdog >/dev/null
[ ! -e /etc/hotdog ] || fail "dpkg --purge left /etc/hotdog"
[ ! -e /var/lib/hotdog ] || fail "dpkg --purge left /var/lib/hotdog"
ok "dpkg --purge: /etc/hotdog and /var/lib/hotdog gone"
echo "package test: passed"
