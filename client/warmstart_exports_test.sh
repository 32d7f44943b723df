#!/usr/bin/env bash
# Fails when libwarmstart.so exports a symbol other than warmstart_*
# (the version script warmstart.lds keeps everything else local), or lacks
# one of the functions of warmstart.h.
# Usage: warmstart_exports_test.sh LIBWARMSTART_SO
set -euo pipefail
library="$1"
exported="$(nm -D --defined-only "$library" | awk '{print $NF}' | sort)"
# The version node the script defines may appear as an absolute symbol on
# some linkers; nothing else is allowed.
unexpected="$(grep -v -E '^warmstart_' <<<"$exported" || true)"
if [ -n "$unexpected" ]; then
  echo "libwarmstart.so exports symbols other than warmstart_*:" >&2
  echo "$unexpected" | head -50 >&2
  exit 1
fi
for symbol in warmstart_version warmstart_free warmstart_connect \
    warmstart_client_destroy warmstart_load warmstart_unload \
    warmstart_status_json warmstart_acquire warmstart_release \
    warmstart_model_destroy warmstart_model_name warmstart_model_lease_id \
    warmstart_model_tensor_count warmstart_model_tensor \
    warmstart_model_tensor_role warmstart_model_metadata_json \
    warmstart_model_tensor_table; do
  if ! grep -qx "$symbol" <<<"$exported"; then
    echo "libwarmstart.so does not export $symbol" >&2
    exit 1
  fi
done
echo "libwarmstart.so exports $(wc -l <<<"$exported") symbols, all warmstart_*"
