#!/usr/bin/env bash
# Replays the real fixtures matching a glob, and any further files given,
# through one fuzz target.
# Usage: replay_test.sh FUZZER GLOB [FILE...]  (GLOB relative to
# tests/testdata)
set -euo pipefail
fuzzer="$1"
pattern="$2"
fixtures="$TEST_SRCDIR/$TEST_WORKSPACE/tests/testdata"
[ -d "$fixtures" ] || { echo "fixtures not found at $fixtures" >&2; exit 1; }
shopt -s nullglob globstar
inputs=("$fixtures"/$pattern "${@:3}")
[ ${#inputs[@]} -gt 0 ] || { echo "no fixtures match $pattern" >&2; exit 1; }
"$fuzzer" "${inputs[@]}"
