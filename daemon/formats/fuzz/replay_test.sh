#!/usr/bin/env bash
# Replays the shared fixtures matching a glob, and any further files given,
# through one fuzz target.
# Usage: replay_test.sh FUZZER GLOB [FILE...]  (GLOB relative to
# shared/fixtures)
set -euo pipefail
fuzzer="$1"
pattern="$2"
fixtures=""
for candidate in "$TEST_SRCDIR/shared/fixtures" \
                 "$TEST_SRCDIR/$TEST_WORKSPACE/external/shared/fixtures"; do
  [ -d "$candidate" ] && fixtures="$candidate" && break
done
[ -n "$fixtures" ] || { echo "fixtures not found in runfiles" >&2; exit 1; }
shopt -s nullglob globstar
inputs=("$fixtures"/$pattern "${@:3}")
[ ${#inputs[@]} -gt 0 ] || { echo "no fixtures match $pattern" >&2; exit 1; }
"$fuzzer" "${inputs[@]}"
