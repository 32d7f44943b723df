#!/usr/bin/env bash
# Runs one pytest file under Bazel with Debian's python3 (numpy, torch), or
# the venv of reference writers that tools/test makes ($WARMSTART_VENV).
# Usage: pytest_runner.sh TEST.py [WARMSTARTCTL]
#   WARMSTARTCTL (optional) is exported as $WARMSTART_CTL; the shared
#   fixtures, when in the runfiles, as $WARMSTART_FIXTURES; the runfiles
#   root as $WARMSTART_RUNFILES.
set -euo pipefail
test_file="$1"
if [ $# -ge 2 ]; then
  export WARMSTART_CTL="$PWD/$2"
fi
# The runfiles tree, where tests find the other binaries they start.
export WARMSTART_RUNFILES="$PWD"
for candidate in "${TEST_SRCDIR:-}/shared/fixtures" \
                 "${TEST_SRCDIR:-}/${TEST_WORKSPACE:-}/external/shared/fixtures"; do
  if [ -d "$candidate" ]; then
    export WARMSTART_FIXTURES="$candidate"
    break
  fi
done
python=/usr/bin/python3
if [ -n "${WARMSTART_VENV:-}" ] && [ -x "$WARMSTART_VENV/bin/python3" ]; then
  python="$WARMSTART_VENV/bin/python3"
fi
exec "$python" -m pytest -q -p no:cacheprovider \
    --junitxml="${XML_OUTPUT_FILE:-/dev/null}" "$test_file"
