#!/usr/bin/env bash
# The test command: installs what the tests need (idempotent), starts a throwaway PostgreSQL
# cluster for the migration tests (stopped again on exit), builds every binary the integration
# tests drive as processes, and runs all unit and integration tests. Then it builds the .deb
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
cargo test --workspace --no-fail-fast
PROFILE=dev bash deploy/packages/build.sh
bash deploy/packages/check.sh
