#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the tests: `start DIR` creates a cluster in DIR (as the
# `postgres` user: initdb refuses root), starts it on a free loopback port with TLS on (a CA made
# here signs its certificate: DIR/tls/ca.pem, valid for 127.0.0.1 and localhost) and prints its
# URL; `stop DIR` stops it. Nothing touches the system's own cluster.
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
    # TLS, so migrations can be tested with sslmode=require and verify-full.
    tls=$dir/tls
    mkdir -p "$tls"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -keyout "$tls/ca.key" -out "$tls/ca.pem" -subj "/CN=bluegreen test postgres CA" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$tls/server.key" -out "$tls/server.csr" -subj "/CN=localhost" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >"$tls/server.ext"
    openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" -CAcreateserial \
        -days 2 -extfile "$tls/server.ext" -out "$tls/server.pem" 2>/dev/null
    chmod 600 "$tls/server.key"
    if [[ $(id -u) -eq 0 ]]; then chown postgres: "$tls/server.key" "$tls/server.pem"; fi
    chmod 755 "$tls"
    # A free port below Linux's ephemeral range (32768+), where outgoing connections take theirs;
    # if it was taken meanwhile, postgres cannot bind it: try another, a few times.
    for attempt in 1 2 3 4 5; do
        while :; do
            port=$((20000 + RANDOM % 12000))
            (: </dev/tcp/127.0.0.1/$port) 2>/dev/null || break
        done
        opts="-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$dir -c fsync=off -c max_connections=200"
        opts="$opts -c ssl=on -c ssl_cert_file=$tls/server.pem -c ssl_key_file=$tls/server.key"
        if as_postgres "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -o "$opts" -w -t 60 start >/dev/null; then
            break
        fi
        if ((attempt == 5)) || ! grep -q "could not bind\|could not create any TCP/IP sockets" "$dir/postgres.log"; then
            cat "$dir/postgres.log" >&2
            exit 1
        fi
        echo "test-postgres: port $port was taken, trying another" >&2
    done
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
