#!/usr/bin/env bash
# Install hcm-twisted with its test extras into ./.venv (once) and run the whole
# test suite with trial.  The last line printed is "N passed, M failed".
#
#   bash scripts/test.sh            # everything
#   bash scripts/test.sh tests.core # a part
set -u
cd "$(dirname "$0")/.."
root=$(pwd)
venv=${HCM_VENV:-$root/.venv}
py=${PYTHON:-python3}

if [ ! -x "$venv/bin/python" ]; then
  "$py" -m venv "$venv" || { echo "0 passed, 1 failed"; exit 1; }
fi
if [ -z "${HCM_SKIP_INSTALL:-}" ]; then
  "$venv/bin/pip" install -q --disable-pip-version-check ".[test]" >/dev/null ||
    { echo "pip install failed"; echo "0 passed, 1 failed"; exit 1; }
fi
# Microsoft's Node clients for the interop tests (from the committed lockfile; without node
# or node_modules the interop tests fail, naming what is missing).
if [ -f tests/interop/package.json ] && command -v npm >/dev/null 2>&1 && [ ! -d tests/interop/node_modules ]; then
  (cd tests/interop && npm ci --no-audit --no-fund --silent >/dev/null 2>&1) ||
    echo "warning: npm ci in tests/interop failed"
fi

export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export HCM_TEST_PYTHON="$venv/bin/python"
jobs=${HCM_TEST_JOBS:-2}
log=$(mktemp)
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(tests)
"$venv/bin/python" -m twisted.trial --temp-directory="${TMPDIR:-/tmp}/hcm_trial_$$" -j"$jobs" "${targets[@]}" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}

# trial ends with "PASSED (successes=N)" or "FAILED (failures=A, errors=B, successes=N, ...)".
summary=$(grep -E '^(PASSED|FAILED) \(' "$log" | tail -n 1)
num() { echo "$summary" | grep -oE "$1=[0-9]+" | cut -d= -f2 | head -n 1; }
passed=$(num successes); failures=$(num failures); errors=$(num errors); unexpected=$(num unexpectedSuccesses)
skips=$(num skips)
passed=${passed:-0}; failed=$(( ${failures:-0} + ${errors:-0} + ${unexpected:-0} ))
if [ -z "$summary" ] || { [ "$rc" -ne 0 ] && [ "$failed" -eq 0 ]; }; then failed=$(( failed + 1 )); fi
rm -f "$log"
echo "${passed} passed, ${failed} failed, ${skips:-0} skipped"
[ "$failed" -eq 0 ]
