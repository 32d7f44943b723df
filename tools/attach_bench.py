"""Fresh-process attach benchmark of the Python client.

Each run starts a fresh Python process that imports torch and warmstart,
connects, and times, on a model already loaded in a running daemon:
  - start-up, reported apart and not part of attach: the interpreter (spawn
    to the child's first line), `import torch`, `import warmstart`,
    `warmstart.connect`;
  - attach: the process's first `Client.acquire` (the RPC, its reply, the
    mappings, the Python tables; the session's handle socket opens here)
    plus `Model.to_torch()`, i.e. from a connected client to every tensor
    usable as a torch tensor;
  - touch: one read of every 4 KiB page of the weights through the memory
    the torch tensors view, and how much of the process's memory the
    kernel mapped with 2 MiB entries (hugetlb or shmem transparent huge
    pages: README "Huge pages");
  - c_acquire: the C library's warmstart_acquire alone (the second of two,
    on the warm session), and attach_warm: the Python attach again, warm;
  - with --daemon-pid: the daemon's CPU time (utime + stime of
    /proc/PID/stat, 10 ms ticks) over 100 more C acquires and releases,
    summed over the runs and reported per acquire + release.
Clients given as LABEL=PYTHONPATH alternate run by run; medians, the load
average, and each one's attach ratio to the first.

  python tools/attach_bench.py --write-model /tmp/ws/models/many.safetensors
  warmstartd --socket /tmp/ws/ws.sock --model_root /tmp/ws/models \
      --backend host --preload many=/tmp/ws/models/many.safetensors &
  python tools/attach_bench.py --socket /tmp/ws/ws.sock --model many \
      --client before=/tmp/before/py --client after=client/python --runs 9

--write-model writes the model of issue 17's figure: 5,000 F16 tensors of
128 x 256 (64 KiB each), "model.layers.N.weight", with safetensors' own
writer. A PYTHONPATH's warmstart package finds its libwarmstart.so as usual
(next to the package, or WARMSTART_LIBRARY for that client: give
LABEL=PYTHONPATH:LIBRARY).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

CHILD = r"""
import time
started = time.monotonic()
import ctypes, json, os, sys
import numpy
import torch
imported_torch = time.monotonic()
import warmstart
from warmstart import _lib
imported = time.monotonic()
socket, name, daemon_pid = sys.argv[1], sys.argv[2], int(sys.argv[3])
client = warmstart.connect(socket)
connected = time.monotonic()

def attach():
    start = time.perf_counter()
    model = client.acquire(name)
    acquired = time.perf_counter()
    tensors = model.to_torch()
    done = time.perf_counter()
    assert len(tensors) == len(model.tensors)
    return model, tensors, acquired - start, done - acquired

# The first attach of this process: what a fresh worker pays once connected
# (the session's handle socket opens here).
model, tensors, acquire, to_torch = attach()
# Every 4 KiB page of the weights read once, through the torch tensors'
# memory (one strided read over the span they view).
span, _ = model.tensors._host_span(torch)
start = time.perf_counter()
if span is not None:
    int(span[::4096].sum())
touch = time.perf_counter() - start
touched_bytes = 0 if span is None else span.numel()
# How much of the process's memory the kernel mapped with 2 MiB page-table
# entries (hugetlb or shmem transparent huge pages: README "Huge pages"):
# 4 KiB arena pages cost the touch one fault each, 2 MiB ones one per 2 MiB.
pmd_mapped = 0
with open("/proc/self/smaps_rollup") as rollup:
    for line in rollup:
        if line.startswith(("ShmemPmdMapped:", "FilePmdMapped:",
                            "Shared_Hugetlb:")):
            pmd_mapped += int(line.split()[1]) * 1024
del tensors, span
model.release()
# The C library's acquire alone (the RPC, its reply, the mappings): the
# second of two, on the warm session.
lib = _lib.LIB
handle = client._h()
c_seconds = None
for _ in range(2):
    handle_model = ctypes.c_void_p()
    start = time.perf_counter()
    code = lib.warmstart_acquire(handle, name.encode(), 60.0,
                                 ctypes.byref(handle_model), None)
    c_seconds = time.perf_counter() - start
    assert code == 0, code
    lib.warmstart_model_destroy(handle_model)

def daemon_ticks():
    with open(f"/proc/{daemon_pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime

# The daemon's CPU time for acquires and releases on a warm session.
daemon_cycles = daemon_ticks_used = 0
if daemon_pid:
    before = daemon_ticks()
    for _ in range(100):
        handle_model = ctypes.c_void_p()
        code = lib.warmstart_acquire(handle, name.encode(), 60.0,
                                     ctypes.byref(handle_model), None)
        assert code == 0, code
        lib.warmstart_model_destroy(handle_model)  # Releases the lease.
    daemon_ticks_used = daemon_ticks() - before
    daemon_cycles = 100
# The Python attach again, warm (as the C figure).
warm_model, warm_tensors, warm_acquire, warm_to_torch = attach()
print(json.dumps({
    "started": started, "import_torch": imported_torch - started,
    "import_warmstart": imported - imported_torch,
    "connect": connected - imported,
    "acquire": acquire, "to_torch": to_torch, "attach": acquire + to_torch,
    "c_acquire": c_seconds, "attach_warm": warm_acquire + warm_to_torch,
    "touch": touch, "touched_bytes": touched_bytes,
    "pmd_mapped_bytes": pmd_mapped,
    "daemon_seconds": daemon_ticks_used / os.sysconf("SC_CLK_TCK"),
    "daemon_cycles": daemon_cycles,
    "tensors": len(warm_tensors)}))
"""


def run_child(python, pythonpath, library, socket, model, daemon_pid):
    env = dict(os.environ, PYTHONPATH=pythonpath)
    if library:
        env["WARMSTART_LIBRARY"] = library
    else:
        env.pop("WARMSTART_LIBRARY", None)
    spawned = time.monotonic()
    out = subprocess.run([python, "-c", CHILD, socket, model,
                          str(daemon_pid or 0)], env=env,
                         check=True, capture_output=True, text=True).stdout
    sample = json.loads(out.strip().splitlines()[-1])
    # CLOCK_MONOTONIC is the machine's: the child's reading compares.
    sample["interpreter"] = sample.pop("started") - spawned
    return sample


def write_model(path, count=5000):
    import numpy
    from safetensors.numpy import save_file
    save_file({f"model.layers.{i}.weight":
               numpy.full((128, 256), i % 100, dtype=numpy.float16)
               for i in range(count)}, path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write-model", metavar="PATH",
                        help="write the 5,000-tensor safetensors model to "
                        "PATH and exit")
    parser.add_argument("--socket")
    parser.add_argument("--model")
    parser.add_argument("--client", action="append",
                        help="LABEL=PYTHONPATH[:LIBRARY]; repeatable")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--daemon-pid", type=int,
                        help="the daemon's pid: also report its CPU time "
                        "per acquire + release")
    args = parser.parse_args()
    if args.write_model:
        write_model(args.write_model)
        return
    if not (args.socket and args.model and args.client):
        parser.error("--socket, --model and --client are required")
    clients = []
    for spec in args.client:
        label, _, rest = spec.partition("=")
        path, _, library = rest.partition(":")
        clients.append((label, os.path.abspath(path), library))
    samples = {label: [] for label, _, _ in clients}
    load_before = os.getloadavg()
    for _ in range(args.runs):
        for label, path, library in clients:
            samples[label].append(run_child(args.python, path, library,
                                            args.socket, args.model,
                                            args.daemon_pid))
    load_after = os.getloadavg()
    first = samples[clients[0][0]][0]
    print(f"{args.runs} fresh processes each, alternating; medians in ms; "
          f"{first['tensors']} tensors; load average "
          f"{load_before[0]:.1f} before, {load_after[0]:.1f} after")
    print("Start-up, not part of attach: interpreter = spawn to the child's "
          "first line; import torch; import warmstart; connect.")
    print("attach = acquire + to_torch, the process's first (its session "
          "opens in it); attach_warm = the same again; c_acquire = "
          "warmstart_acquire alone, warm; touch = read every 4 KiB page "
          f"({first['touched_bytes'] / 1e6:.0f} MB).")
    steps = ("interpreter", "import_torch", "import_warmstart", "connect",
             "acquire", "to_torch", "attach", "attach_warm", "c_acquire",
             "touch")
    first_medians = None
    print(f"{'client':<10}" + "".join(f"{s[:12]:>13}" for s in steps) +
          "  attach ratio")
    for label, _, _ in clients:
        medians = {s: statistics.median(r[s] for r in samples[label]) * 1e3
                   for s in steps}
        first_medians = first_medians or medians
        print(f"{label:<10}" + "".join(f"{medians[s]:>13.1f}" for s in steps)
              + f"  {first_medians['attach'] / medians['attach']:.2f}x")
    for label, _, _ in clients:
        runs = samples[label]
        print(f"{label}: touched {runs[0]['touched_bytes'] / 2**20:.0f} MiB; "
              f"{min(r['pmd_mapped_bytes'] for r in runs) / 2**20:.0f} MiB "
              "mapped with 2 MiB entries (fewest over the runs); touch ms "
              "per run: " + " ".join(f"{r['touch'] * 1e3:.1f}" for r in runs))
    if args.daemon_pid:
        first_cpu = None
        for label, _, _ in clients:
            runs = samples[label]
            cycles = sum(r["daemon_cycles"] for r in runs)
            cpu = sum(r["daemon_seconds"] for r in runs) / cycles * 1e3
            first_cpu = first_cpu or cpu
            print(f"{label}: daemon CPU per C acquire + release "
                  f"{cpu:.2f} ms ({cycles} of them, all runs; "
                  f"{cpu / first_cpu:.2f}x the first client's)")


if __name__ == "__main__":
    main()
