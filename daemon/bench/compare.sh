#!/bin/bash
# The whole comparison in one run: `warmstartctl bench` (the daemon's load
# path, cold and warm, against O_DIRECT and page-cache baselines), then,
# alternating round by round, fio's many O_DIRECT streams and each installed
# peer cold and warm on the same file; medians printed at the end.
# usage: compare.sh WARMSTARTCTL FILE [ROUNDS] [PYTHON]
set -euo pipefail
ctl=$1; file=$2; rounds=${3:-5}; py=${4:-python3}
here=$(cd "$(dirname "$0")" && pwd)
out=$(mktemp)
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
"$ctl" bench "$file" --runs "$rounds" 2>&1 | grep -v warning
for r in $(seq "$rounds"); do
  for t in fio runai runai_buffered safetensors; do
    "$py" "$here/peers.py" $t "$file" cold >> "$out"
  done
  for t in runai runai_buffered safetensors; do
    "$py" "$here/peers.py" $t "$file" warm >> "$out"
  done
done
"$py" - "$out" <<'P'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
for key in sorted({(r["tool"], r["mode"]) for r in rows}):
    runs = [r for r in rows if (r["tool"], r["mode"]) == key]
    g = [r["gbps"] for r in runs]
    v = {r.get("verified") for r in runs}
    print(f"{key[1]:5} {key[0]:15} {statistics.median(g):.3f} GB/s median of "
          f"{len(g)} ({' '.join(f'{x:.2f}' for x in g)}) verified={v}")
P
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
rm -f "$out"
