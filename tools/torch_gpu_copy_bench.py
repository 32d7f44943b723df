"""Host -> GPU copy of a host-resident model: pageable vs the mapping
registered read-only with the CUDA driver (what warmstart.torch's
load_into_module(device="cuda") does). A program, not a test; needs a GPU
and torch with CUDA.

Starts warmstartd (host backend) on a checkpoint tools/checkpoint_gen
writes, takes the model's tensors as CPU tensors over the mapping, and
times, each over --runs runs after one warm-up (medians printed):

  pageable    every tensor copy_()'d into a preallocated GPU tensor,
              synchronised: the driver stages pageable memory;
  registered  the same copies with the pages registered read-only first
              (warmstart._devices.HostRegistration: cuMemHostRegister with
              CU_MEMHOSTREGISTER_READ_ONLY), asynchronous, synchronised,
              unregistered; GB/s with and without the registration's cost;
  bind        warmstart.torch.load_into_module(module, device="cuda") end
              to end (GPU allocation, registration, copies).

Run from a checkout after `bazel build -c opt //daemon:warmstartd
//client:libwarmstart.so //tools/checkpoint_gen:gen_checkpoint`:

  python3 tools/torch_gpu_copy_bench.py [--bytes 2G] [--runs 5]

or, on a GPU machine, from tools/gpu-check's bundle (out/gpu-bundle/run.sh
passes the bundle's paths).
"""
import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "bazel-bin")


def timed(function):
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bytes", default="2G")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--daemon",
                        default=os.path.join(BIN, "daemon/warmstartd"))
    parser.add_argument("--library",
                        default=os.path.join(BIN, "client/libwarmstart.so"))
    parser.add_argument("--gen", default=os.path.join(
        BIN, "tools/checkpoint_gen/gen_checkpoint"))
    parser.add_argument("--package",
                        default=os.path.join(ROOT, "client/python"))
    args = parser.parse_args()

    import torch
    if not torch.cuda.is_available():
        raise SystemExit(f"torch {torch.__version__} sees no GPU: this "
                         f"benchmark needs one")
    sys.path.insert(0, args.package)
    os.environ["WARMSTART_LIBRARY"] = args.library
    import warmstart
    import warmstart.torch
    from warmstart import _devices

    work = tempfile.mkdtemp(prefix="wsgpubench-", dir="/tmp")
    daemon = None
    try:
        models = os.path.join(work, "models")
        gen_dir = os.path.join(models, "gen")
        os.makedirs(models)
        subprocess.run([args.gen, "--out", gen_dir, "--bytes", args.bytes,
                        "--shards", "1"], check=True, capture_output=True)
        gen_file = os.path.join(gen_dir, "model.safetensors")
        socket = os.path.join(work, "d.sock")
        daemon = subprocess.Popen(
            [args.daemon, "--socket", socket, "--backend", "host",
             "--model_root", models], stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(work, "daemon.log"), "w"))
        client = warmstart.connect(socket, timeout=30, wait=True)
        client.load("gen", gen_file, timeout=600)
        model = client.acquire("gen")
        host = model.to_torch()
        names = list(host)
        total = sum(t.numel() * t.element_size() for t in host.values())
        device = torch.device("cuda", torch.cuda.current_device())
        dst = {n: torch.empty_like(host[n], device=device) for n in names}
        for tensor in host.values():  # Fault the mapping in: one read a page.
            tensor.view(torch.uint8)[::4096].sum()
        ranges = _devices.page_ranges(
            [(t.data_ptr(), t.numel() * t.element_size())
             for t in host.values()])
        driver, why = _devices.load_driver()
        if driver is None:
            raise SystemExit(why)

        def pageable():
            for name in names:
                dst[name].copy_(host[name])
            torch.cuda.synchronize(device)

        copy_times = []
        notes = set()

        def registered():
            registration = _devices.HostRegistration(
                driver, ranges, lambda: torch.cuda.synchronize(device))
            with registration:
                start = time.perf_counter()
                for name in names:
                    dst[name].copy_(host[name], non_blocking=True)
                torch.cuda.synchronize(device)
                copy_times.append(time.perf_counter() - start)
            notes.add(registration.note)

        class Holder(torch.nn.Module):
            def __init__(self, tensor):
                super().__init__()
                self.weight = torch.nn.Parameter(tensor)

        bind_notes = set()

        def bind():
            with warmstart.torch.no_init():
                module = torch.nn.Module()
                # The generator's names are "layers.N.weight".
                module.layers = torch.nn.ModuleList(
                    Holder(torch.empty(host[n].shape, dtype=host[n].dtype))
                    for n in sorted(names,
                                    key=lambda n: int(n.split(".")[1])))
            report = warmstart.torch.load_into_module(module, model,
                                                      device=device)
            bind_notes.add(report.host_copy.split(":")[0])
            assert len(report.copied) == len(names)
            del module
            torch.cuda.empty_cache()

        pageable()
        registered()
        bind()
        copy_times.clear()
        results = {"pageable": [], "registered": [], "bind": []}
        for run in range(args.runs):
            order = [("pageable", pageable), ("registered", registered),
                     ("bind", bind)]
            if run % 2:
                order.reverse()
            for key, function in order:
                results[key].append(timed(function))
        gb = total / 1e9
        base = statistics.median(results["pageable"])
        print(f"host -> {torch.cuda.get_device_name(device)}: {gb:.2f} GB in "
              f"{len(names)} tensors, medians of {args.runs} runs "
              f"(torch {torch.__version__}, CUDA {torch.version.cuda})")
        print(f"  registration: {'; '.join(sorted(notes))}")
        rows = [("pageable copy", base),
                ("registered, copy only", statistics.median(copy_times)),
                ("registered, with register+unregister",
                 statistics.median(results["registered"])),
                ("load_into_module(device=cuda)",
                 statistics.median(results["bind"]))]
        for label, seconds in rows:
            print(f"  {label:<40} {seconds * 1e3:9.1f} ms "
                  f"{gb / seconds:7.2f} GB/s  x{base / seconds:.2f} vs "
                  f"pageable")
        print(f"  load_into_module's copies ran: {', '.join(bind_notes)}")
        model.release()
        client.close()
    finally:
        if daemon is not None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(60)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
