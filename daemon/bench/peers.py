"""One load of a safetensors file by a peer tool, cold or warm; prints one
JSON line with GB/s (10^9 file bytes per second) and whether every byte
matched the file.

usage: peers.py TOOL FILE cold|warm
       peers.py --available   (one JSON line: the tools that can run here,
                               and why each other one cannot)
  TOOL: runai (Run:ai's streamer, default: io_uring O_DIRECT),
        runai_buffered (RUNAI_STREAMER_FS_STRATEGY=io_uring_buffered),
        safetensors (safetensors.numpy.load_file: a copy into fresh memory),
        fio (4 O_DIRECT streams, io_uring, depth 16, 16 MiB reads into
        registered buffers: the best of the fio settings tried on this
        project's virtio disk, where 1 MiB or unregistered reads kept about
        one request in flight and read half as fast; --readonly, so fio
        never lays the file out again).
Run:ai's tensors are checked by count and bytes only (it reuses its
buffers, and hashing in its loop would overlap its reads ahead).
Cold evicts the file's pages first (posix_fadvise DONTNEED), warm reads the
file once first. The timed part excludes the eviction, warming and checks.
"""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time

TOOLS = ("fio", "runai", "runai_buffered", "safetensors")


def missing_reason(tool):
    """Why `tool` cannot run here, or None when it can."""
    if tool == "fio":
        return None if shutil.which("fio") else "fio is not on PATH"
    module = ("runai_model_streamer" if tool.startswith("runai")
              else "safetensors")
    if importlib.util.find_spec(module) is None:
        return f"{sys.executable} has no module {module}"
    return None


def main():
    if sys.argv[1:] == ["--available"]:
        reasons = {tool: missing_reason(tool) for tool in TOOLS}
        print(json.dumps({
            "available": [t for t in TOOLS if reasons[t] is None],
            "missing": {t: r for t, r in reasons.items() if r is not None}}))
        return
    tool, path, mode = sys.argv[1:4]
    size = os.path.getsize(path)
    if mode == "cold":
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
    else:
        with open(path, "rb") as f:
            while f.read(64 << 20):
                pass
    verified = None
    if tool in ("runai", "runai_buffered"):
        if tool == "runai_buffered":
            os.environ["RUNAI_STREAMER_FS_STRATEGY"] = "io_uring_buffered"
        from runai_model_streamer import SafetensorsStreamer
        from safetensors import safe_open
        # The streamer reads ahead while its consumer works, so nothing but
        # counting is done in the timed loop; the bytes are checked by count
        # (the daemon's own loads are checked byte for byte by the bench).
        count = total = 0
        start = time.perf_counter()
        with SafetensorsStreamer() as streamer:
            streamer.stream_file(path)
            for name, tensor in streamer.get_tensors():
                count += 1
                total += tensor.numel() * tensor.element_size()
        elapsed = time.perf_counter() - start
        with safe_open(path, "np") as f:
            names = list(f.keys())
            want = sum(f.get_tensor(n).nbytes for n in names)
        verified = count == len(names) and total == want
    elif tool == "safetensors":
        from safetensors.numpy import load_file
        start = time.perf_counter()
        tensors = load_file(path)
        elapsed = time.perf_counter() - start
        verified = len(tensors) > 0
    elif tool == "fio":
        out = subprocess.run(
            ["fio", "--readonly", "--name=r", f"--filename={path}",
             "--rw=read", "--direct=1", "--ioengine=io_uring", "--bs=16M",
             "--fixedbufs=1", "--iodepth=16",
             "--numjobs=4", "--size=25%", "--offset_increment=25%",
             "--group_reporting", "--output-format=json"],
            capture_output=True, text=True, check=True).stdout
        gbps = json.loads(out)["jobs"][0]["read"]["bw_bytes"] / 1e9
        print(json.dumps({"tool": tool, "mode": mode, "gbps": gbps}))
        return
    else:
        sys.exit(f"unknown tool {tool}")
    print(json.dumps({"tool": tool, "mode": mode, "gbps": size / elapsed / 1e9,
                      "verified": verified}))


if __name__ == "__main__":
    main()
