#!/usr/bin/env bash
# Installs the Debian packages bluegreen needs to build and test, idempotently:
# only what is missing is installed, and the system services those packages
# start on install (etcd on :2379, nginx on :80, the default PostgreSQL cluster)
# are stopped again, because the project's own scripts start their own copies
# on free ports.
set -euo pipefail

# libprotobuf-dev carries google/protobuf/*.proto, which etcd-client's build imports; openssl
# makes the tests' throwaway certificate authorities (TLS etcd, agents' gRPC, PostgreSQL).
PACKAGES=(etcd-server etcd-client nginx-light protobuf-compiler libprotobuf-dev postgresql openssl)

missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done

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
else
    echo "install-deps: all packages present"
fi

# Whatever may have started anyway (no systemd here, but be sure): stop it.
for svc in etcd nginx postgresql; do
    if command -v service >/dev/null 2>&1; then
        service "$svc" stop >/dev/null 2>&1 || true
    fi
done
pkill -x etcd 2>/dev/null || true
if pgrep -f "nginx: master process /usr/sbin/nginx" >/dev/null 2>&1; then
    nginx -s stop 2>/dev/null || true
fi

for bin in etcd etcdctl nginx protoc; do
    command -v "$bin" >/dev/null || { echo "install-deps: $bin missing after install" >&2; exit 1; }
done
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { echo "install-deps: initdb missing after install" >&2; exit 1; }
echo "install-deps: ok"
