#!/bin/bash
# Prints the daemon's resident memory (VmRSS and RssAnon, MiB) idle after
# start, just after a load, and after staging_release_seconds of quiet: the
# staging pool is resident only while loads use it (README, "Memory").
# During the first load it samples the daemon's memory outside the arena
# (VmRSS - RssShmem: anonymous and file pages; the arena is shared memory,
# and hugetlb pages are in neither) every 10 ms and prints the peak, with
# VmHWM.
#
#   daemon/bench/idle_memory.sh BIN_DIR CHECKPOINT [RELEASE_SECONDS]
#
# BIN_DIR holds warmstartd and warmstartctl; CHECKPOINT is a model file or
# directory; RELEASE_SECONDS defaults to 2 ("keep": not set). Host backend; everything lives in a fresh directory under /tmp
# and the daemon is stopped at the end.
set -euo pipefail
bin=${1:?usage: idle_memory.sh BIN_DIR CHECKPOINT [RELEASE_SECONDS]}
checkpoint=$(realpath "${2:?usage: idle_memory.sh BIN_DIR CHECKPOINT}")
release=${3:-2}
work=$(mktemp -d /tmp/ws-idle.XXXXXX)
daemon_pid=
cleanup() {
  if [[ -n $daemon_pid ]]; then
    kill "$daemon_pid" 2>/dev/null || true
    wait "$daemon_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
cat >"$work/config.textproto" <<CONFIG
listen { unix_socket: "$work/ws.sock" }
model_roots: "$(dirname "$checkpoint")"
backend: BACKEND_CHOICE_HOST
CONFIG
# "keep": leave the field out, for daemons from before it existed (they keep
# the pool resident from start).
if [[ $release == keep ]]; then
  release=2
else
  echo "staging_release_seconds: $release" >>"$work/config.textproto"
fi
"$bin/warmstartd" --config "$work/config.textproto" >"$work/log" 2>&1 &
daemon_pid=$!
ctl() { "$bin/warmstartctl" --socket "$work/ws.sock" "$@"; }
ctl wait-ready --timeout 60 >/dev/null
memory() {
  awk -v what="$1" '/^VmRSS:/ {rss = $2} /^RssAnon:/ {anon = $2}
    END {printf "%-28s VmRSS %6.1f MiB  RssAnon %6.1f MiB\n", what,
         rss / 1024, anon / 1024}' "/proc/$daemon_pid/status"
}
sleep 1
memory "idle after start"
# The highest VmRSS - RssShmem seen while `ctl load` runs, in KiB.
sample_peak() {
  local peak=0 now
  while [[ -e $work/loading ]]; do
    now=$(awk '/^VmRSS:/ {rss = $2} /^RssShmem:/ {shmem = $2}
      END {print rss - shmem}' "/proc/$daemon_pid/status")
    ((now > peak)) && peak=$now
    sleep 0.01
  done
  echo "$peak" >"$work/peak"
}
touch "$work/loading"
sample_peak &
sampler=$!
start=$(date +%s.%N)
if ! ctl load model "$checkpoint" >"$work/load.out" 2>&1; then
  rm "$work/loading"
  cat "$work/load.out" >&2
  exit 1
fi
rm "$work/loading"
echo "first load: $(du -b "$checkpoint" | cut -f1) bytes in" \
  "$(echo "$(date +%s.%N) - $start" | bc) s"
wait "$sampler"
awk -v peak="$(cat "$work/peak")" '/^VmHWM:/ {hwm = $2}
  END {printf "%-28s VmRSS-RssShmem %6.1f MiB  VmHWM %6.1f MiB\n",
       "peak during the first load", peak / 1024, hwm / 1024}' \
  "/proc/$daemon_pid/status"
memory "after one load"
ctl unload model >/dev/null
sleep $((release + 2))
memory "idle ${release}+2 s after it"
ctl load model "$checkpoint" >/dev/null 2>&1
memory "after a second load"
ctl unload model >/dev/null
