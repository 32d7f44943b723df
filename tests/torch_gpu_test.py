"""warmstart.torch on a real GPU, through the real warmstartd:

- a host-resident model bound with device="cuda": real CUDA parameters,
  every tensor equal (torch.equal) to the CPU binding of the same model,
  counted as copied, the copy run from the mapping registered read-only
  with the driver ("pinned"), the tied weight still one Parameter, the
  module's own buffer moved to the GPU, the same logits;
- a GPU-resident model (warmstartd --backend cuda) bound with no copy:
  every parameter's data_ptr is the imported CUDA memory, the same values
  as the host binding; device="cpu" and a GPU the model is not on are
  refused, the module untouched.

Skips, saying why, where torch has no usable GPU (Debian's torch 1.13 is
CPU-only). tools/gpu-check bundles it and out/gpu-bundle/run.sh runs it on
a lent GPU machine under that machine's python3 (torch 2.x, safetensors);
it needs nothing else outside the standard library and torch.
"""
import gc
import importlib
import os
import shutil
import signal
import sys
import tempfile

import pytest
import torch
from torch import nn

import harness
from harness import RUNFILES, wait_for

os.environ["WARMSTART_LIBRARY"] = os.path.join(RUNFILES,
                                               "client/libwarmstart.so")
sys.path.insert(0, os.path.join(RUNFILES, "client/python"))
warmstart = importlib.import_module("warmstart")
wtorch = importlib.import_module("warmstart.torch")

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason=f"torch {torch.__version__} has no usable GPU here (CUDA "
           f"{torch.version.cuda}); tools/gpu-check runs this on a GPU")


class Net(nn.Module):
    """A small network with what binding must handle: a tied head (the
    checkpoint stores the weight once) and a non-persistent buffer its own
    code computes."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(256, 64)
        self.proj = nn.Linear(64, 64)
        self.norm = nn.LayerNorm(64)
        self.head = nn.Linear(64, 256, bias=False)
        self.head.weight = self.embed.weight
        self.register_buffer("scale", torch.arange(64.0) / 64,
                             persistent=False)

    def forward(self, ids):
        return self.head(self.norm(self.proj(self.embed(ids))) * self.scale)


STORED = ["embed.weight", "proj.weight", "proj.bias", "norm.weight",
          "norm.bias"]


@pytest.fixture(scope="module")
def env():
    """Two daemons over one model root holding the checkpoint (written by
    safetensors' reference writer): a host one and a CUDA one, each with
    the model loaded as "net"."""
    from safetensors.torch import save_file

    workdir = tempfile.mkdtemp(prefix="wsgpu-", dir="/tmp")
    root = os.path.join(workdir, "models")
    os.mkdir(root)
    torch.manual_seed(13)
    reference = Net()
    state = {name: tensor.detach().clone().contiguous()
             for name, tensor in reference.state_dict().items()
             if name in STORED}
    path = os.path.join(root, "net.safetensors")
    save_file(state, path)
    daemons = {}
    clients = {}
    try:
        for backend in ("host", "cuda"):
            directory = os.path.join(workdir, backend)
            os.mkdir(directory)
            daemons[backend] = harness.Daemon(directory, "--model_root", root,
                                              backend=backend)
            clients[backend] = warmstart.connect(daemons[backend].socket,
                                                 timeout=30)
            loaded = clients[backend].load("net", path, timeout=120)
            assert loaded["state"] == "ready", daemons[backend].logs()
        yield dict(daemons=daemons, clients=clients, state=state)
    finally:
        for client in clients.values():
            client.close()
        for daemon in daemons.values():
            daemon.stop(signal.SIGKILL)
        shutil.rmtree(workdir, ignore_errors=True)


def no_leases(env, backend):
    gc.collect()
    return wait_for(lambda: env["daemons"][backend].leases("net") == 0, 30)


def empty_net():
    with wtorch.no_init():
        return Net()


def slots(module):
    return {**dict(module.named_parameters(remove_duplicate=False)),
            **dict(module.named_buffers(remove_duplicate=False))}


def test_host_model_to_cuda_is_a_pinned_copy_equal_to_the_cpu_binding(env):
    client = env["clients"]["host"]
    on_cpu, on_gpu = empty_net(), empty_net()
    cpu_report = wtorch.load_into_module(on_cpu, "net", client=client)
    report = wtorch.load_into_module(on_gpu, "net", client=client,
                                     device="cuda")
    assert sorted(report.copied) == sorted(STORED) and report.bound == []
    assert report.tied == ["head.weight"]
    assert report.materialised == ["scale"]
    assert report.host_copy.startswith("pinned: "), report.host_copy
    assert cpu_report.copied == [] and cpu_report.host_copy == ""
    gpu_slots, cpu_slots = slots(on_gpu), slots(on_cpu)
    assert set(gpu_slots) == set(cpu_slots)
    for name, tensor in gpu_slots.items():
        assert tensor.device.type == "cuda", name
        assert tensor.dtype == cpu_slots[name].dtype, name
        assert torch.equal(tensor.cpu(), cpu_slots[name]), name
    assert on_gpu.head.weight is on_gpu.embed.weight
    ids = torch.arange(32).reshape(4, 8)
    with torch.no_grad():
        assert torch.allclose(on_gpu(ids.cuda()).cpu(), on_cpu(ids),
                              rtol=1e-4, atol=1e-4)
    # The copies hold no lease: the CPU binding's do, until it goes.
    del on_cpu, cpu_slots
    assert no_leases(env, "host")


def test_host_model_to_cuda_with_a_dtype_conversion(env):
    # A conversion on top of the move: half on the GPU, counted as copied.
    with wtorch.no_init():
        module = Net().half()
    report = wtorch.load_into_module(module, "net",
                                     client=env["clients"]["host"],
                                     device="cuda:0",
                                     on_dtype_mismatch="copy")
    assert sorted(report.copied) == sorted(STORED)
    assert module.proj.weight.dtype == torch.float16
    assert module.proj.weight.device == torch.device("cuda", 0)
    assert torch.equal(module.proj.weight.cpu(),
                       env["state"]["proj.weight"].half())
    assert no_leases(env, "host")


def test_gpu_model_binds_the_imported_memory_with_no_copy(env):
    client = env["clients"]["cuda"]
    with client.acquire("net") as model:
        assert model.devices[0].startswith("GPU-"), model.devices
        module = empty_net()
        report = wtorch.load_into_module(module, model)
        assert sorted(report.bound) == sorted(STORED)
        assert report.copied == [] and report.host_copy == ""
        assert report.tied == ["head.weight"]
        params = slots(module)
        for name in STORED:
            imported = model.tensors[name]
            tensor = params[name]
            assert tensor.device.type == "cuda", name
            assert tensor.data_ptr() == imported.ptr, name
            assert (tensor.data_ptr() + tensor.numel() *
                    tensor.element_size() <= imported.ptr + imported.nbytes)
            assert torch.equal(tensor.cpu(), env["state"][name]), name
        # The module's own buffer goes to the model's GPU too.
        assert module.scale.device == params["embed.weight"].device
        # device="cuda" (the model's GPU) binds the same memory.
        again = empty_net()
        wtorch.load_into_module(again, model, device="cuda")
        assert again.proj.weight.data_ptr() == model.tensors[
            "proj.weight"].ptr
        ids = torch.arange(32, device=module.scale.device).reshape(4, 8)
        with torch.no_grad():
            assert torch.equal(module(ids), again(ids))
    del module, again, params, tensor, imported
    assert no_leases(env, "cuda")


def test_gpu_model_refuses_another_device_and_touches_nothing(env):
    client = env["clients"]["cuda"]
    module = empty_net()
    before = {name: id(t) for name, t in slots(module).items()}
    with client.acquire("net") as model:
        with pytest.raises(warmstart.InvalidArgument) as error:
            wtorch.load_into_module(module, model, device="cpu")
        assert "would copy it off the GPU" in str(error.value)
        other = torch.cuda.device_count()  # No such GPU, or not the model's.
        with pytest.raises(warmstart.InvalidArgument):
            wtorch.load_into_module(module, model, device=f"cuda:{other}")
    assert {name: id(t) for name, t in slots(module).items()} == before
    assert no_leases(env, "cuda")
