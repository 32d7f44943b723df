"""Fresh-process attach benchmark of the Python client.

Each run starts a fresh Python process that imports warmstart and torch,
connects, and times three steps on a model already loaded in a running
daemon: the C library's acquire alone (warmstart_acquire, the RPC, its reply
and the mappings; the second of two, so that the connection is warm), the
Python `Client.acquire` (the same plus building the Python tables), and
`Model.to_torch()`. Clients given as LABEL=PYTHONPATH alternate run by run;
medians, and each one's ratio to the first.

With --touch, each process then also reads one byte of every 4 KiB page of
the model's host mappings (the daemon's memfds, found in /proc/self/maps),
as a worker's first pass over its weights does, and reports that time and
how much of the mappings the kernel mapped with 2 MiB page-table entries
(ShmemPmdMapped + FilePmdMapped + Shared_Hugetlb in /proc/self/smaps_rollup,
read after the timed pass): 4 KiB arena pages cost one page fault each,
2 MiB ones (hugetlb or shmem transparent huge pages, see README "Huge
pages") one per 2 MiB.

  python tools/attach_bench.py --socket /tmp/ws/ws.sock --model many \
      --client before=/tmp/before/py --client after=client/python --runs 7

A PYTHONPATH's warmstart package finds its libwarmstart.so as usual
(next to the package, or WARMSTART_LIBRARY for that client: give
LABEL=PYTHONPATH:LIBRARY).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r"""
import ctypes, json, sys, time
import torch
import warmstart
from warmstart import _lib
socket, name = sys.argv[1], sys.argv[2]
client = warmstart.connect(socket)
lib = _lib.LIB
handle = client._h()
c_seconds = None
for _ in range(2):
    model = ctypes.c_void_p()
    start = time.perf_counter()
    code = lib.warmstart_acquire(handle, name.encode(), 60.0,
                                 ctypes.byref(model), None)
    c_seconds = time.perf_counter() - start
    assert code == 0, code
    lib.warmstart_model_destroy(model)
start = time.perf_counter()
model = client.acquire(name)
acquired = time.perf_counter()
tensors = model.to_torch()
done = time.perf_counter()
assert len(tensors) == len(model.tensors)
result = {"c_acquire": c_seconds, "acquire": acquired - start,
          "to_torch": done - acquired, "attach": done - start,
          "tensors": len(tensors)}
if sys.argv[3] == "touch":
    import numpy
    spans = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            if "/memfd:warmstart:" in line:
                begin, end = (int(x, 16) for x in line.split()[0].split("-"))
                spans.append((begin, end - begin))
    assert spans, "no warmstart memfd mapped"
    views = [numpy.frombuffer((ctypes.c_char * size).from_address(begin),
                              dtype=numpy.uint8)[::4096]
             for begin, size in spans]
    start = time.perf_counter()
    for view in views:
        view.sum()
    result["touch"] = time.perf_counter() - start
    result["touched_mib"] = sum(size for _, size in spans) / 2**20
    pmd = 0
    with open("/proc/self/smaps_rollup") as rollup:
        for line in rollup:
            if line.startswith(("ShmemPmdMapped:", "FilePmdMapped:",
                                "Shared_Hugetlb:")):
                pmd += int(line.split()[1])
    result["pmd_mapped_mib"] = pmd / 1024
print(json.dumps(result))
model.release()
"""


def run_child(python, pythonpath, library, socket, model, touch):
    env = dict(os.environ, PYTHONPATH=pythonpath)
    if library:
        env["WARMSTART_LIBRARY"] = library
    else:
        env.pop("WARMSTART_LIBRARY", None)
    out = subprocess.run([python, "-c", CHILD, socket, model,
                          "touch" if touch else "-"], env=env,
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--client", action="append", required=True,
                        help="LABEL=PYTHONPATH[:LIBRARY]; repeatable")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--touch", action="store_true",
                        help="also time reading every 4 KiB page of the "
                        "model's host mappings")
    args = parser.parse_args()
    clients = []
    for spec in args.client:
        label, _, rest = spec.partition("=")
        path, _, library = rest.partition(":")
        clients.append((label, os.path.abspath(path), library))
    samples = {label: [] for label, _, _ in clients}
    for _ in range(args.runs):
        for label, path, library in clients:
            samples[label].append(run_child(args.python, path, library,
                                            args.socket, args.model,
                                            args.touch))
    steps = ("c_acquire", "acquire", "to_torch", "attach")
    if args.touch:
        steps += ("touch",)
    first = None
    print(f"{args.runs} fresh processes each, alternating; medians in ms; "
          f"{samples[clients[0][0]][0]['tensors']} tensors")
    print(f"{'client':<10}" + "".join(f"{s:>11}" for s in steps) +
          "   attach ratio")
    for label, _, _ in clients:
        medians = {s: statistics.median(r[s] for r in samples[label]) * 1e3
                   for s in steps}
        first = first or medians
        print(f"{label:<10}" + "".join(f"{medians[s]:>11.1f}" for s in steps)
              + f"   {first['attach'] / medians['attach']:.2f}x")
    if args.touch:
        for label, _, _ in clients:
            runs = samples[label]
            print(f"{label}: touched {runs[0]['touched_mib']:.0f} MiB, "
                  f"{min(r['pmd_mapped_mib'] for r in runs):.0f} MiB of it "
                  f"mapped with 2 MiB entries (fewest over the runs); touch "
                  f"ms per run: "
                  + " ".join(f"{r['touch'] * 1e3:.1f}" for r in runs))


if __name__ == "__main__":
    main()
