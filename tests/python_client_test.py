"""The Python package `warmstart` (ctypes over libwarmstart.so) against the
real warmstartd: zero-copy NumPy views whose sha256 match the fixtures'
expected values, torch tensors sharing the memory, read-only arrays,
arrays outliving their model, two client processes at once, errors.

Binaries, the package and libwarmstart.so come from the test's runfiles
($WARMSTART_RUNFILES); every daemon runs with the host backend on sockets
and model roots under /tmp.
"""
import ctypes
import gc
import hashlib
import json
import importlib
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from harness import (CTL, DAEMON, FIXTURES, GGUF, GGUF_ALLTYPES, NATIVE_ENV,
                     RUNFILES, SAFETENSORS, SAFETENSORS_BF16, TENSORIZER,
                     Daemon, event, expected, wait_for)

PACKAGE_DIR = os.path.join(RUNFILES, "client/python")
LIBRARY = os.path.join(RUNFILES, "client/libwarmstart.so")
# The simulated CUDA driver (tests/doubles/cuda_sim.h): "device
# pointers" are host addresses, so tests can read GPU tensors' bytes.
CUDA_SIM = os.path.join(RUNFILES, "tests/doubles/libcuda_sim.so")

os.environ["WARMSTART_LIBRARY"] = LIBRARY
sys.path.insert(0, PACKAGE_DIR)
warmstart = importlib.import_module("warmstart")

PYTHON = "/usr/bin/python3"

ALL = (GGUF, GGUF_ALLTYPES, SAFETENSORS, SAFETENSORS_BF16, TENSORIZER)
# A safetensors file with __metadata__ ({"framework": "pt"}) and a
# tensorizer module (parameters and buffers).
SAFETENSORS_METADATA = "safetensors/golden_py_i32_metadata.safetensors"
TENSORIZER_MODULE = "tensorizer/module_mixed_v2.tensors"

# Work directories are /tmp/wspy-*; model roots hold copies of ALL
# (tests/conftest.py).
WORKDIR_PREFIX = "wspy-"
MODEL_ROOT_FIXTURES = ALL + (SAFETENSORS_METADATA, TENSORIZER_MODULE)


def sha256(array):
    # Straight from the NumPy view: its buffer is the shared memory.
    return hashlib.sha256(memoryview(array)).hexdigest()


def model_name(fixture):
    return "m-" + os.path.basename(fixture).replace(".", "-")


@pytest.fixture
def client(daemon):
    with warmstart.connect(daemon.socket, timeout=30) as c:
        yield c


def load(client, root, fixture):
    name = model_name(fixture)
    status = client.load(name, os.path.join(root, os.path.basename(fixture)),
                         timeout=60)
    assert status["state"] == "ready"
    return name


@pytest.mark.parametrize("fixture", ALL)
def test_numpy_views_match_the_expected_sha256(client, root, fixture):
    name = load(client, root, fixture)
    want = expected(fixture)
    with client.acquire(name, timeout=30) as model:
        assert model.name == name
        assert model.lease_id
        assert model.devices == ["host"]
        assert set(model.tensors) == set(want)
        for tensor, (dtype, digest) in want.items():
            array = model.tensors[tensor]
            assert isinstance(array, np.ndarray)
            assert sha256(array) == digest, tensor
            assert array.nbytes == len(array.tobytes())
            if dtype is not None:
                assert model.dtypes[tensor] == dtype.upper(), tensor
            # Zero copy: the array is a view of the mapping, not a buffer
            # of its own.
            assert not array.flags.owndata
            assert not array.flags.writeable


def _fixture_json(fixture):
    with open(os.path.join(FIXTURES, fixture + ".json")) as f:
        return json.load(f)


def test_metadata_and_roles_come_through_the_lease(client, root):
    # safetensors: __metadata__ as the file's independent parse saw it; no
    # roles (the format has none).
    name = load(client, root, SAFETENSORS_METADATA)
    with client.acquire(name) as model:
        want = _fixture_json(SAFETENSORS_METADATA)["independent_parse"]
        assert dict(model.metadata) == want["metadata"] == {"framework": "pt"}
        assert dict(model.roles) == {"test1": ""}
    # GGUF: every key-value, scalars with their values.
    name = load(client, root, GGUF)
    with open(os.path.join(FIXTURES, GGUF[:-len(".gguf")] + ".json")) as f:
        kvs = json.load(f)["metadata"]
    with client.acquire(name) as model:
        assert list(model.metadata) == [kv["key"] for kv in kvs]
        for kv in kvs:
            if kv["type"] != "array":
                assert model.metadata[kv["key"]] == kv["value"], kv["key"]
        assert model.metadata["general.architecture"] == "llama"
    # tensorizer: no key-values; each tensor's type as the writer recorded
    # it (parameters, buffers).
    name = load(client, root, TENSORIZER_MODULE)
    kinds = {0: "parameter", 1: "buffer", 2: "state_dict"}
    want = {t["name"]: kinds[t["tensor_type"]] for t in
            _fixture_json(TENSORIZER_MODULE)["expected"]["tensors"]}
    assert set(want.values()) == {"parameter", "buffer"}
    with client.acquire(name) as model:
        assert dict(model.metadata) == {}
        assert dict(model.roles) == want


def test_status_and_models(client, root, daemon):
    name = load(client, root, SAFETENSORS)
    status = client.status(name)
    assert status["name"] == name
    assert status["state"] == "ready"
    assert status["leases"] == 0
    assert status["bytes_loaded"] == status["bytes_total"] > 0
    assert status["devices"] == ["host"]
    assert status["tensor_count"] == len(expected(SAFETENSORS))
    assert status["pinned"] is False
    assert status["error"] == ""
    assert status["path"].endswith(os.path.basename(SAFETENSORS))
    assert [m["name"] for m in client.models()] == [name]
    with client.acquire(name):
        assert client.status(name)["leases"] == 1
        assert daemon.leases(name) == 1
        with pytest.raises(warmstart.FailedPrecondition) as refused:
            client.unload(name)
        assert "lease" in str(refused.value)
    assert client.status(name)["leases"] == 0
    client.unload(name)
    with pytest.raises(warmstart.NotFound):
        client.status(name)
    assert client.models() == []


def test_dtypes_numpy_lacks_come_as_raw_views(client, root):
    name = load(client, root, SAFETENSORS_BF16)
    with client.acquire(name) as model:
        array = model.tensors["test"]
        assert model.dtypes["test"] == "BF16"
        assert array.dtype == np.uint16
        assert array.shape == (2, 2) == model.shapes["test"]
        # BF16 is the top half of an F32: [[2.25, 1], [1, 1]].
        as_f32 = (array.astype(np.uint32) << 16).view(np.float32)
        assert as_f32.tolist() == [[2.25, 1.0], [1.0, 1.0]]


def test_quantized_gguf_tensors_are_bytes(client, root):
    name = load(client, root, GGUF_ALLTYPES)
    want = expected(GGUF_ALLTYPES)
    with client.acquire(name) as model:
        quantized = model.tensors["t.q4_0"]
        assert model.dtypes["t.q4_0"] == "Q4_0"
        assert model.shapes["t.q4_0"] == (4, 64)
        assert quantized.dtype == np.uint8
        assert quantized.shape == (144,)
        assert model.dtypes["t.mxfp4"] == "MXFP4"
        assert model.tensors["t.mxfp4"].shape == (68,)
        assert model.dtypes["t.tq1_0"] == "TQ1_0"
        # Types NumPy has keep their dtype and shape.
        assert model.tensors["t.f32_4d"].dtype == np.float32
        assert model.tensors["t.f32_4d"].shape == model.shapes["t.f32_4d"]
        assert model.tensors["t.f64_3d"].dtype == np.float64
        assert model.tensors["t.i16"].dtype == np.int16
        assert model.tensors["t.bf16"].dtype == np.uint16
        assert model.tensors["t.bf16"].shape == model.shapes["t.bf16"]
        for tensor, (_, digest) in want.items():
            assert sha256(model.tensors[tensor]) == digest, tensor
        with pytest.raises(warmstart.UnsupportedDType) as unsupported:
            model.to_torch()
        message = str(unsupported.value)
        assert "'t.q4_0'" in message and "Q4_0" in message
        assert isinstance(unsupported.value, TypeError)


def test_to_torch_shares_memory(client, root):
    for fixture in (SAFETENSORS, SAFETENSORS_BF16, TENSORIZER, GGUF):
        name = load(client, root, fixture)
        with client.acquire(name) as model:
            tensors = model.to_torch()
            assert set(tensors) == set(model.tensors)
            for tensor, value in tensors.items():
                array = model.tensors[tensor]
                pointer = array.__array_interface__["data"][0]
                assert value.data_ptr() == pointer, tensor
                assert value.data_ptr() == array.ctypes.data
                assert tuple(value.shape) == model.shapes[tensor]
                assert value.element_size() * value.nelement() == (
                    array.nbytes)
                if model.dtypes[tensor] == "BF16":
                    assert value.dtype == torch.bfloat16
                elif model.dtypes[tensor] == "F32":
                    assert value.dtype == torch.float32
                    assert np.array_equal(value.numpy(), array)
                # The same bytes, read through torch.
                raw = value.reshape(-1).view(torch.uint8).numpy().tobytes()
                assert raw == array.tobytes()
    bf16 = warmstart.connect(client.socket).acquire(
        model_name(SAFETENSORS_BF16)).to_torch()["test"]
    assert bf16.float().tolist() == [[2.25, 1.0], [1.0, 1.0]]


@pytest.mark.parametrize("fixture", ALL + (TENSORIZER_MODULE,))
def test_lazy_tensors_and_strided_torch_views_behave_as_per_tensor_views(
        client, root, fixture):
    # Arrays are made on first access and torch tensors as strided views of
    # one span: the same objects, bytes, dtypes, shapes, strides and
    # addresses as the per-tensor path (warmstart._to_torch over each
    # array) gives, in the same order.
    name = load(client, root, fixture)
    with client.acquire(name) as model:
        tensors = model.tensors
        names = list(tensors)
        assert names == list(model.dtypes) == list(model.shapes)
        assert len(tensors) == len(names)
        assert all(n in tensors for n in names)
        assert "no such tensor" not in tensors
        with pytest.raises(KeyError):
            tensors["no such tensor"]
        with pytest.raises(TypeError):
            tensors["x"] = np.zeros(1)
        assert set(model.roles) == set(names)
        try:
            reference = {n: warmstart._to_torch(torch, n, model.dtypes[n],
                                                model.shapes[n], tensors[n])
                         for n in names}
        except warmstart.UnsupportedDType as error:
            with pytest.raises(warmstart.UnsupportedDType) as raised:
                model.to_torch()
            assert str(raised.value) == str(error)
            return
        made = model.to_torch()
        assert list(made) == names
        for n in names:
            got, want = made[n], reference[n]
            assert got.dtype == want.dtype, n
            assert tuple(got.shape) == tuple(want.shape), n
            assert got.stride() == want.stride(), n
            assert got.is_contiguous(), n
            if want.nelement():
                assert got.data_ptr() == want.data_ptr(), n
            assert torch.equal(got.reshape(-1).view(torch.uint8),
                               want.reshape(-1).view(torch.uint8)), n
        # Made once, then kept.
        assert all(tensors[n] is model.tensors[n] for n in names)


@pytest.mark.parametrize("fixture", ALL + (TENSORIZER_MODULE,))
def test_tensor_table_comes_in_one_call_and_agrees_with_per_tensor_calls(
        client, root, fixture, monkeypatch):
    # Acquiring reads the whole table with warmstart_model_tensor_table,
    # never one call per tensor, and what it gives (order, dtypes, shapes,
    # addresses, sizes) is what warmstart_model_tensor says tensor by
    # tensor.
    name = load(client, root, fixture)
    per_tensor = warmstart._LIB.warmstart_model_tensor
    calls = []

    def counted(*args):
        calls.append(args[1])
        return per_tensor(*args)

    monkeypatch.setattr(warmstart._LIB, "warmstart_model_tensor", counted)
    with client.acquire(name) as model:
        assert calls == [], "acquire called warmstart_model_tensor"
        handle = model._lease.handle
        count = warmstart._LIB.warmstart_model_tensor_count(handle)
        assert count > 0
        expected = {}
        tensor = warmstart._lib.Tensor()
        for index in range(count):
            assert per_tensor(handle, index, ctypes.byref(tensor)) == 0
            expected.setdefault(tensor.name.decode(), (
                tensor.dtype.decode(), tuple(tensor.shape[:tensor.ndim]),
                tensor.data, tensor.nbytes))
        assert list(model.dtypes) == list(expected)
        assert list(model.shapes) == list(expected)
        assert list(model.tensors) == list(expected)
        for tensor_name, (dtype, shape, data, nbytes) in expected.items():
            assert model.dtypes[tensor_name] == dtype, tensor_name
            assert model.shapes[tensor_name] == shape, tensor_name
            array = model.tensors[tensor_name]
            assert array.nbytes == nbytes, tensor_name
            if nbytes:
                address = array.__array_interface__["data"][0]
                assert address == data, tensor_name


def layered_checkpoint(layers=10):
    """name -> torch tensor: a small layered model whose tensors of one
    shape interleave (q_proj and o_proj, the two norms), with dtypes torch
    and NumPy share and BF16, a scalar, 0-byte tensors, a 6-byte F16
    tensor that leaves the next one unaligned in the file, and names that
    are not ASCII."""
    generator = torch.Generator().manual_seed(17)

    def random(*shape, dtype=torch.float32):
        return torch.randn(*shape, generator=generator).to(dtype)

    tensors = {"model.embed_tokens.weight": random(32, 8)}
    for layer in range(layers):
        prefix = f"model.layers.{layer}."
        tensors[prefix + "input_layernorm.weight"] = random(8)
        tensors[prefix + "self_attn.q_proj.weight"] = random(8, 8)
        tensors[prefix + "self_attn.k_proj.weight"] = random(
            4, 8, dtype=torch.bfloat16)
        tensors[prefix + "self_attn.o_proj.weight"] = random(8, 8)
        tensors[prefix + "mlp.up_proj.weight"] = random(
            16, 8, dtype=torch.float16)
        tensors[prefix + "mlp.down_proj.weight"] = random(
            8, 16, dtype=torch.float16)
        tensors[prefix + "post_attention_layernorm.weight"] = random(8)
    tensors["model.norm.weight"] = random(8)
    tensors["scalar"] = torch.tensor(2.5)
    tensors["empty"] = torch.zeros(0, 4)
    tensors["empty.f16"] = torch.zeros(3, 0, dtype=torch.float16)
    tensors["odd.f16"] = random(3, dtype=torch.float16)
    tensors["z.i64"] = torch.arange(4, dtype=torch.int64).reshape(2, 2)
    tensors["z.u8"] = torch.arange(5, dtype=torch.uint8)
    tensors["z.bool"] = torch.tensor([True, False, True])
    tensors["\u00fc name/\u540d \u00df.weight"] = random(2, 3)
    tensors["tab\tand:colon"] = random(8, 8)
    return tensors


@pytest.mark.parametrize("layout", ["packed", "file_image"])
def test_to_torch_of_a_layered_model_gives_each_tensor_its_own_bytes(
        client, root, layout):
    # to_torch builds views in bulk (tensors of one dtype and shape at
    # equally spaced offsets from one as_strided and one unbind): each one
    # must be the tensor the file holds (values, dtype, shape), at the
    # address the table gives, with the per-tensor path's strides; in
    # the model's order; 0-byte and unaligned tensors (file_image) too.
    from safetensors.torch import save_file
    written = layered_checkpoint()
    path = os.path.join(root, f"layered-{layout}.safetensors")
    save_file(written, path)
    name = f"layered-{layout}"
    client.load(name, path, timeout=60, layout=layout)
    with client.acquire(name) as model:
        names = list(model.tensors)
        assert sorted(names) == sorted(written)
        made = model.to_torch()
        assert list(made) == names
        for tensor_name in names:
            got, want = made[tensor_name], written[tensor_name]
            assert got.dtype == want.dtype, tensor_name
            assert tuple(got.shape) == tuple(want.shape), tensor_name
            assert got.is_contiguous(), tensor_name
            assert torch.equal(got, want), tensor_name
            array = model.tensors[tensor_name]
            reference = warmstart._to_torch(
                torch, tensor_name, model.dtypes[tensor_name],
                model.shapes[tensor_name], array)
            assert got.stride() == reference.stride(), tensor_name
            if want.nelement():
                assert got.data_ptr() == array.__array_interface__[
                    "data"][0], tensor_name


def test_to_torch_of_many_equally_spaced_tensors_makes_few_torch_calls(
        client, root, monkeypatch):
    # 2,000 tensors of one shape back to back: viewed through one
    # as_strided and one unbind, not a call per tensor; every view at its
    # own address with its own values.
    from safetensors.torch import save_file
    count = 2000
    written = {f"w.{i}": torch.full((4, 8), float(i)) for i in range(count)}
    path = os.path.join(root, "many.safetensors")
    save_file(written, path)
    client.load("many", path, timeout=60)
    calls = []
    as_strided = torch.Tensor.as_strided

    def counted(self, *args):
        calls.append(args[0])
        return as_strided(self, *args)

    monkeypatch.setattr(torch.Tensor, "as_strided", counted)
    with client.acquire("many") as model:
        made = model.to_torch()
        assert len(calls) <= 2, len(calls)
        assert len(made) == count
        for i in range(count):
            view = made[f"w.{i}"]
            assert view.shape == (4, 8)
            assert float(view[3, 7]) == float(i) == float(view[0, 0])
            assert view.data_ptr() == model.tensors[f"w.{i}"].ctypes.data


def test_an_empty_model_attaches_to_nothing(client, root):
    from safetensors.torch import save_file
    path = os.path.join(root, "nothing.safetensors")
    save_file({}, path)
    client.load("nothing", path, timeout=60)
    with client.acquire("nothing") as model:
        assert len(model.tensors) == 0
        assert dict(model.dtypes) == {}
        assert model.to_torch() == {}


def test_spaced_runs_cover_every_offset_once_equally_spaced():
    def check(offsets):
        result = [(list(map(int, indices)), step) for indices, step in
                  warmstart._spaced_runs(np.array(offsets, dtype=np.int64))]
        seen = sorted(i for indices, _ in result for i in indices)
        assert seen == list(range(len(offsets)))
        for indices, step in result:
            first = offsets[indices[0]]
            assert [offsets[i] for i in indices] == [
                first + k * step for k in range(len(indices))]
        return result

    assert check([]) == []
    assert check([5]) == [([0], 0)]
    assert check([5, 9]) == [([0, 1], 4)]
    assert check([0, 4, 8, 20, 21]) == [([0, 1, 2], 4), ([3, 4], 1)]
    # One layer after another: q at 100 i, o at 100 i + 40, then a last
    # tensor of the same shape: three runs (period 2), not twenty.
    layered = sorted([100 * i for i in range(10)] +
                     [100 * i + 40 for i in range(10)] + [5000])
    assert len(check(layered)) == 3
    assert len(check(list(range(0, 64000, 64)))) == 1
    generator = np.random.default_rng(17)
    for _ in range(50):
        offsets = sorted(generator.choice(
            1000, size=generator.integers(0, 40), replace=False).tolist())
        check(offsets)


def test_arrays_are_read_only(client, root):
    name = load(client, root, SAFETENSORS)
    with client.acquire(name) as model:
        for array in model.tensors.values():
            with pytest.raises(ValueError):
                array[...] = 0
            with pytest.raises(ValueError):
                array.flags.writeable = True
            with pytest.raises(ValueError):
                array.reshape(-1).view(np.uint8)[0] = 1
            with pytest.raises(ValueError):
                np.asarray(array).setflags(write=True)
        with pytest.raises(TypeError):
            model.tensors["x"] = np.zeros(1)


def test_array_outlives_release_and_with_block(client, root, daemon):
    name = load(client, root, GGUF)
    want = expected(GGUF)
    first = next(iter(want))

    model = client.acquire(name)
    array = model.tensors[first]
    other = model.tensors[list(want)[-1]]
    model.release()
    model.release()  # Idempotent.
    assert model.released
    with pytest.raises(warmstart.FailedPrecondition):
        model.tensors
    # The arrays still hold the lease and read the right bytes.
    assert model.lease_held
    assert sha256(array) == want[first][1]
    assert daemon.leases(name) == 1
    del other
    assert model.lease_held
    del array
    gc.collect()
    assert not model.lease_held
    assert wait_for(lambda: daemon.leases(name) == 0, 30)

    with client.acquire(name) as model:
        kept = model.tensors[first]
        torch_kept = model.to_torch()[first]
    assert sha256(kept) == want[first][1]
    del kept
    assert model.lease_held  # The torch tensor holds it too.
    as_bytes = torch_kept.reshape(-1).view(torch.uint8).numpy()
    assert hashlib.sha256(as_bytes).hexdigest() == want[first][1]
    del as_bytes
    assert daemon.leases(name) == 1
    del torch_kept
    gc.collect()
    assert wait_for(lambda: daemon.leases(name) == 0, 30)

    # Released before any array was taken: the lease goes at once.
    with client.acquire(name) as model:
        assert daemon.leases(name) == 1
    assert not model.lease_held
    assert daemon.leases(name) == 0


def test_a_forked_child_leaves_the_parents_lease_alone(client, root, daemon):
    name = load(client, root, GGUF)
    want = expected(GGUF)
    first = next(iter(want))
    model = client.acquire(name)
    array = model.tensors[first]
    pid = os.fork()
    if pid == 0:
        # A DataLoader-style worker dropping what it inherited.
        try:
            del array
            model.release()
            gc.collect()
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert status == 0
    assert daemon.leases(name) == 1
    assert sha256(array) == want[first][1]
    del array
    model.release()
    gc.collect()
    assert wait_for(lambda: daemon.leases(name) == 0, 30)


WORKER = r"""
import hashlib, json, sys
import warmstart
client = warmstart.connect(sys.argv[1])
model = client.acquire(sys.argv[2])
tensors = model.tensors
def hashes():
    return {n: hashlib.sha256(memoryview(a)).hexdigest()
            for n, a in tensors.items()}
print(json.dumps({"event": "acquired", "sha256": hashes()}), flush=True)
for line in sys.stdin:
    if line.strip() == "hash":
        print(json.dumps({"event": "hash", "sha256": hashes()}), flush=True)
    elif line.strip() == "exit":
        break
"""


def worker(socket, name):
    env = dict(os.environ, PYTHONPATH=PACKAGE_DIR, WARMSTART_LIBRARY=LIBRARY)
    return subprocess.Popen([PYTHON, "-c", WORKER, socket, name], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def ask(process, command):
    process.stdin.write(command + "\n")
    process.stdin.flush()


def test_two_processes_map_the_same_model(client, root, daemon):
    name = load(client, root, TENSORIZER)
    want = {n: digest for n, (_, digest) in expected(TENSORIZER).items()}
    first = worker(daemon.socket, name)
    second = worker(daemon.socket, name)
    try:
        assert event(first)["sha256"] == want
        assert event(second)["sha256"] == want
        assert daemon.leases(name) == 2
        ask(first, "exit")
        assert first.wait(30) == 0
        assert wait_for(lambda: daemon.leases(name) == 1, 30)
        ask(second, "hash")
        assert event(second) == {"event": "hash", "sha256": want}
        ask(second, "exit")
        assert second.wait(30) == 0
        assert wait_for(lambda: daemon.leases(name) == 0, 30)
    finally:
        for process in (first, second):
            if process.poll() is None:
                process.kill()
                process.wait()


def test_connect_to_a_missing_socket_raises_unavailable(workdir):
    missing = os.path.join(workdir, "missing.sock")
    with pytest.raises(warmstart.Unavailable) as error:
        warmstart.connect(missing, timeout=1)
    assert missing in str(error.value)
    assert error.value.code == 14
    assert isinstance(error.value, warmstart.Error)


def test_connect_without_a_path_uses_the_environment(daemon, monkeypatch):
    monkeypatch.setenv("WARMSTART_SOCKET", daemon.socket)
    with warmstart.connect() as client:
        assert client.socket == daemon.socket
        assert client.models() == []


def test_connect_waits_for_the_daemon(workdir, root):
    socket = os.path.join(workdir, "d.sock")
    later = subprocess.Popen(
        ["/bin/sh", "-c", 'sleep 0.5; exec "$0" "$@"', DAEMON, "--socket",
         socket, "--backend", "host", "--model_root", root],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=NATIVE_ENV)
    try:
        with warmstart.connect(socket, timeout=30, wait=True) as client:
            assert client.models() == []
    finally:
        later.kill()
        later.wait()


def test_errors_map_to_exceptions(client, root, workdir):
    with pytest.raises(warmstart.NotFound) as missing:
        client.acquire("absent")
    assert "absent" in str(missing.value)
    assert missing.value.code == 5
    with pytest.raises(warmstart.NotFound):
        client.unload("absent")
    with pytest.raises(warmstart.InvalidArgument):
        client.load("bad name", os.path.join(root, "x.gguf"))
    outside = os.path.join(workdir, "outside.gguf")
    shutil.copy(os.path.join(FIXTURES, GGUF), outside)
    with pytest.raises(warmstart.PermissionDenied) as refused:
        client.load("x", outside)
    assert "root" in str(refused.value)
    name = load(client, root, GGUF)
    with pytest.raises(warmstart.AlreadyExists):
        client.load(name, os.path.join(root, os.path.basename(SAFETENSORS)))
    with pytest.raises(ValueError):
        client.acquire(name, timeout=-1)
    client.close()
    client.close()
    with pytest.raises(warmstart.FailedPrecondition):
        client.models()


def test_model_outlives_its_client(daemon, root):
    client = warmstart.connect(daemon.socket)
    name = load(client, root, SAFETENSORS)
    model = client.acquire(name)
    client.close()
    del client
    gc.collect()
    want = expected(SAFETENSORS)
    for tensor, (_, digest) in want.items():
        assert sha256(model.tensors[tensor]) == digest
    model.release()
    assert wait_for(lambda: daemon.leases(name) == 0, 30)


def test_arrays_survive_the_daemon(daemon, root, client):
    """Host memfds stay mapped after the daemon dies."""
    name = load(client, root, GGUF)
    model = client.acquire(name)
    arrays = dict(model.tensors)
    daemon.process.send_signal(signal.SIGKILL)
    daemon.process.wait()
    for tensor, (_, digest) in expected(GGUF).items():
        assert sha256(arrays[tensor]) == digest
    model.release()  # The session is gone: nothing to report, no crash.
    del arrays
    gc.collect()
    assert not model.lease_held
    with pytest.raises(warmstart.Unavailable):
        client.models()


def test_version_is_the_release():
    """libwarmstart.so keeps its own copy of the version: the same as
    warmstartctl's (common/version.h)."""
    ctl = subprocess.run([CTL, "--version"], capture_output=True, text=True,
                         env=NATIVE_ENV)
    assert ctl.returncode == 0
    assert ctl.stdout.split()[1] == warmstart.__version__


def test_dtype_rules_without_a_daemon():
    layout = warmstart._dtypes.array_layout
    assert layout("F32", (2, 3), 24) == ("<f4", (2, 3))
    assert layout("BOOL", (4,), 4) == ("|b1", (4,))
    assert layout("C64", (2,), 16) == ("<c8", (2,))
    assert layout("BF16", (2, 3), 12) == ("<u2", (2, 3))
    assert layout("F8_E4M3", (2, 3), 6) == ("|u1", (2, 3))
    assert layout("F8_E5M2", (5,), 5) == ("|u1", (5,))
    assert layout("F4", (8,), 4) == ("|u1", (4,))
    assert layout("F6_E2M3", (4,), 3) == ("|u1", (3,))
    assert layout("Q4_K", (2, 256), 288) == ("|u1", (288,))
    assert layout("IQ2_XXS", (256,), 66) == ("|u1", (66,))
    assert layout("MXFP4", (32,), 17) == ("|u1", (17,))
    assert layout("SOMETHING_NEW", (3,), 9) == ("|u1", (9,))
    # A shape that does not match the bytes: bytes, never a bad view.
    assert layout("F32", (3,), 8) == ("|u1", (8,))
    assert layout("F32", (), 4) == ("<f4", ())

    # 8-bit floats become torch's where torch has them (2.1+), else a
    # clear error naming the tensor.
    raw = np.frombuffer(bytes([0x38, 0x40]), dtype=np.uint8)
    for dtype, attribute in (("F8_E4M3", "float8_e4m3fn"),
                             ("F8_E5M2", "float8_e5m2")):
        if hasattr(torch, attribute):
            value = warmstart._to_torch(torch, "w", dtype, (2,), raw)
            assert value.dtype == getattr(torch, attribute)
            assert value.data_ptr() == raw.ctypes.data
        else:
            with pytest.raises(warmstart.UnsupportedDType) as error:
                warmstart._to_torch(torch, "w", dtype, (2,), raw)
            assert "'w'" in str(error.value) and dtype in str(error.value)


def test_cuda_tensors_describe_themselves():
    """The object a GPU tensor comes as (no GPU needed to check it)."""
    tensor = warmstart.CudaTensor(object(), 0x7f0000001000, "BF16", (2, 3),
                                  12, "GPU-1234", read_only=True)
    assert tensor.device_uuid == "GPU-1234"
    assert tensor.__cuda_array_interface__ == {
        "version": 3, "shape": (2, 3), "typestr": "<u2",
        "data": (0x7f0000001000, True), "strides": None}
    quantized = warmstart.CudaTensor(object(), 0x7f0000002000, "Q8_0",
                                     (64,), 68, "GPU-1234", read_only=False)
    assert quantized.__cuda_array_interface__["shape"] == (68,)
    assert quantized.__cuda_array_interface__["typestr"] == "|u1"
    assert quantized.__cuda_array_interface__["data"] == (0x7f0000002000,
                                                          False)


@pytest.mark.parametrize("vmm", ["1", "0"], ids=["vmm", "legacy-ipc"])
def test_gpu_tensors_on_the_simulated_driver(workdir, root, monkeypatch, vmm):
    """The CUDA backend on the simulated driver: the daemon exports by VMM
    descriptor or legacy IPC handle, libwarmstart.so imports it in this
    process, and tensors come as CudaTensor objects."""
    monkeypatch.setenv("WARMSTART_LIBCUDA", CUDA_SIM)
    d = Daemon(workdir, "--model_root", root, backend="cuda",
               env={"WARMSTART_LIBCUDA": CUDA_SIM, "WARMSTART_SIM_VMM": vmm})
    try:
        with warmstart.connect(d.socket) as client:
            name = load(client, root, GGUF_ALLTYPES)
            want = expected(GGUF_ALLTYPES)
            model = client.acquire(name)
            assert len(model.devices) == 1
            gpu = model.devices[0]
            assert gpu.startswith("GPU-")
            assert set(model.tensors) == set(want)
            for tensor, (dtype, digest) in want.items():
                value = model.tensors[tensor]
                assert isinstance(value, warmstart.CudaTensor)
                assert value.device_uuid == gpu
                assert model.dtypes[tensor] == value.dtype_name == dtype
                interface = value.__cuda_array_interface__
                assert interface["version"] == 3
                # VMM imports are read-only on the simulated driver; legacy
                # IPC mappings never are.
                assert interface["data"] == (value.ptr, vmm == "1")
                assert value.read_only == (vmm == "1")
                assert interface["strides"] is None
                # The simulated GPU's pointers are host addresses.
                data = ctypes.string_at(value.ptr, value.nbytes)
                assert hashlib.sha256(data).hexdigest() == digest, tensor
            del value
            assert model.tensors["t.bf16"].typestr == "<u2"
            assert model.tensors["t.bf16"].shape == model.shapes["t.bf16"]
            assert model.tensors["t.q4_0"].shape == (144,)
            assert model.tensors["t.f32_4d"].dtype == np.float32
            assert model.tensors_on(gpu)["t.i8"] is model.tensors["t.i8"]
            with pytest.raises(warmstart.NotFound):
                model.tensors_on("host")
            if torch.cuda.is_available():
                with pytest.raises(warmstart.UnsupportedDType):
                    model.to_torch()

            # A CudaTensor keeps the lease, as host arrays do.
            kept = model.tensors["t.f32_1d"]
            model.release()
            assert d.leases(name) == 1
            data = ctypes.string_at(kept.ptr, kept.nbytes)
            assert hashlib.sha256(data).hexdigest() == want["t.f32_1d"][1]
            del kept
            gc.collect()
            assert wait_for(lambda: d.leases(name) == 0, 30)
    finally:
        d.stop()


def run_python(code, **env):
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("WARMSTART_LIBRARY", "PYTHONPATH")}
    environment.update(env)
    return subprocess.run([PYTHON, "-c", code], env=environment,
                          capture_output=True, text=True, timeout=60)


def test_library_is_found_next_to_the_package_or_in_the_prefix(workdir):
    missing = os.path.join(workdir, "nowhere", "libwarmstart.so")
    result = run_python("import warmstart", PYTHONPATH=PACKAGE_DIR,
                        WARMSTART_LIBRARY=missing)
    assert result.returncode != 0
    assert "ImportError" in result.stderr and missing in result.stderr

    # Next to the package, as tools/install lays it out.
    site = os.path.join(workdir, "prefix", "lib", "python3", "site-packages")
    shutil.copytree(os.path.join(PACKAGE_DIR, "warmstart"),
                    os.path.join(site, "warmstart"))
    shutil.copy(LIBRARY, os.path.join(site, "warmstart"))
    check = "import warmstart; print(warmstart.__version__)"
    result = run_python(check, PYTHONPATH=site)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0.1.0"

    # In PREFIX/lib.
    os.remove(os.path.join(site, "warmstart", "libwarmstart.so"))
    result = run_python("import warmstart", PYTHONPATH=site)
    assert result.returncode != 0
    assert "WARMSTART_LIBRARY" in result.stderr
    shutil.copy(LIBRARY, os.path.join(workdir, "prefix", "lib"))
    result = run_python(check, PYTHONPATH=site)
    assert result.returncode == 0, result.stderr
