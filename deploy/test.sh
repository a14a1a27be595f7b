#!/usr/bin/env bash
# The test command: installs what the tests need (idempotent), starts a throwaway PostgreSQL
# cluster for the migration tests (stopped again on exit), builds everything once, runs the unit
# tests and the integration suites (one test binary, every suite a module of it), prints the
# per-suite time table, then packs the .deb packages from the binaries already built and checks
# them with dpkg.
#
#   deploy/test.sh                 everything (what CI runs)
#   deploy/test.sh FILTER…         only the integration tests whose names contain a FILTER
#                                  (e.g. `agent::` for one suite); no unit tests, no packages
#   BLUEGREEN_TEST_THREADS=N       integration tests run at once (default 2)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
started=$SECONDS
bash deploy/install-deps.sh --throwaway

PG_DIR=$(mktemp -d /tmp/bluegreen-test-pg.XXXXXX)
trap 'bash "$ROOT/deploy/test-postgres.sh" stop "$PG_DIR/cluster"; rm -rf "$PG_DIR"' EXIT
BLUEGREEN_TEST_POSTGRES_URL=$(bash deploy/test-postgres.sh start "$PG_DIR/cluster")
BLUEGREEN_TEST_POSTGRES_CA=$PG_DIR/cluster/tls/ca.pem
export BLUEGREEN_TEST_POSTGRES_URL BLUEGREEN_TEST_POSTGRES_CA
echo "test.sh: throwaway PostgreSQL at $BLUEGREEN_TEST_POSTGRES_URL"

# One build of every target. Building the binaries apart from the tests compiled the whole
# dependency tree twice (the tests' dev-dependencies turn on other features of tokio & co.).
mark=$SECONDS
cargo build --workspace --all-targets
build_s=$((SECONDS - mark))
# The integration binary's path (--workspace as above: with -p alone, cargo resolves features for
# that one package and compiles half the workspace again).
integration=$(cargo test --workspace --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "integration":
        print(m["executable"])')
[ -x "$integration" ] || { echo "test.sh: the integration test binary was not built" >&2; exit 1; }

status=0
unit_s=0
if (($# == 0)); then
    mark=$SECONDS
    cargo test --workspace --lib --bins --no-fail-fast || status=1
    cargo test --workspace --doc --no-fail-fast || status=1
    unit_s=$((SECONDS - mark))
fi

# libtest's per-test timer (--report-time) is still marked unstable; RUSTC_BOOTSTRAP lets the
# stable harness print it. It is set for this test binary's run only, never for a compiler.
log=$(mktemp /tmp/bluegreen-integration.XXXXXX.log)
mark=$SECONDS
RUSTC_BOOTSTRAP=1 "$integration" --test-threads="${BLUEGREEN_TEST_THREADS:-2}" \
    -Z unstable-options --report-time "$@" 2>&1 | tee "$log" || status=1
integration_s=$((SECONDS - mark))

# The per-suite time table: a slow suite (or a regression toward CI's time limit) shows in every log.
echo
echo "test.sh: per-suite times (seconds of test time, summed over each suite's tests; tests run $((${BLUEGREEN_TEST_THREADS:-2})) at a time)"
python3 - "$log" <<'EOF'
import re, sys, collections
suites = collections.defaultdict(lambda: [0.0, 0, 0, 0.0, ""])
for line in open(sys.argv[1], errors="replace"):
    m = re.match(r"test (\w+)::(\S+) \.\.\. (ok|FAILED|ignored)(?: <([0-9.]+)s>)?", line)
    if not m:
        continue
    suite, name, result, secs = m.group(1), m.group(2), m.group(3), float(m.group(4) or 0)
    s = suites[suite]
    s[0] += secs
    s[1] += 1
    s[2] += result == "FAILED"
    if secs > s[3]:
        s[3], s[4] = secs, name
print(f"{'suite':<14}{'tests':>6}{'failed':>7}{'seconds':>9}  longest test")
for suite, (secs, n, failed, longest, name) in sorted(suites.items(), key=lambda kv: -kv[1][0]):
    print(f"{suite:<14}{n:>6}{failed:>7}{secs:>9.1f}  {name} ({longest:.1f} s)")
print(f"{'all':<14}{sum(s[1] for s in suites.values()):>6}{sum(s[2] for s in suites.values()):>7}{sum(s[0] for s in suites.values()):>9.1f}")
EOF
echo "test.sh: wall clock: build ${build_s}s, unit tests ${unit_s}s, integration suites ${integration_s}s"

if (($# == 0)); then
    mark=$SECONDS
    PROFILE=dev BLUEGREEN_PACKAGES_PREBUILT=1 bash deploy/packages/build.sh || status=1
    bash deploy/packages/check.sh || status=1
    echo "test.sh: wall clock: packages $((SECONDS - mark))s"
fi
echo "test.sh: wall clock: everything $((SECONDS - started))s"
rm -f "$log"
exit $status
