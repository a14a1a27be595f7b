#!/usr/bin/env bash
# The mixed-fleet upgrade test (not part of CI): builds the agent and lb-sidecar of an earlier
# commit (the release the fleet is upgraded from) in a worktree under target/upgrade/, then runs
# the integration test upgrade:: with those binaries for one host and one LB and this tree's for
# the rest and the coordinator. Needs what deploy/test.sh needs (etcd, nginx), and a full build
# of that commit the first time (a few minutes).
#
#   deploy/test-upgrade.sh 2ca878b
set -euo pipefail
cd "$(dirname "$0")/.."
commit=${1:?"usage: deploy/test-upgrade.sh COMMIT (the previous release's commit)"}
root=$PWD
work="$root/target/upgrade"
src="$work/src-$commit"
if [[ ! -d $src ]]; then
    git worktree add --detach "$src" "$commit"
fi
(cd "$src" && CARGO_TARGET_DIR="$work/target" cargo build --bins -p agent -p lb-sidecar)
cargo build --workspace --bins
BLUEGREEN_PREVIOUS_BIN_DIR="$work/target/debug" \
    cargo test --workspace --test integration -- --ignored --test-threads 1 upgrade::
