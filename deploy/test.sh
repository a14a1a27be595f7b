#!/usr/bin/env bash
# The test command: installs what the tests need (idempotent), builds every binary the
# integration tests drive as processes, and runs all unit and integration tests.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
bash deploy/install-deps.sh
cargo build --workspace --bins
cargo test --workspace
