#!/usr/bin/env bash
# Runs every integration suite three times in a row (not part of CI, about three times the
# integration suites' share of deploy/test.sh): a test that fails in one run of three is flaky,
# and a flaky test is a bug to find. Prints each run's result and the per-suite table of each;
# exit 0 only when all three passed. `deploy/test-thrice.sh canary::` repeats one suite.
set -uo pipefail
cd "$(dirname "$0")/.."
filter=("${@:-::}")
passed=0
for run in 1 2 3; do
    echo "test-thrice: run $run of 3"
    if bash deploy/test.sh "${filter[@]}"; then
        passed=$((passed + 1))
        echo "test-thrice: run $run passed"
    else
        echo "test-thrice: run $run FAILED"
    fi
done
echo "test-thrice: $passed of 3 runs passed"
((passed == 3))
