"""warmstart.torch's device decisions, without a GPU: which resident copy a
bind reads and where its tensors go (warmstart._devices), which tensors are
bound and which copied, the page ranges registered with the CUDA driver for
a host -> GPU copy, and the registration's lifetime around the copy.

The driver is the one fake here (FakeDriver, standing in for libcuda's
cuMemHostRegister / cuMemHostUnregister; and torch.cuda's device guard and
synchronize around _transfer): what is tested is our own code that calls
it. The real driver runs in tests/torch_gpu_test.py, on a GPU. A model on
warmstartd's CUDA backend over the simulated driver checks the refusals of
a GPU-resident model end to end.
"""
import gc
import importlib
import os
import sys

import pytest
import torch

from harness import RUNFILES, Daemon, wait_for

os.environ["WARMSTART_LIBRARY"] = os.path.join(RUNFILES,
                                               "client/libwarmstart.so")
sys.path.insert(0, os.path.join(RUNFILES, "client/python"))
warmstart = importlib.import_module("warmstart")
devices = importlib.import_module("warmstart._devices")

# The simulated CUDA driver (tests/doubles/cuda_sim.h): a model
# "on a GPU" whose memory torch cannot use, to check the refusals end to
# end through the real daemon and client.
CUDA_SIM = os.path.join(RUNFILES, "tests/doubles/libcuda_sim.so")
WORKDIR_PREFIX = "wsdev-"

LABEL = "model llama"
GPU0 = "GPU-aaaaaaaa-0000-0000-0000-000000000000"
GPU1 = "GPU-bbbbbbbb-1111-1111-1111-111111111111"
PAGE = 4096


def cuda_state(count=2, current=0, **index_of):
    return devices.CudaState(True, "", count, current,
                             {GPU0: 0, GPU1: 1} if not index_of else
                             index_of)


NO_CUDA = devices.CudaState(False, "torch 1.13 was built without CUDA",
                            0, 0, {})


# ------------------------------------------------------------ parse_device

@pytest.mark.parametrize("given, expected", [
    (None, None), ("cpu", torch.device("cpu")), ("cuda", torch.device("cuda")),
    ("cuda:1", torch.device("cuda", 1)), (torch.device("cuda", 0),
                                          torch.device("cuda", 0))])
def test_parse_device_accepts_cpu_and_cuda(given, expected):
    assert devices.parse_device(torch, LABEL, given) == expected


@pytest.mark.parametrize("given, reason", [
    ("gpu", "is no device torch knows"),
    ("cuda:x", "is no device torch knows"),
    ("meta", "is of type meta"),
    (3.5, "is no device torch knows"),
])
def test_parse_device_refuses_others_naming_model_and_device(given, reason):
    with pytest.raises(warmstart.InvalidArgument) as error:
        devices.parse_device(torch, LABEL, given)
    message = str(error.value)
    assert LABEL in message and repr(given) in message and reason in message


# ------------------------------------------------------------ require_cuda

def test_cuda_without_a_usable_gpu_names_model_and_reason():
    with pytest.raises(warmstart.FailedPrecondition) as error:
        devices.require_cuda(LABEL, torch.device("cuda"), NO_CUDA)
    message = str(error.value)
    assert message.startswith(f"warmstart.torch: {LABEL}: device='cuda' "
                              f"needs a GPU, but torch 1.13 was built "
                              f"without CUDA")
    assert "untouched" in message
    with pytest.raises(warmstart.FailedPrecondition) as error:
        devices.require_cuda(LABEL, torch.device("cuda", 0), NO_CUDA,
                             f"its copy on {GPU0}")
    assert f"{LABEL}: its copy on {GPU0} needs a GPU, but torch 1.13" in \
        str(error.value)
    # cpu and None need nothing.
    devices.require_cuda(LABEL, torch.device("cpu"), NO_CUDA)
    devices.require_cuda(LABEL, None, NO_CUDA)


def test_cuda_index_past_the_gpus_torch_sees():
    with pytest.raises(warmstart.InvalidArgument) as error:
        devices.require_cuda(LABEL, torch.device("cuda", 2), cuda_state())
    assert "torch sees 2 GPU(s) (cuda:0 to cuda:1)" in str(error.value)
    devices.require_cuda(LABEL, torch.device("cuda", 1), cuda_state())


# ----------------------------------------------------------- choose_source

def choose(model_devices, device, cuda=None):
    parsed = devices.parse_device(torch, LABEL, device)
    return devices.choose_source(torch, LABEL, model_devices, parsed,
                                 cuda or cuda_state())


def test_host_model_binds_on_cpu_and_copies_to_a_gpu():
    assert choose(["host"], None) == devices.Source("host", None, False)
    assert choose(["host"], "cpu") == devices.Source("host", None, False)
    assert choose(["host"], "cuda:1") == devices.Source(
        "host", torch.device("cuda", 1), True)
    # "cuda" with no index: torch's current GPU.
    assert choose(["host"], "cuda", cuda_state(current=1)) == \
        devices.Source("host", torch.device("cuda", 1), True)


def test_gpu_model_binds_where_it_is():
    assert choose([GPU1], None) == devices.Source(
        GPU1, torch.device("cuda", 1), False)
    assert choose([GPU1], "cuda:1") == devices.Source(
        GPU1, torch.device("cuda", 1), False)
    # "cuda" with no index: the model's GPU, not torch's current one.
    assert choose([GPU1], "cuda", cuda_state(current=0)) == devices.Source(
        GPU1, torch.device("cuda", 1), False)
    # Copies on two GPUs: the one asked for.
    assert choose([GPU0, GPU1], "cuda:1").copy_key == GPU1


def test_gpu_model_on_another_device_is_refused():
    with pytest.raises(warmstart.InvalidArgument) as error:
        choose([GPU0], "cpu")
    assert str(error.value) == (
        f"warmstart.torch: {LABEL} is resident on cuda:0 ({GPU0}) only; "
        f"device='cpu' would copy it off the GPU: pass device=None (or the "
        f"model's GPU) to bind it there")
    with pytest.raises(warmstart.InvalidArgument) as error:
        choose([GPU0], "cuda:1")
    assert (f"{LABEL} is resident on cuda:0 ({GPU0}), not on cuda:1, and "
            f"has no host copy") in str(error.value)


def test_model_on_host_and_a_gpu_copies_from_the_host_to_another_gpu():
    assert choose(["host", GPU0], "cuda:0") == devices.Source(
        GPU0, torch.device("cuda", 0), False)
    assert choose(["host", GPU0], "cuda:1") == devices.Source(
        "host", torch.device("cuda", 1), True)
    assert choose([GPU0, "host"], "cpu") == devices.Source("host", None,
                                                           False)


# ------------------------------------------------------------------ steps

CPU = torch.device("cpu")
CUDA0 = torch.device("cuda", 0)


@pytest.mark.parametrize("have, have_dtype, want_dtype, target, copy, plan", [
    (CPU, torch.float32, torch.float32, None, False, ()),
    (CPU, torch.float32, torch.float32, CPU, False, ()),
    (CUDA0, torch.float16, torch.float16, CUDA0, False, ()),
    (CUDA0, torch.float16, torch.float16, None, False, ()),
    (CPU, torch.float32, torch.float32, CUDA0, False, ("move",)),
    (CPU, torch.float32, torch.float16, None, False, ("convert",)),
    (CPU, torch.float32, torch.float16, CUDA0, False, ("move", "convert")),
    (CPU, torch.float32, torch.float32, None, True, ("clone",)),
    (CUDA0, torch.float16, torch.float16, CUDA0, True, ("clone",)),
    (CPU, torch.float32, torch.float32, CUDA0, True, ("move",)),
    (CPU, torch.float32, torch.float16, None, True, ("convert",)),
])
def test_steps_bind_only_what_needs_no_copy(have, have_dtype, want_dtype,
                                            target, copy, plan):
    assert devices.steps(have, have_dtype, want_dtype, target, copy) == plan


# ------------------------------------------------------------ page_ranges

def test_page_ranges_round_out_and_merge_shared_and_touching_pages():
    base = 1000 * PAGE
    spans = [
        (base + 100, 200),             # page 0
        (base + 300, 10),              # page 0 again: merged
        (base + PAGE - 8, 16),         # pages 0-1: merged
        (base + 2 * PAGE, PAGE),       # page 2: touches, merged
        (base + 10 * PAGE + 1, 1),     # page 10: alone
        (base + 5 * PAGE, 0),          # empty: left out
        (base - 3 * PAGE, 2 * PAGE),   # pages -3..-2: alone, sorted first
    ]
    assert devices.page_ranges(spans, PAGE) == [
        (base - 3 * PAGE, 2 * PAGE),
        (base, 3 * PAGE),
        (base + 10 * PAGE, PAGE),
    ]


def test_page_ranges_of_nothing():
    assert devices.page_ranges([], PAGE) == []
    assert devices.page_ranges([(PAGE, 0)], PAGE) == []


# ------------------------------------------------------- HostRegistration

class FakeDriver:
    """Records the calls warmstart makes to the CUDA driver; `results`
    gives register's CUresult per address (0 where absent)."""

    def __init__(self, results=None, context=True):
        self.results = results or {}
        self.context = context
        self.calls = []

    def has_context(self):
        return self.context

    def register(self, address, length):
        self.calls.append(("register", address, length))
        return self.results.get(address, 0)

    def unregister(self, address):
        self.calls.append(("unregister", address))
        return 0

    def error_name(self, code):
        return {1: "CUDA_ERROR_INVALID_VALUE",
                801: "CUDA_ERROR_NOT_SUPPORTED"}[code]


RANGES = [(10 * PAGE, 2 * PAGE), (20 * PAGE, PAGE)]


def test_registration_spans_the_copy_and_waits_before_unregistering():
    driver = FakeDriver()
    registration = devices.HostRegistration(
        driver, RANGES, lambda: driver.calls.append(("synchronize",)))
    with registration:
        assert registration.pinned
        driver.calls.append(("copy",))
    assert driver.calls == [
        ("register", 10 * PAGE, 2 * PAGE), ("register", 20 * PAGE, PAGE),
        ("copy",), ("synchronize",),
        ("unregister", 10 * PAGE), ("unregister", 20 * PAGE)]
    assert registration.note == ("pinned: 2 range(s), 12288 bytes "
                                 "registered read-only")


def test_an_error_in_the_copy_still_waits_then_unregisters():
    driver = FakeDriver()
    with pytest.raises(RuntimeError):
        with devices.HostRegistration(
                driver, RANGES,
                lambda: driver.calls.append(("synchronize",))):
            raise RuntimeError("CUDA out of memory")
    assert driver.calls[-3:] == [("synchronize",), ("unregister", 10 * PAGE),
                                 ("unregister", 20 * PAGE)]


def test_a_failed_synchronize_still_unregisters():
    driver = FakeDriver()

    def synchronize():
        raise RuntimeError("device lost")

    with pytest.raises(RuntimeError):
        with devices.HostRegistration(driver, RANGES, synchronize):
            pass
    assert driver.calls[-2:] == [("unregister", 10 * PAGE),
                                 ("unregister", 20 * PAGE)]


def test_a_range_registered_by_someone_else_is_left_registered():
    driver = FakeDriver(results={10 * PAGE: 712})
    registration = devices.HostRegistration(driver, RANGES, lambda: None)
    with registration:
        assert registration.pinned
    assert ("unregister", 10 * PAGE) not in driver.calls
    assert ("unregister", 20 * PAGE) in driver.calls


def test_a_refused_registration_copies_pageable_and_keeps_nothing():
    driver = FakeDriver(results={20 * PAGE: 801})
    registration = devices.HostRegistration(driver, RANGES, lambda: None)
    with registration:
        assert not registration.pinned
        # The first range was released at once, before the copy.
        assert driver.calls == [
            ("register", 10 * PAGE, 2 * PAGE), ("register", 20 * PAGE, PAGE),
            ("unregister", 10 * PAGE)]
    assert registration.note == (
        "pageable: cuMemHostRegister(read-only) of 4096 bytes failed: "
        "CUDA_ERROR_NOT_SUPPORTED")
    assert driver.calls.count(("unregister", 10 * PAGE)) == 1


def test_no_context_or_no_driver_copies_pageable_without_calls():
    driver = FakeDriver(context=False)
    with devices.HostRegistration(driver, RANGES, lambda: None) as r:
        assert not r.pinned and "no CUDA context" in r.note
    assert driver.calls == []
    with devices.HostRegistration(None, RANGES, lambda: None,
                                  "libcuda.so.1 cannot be used (x)") as r:
        assert r.note == "pageable: libcuda.so.1 cannot be used (x)"


# --------------------------------------------------------- torch's state

def test_this_torch_state_says_why_there_is_no_gpu():
    state = devices.torch_cuda_state(torch, [GPU0], lambda t, u: None)
    if torch.cuda.is_available():
        pytest.skip("torch has a GPU here: tests/torch_gpu_test.py covers it")
    assert not state.available
    assert torch.__version__ in state.why_not
    assert ("built without CUDA" in state.why_not or
            "sees no GPU" in state.why_not)


# -------------------------------------------------- the transfer, faked CUDA

def test_transfer_copies_inside_the_registration_under_the_lock(monkeypatch):
    # torch's two CUDA calls _transfer makes around the copies are faked,
    # and the "GPU" is cpu:0 (a device unequal to the tensors' "cpu"): what
    # is tested is our sequence, not CUDA's copy.
    wtorch = importlib.import_module("warmstart.torch")
    driver = FakeDriver()
    locked = []
    register = driver.register

    def register_checking_lock(address, length):
        locked.append(devices.TRANSFER_LOCK.locked())
        return register(address, length)

    driver.register = register_checking_lock
    monkeypatch.setattr(devices, "load_driver", lambda: (driver, ""))
    monkeypatch.setattr(torch.cuda, "device", lambda target: _Nothing())
    monkeypatch.setattr(torch.cuda, "synchronize",
                        lambda target: driver.calls.append(("synchronize",)))
    host = {1: torch.arange(3000.0), 2: torch.arange(5.0, dtype=torch.float64)}
    moved, note = wtorch._transfer(host, torch.device("cpu", 0))
    for key, tensor in host.items():
        assert torch.equal(moved[key], tensor)
        assert moved[key].data_ptr() != tensor.data_ptr()
    assert note.startswith("pinned: ")
    assert locked and all(locked)
    kinds = [call[0] for call in driver.calls]
    first_unregister = kinds.index("unregister")
    assert kinds.index("synchronize") < first_unregister
    assert kinds.count("register") == kinds.count("unregister") >= 1
    assert "register" not in kinds[first_unregister:]
    assert not devices.TRANSFER_LOCK.locked()


class _Nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return False


# ------------------------------------- a GPU-resident model, simulated GPU

@pytest.fixture
def gpu_model(workdir, root, monkeypatch):
    """A one-tensor model ("weight", F32 [8, 8], written by safetensors'
    reference writer) on warmstartd's CUDA backend over the simulated
    driver, and the client."""
    from safetensors.torch import save_file
    path = os.path.join(root, "one.safetensors")
    save_file({"weight": torch.arange(64.0).reshape(8, 8)}, path)
    monkeypatch.setenv("WARMSTART_LIBCUDA", CUDA_SIM)
    daemon = Daemon(workdir, "--model_root", root, backend="cuda",
                    env={"WARMSTART_LIBCUDA": CUDA_SIM})
    try:
        with warmstart.connect(daemon.socket) as client:
            assert client.load("one", path, timeout=60)["state"] == "ready"
            yield daemon, client
    finally:
        daemon.stop()


needs_cpu_only_torch = pytest.mark.skipif(
    torch.cuda.is_available(),
    reason="torch has a GPU here: the simulated GPU's memory is not its")


@needs_cpu_only_torch
def test_gpu_model_refusals_through_the_daemon(gpu_model):
    daemon, client = gpu_model
    wtorch = importlib.import_module("warmstart.torch")
    module = torch.nn.Linear(8, 8, bias=False)
    weight = module.weight
    with client.acquire("one") as model:
        gpu = model.devices[0]
        assert gpu.startswith("GPU-") and len(model.devices) == 1
        # Off the GPU: refused, whatever torch has.
        with pytest.raises(warmstart.InvalidArgument) as error:
            wtorch.load_into_module(module, model, device="cpu")
        # (No CUDA in torch: the GPU is named by its UUID alone.)
        assert (f"model one is resident on {gpu} only; device='cpu' would "
                f"copy it off the GPU") in str(error.value)
        # Where it is: torch (CPU-only) cannot hold it, and says why.
        with pytest.raises(warmstart.FailedPrecondition) as error:
            wtorch.load_into_module(module, model)
        assert (f"model one: its copy on {gpu} needs a GPU, but torch "
                f"{torch.__version__}") in str(error.value)
    # By name: refused before anything is acquired.
    with pytest.raises(warmstart.FailedPrecondition):
        wtorch.load_into_module(module, "one", client=client, device="cuda")
    assert module.weight is weight and weight.device.type == "cpu"
    gc.collect()
    assert wait_for(lambda: daemon.leases("one") == 0, 30)
