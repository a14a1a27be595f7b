#!/usr/bin/env bash
# bluegreen quickstart: everything on this machine, nothing to configure.
# Starts an embedded single-node etcd, three agents as hosts 127.0.0.11-13, deploys the demo app
# as blue v1 and green v2 on every host, waits until every host reports both healthy, starts two
# load balancers (nginx + lb-sidecar each, on 127.0.0.1:8000 and :8001), sends traffic to blue,
# switches it to green, and shows `coordinator status`. Ctrl-C stops everything. `--once` exits
# after showing.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${BLUEGREEN_QUICKSTART_DIR:-/tmp/bluegreen-quickstart}
ETCD_PORT=${BLUEGREEN_QUICKSTART_ETCD_PORT:-2379}
ETCD=http://127.0.0.1:$ETCD_PORT
HOSTS=(11 12 13)
ONCE=0
[[ ${1:-} == --once ]] && ONCE=1

bash "$ROOT/deploy/install-deps.sh"
echo "quickstart: building (release)"
cargo build --release --workspace --bins --manifest-path "$ROOT/Cargo.toml" -q
BIN=$ROOT/target/release

cleanup() {
    echo "quickstart: stopping agents, apps and etcd"
    for n in "${HOSTS[@]}"; do
        [[ -f $WORK/agent-$n.pid ]] && kill "$(cat "$WORK/agent-$n.pid")" 2>/dev/null || true
        for pidfile in "$WORK"/state-"$n"/*.pid.json; do
            [[ -f $pidfile ]] || continue
            pid=$(sed -E 's/.*"pid":([0-9]+).*/\1/' "$pidfile")
            kill -TERM -- "-$pid" 2>/dev/null || true
        done
    done
    for lb in 1 2; do
        [[ -f $WORK/lb-$lb/sidecar.pid ]] && kill "$(cat "$WORK/lb-$lb/sidecar.pid")" 2>/dev/null || true
        [[ -f $WORK/lb-$lb/nginx.pid ]] && kill "$(cat "$WORK/lb-$lb/nginx.pid")" 2>/dev/null || true
    done
    [[ -f $WORK/etcd.pid ]] && kill "$(cat "$WORK/etcd.pid")" 2>/dev/null || true
}
trap cleanup EXIT

if (exec 3<>/dev/tcp/127.0.0.1/$ETCD_PORT) 2>/dev/null; then
    echo "quickstart: port $ETCD_PORT is taken (another etcd?); set BLUEGREEN_QUICKSTART_ETCD_PORT" >&2
    exit 2
fi
rm -rf "$WORK" && mkdir -p "$WORK"
echo "quickstart: etcd on $ETCD (data in $WORK/etcd)"
etcd --name quickstart --data-dir "$WORK/etcd" \
    --listen-client-urls "$ETCD" --advertise-client-urls "$ETCD" \
    --listen-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
    --initial-advertise-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
    --initial-cluster "quickstart=http://127.0.0.1:$((ETCD_PORT + 1))" >"$WORK/etcd.log" 2>&1 &
echo $! >"$WORK/etcd.pid"
for _ in $(seq 100); do etcdctl --endpoints "$ETCD" endpoint health >/dev/null 2>&1 && break; sleep 0.1; done

tar -C "$BIN" -czf "$WORK/demo-app.tar.gz" demo-app
SHA=$(sha256sum "$WORK/demo-app.tar.gz" | cut -d' ' -f1)

for n in "${HOSTS[@]}"; do
    "$BIN/agent" --etcd "$ETCD" --app shop --host "host-$n" --address "127.0.0.$n" \
        --state-dir "$WORK/state-$n" --grpc-listen "127.0.0.$n:7070" --blue-port 8080 --green-port 8081 \
        >"$WORK/agent-$n.log" 2>&1 &
    echo $! >"$WORK/agent-$n.pid"
done
echo "quickstart: agents for host-11, host-12, host-13 started (logs in $WORK)"

release() { # color version
    cat <<JSON
{"version":"$2","artifact":{"url":"file://$WORK/demo-app.tar.gz","sha256":"$SHA"},
 "run":{"command":["./demo-app"],"env":{"DATABASE_URL":"sqlite://$WORK/shop.db?mode=rwc"},"stop_timeout":"10s"},
 "health":{"path":"/health","interval":"2s","timeout":"1s","startup_timeout":"30s"},
 "desired":"running","deploy_id":"quickstart","token":0}
JSON
}
etcdctl --endpoints "$ETCD" put /bluegreen/shop/releases/blue "$(release blue v1)" >/dev/null
etcdctl --endpoints "$ETCD" put /bluegreen/shop/releases/green "$(release green v2)" >/dev/null
echo "quickstart: wrote releases/blue (v1) and releases/green (v2); waiting for every host"

start=$(date +%s%N)
for _ in $(seq 600); do
    healthy=$(etcdctl --endpoints "$ETCD" get --prefix /bluegreen/shop/health/ --print-value-only | grep -c '"state":"healthy"' || true)
    [[ $healthy -eq $((${#HOSTS[@]} * 2)) ]] && break
    sleep 0.1
done
echo "quickstart: $healthy of $((${#HOSTS[@]} * 2)) host colors healthy after $((($(date +%s%N) - start) / 1000000)) ms"
echo
"$BIN/coordinator" --etcd "$ETCD" --app shop status
echo
for n in "${HOSTS[@]}"; do
    for port in 8080 8081; do
        printf '127.0.0.%s:%s -> %s\n' "$n" "$port" "$(curl -s "http://127.0.0.$n:$port/api/v1/status")"
    done
done
[[ $healthy -eq $((${#HOSTS[@]} * 2)) ]] || { echo "quickstart: not every host became healthy; see $WORK/*.log" >&2; exit 1; }

# Two load balancers, each an nginx of its own with an lb-sidecar owning its include file.
for lb in 1 2; do
    dir=$WORK/lb-$lb
    mkdir -p "$dir/tmp"
    echo "# no traffic decision yet" >"$dir/bluegreen-shop.conf"
    sed -e "s|@DIR@|$dir|g" "$ROOT/deploy/examples/nginx.conf" >"$dir/nginx.conf"
    nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log"
    "$BIN/lb-sidecar" --etcd "$ETCD" --app shop --name "lb-$lb" \
        --listen "127.0.0.1:800$((lb - 1))" --preview-listen "127.0.0.1:808$((lb + 7))" --status-listen "127.0.0.1:990$lb" \
        --nginx-main-config "$dir/nginx.conf" --nginx-include-file "$dir/bluegreen-shop.conf" --nginx-pid-file "$dir/nginx.pid" \
        >"$dir/sidecar.log" 2>&1 &
    echo $! >"$dir/sidecar.pid"
done
active() { # color version
    etcdctl --endpoints "$ETCD" put /bluegreen/shop/active \
        "{\"color\":\"$1\",\"version\":\"$2\",\"deploy_id\":\"quickstart\",\"token\":0,\"switched_at\":\"$(date -u +%FT%TZ)\"}" -w json |
        sed -E 's/.*"revision":([0-9]+).*/\1/'
}
wait_acks() { # revision
    for _ in $(seq 300); do
        acked=$(etcdctl --endpoints "$ETCD" get --prefix /bluegreen/shop/lbs/ --print-value-only |
            grep -c "\"applied_revision\":$1," || true)
        [[ $acked -eq 2 ]] && return 0
        sleep 0.01
    done
    echo "quickstart: the load balancers did not acknowledge revision $1; see $WORK/lb-*/sidecar.log" >&2
    exit 1
}
rev=$(active blue v1)
wait_acks "$rev"
echo "quickstart: traffic on blue: $(curl -s http://127.0.0.1:8000/api/v1/status)"
start=$(date +%s%N)
rev=$(active green v2)
wait_acks "$rev"
echo "quickstart: switched to green; both load balancers acknowledged revision $rev within $((($(date +%s%N) - start) / 1000000)) ms"
echo "quickstart: lb-1 -> $(curl -s http://127.0.0.1:8000/api/v1/status)"
echo "quickstart: lb-2 -> $(curl -s http://127.0.0.1:8001/api/v1/status)"
echo
"$BIN/coordinator" --etcd "$ETCD" --app shop status
if ((ONCE)); then exit 0; fi
echo
echo "quickstart: running. Watch the audit trail: etcdctl --endpoints $ETCD watch --prefix /bluegreen/"
echo "quickstart: Ctrl-C stops everything."
while true; do sleep 3600; done
