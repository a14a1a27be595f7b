#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the tests: `start DIR` creates a cluster in DIR (as the
# `postgres` user: initdb refuses root), starts it on a free loopback port and prints its URL;
# `stop DIR` stops it. Nothing touches the system's own cluster.
set -euo pipefail

action=${1:-}
dir=${2:-}
[[ -n $action && -n $dir ]] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)
as_postgres() {
    if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case $action in
start)
    mkdir -p "$dir"
    # The postgres user must reach the directory: it is made readable only to the way in.
    if [[ $(id -u) -eq 0 ]]; then
        chown postgres: "$dir"
        chmod 755 "$(dirname "$dir")"
    fi
    as_postgres "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-sync >"$dir/initdb.log" 2>&1 ||
        { cat "$dir/initdb.log" >&2; exit 1; }
    # A free port: a random one nothing answers on (postgres fails loudly if it was taken since).
    while :; do
        port=$((20000 + RANDOM % 40000))
        (: </dev/tcp/127.0.0.1/$port) 2>/dev/null || break
    done
    opts="-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$dir -c fsync=off -c max_connections=200"
    as_postgres "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -o "$opts" -w -t 60 start >/dev/null ||
        { cat "$dir/postgres.log" >&2; exit 1; }
    echo "postgres://postgres@127.0.0.1:$port/postgres"
    ;;
stop)
    as_postgres "$bin/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
    ;;
*)
    echo "usage: $0 start|stop DIR" >&2
    exit 2
    ;;
esac
