#!/bin/bash
# Load and first-touch figures under each host page setting, in one run
# (README, "Huge pages"):
#   4k           shmem_enabled never,       vm.nr_hugepages 0
#   thp_advise   shmem_enabled advise,      vm.nr_hugepages 0
#   thp_within   shmem_enabled within_size, vm.nr_hugepages 0
#   hugetlb      shmem_enabled never,       vm.nr_hugepages = 1.25 x the arena
# For each: `warmstartctl bench --no-peers` (the daemon's own load path,
# cold and warm, with its baselines and CPU s/GB), then a warmstartd with the
# host backend loads the checkpoint and tools/attach_bench.py times
# fresh Python workers reading every 4 KiB page of it.
#
# It changes host settings (root only) and puts the previous values back on
# exit, whatever happens; it prints each value it sets.
#
#   daemon/bench/host_pages.sh BIN_DIR CHECKPOINT [RUNS] [PYTHON] [LIBRARY]
#
# Environment: SETTINGS picks settings from the list above (default: all
# four, in that order); BENCH_FLAGS replaces `--no-peers` (give "" to run
# the installed peers, fio and Run:ai's streamer among them, in the same
# runs).
#
# BIN_DIR holds warmstartd and warmstartctl (build them with -c opt);
# CHECKPOINT is a model file or directory; RUNS defaults to 5; PYTHON (the
# test venv's) has numpy and torch; LIBRARY is libwarmstart.so for
# client/python. Run from the repository root.
set -euo pipefail
usage="usage: host_pages.sh BIN_DIR CHECKPOINT [RUNS] [PYTHON] [LIBRARY]"
bin=${1:?$usage}
checkpoint=$(realpath "${2:?$usage}")
runs=${3:-5}
python=${4:-python3}
library=${5:-bazel-bin/client/libwarmstart.so}
thp=/sys/kernel/mm/transparent_hugepage/shmem_enabled
nr=/proc/sys/vm/nr_hugepages
old_thp=$(sed -n 's/.*\[\(.*\)\].*/\1/p' "$thp")
old_nr=$(cat "$nr")
work=$(mktemp -d /tmp/ws-pages.XXXXXX)
daemon_pid=
stop_daemon() {
  if [[ -n $daemon_pid ]]; then
    kill "$daemon_pid" 2>/dev/null || true
    wait "$daemon_pid" 2>/dev/null || true
    daemon_pid=
  fi
}
restore() {
  stop_daemon
  echo "$old_thp" >"$thp"
  echo "$old_nr" >"$nr"
  echo "restored: $thp = $(cat "$thp"), vm.nr_hugepages = $(cat "$nr")"
  rm -rf "$work"
}
trap restore EXIT
set_pages() {  # SHMEM_ENABLED NR_HUGEPAGES
  echo "$1" >"$thp"
  echo "$2" >"$nr"
  echo "set: $thp = $1, vm.nr_hugepages = $2 (got $(cat "$nr"))"
}

bytes=$(du -sb "$checkpoint" | cut -f1)
# The arena and a quarter more: other processes on the machine may take
# some (a load that finds too few falls back, and bench says so).
huge_pages=$(((bytes >> 21) * 5 / 4 + 32))
cat >"$work/config.textproto" <<CONFIG
listen { unix_socket: "$work/ws.sock" }
model_roots: "$(dirname "$checkpoint")"
backend: BACKEND_CHOICE_HOST
CONFIG
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB," \
  "$(uname -r); load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for setting in ${SETTINGS:-4k thp_advise thp_within hugetlb}; do
  echo "== $setting"
  case $setting in
    4k) set_pages never 0 ;;
    thp_advise) set_pages advise 0 ;;
    thp_within) set_pages within_size 0 ;;
    hugetlb) set_pages never "$huge_pages" ;;
    *)
      echo "unknown setting \"$setting\" in SETTINGS" >&2
      exit 2
      ;;
  esac
  if [[ $setting != 4k ]]; then
    # Pages just set aside may never have been touched since boot; in a
    # virtual machine their first touch costs the host's fault too (the
    # first load after reserving ran at 0.4 GB/s and 2.4 CPU s/GB here).
    echo "warm-up load (untimed): touches the pages set aside once"
    "$bin/warmstartctl" bench "$checkpoint" --runs 1 --no-peers >/dev/null 2>&1
  fi
  # shellcheck disable=SC2086  # BENCH_FLAGS is a list of flags.
  "$bin/warmstartctl" bench "$checkpoint" --runs "$runs" \
    ${BENCH_FLAGS---no-peers} 2>&1 | grep -v -e warning -e Warning -e dsa\\.
  "$bin/warmstartd" --config "$work/config.textproto" >"$work/log" 2>&1 &
  daemon_pid=$!
  ctl() { "$bin/warmstartctl" --socket "$work/ws.sock" "$@"; }
  ctl wait-ready --timeout 60 >/dev/null
  grep -o 'host arenas: .*' "$work/log" || true
  ctl load model "$checkpoint" >/dev/null 2>&1
  "$python" tools/attach_bench.py --socket "$work/ws.sock" --model model \
    --client "$setting=client/python:$(realpath "$library")" \
    --runs "$runs"
  ctl unload model >/dev/null
  stop_daemon
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
