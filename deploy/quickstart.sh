#!/usr/bin/env bash
# bluegreen quickstart: everything on this machine, nothing to configure.
# Starts an embedded single-node etcd, three agents as hosts 127.0.0.11-13 and two load balancers
# (nginx + lb-sidecar each, on 127.0.0.1:8000 and :8001), deploys v1 of the demo app with
# `coordinator deploy` (which applies the example's expand migrations to a SQLite database), then
# deploys v2 while a load loop runs through both load balancers, and shows `coordinator status`,
# the history, `coordinator migrate status` and the load loop's failure count (zero).
# Ctrl-C stops everything. `--once` exits after showing.
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

# The demo app writes its SQLite file under $WORK, owned by root: --run-as root says so. On a
# real fleet leave run_as at its default, the unprivileged bluegreen-app user.
for n in "${HOSTS[@]}"; do
    "$BIN/agent" --etcd "$ETCD" --app shop --host "host-$n" --address "127.0.0.$n" --run-as root \
        --state-dir "$WORK/state-$n" --grpc-socket "$WORK/agent-$n.sock" --blue-port 8080 --green-port 8081 \
        >"$WORK/agent-$n.log" 2>&1 &
    echo $! >"$WORK/agent-$n.pid"
done
echo "quickstart: agents for host-11, host-12, host-13 started (logs in $WORK)"


# The app spec. The schema comes from deploy/examples/migrations (SQLite, the embedded default):
# expand migrations run inside `coordinator deploy`, the contract one waits for
# `coordinator migrate contract`. v2 is the same binary with FEATURE_FLAG_NEW_API=1 (it reads and
# writes items.description).
spec() {
    local flag=$1
    cat <<TOML
app = "shop"
[run]
command = ["./demo-app"]
env = { DATABASE_URL = "sqlite://$WORK/shop.db?mode=rwc", DEMO_AUTO_SCHEMA = "0", FEATURE_FLAG_NEW_API = "$flag" }
stop_timeout = "10s"
[health]
path = "/health"
interval = "2s"
timeout = "1s"
startup_timeout = "30s"
[[smoke]]
path = "/api/v1/status"
status = 200
json = { environment = "{color}", version = "{version}" }
[[smoke]]
path = "/api/v1/items"
status = 200
[migrations]
dir = "$ROOT/deploy/examples/migrations"
database_url = "sqlite://$WORK/shop.db?mode=rwc"
TOML
}
spec 0 >"$WORK/bluegreen.toml"
spec 1 >"$WORK/bluegreen-v2.toml"

# Two load balancers, each an nginx of its own with an lb-sidecar owning its include file.
for lb in 1 2; do
    dir=$WORK/lb-$lb
    mkdir -p "$dir/tmp"
    printf 'server { listen 127.0.0.1:800%s; return 503; }\n' $((lb - 1)) >"$dir/bluegreen-shop.conf"
    sed -e "s|@DIR@|$dir|g" "$ROOT/deploy/examples/nginx.conf" >"$dir/nginx.conf"
    nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log"
    "$BIN/lb-sidecar" --etcd "$ETCD" --app shop --name "lb-$lb" \
        --listen "127.0.0.1:800$((lb - 1))" --preview-listen "127.0.0.1:808$((lb + 7))" --status-listen "127.0.0.1:990$lb" \
        --nginx-main-config "$dir/nginx.conf" --nginx-include-file "$dir/bluegreen-shop.conf" --nginx-pid-file "$dir/nginx.pid" \
        --nginx-status-listen "127.0.0.1:991$lb" --state-dir "$dir/sidecar-state" \
        --upstreams-allow 127.0.0.0/8 >"$dir/sidecar.log" 2>&1 &
    echo $! >"$dir/sidecar.pid"
done
for _ in $(seq 100); do
    [[ $(etcdctl --endpoints "$ETCD" get --prefix /bluegreen/shop/lbs/ --keys-only | grep -c lbs/) -eq 2 ]] && break
    sleep 0.1
done
export BLUEGREEN_ETCD=$ETCD BLUEGREEN_APP=shop
coordinator() { "$BIN/coordinator" "$@"; }

echo "quickstart: coordinator deploy v1 (the first deploy goes to blue)"
coordinator deploy --spec "$WORK/bluegreen.toml" --version v1 --artifact "file://$WORK/demo-app.tar.gz" --sha256 "$SHA"

# A load loop through both load balancers while v2 is deployed: every failed request is counted.
load() {
    local ok=0 failed=0
    while [[ ! -f $WORK/stop-load ]]; do
        for port in 8000 8001; do
            if curl -sf -o /dev/null "http://127.0.0.1:$port/api/v1/status"; then ok=$((ok + 1)); else failed=$((failed + 1)); fi
        done
    done
    echo "$ok $failed" >"$WORK/load-result"
}
load &
LOAD_PID=$!
echo "quickstart: coordinator deploy v2 while a load loop runs through both load balancers"
coordinator deploy --spec "$WORK/bluegreen-v2.toml" --version v2 --artifact "file://$WORK/demo-app.tar.gz" --sha256 "$SHA"
touch "$WORK/stop-load"
wait $LOAD_PID
read -r ok failed <"$WORK/load-result"
echo
coordinator status
echo
coordinator history
echo
coordinator migrate status --spec "$WORK/bluegreen-v2.toml"
echo
echo "quickstart: load loop during the v2 deploy: $ok requests succeeded, $failed failed"
echo "quickstart: lb-1 -> $(curl -s http://127.0.0.1:8000/api/v1/status)"
echo "quickstart: lb-2 -> $(curl -s http://127.0.0.1:8001/api/v1/status)"
echo "quickstart: try 'BLUEGREEN_ETCD=$ETCD $BIN/coordinator --app shop rollback'"
echo "quickstart: and 'BLUEGREEN_ETCD=$ETCD $BIN/coordinator migrate contract --spec $WORK/bluegreen-v2.toml' (refused while blue runs v1)"
[[ $failed -eq 0 ]] || { echo "quickstart: requests failed during the deploy" >&2; exit 1; }
if ((ONCE)); then exit 0; fi
echo
echo "quickstart: running. Watch the audit trail: etcdctl --endpoints $ETCD watch --prefix /bluegreen/"
echo "quickstart: Ctrl-C stops everything."
while true; do sleep 3600; done
