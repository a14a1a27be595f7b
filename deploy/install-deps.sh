#!/usr/bin/env bash
# Installs the Debian packages bluegreen needs to build and test, idempotently:
# only what is missing is installed. Services those packages would start on install
# (etcd on :2379, nginx on :80, the default PostgreSQL cluster) are kept from starting
# (policy-rc.d), and any that start anyway during this install are stopped again: the
# project's own scripts start their own copies on free ports. Servers that were already
# running before the script are never touched.
#
#   deploy/install-deps.sh              on any machine: installs, starts nothing, stops nothing
#                                       that ran before
#   deploy/install-deps.sh --throwaway  on a CI or test machine: also disables the systemd units
#                                       this install enabled, so they do not start at the next boot
set -euo pipefail
throwaway=0
case "${1:-}" in
    --throwaway) throwaway=1 ;;
    "") ;;
    *) echo "install-deps: unknown option $1 (only --throwaway)" >&2; exit 2 ;;
esac
UNITS=(etcd.service nginx.service postgresql.service)
unit_enabled() { systemctl is-enabled --quiet "$1" 2>/dev/null; }
have_systemd() { command -v systemctl >/dev/null && [[ -d /run/systemd/system ]]; }

# libprotobuf-dev carries google/protobuf/*.proto, which etcd-client's build imports; openssl
# makes the tests' throwaway certificate authorities (TLS etcd, agents' gRPC, PostgreSQL);
# iproute2 and nftables put test hosts in network namespaces and cut them off from each other;
# python3-venv makes the real virtualenv a test deploys as a Python app's artifact;
# libnginx-mod-http-lua (with lua-resty-core and lua-cjson) is the LB's reload-free Lua mode,
# wrk measures it against a plain upstream; chromium and chromium-driver drive the dashboard's
# tests through WebDriver.
PACKAGES=(etcd-server etcd-client nginx-light protobuf-compiler libprotobuf-dev postgresql openssl iproute2 nftables python3-venv
    libnginx-mod-http-lua lua-resty-core lua-cjson wrk chromium chromium-driver)

missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done

# Servers already running belong to whoever runs them: only processes this install starts are
# stopped again (policy-rc.d should prevent them; this is the belt to its braces).
servers_running() { pgrep -x 'etcd|nginx|postgres' 2>/dev/null | sort || true; }
before=$(servers_running)

if ((${#missing[@]})); then
    echo "install-deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # policy-rc.d keeps the packages' postinst from starting services at all.
    policy=/usr/sbin/policy-rc.d
    created_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod +x "$policy"
        created_policy=1
    fi
    enabled_before=()
    if have_systemd; then
        for unit in "${UNITS[@]}"; do unit_enabled "$unit" && enabled_before+=("$unit"); done
    fi
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    if ((created_policy)); then rm -f "$policy"; fi
    for pid in $(comm -13 <(echo "$before") <(servers_running)); do
        echo "install-deps: stopping $(ps -o comm= -p "$pid" 2>/dev/null) (pid $pid), started by this install"
        kill "$pid" 2>/dev/null || true
    done
    if ((throwaway)) && have_systemd; then
        for unit in "${UNITS[@]}"; do
            if unit_enabled "$unit" && [[ " ${enabled_before[*]} " != *" $unit "* ]]; then
                echo "install-deps: disabling $unit, enabled by this install (--throwaway)"
                systemctl disable --quiet "$unit" || true
            fi
        done
    fi
else
    echo "install-deps: all packages present"
fi


for bin in etcd etcdctl nginx protoc ip nft chromium chromedriver; do
    command -v "$bin" >/dev/null || { echo "install-deps: $bin missing after install" >&2; exit 1; }
done
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { echo "install-deps: initdb missing after install" >&2; exit 1; }
echo "install-deps: ok"
