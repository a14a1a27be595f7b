#!/usr/bin/env bash
# Checks the packages build.sh made: each one unpacks with dpkg into a clean root of its own
# (its own dpkg database; no maintainer script runs, nothing touches this machine), holds what
# it must (binary, unit, config, man page, completions), and its binary runs from there.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/var/lib/dpkg/updates" "$root/var/lib/dpkg/info"
touch "$root/var/lib/dpkg/status"
fail() { echo "check.sh: $*" >&2; exit 1; }
for deb in target/debian/bluegreen-{agent,lb-sidecar,coordinator}_*.deb; do
    [ -f "$deb" ] || fail "$deb missing: run deploy/packages/build.sh first"
    dpkg --root="$root" --force-not-root --force-depends --no-triggers --unpack "$deb" >/dev/null
done
# Unpacked but not configured, a conffile waits as NAME.dpkg-new.
expect() { [ -e "$root/$1" ] || [ -e "$root/$1.dpkg-new" ] || fail "$1 is not in the packages"; }
for f in usr/bin/agent usr/bin/lb-sidecar usr/bin/coordinator \
         etc/bluegreen/agent.toml etc/bluegreen/sidecar.toml \
         usr/lib/systemd/system/bluegreen-agent.service usr/lib/systemd/system/bluegreen-lb-sidecar.service \
         usr/lib/systemd/system/bluegreen-ui.service \
         usr/share/man/man1/coordinator.1.gz usr/share/man/man1/agent.1.gz usr/share/man/man1/lb-sidecar.1.gz \
         usr/share/bash-completion/completions/coordinator \
         usr/share/zsh/vendor-completions/_coordinator usr/share/fish/vendor_completions.d/coordinator.fish \
         usr/share/doc/bluegreen-agent/copyright; do
    expect "$f"
done
# Each unit starts a binary the packages install, with a config they install.
for unit in "$root"/usr/lib/systemd/system/bluegreen-*.service; do
    exec_start=$(sed -n 's/^ExecStart=//p' "$unit")
    binary=${exec_start%% *}
    config=$(sed -n 's/.*--config \([^ ]*\).*/\1/p' <<<"$exec_start")
    [ -x "$root$binary" ] || fail "$(basename "$unit"): ExecStart $binary is not installed"
    # The dashboard's unit takes its settings from the environment file the operator writes.
    [ -z "$config" ] || [ -f "$root$config" ] || [ -f "$root$config.dpkg-new" ] || fail "$(basename "$unit"): --config $config is not installed"
    grep -q '^KillMode=process' "$unit" || [[ $unit != *agent* ]] || fail "the agent's unit must keep the apps running when it stops (KillMode=process)"
done
# The configs are conffiles: an upgrade keeps the operator's edits.
for pkg in bluegreen-agent bluegreen-lb-sidecar; do
    grep -q '^/etc/bluegreen/' "$root/var/lib/dpkg/info/$pkg.conffiles" \
        || fail "$pkg: /etc/bluegreen config is not a conffile"
done
for bin in agent lb-sidecar coordinator; do
    version=$("$root/usr/bin/$bin" --version) || fail "$bin --version failed"
    echo "check.sh: $version runs from the package"
done
gzip -t "$root/usr/share/man/man1/coordinator.1.gz" || fail "coordinator.1.gz is not gzip"
zcat "$root/usr/share/man/man1/coordinator.1.gz" | grep -q '^\.TH coordinator 1' || fail "coordinator.1 is not a man page"
bash -n "$root/usr/share/bash-completion/completions/coordinator" || fail "the bash completion does not parse"
for script in "$root"/var/lib/dpkg/info/*.postinst; do
    sh -n "$script" || fail "$(basename "$script") does not parse"
done
grep -q 'adduser --system' "$root/var/lib/dpkg/info/bluegreen-agent.postinst" || fail "bluegreen-agent does not create the apps' system user"
echo "check.sh: the three packages unpack with dpkg and hold what they must"
