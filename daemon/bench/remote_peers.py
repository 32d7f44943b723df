"""warmstart's S3 reads against its peers' on loopback, in one run.

Starts moto's S3 server (PyPI, from this Python's environment) on
127.0.0.1, uploads one checkpoint of random tensors twice (a safetensors
object and a tensorizer object holding the same tensors), then, round after
round with the order of the tools rotated each round:
  warmstart       `warmstartctl bench` of the object: the daemon's load path
                  (libcurl ranged GETs into staging slabs, parsed), and its
                  raw parallel ranged-GET download of the same object in the
                  same process (the baseline);
  runai           Run:ai's streamer (runai-model-streamer and
                  runai-model-streamer-s3, pinned, installed with --no-deps
                  into a cache directory on first use) streaming the
                  safetensors object;
  tensorizer      tensorizer's TensorDeserializer reading the tensorizer
                  object through its own S3 stream (open_stream: curl with a
                  presigned URL);
and prints the median GB/s (10^9 object bytes per second) of each, and its
ratio to the raw download and to warmstart on the same object.

Every tool's bytes are checked: warmstartctl bench checks its loads byte for
byte; Run:ai's tensors by count and total bytes; tensorizer's tensors by
sha256 against the written arrays. The server (moto is Python) limits every
tool alike on loopback: the figures compare clients, not object stores.

usage: remote_peers.py WARMSTARTCTL [--mib 512] [--runs 5] [--cache DIR]
This is a benchmark program, not a test.
"""
import argparse
import hashlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

RUNAI_PINS = ["runai-model-streamer==0.17.0",
              "runai-model-streamer-s3==0.17.1", "humanize==4.11.0"]
TENSOR_BYTES = 16 << 20
KEY_ID = "AKIAWT19BENCH"
SECRET = "wt19-bench-secret"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port, process):
    for _ in range(600):
        if process.poll() is not None:
            sys.exit(f"moto exited with {process.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    sys.exit(f"moto did not listen on {port}")


def runai_packages(cache):
    """The directory holding Run:ai's streamer, installed on first use."""
    target = os.path.join(cache, "runai-0.17")
    if not os.path.isdir(os.path.join(target, "runai_model_streamer_s3")):
        subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                        "--no-deps", "--target", target] + RUNAI_PINS,
                       check=True)
    return target


def write_checkpoint(directory, mib):
    """model.safetensors and model.tensors of the same random uint8
    tensors; returns name -> sha256."""
    import numpy as np
    import torch
    from safetensors.numpy import save_file
    from tensorizer import TensorSerializer
    rng = np.random.default_rng(19)
    arrays = {f"t{i}": rng.integers(0, 255, TENSOR_BYTES, dtype=np.uint8)
              for i in range(max(1, (mib << 20) // TENSOR_BYTES))}
    save_file(arrays, os.path.join(directory, "model.safetensors"))
    serializer = TensorSerializer(os.path.join(directory, "model.tensors"))
    serializer.write_state_dict(
        {name: torch.from_numpy(a) for name, a in arrays.items()})
    serializer.close()
    return {name: hashlib.sha256(a.tobytes()).hexdigest()
            for name, a in arrays.items()}


# Each peer runs in its own process (as a loader would), timing itself from
# opening the object to the last tensor; imports are not timed.
RUNAI_CHILD = r"""
import json, sys, time
from runai_model_streamer import SafetensorsStreamer
url, want_count, want_bytes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
count = total = 0
start = time.perf_counter()
with SafetensorsStreamer() as streamer:
    streamer.stream_file(url)
    for name, tensor in streamer.get_tensors():
        count += 1
        total += tensor.numel() * tensor.element_size()
elapsed = time.perf_counter() - start
print(json.dumps({"seconds": elapsed,
                  "verified": count == want_count and total == want_bytes}))
"""

TENSORIZER_CHILD = r"""
import hashlib, json, sys, time
from tensorizer import TensorDeserializer, stream_io
url, endpoint, key_id, secret, hashes = sys.argv[1:6]
hashes = json.loads(hashes)
start = time.perf_counter()
stream = stream_io.open_stream(url, "rb", s3_access_key_id=key_id,
                               s3_secret_access_key=secret,
                               s3_endpoint=endpoint, force_http=True)
tensors = TensorDeserializer(stream, device="cpu")
got = {name: tensors[name] for name in tensors.keys()}
elapsed = time.perf_counter() - start
ok = {n: hashlib.sha256(t.numpy().tobytes()).hexdigest()
      for n, t in got.items()} == hashes
tensors.close()
print(json.dumps({"seconds": elapsed, "verified": ok}))
"""


FAILURES = []


def run_child(code, args, env):
    """The peer's JSON result, or None when it failed (its error is kept
    and printed at the end: a failed run is reported, not hidden)."""
    out = subprocess.run([sys.executable, "-c", code] + args, env=env,
                         capture_output=True, text=True)
    if out.returncode != 0:
        lines = [line for line in out.stderr.strip().splitlines()
                 if "Warning" not in line and "dsa." not in line]
        FAILURES.append(lines[-1] if lines else f"exit {out.returncode}")
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def warmstart(ctl, url, env):
    """(load GB/s, raw parallel download GB/s) of one `warmstartctl bench`
    run of `url`."""
    out = subprocess.run([ctl, "bench", "--json", "--runs", "1", url],
                         env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(out.stderr[-3000:])
    [mode] = json.loads(out.stdout)["results"]
    return mode["gbps_median"], mode["baseline_gbps_median"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("ctl")
    parser.add_argument("--mib", type=int, default=512)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cache", default=os.path.expanduser(
        "~/.cache/warmstart"))
    args = parser.parse_args()
    runai = runai_packages(args.cache)
    work = tempfile.mkdtemp(prefix="ws-remote-bench-", dir="/tmp")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = open(os.path.join(work, "moto.log"), "w")
    moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H",
                             "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=log)
    try:
        wait_listening(port, moto)
        hashes = write_checkpoint(work, args.mib)
        import boto3
        s3 = boto3.client("s3", endpoint_url=endpoint,
                          region_name="us-east-1", aws_access_key_id=KEY_ID,
                          aws_secret_access_key=SECRET)
        s3.create_bucket(Bucket="bench")
        sizes = {}
        for name in ("model.safetensors", "model.tensors"):
            path = os.path.join(work, name)
            s3.upload_file(path, "bench", name)
            sizes[name] = os.path.getsize(path)
            os.unlink(path)  # Nothing is read from the local disk.
        env = dict(os.environ, AWS_ENDPOINT_URL=endpoint,
                   AWS_REGION="us-east-1", AWS_ACCESS_KEY_ID=KEY_ID,
                   AWS_SECRET_ACCESS_KEY=SECRET, AWS_EC2_METADATA_DISABLED="true",
                   RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING="0",
                   # As many parallel requests as warmstart's default, and
                   # patience with a loaded moto (its default timed out).
                   RUNAI_STREAMER_CONCURRENCY="8",
                   RUNAI_STREAMER_S3_TIMEOUT="600000",
                   AWS_S3_ADDRESSING_STYLE="path")
        runai_env = dict(env, PYTHONPATH=os.pathsep.join(
            [runai] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
        st_url = "s3://bench/model.safetensors"
        tz_url = "s3://bench/model.tensors"

        def gbps(name, seconds):
            return None if seconds is None else sizes[name] / seconds / 1e9

        tools = {
            "warmstart safetensors": lambda: warmstart(args.ctl, st_url, env),
            "warmstart tensorizer": lambda: warmstart(args.ctl, tz_url, env),
            "runai safetensors": lambda: gbps(
                "model.safetensors",
                check(run_child(RUNAI_CHILD, [st_url, str(len(hashes)),
                                              str(len(hashes) * TENSOR_BYTES)],
                                runai_env))),
            "tensorizer tensorizer": lambda: gbps(
                "model.tensors",
                check(run_child(TENSORIZER_CHILD,
                                [tz_url, endpoint, KEY_ID, SECRET,
                                 json.dumps(hashes)], env))),
        }
        results = {name: [] for name in tools}
        results["raw download safetensors"] = []
        results["raw download tensorizer"] = []
        names = list(tools)
        print(f"object bytes: {sizes}; {args.runs} rounds; "
              f"load {os.getloadavg()[0]:.2f}", flush=True)
        for round_number in range(args.runs):
            shift = round_number % len(names)
            this_round = {}
            for name in names[shift:] + names[:shift]:
                got = tools[name]()
                if name.startswith("warmstart"):
                    this_round[name], this_round[
                        name.replace("warmstart", "raw download")] = got
                else:
                    this_round[name] = got
            for name, value in this_round.items():
                if value is not None:
                    results[name].append(value)
            print(f"round {round_number + 1}: " + ", ".join(
                f"{n} " + ("failed" if v is None else f"{v:.3f}")
                for n, v in this_round.items()), flush=True)
        report(results)
    finally:
        moto.terminate()
        moto.wait()
        log.close()
        shutil.rmtree(work, ignore_errors=True)


def check(result):
    if result is None:
        return None
    if not result["verified"]:
        sys.exit(f"a peer's tensors did not match: {result}")
    return result["seconds"]


def report(results):
    for failure in FAILURES:
        print(f"a peer's run failed: {failure}")
    results = {name: v for name, v in results.items() if v}
    medians = {name: statistics.median(v) for name, v in results.items()}
    print("\nmedian GB/s (object bytes / s), ratios on the same object:")
    for name, values in results.items():
        tool, kind = name.rsplit(" ", 1)
        raw = medians.get(f"raw download {kind}", float("nan"))
        ours = medians.get(f"warmstart {kind}", float("nan"))
        print(f"  {name:26} {medians[name]:7.3f}   vs raw "
              f"{medians[name] / raw:5.2f}   vs warmstart "
              f"{medians[name] / ours:5.2f}   "
              f"({' '.join(f'{v:.3f}' for v in values)})")


if __name__ == "__main__":
    main()
