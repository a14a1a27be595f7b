#!/usr/bin/env bash
# The test command: installs what the tests need (idempotent), starts a throwaway PostgreSQL
# cluster for the migration tests (stopped again on exit), builds every binary the integration
# tests drive as processes, and runs all unit and integration tests (the integration suites in two
# lanes side by side). Then it builds the .deb
# packages from those binaries and checks them with dpkg.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
bash deploy/install-deps.sh --throwaway

PG_DIR=$(mktemp -d /tmp/bluegreen-test-pg.XXXXXX)
trap 'bash "$ROOT/deploy/test-postgres.sh" stop "$PG_DIR/cluster"; rm -rf "$PG_DIR"' EXIT
BLUEGREEN_TEST_POSTGRES_URL=$(bash deploy/test-postgres.sh start "$PG_DIR/cluster")
BLUEGREEN_TEST_POSTGRES_CA=$PG_DIR/cluster/tls/ca.pem
export BLUEGREEN_TEST_POSTGRES_URL BLUEGREEN_TEST_POSTGRES_CA
echo "test.sh: throwaway PostgreSQL at $BLUEGREEN_TEST_POSTGRES_URL"

cargo build --workspace --bins
cargo test --workspace --no-run
# Unit and doc tests of every crate first.
cargo test --workspace --exclude bluegreen-tests --no-fail-fast
cargo test -p bluegreen-tests --lib --bins --no-fail-fast
# The integration suites mostly wait (lease expiries, deadlines, apps starting): two lanes side by
# side halve the wall time. Every file in tests/tests runs: lane A is the list below, lane B the
# rest, and the partition suite, the one most sensitive to a loaded machine, alone at the end.
LANE_A="agent canary chaos faults scale security"
LAST="partitions"
lane_a=() lane_b=()
for file in tests/tests/*.rs; do
    suite=$(basename "$file" .rs)
    if [[ " $LAST " == *" $suite "* ]]; then continue; fi
    if [[ " $LANE_A " == *" $suite "* ]]; then lane_a+=(--test "$suite"); else lane_b+=(--test "$suite"); fi
done
LANE_LOG=$(mktemp /tmp/bluegreen-lane-a.XXXXXX)
cargo test -p bluegreen-tests "${lane_a[@]}" --no-fail-fast >"$LANE_LOG" 2>&1 &
LANE_PID=$!
status=0
cargo test -p bluegreen-tests "${lane_b[@]}" --no-fail-fast || status=1
wait "$LANE_PID" || status=1
echo "----- lane A: ${lane_a[*]} -----"
cat "$LANE_LOG"
rm -f "$LANE_LOG"
for suite in $LAST; do
    cargo test -p bluegreen-tests --test "$suite" --no-fail-fast || status=1
done
if [[ $status != 0 ]]; then
    echo "test.sh: some tests failed (lane A's output is above, after lane B's)" >&2
    exit 1
fi
PROFILE=dev bash deploy/packages/build.sh
bash deploy/packages/check.sh
