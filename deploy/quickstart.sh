#!/usr/bin/env bash
# bluegreen quickstart: everything on this machine, nothing to configure.
# Starts an embedded single-node etcd, three agents as hosts 127.0.0.11-13 and two load balancers
# (nginx + lb-sidecar each, on 127.0.0.1:8000 and :8001), deploys v1 of the demo app with
# `coordinator deploy` (which applies the example's expand migrations to a SQLite database), then
# deploys v2 while a load loop runs through both load balancers, and shows `coordinator status`,
# the history, `coordinator migrate status` and the load loop's failure count (zero).
# Ctrl-C stops everything. `--once` exits after showing.
# `--two-apps`: the same fleet runs two apps, shop and api: one agent per host runs both
# ([[apps]]), one sidecar per load balancer serves both on the same port by host name
# (shop.localhost, api.localhost), and both deploy v2 at the same time under load.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${BLUEGREEN_QUICKSTART_DIR:-/tmp/bluegreen-quickstart}
ETCD_PORT=${BLUEGREEN_QUICKSTART_ETCD_PORT:-2379}
ETCD=http://127.0.0.1:$ETCD_PORT
HOSTS=(11 12 13)
ONCE=0
APPS=(shop)
for arg in "$@"; do
    case $arg in
        --once) ONCE=1 ;;
        --two-apps) APPS=(shop api) ;;
        *) echo "usage: deploy/quickstart.sh [--once] [--two-apps]" >&2; exit 2 ;;
    esac
done

bash "$ROOT/deploy/install-deps.sh"
echo "quickstart: building (release)"
cargo build --release --workspace --bins --manifest-path "$ROOT/Cargo.toml" -q
BIN=$ROOT/target/release

cleanup() {
    echo "quickstart: stopping agents, apps and etcd"
    for n in "${HOSTS[@]}"; do
        [[ -f $WORK/agent-$n.pid ]] && kill "$(cat "$WORK/agent-$n.pid")" 2>/dev/null || true
        for pidfile in "$WORK"/state-"$n"/*.pid.json "$WORK"/state-"$n"/apps/*/*.pid.json; do
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
# With two apps, each agent's config lists both, each on its own ports.
for n in "${HOSTS[@]}"; do
    if ((${#APPS[@]} > 1)); then
        cat >"$WORK/agent-$n.toml" <<TOML
[[apps]]
name = "shop"
ports = { blue = 8080, green = 8081 }
[[apps]]
name = "api"
ports = { blue = 9080, green = 9081 }
TOML
        app_args=(--config "$WORK/agent-$n.toml")
    else
        app_args=(--app shop --blue-port 8080 --green-port 8081)
    fi
    "$BIN/agent" --etcd "$ETCD" "${app_args[@]}" --host "host-$n" --address "127.0.0.$n" --run-as root \
        --state-dir "$WORK/state-$n" --grpc-socket "$WORK/agent-$n.sock" \
        >"$WORK/agent-$n.log" 2>&1 &
    echo $! >"$WORK/agent-$n.pid"
done
echo "quickstart: agents for host-11, host-12, host-13 started, running ${APPS[*]} (logs in $WORK)"


# The app spec. The schema comes from deploy/examples/migrations (SQLite, the embedded default):
# expand migrations run inside `coordinator deploy`, the contract one waits for
# `coordinator migrate contract`. v2 is the same binary with FEATURE_FLAG_NEW_API=1 (it reads and
# writes items.description).
spec() {
    local app=$1 flag=$2
    cat <<TOML
app = "$app"
[run]
command = ["./demo-app"]
env = { DATABASE_URL = "sqlite://$WORK/$app.db?mode=rwc", DEMO_AUTO_SCHEMA = "0", FEATURE_FLAG_NEW_API = "$flag" }
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
database_url = "sqlite://$WORK/$app.db?mode=rwc"
TOML
}
for app in "${APPS[@]}"; do
    spec "$app" 0 >"$WORK/$app.toml"
    spec "$app" 1 >"$WORK/$app-v2.toml"
done
# The single-app names the README uses.
cp "$WORK/shop.toml" "$WORK/bluegreen.toml"
cp "$WORK/shop-v2.toml" "$WORK/bluegreen-v2.toml"

# Two load balancers, each an nginx of its own with an lb-sidecar owning its include file (with
# two apps: one file per app, bluegreen-<app>.conf, and bluegreen-default.conf answering 404 for
# any other host name).
for lb in 1 2; do
    dir=$WORK/lb-$lb
    mkdir -p "$dir/tmp"
    printf 'server { listen 127.0.0.1:800%s; return 503; }\n' $((lb - 1)) >"$dir/bluegreen-shop.conf"
    sed -e "s|@DIR@|$dir|g" "$ROOT/deploy/examples/nginx.conf" >"$dir/nginx.conf"
    if ((${#APPS[@]} > 1)); then
        sed -i -e "s|include $dir/bluegreen-shop.conf;|include $dir/bluegreen-*.conf;|" "$dir/nginx.conf"
        cat >"$dir/sidecar.toml" <<TOML
[[apps]]
name = "shop"
server_names = ["shop.localhost"]
[[apps]]
name = "api"
server_names = ["api.localhost"]
TOML
        app_args=(--config "$dir/sidecar.toml")
    else
        app_args=(--app shop)
    fi
    nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log"
    "$BIN/lb-sidecar" --etcd "$ETCD" "${app_args[@]}" --name "lb-$lb" \
        --listen "127.0.0.1:800$((lb - 1))" --preview-listen "127.0.0.1:808$((lb + 7))" --status-listen "127.0.0.1:990$lb" \
        --nginx-main-config "$dir/nginx.conf" --nginx-include-file "$dir/bluegreen-shop.conf" --nginx-pid-file "$dir/nginx.pid" \
        --nginx-status-listen "127.0.0.1:991$lb" --state-dir "$dir/sidecar-state" \
        --upstreams-allow 127.0.0.0/8 >"$dir/sidecar.log" 2>&1 &
    echo $! >"$dir/sidecar.pid"
done
for app in "${APPS[@]}"; do
    for _ in $(seq 100); do
        [[ $(etcdctl --endpoints "$ETCD" get --prefix "/bluegreen/$app/lbs/" --keys-only | grep -c lbs/) -eq 2 ]] && break
        sleep 0.1
    done
done
export BLUEGREEN_ETCD=$ETCD BLUEGREEN_APP=shop
coordinator() { "$BIN/coordinator" "$@"; }
# Deploys `version` of every app, at the same time (each under its own lock), and fails if any does.
deploy_all() {
    local version=$1 suffix=$2 pids=() app
    for app in "${APPS[@]}"; do
        coordinator --app "$app" deploy --spec "$WORK/$app$suffix.toml" --version "$version" \
            --artifact "file://$WORK/demo-app.tar.gz" --sha256 "$SHA" &
        pids+=($!)
    done
    for pid in "${pids[@]}"; do wait "$pid"; done
}
# What a request for `app` sends as Host: any, with one app; its name, with two.
host_of() { if ((${#APPS[@]} > 1)); then echo "$1.localhost"; else echo "127.0.0.1"; fi; }

echo "quickstart: coordinator deploy v1 of ${APPS[*]} (the first deploy goes to blue)"
deploy_all v1 ""

# A load loop through both load balancers while v2 is deployed: every failed request is counted.
load() {
    local ok=0 failed=0 app port
    while [[ ! -f $WORK/stop-load ]]; do
        for app in "${APPS[@]}"; do
            for port in 8000 8001; do
                if curl -sf -o /dev/null -H "Host: $(host_of "$app")" "http://127.0.0.1:$port/api/v1/status"; then
                    ok=$((ok + 1))
                else
                    failed=$((failed + 1))
                fi
            done
        done
    done
    echo "$ok $failed" >"$WORK/load-result"
}
load &
LOAD_PID=$!
echo "quickstart: coordinator deploy v2 of ${APPS[*]} while a load loop runs through both load balancers"
deploy_all v2 -v2
touch "$WORK/stop-load"
wait $LOAD_PID
read -r ok failed <"$WORK/load-result"
echo
coordinator status
echo
coordinator history
echo
coordinator migrate status --spec "$WORK/bluegreen-v2.toml"
if ((${#APPS[@]} > 1)); then
    echo
    coordinator apps
fi
echo
echo "quickstart: load loop during the v2 deploy: $ok requests succeeded, $failed failed"
for app in "${APPS[@]}"; do
    for lb in 1 2; do
        echo "quickstart: lb-$lb ($app) -> $(curl -s -H "Host: $(host_of "$app")" "http://127.0.0.1:800$((lb - 1))/api/v1/status")"
    done
done
if ((${#APPS[@]} > 1)); then
    echo "quickstart: a host name no app claims -> HTTP $(curl -s -o /dev/null -w '%{http_code}' -H 'Host: nobody.localhost' http://127.0.0.1:8000/)"
fi
echo "quickstart: try 'BLUEGREEN_ETCD=$ETCD $BIN/coordinator --app shop rollback'"
echo "quickstart: and 'BLUEGREEN_ETCD=$ETCD $BIN/coordinator migrate contract --spec $WORK/bluegreen-v2.toml' (refused while blue runs v1)"
[[ $failed -eq 0 ]] || { echo "quickstart: requests failed during the deploy" >&2; exit 1; }
if ((ONCE)); then exit 0; fi
echo
echo "quickstart: running. Watch the audit trail: etcdctl --endpoints $ETCD watch --prefix /bluegreen/"
echo "quickstart: or the dashboard: 'BLUEGREEN_ETCD=$ETCD $BIN/coordinator ui --allow-actions', then http://127.0.0.1:8480"
echo "quickstart: Ctrl-C stops everything."
while true; do sleep 3600; done
