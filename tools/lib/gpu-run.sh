#!/usr/bin/env bash
# The GPU half of tools/gpu-check: runs inside the bundle on the GPU machine.
# Prints the GPU test results and the bench figures; copies them to $OUT
# when set. Exits non-zero when a test fails.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export WARMSTART_FIXTURES="$here/fixtures"
# cuda_import_gpu_test starts this daemon and maps its model on the GPU.
export WARMSTART_DAEMON="$here/bin/warmstartd"
out="${OUT:-$(mktemp -d)}"
mkdir -p "$out"
status=0

nvidia-smi --query-gpu=name,uuid,driver_version,memory.total --format=csv \
    2>&1 | tee "$out/gpu.txt"
for test in "$here"/tests/*; do
  name="$(basename "$test")"
  echo "== $name"
  "$test" --gtest_output="xml:$out/$name.xml" >"$out/$name.log" 2>&1 ||
      status=1
  grep -E '^\[ +(OK|FAILED|SKIPPED|PASSED) +\]' "$out/$name.log"
done

work="$(mktemp -d /tmp/ws-gpu-XXXXXX)"
trap 'rm -rf "$work"' EXIT

# The runfiles layout harness.py expects: the bundle's Python half and its
# binaries.
runfiles="$work/runfiles"
mkdir -p "$runfiles/tools/warmstartctl"
ln -s "$here/py/client" "$here/py/tests" "$here/py/tools" "$runfiles/"
ln -s "$here/bin/warmstartd" "$runfiles/daemon/warmstartd"
ln -s "$here/bin/warmstartctl" "$runfiles/tools/warmstartctl/warmstartctl"
# python3 and torch there are built for that machine's system libraries:
# the bundle's copies of those (older, from Debian) must not shadow them in
# the Python processes; libwarmstart.so takes the system's (newer, same
# sonames) and the bundle's others (gRPC, absl, ...).
pylib="$work/pylib"
mkdir -p "$pylib"
for library in "$here"/lib/*; do
  case "$(basename "$library")" in
    libstdc++.so.*|libgcc_s.so.*|libz.so.*|libffi.so.*|liblzma.so.*) ;;
    libzstd.so.*|libssl.so.*|libcrypto.so.*|libresolv.so.*) ;;
    *) ln -s "$library" "$pylib/" ;;
  esac
done
echo "== warmstart.torch on the GPU (tests/torch_gpu_test.py, $(
    LD_LIBRARY_PATH="$pylib" python3 -c \
    'import torch; print("torch", torch.__version__)' 2>&1))"
if (cd "$runfiles" && LD_LIBRARY_PATH="$pylib" \
    WARMSTART_RUNFILES="$runfiles" PYTHONUNBUFFERED=1 \
    python3 -m pytest -q -rs -p no:cacheprovider tests/torch_gpu_test.py) \
    >"$out/torch_gpu_test.log" 2>&1; then
  tail -n 3 "$out/torch_gpu_test.log"
else
  tail -n 40 "$out/torch_gpu_test.log"
  status=1
fi
echo "== host -> GPU copy: pageable vs registered read-only (2 GB, 5 runs)"
LD_LIBRARY_PATH="$pylib" PYTHONUNBUFFERED=1 \
    python3 "$here/py/tools/torch_gpu_copy_bench.py" --bytes 2G --runs 5 \
    --daemon "$here/bin/warmstartd" \
    --library "$here/py/client/libwarmstart.so" \
    --gen "$here/bin/gen_checkpoint" --package "$here/py/client/python" \
    2>&1 | tee "$out/torch_gpu_copy_bench.txt" || status=1

echo "== warmstartd on this machine: start, wait-ready, info, SIGTERM"
"$here/bin/warmstartd" --socket "$work/d.sock" 2> "$out/warmstartd.log" &
daemon=$!
if "$here/bin/warmstartctl" wait-ready --socket "$work/d.sock" --timeout 30 &&
   "$here/bin/warmstartctl" info --socket "$work/d.sock" | tee "$out/info.txt"
then
  kill -TERM "$daemon"
  wait "$daemon" || { echo "warmstartd did not exit cleanly" >&2; status=1; }
else
  kill -KILL "$daemon" 2>/dev/null
  status=1
fi
echo "== generating a 4 GB checkpoint"
checkpoint="$("$here/bin/gen_checkpoint" --out "$work/ckpt" --bytes 4G \
    --shards 4 --max_tensor 512MiB)"
echo "== warmstartctl bench --backend cuda (4 GB, 3 runs per mode)"
# One run (device time is scarce): per-run lines go to stderr, the figures
# to bench.json. io_uring may be blocked there; pread is the fallback.
for io in uring pread; do
  if "$here/bin/warmstartctl" bench "$checkpoint" --backend cuda --runs 3 \
      --io "$io" --json 2> >(tee "$out/bench-$io.log" >&2) \
      > "$out/bench.json"; then
    break
  fi
  [ "$io" = pread ] && status=1
done
cat "$out/bench.json"
exit $status
