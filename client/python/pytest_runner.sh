#!/usr/bin/env bash
# Runs a pytest file of the Python package through tools/pytest_runner.sh.
# Under --config=asan, libwarmstart.so expects the sanitizer runtime in the
# executable, and python is not instrumented: python gets the runtime by
# LD_PRELOAD (and no leak check: the interpreter never frees everything).
# Tests give the daemon and warmstartctl, which carry their own runtime,
# the environment without it: $WARMSTART_TEST_ASAN_OPTIONS holds the
# original ASAN_OPTIONS.
# Usage: pytest_runner.sh TOOLS_PYTEST_RUNNER LIBWARMSTART_SO TEST.py [ARGS]
set -euo pipefail
runner="$1"
library="$2"
shift 2
# (Not piped into grep -q: with pipefail, nm's SIGPIPE would fail the test.)
undefined="$(nm -D --undefined-only "$library")"
if [[ "$undefined" == *__asan_init* ]]; then
  runtime="$(ls /usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.asan-x86_64.so \
      2>/dev/null | tail -n 1)"
  if [ -z "$runtime" ]; then
    echo "libwarmstart.so needs the ASan runtime, which is not installed" >&2
    exit 1
  fi
  export WARMSTART_TEST_ASAN_OPTIONS="${ASAN_OPTIONS:-}"
  export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1"
  export LD_PRELOAD="$runtime"
fi
exec "$runner" "$@"
