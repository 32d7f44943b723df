#!/usr/bin/env bash
# Runs one pytest file under Bazel with Debian's python3 (numpy, torch), or
# the venv of reference writers that tools/test makes ($WARMSTART_VENV).
# Usage: pytest_runner.sh TEST.py [WARMSTARTCTL]
#   WARMSTARTCTL (optional) is exported as $WARMSTART_CTL; the real
#   fixtures (tests/testdata), when in the runfiles, as $WARMSTART_FIXTURES;
#   the runfiles root as $WARMSTART_RUNFILES.
set -euo pipefail
test_file="$1"
if [ $# -ge 2 ]; then
  export WARMSTART_CTL="$PWD/$2"
fi
# The runfiles tree, where tests find the other binaries they start.
export WARMSTART_RUNFILES="$PWD"
if [ -d "$PWD/tests/testdata" ]; then
  export WARMSTART_FIXTURES="$PWD/tests/testdata"
fi
python=/usr/bin/python3
if [ -n "${WARMSTART_VENV:-}" ] && [ -x "$WARMSTART_VENV/bin/python3" ]; then
  python="$WARMSTART_VENV/bin/python3"
fi
# Targets that run under torch 2.x (WARMSTART_TORCH=2 in their env) need
# the venv WARMSTART_TORCH2=1 tools/test makes.
if [ "${WARMSTART_TORCH:-}" = 2 ]; then
  if [ -z "${WARMSTART_VENV_TORCH2:-}" ] ||
      [ ! -x "$WARMSTART_VENV_TORCH2/bin/python3" ]; then
    echo "this test runs under torch 2.x: set WARMSTART_VENV_TORCH2 to the" \
        "venv that 'WARMSTART_TORCH2=1 tools/test' makes (.venv-torch2)" >&2
    exit 1
  fi
  python="$WARMSTART_VENV_TORCH2/bin/python3"
fi
exec "$python" -m pytest -q -p no:cacheprovider \
    --junitxml="${XML_OUTPUT_FILE:-/dev/null}" "$test_file"
