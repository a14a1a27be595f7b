#!/usr/bin/env bash
# Installs the Debian packages bluegreen needs to build and test, idempotently:
# only what is missing is installed. Services those packages would start on install
# (etcd on :2379, nginx on :80, the default PostgreSQL cluster) are kept from starting
# (policy-rc.d), and any that start anyway during this install are stopped again: the
# project's own scripts start their own copies on free ports. Servers that were already
# running before the script are never touched.
set -euo pipefail

# libprotobuf-dev carries google/protobuf/*.proto, which etcd-client's build imports; openssl
# makes the tests' throwaway certificate authorities (TLS etcd, agents' gRPC, PostgreSQL);
# iproute2 and nftables put test hosts in network namespaces and cut them off from each other.
PACKAGES=(etcd-server etcd-client nginx-light protobuf-compiler libprotobuf-dev postgresql openssl iproute2 nftables)

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
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    if ((created_policy)); then rm -f "$policy"; fi
    for pid in $(comm -13 <(echo "$before") <(servers_running)); do
        echo "install-deps: stopping $(ps -o comm= -p "$pid" 2>/dev/null) (pid $pid), started by this install"
        kill "$pid" 2>/dev/null || true
    done
else
    echo "install-deps: all packages present"
fi


for bin in etcd etcdctl nginx protoc ip nft; do
    command -v "$bin" >/dev/null || { echo "install-deps: $bin missing after install" >&2; exit 1; }
done
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { echo "install-deps: initdb missing after install" >&2; exit 1; }
echo "install-deps: ok"
