"""`warmstartctl inspect` on files written by the reference writers from
PyPI (safetensors, gguf), checked against what the writers were given."""
import hashlib
import json
import os
import subprocess
import tempfile

import numpy as np
import pytest

gguf = pytest.importorskip("gguf", reason="tools/test installs gguf in .venv")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

CTL = os.environ["WARMSTART_CTL"]


def inspect(*args):
    return subprocess.run([CTL, "inspect", *args], capture_output=True,
                          text=True, timeout=300)


def inspect_files(*paths, extra=("--hash",)):
    result = inspect("--json", *extra, *paths)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["files"]


def sha256(array):
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


@pytest.fixture
def tmp():
    with tempfile.TemporaryDirectory(prefix="ws-py-", dir="/tmp") as d:
        yield d


NUMPY_TO_DTYPE = {
    np.float32: "F32", np.float16: "F16", np.float64: "F64", np.int64: "I64",
    np.int32: "I32", np.int16: "I16", np.int8: "I8", np.uint8: "U8",
    np.uint16: "U16", np.uint32: "U32", np.uint64: "U64", np.bool_: "BOOL",
    np.complex64: "C64",
}


def random_tensors(rng, count):
    tensors = {}
    types = list(NUMPY_TO_DTYPE)
    for i in range(count):
        dtype = types[i % len(types)]
        ndim = int(rng.integers(0, 4))
        shape = tuple(int(x) for x in rng.integers(0, 9, size=ndim))
        if dtype == np.bool_:
            data = rng.integers(0, 2, size=shape).astype(np.bool_)
        elif dtype == np.complex64:
            data = (rng.standard_normal(shape) +
                    1j * rng.standard_normal(shape)).astype(np.complex64)
        else:
            data = (rng.standard_normal(shape) * 100).astype(dtype)
        # 0-d results come back as numpy scalars; the writer wants arrays.
        tensors[f"layer.{i}.{np.dtype(dtype).name}"] = np.asarray(data,
                                                                  dtype=dtype)
    return tensors


def check_safetensors(files, tensors):
    got = {t["name"]: t for f in files for t in f["tensors"]}
    assert sorted(got) == sorted(tensors)
    for name, data in tensors.items():
        assert got[name]["dtype"] == NUMPY_TO_DTYPE[data.dtype.type], name
        assert got[name]["shape"] == list(data.shape), name
        assert got[name]["nbytes"] == data.nbytes, name
        assert got[name]["sha256"] == sha256(data), name


def test_safetensors_many_dtypes_and_shapes(tmp):
    rng = np.random.default_rng(1)
    tensors = random_tensors(rng, 40)
    path = os.path.join(tmp, "model.safetensors")
    safetensors_numpy.save_file(tensors, path, metadata={"format": "np",
                                                         "note": "ü"})
    files = inspect_files(path)
    assert files[0]["metadata"] == {"format": "np", "note": "ü"}
    check_safetensors(files, tensors)


def test_safetensors_bf16_from_torch(tmp):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file
    tensor = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    path = os.path.join(tmp, "bf16.safetensors")
    save_file({"w": tensor.to(torch.bfloat16)}, path)
    [file] = inspect_files(path)
    [entry] = file["tensors"]
    assert entry["dtype"] == "BF16"
    raw = tensor.to(torch.bfloat16).view(torch.int16).numpy().tobytes()
    assert entry["sha256"] == hashlib.sha256(raw).hexdigest()


def write_sharded(tmp, shards):
    weight_map = {}
    for index, tensors in enumerate(shards):
        name = f"model-{index + 1:05d}-of-{len(shards):05d}.safetensors"
        safetensors_numpy.save_file(tensors, os.path.join(tmp, name))
        for tensor in tensors:
            weight_map[tensor] = name
    index_path = os.path.join(tmp, "model.safetensors.index.json")
    with open(index_path, "w") as f:
        json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, f)
    return index_path, weight_map


def test_sharded_checkpoint_by_index_and_by_folder(tmp):
    rng = np.random.default_rng(2)
    all_tensors = random_tensors(rng, 30)
    names = sorted(all_tensors)
    shards = [{n: all_tensors[n] for n in names[i::3]} for i in range(3)]
    index_path, _ = write_sharded(tmp, shards)
    for target in (index_path, tmp):
        files = inspect_files(target)
        assert len(files) == 3
        check_safetensors(files, all_tensors)


def test_sharded_index_naming_a_missing_tensor_is_refused(tmp):
    rng = np.random.default_rng(3)
    index_path, weight_map = write_sharded(tmp, [random_tensors(rng, 4)])
    weight_map["ghost.weight"] = next(iter(weight_map.values()))
    with open(index_path, "w") as f:
        json.dump({"weight_map": weight_map}, f)
    result = inspect(index_path)
    assert result.returncode == 2
    assert "ghost.weight" in result.stderr
    assert result.stdout == ""


def test_truncated_safetensors_exits_2(tmp):
    path = os.path.join(tmp, "t.safetensors")
    safetensors_numpy.save_file({"a": np.ones((64, 64), np.float32)}, path)
    size = os.path.getsize(path)
    for cut in (4, 20, size - 1):
        with open(path, "r+b") as f:
            f.truncate(cut)
        result = inspect(path)
        assert result.returncode == 2, (cut, result.stderr)
        assert path in result.stderr
        assert len(result.stderr.strip().split("\n")) == 1


def write_gguf(path, endianess):
    rng = np.random.default_rng(4)
    writer = gguf.GGUFWriter(path, "testarch", endianess=endianess)
    writer.add_uint32("test.u32", 4000000000)
    writer.add_int64("test.i64", -(2 ** 63))
    writer.add_uint64("test.u64", 2 ** 64 - 1)
    writer.add_float32("test.f32", 0.5)
    writer.add_bool("test.bool", True)
    writer.add_string("test.str", "héllo")
    writer.add_array("test.tokens", ["a", "b", "c"])
    tensors = {
        "f32": rng.standard_normal((3, 5)).astype(np.float32),
        "f16": rng.standard_normal((4, 8)).astype(np.float16),
        "i8": rng.integers(-100, 100, (2, 3, 4)).astype(np.int8),
        "i32": rng.integers(-100, 100, (7,)).astype(np.int32),
    }
    for name, data in tensors.items():
        # The writer byte-swaps big-endian tensors in place: give it a copy.
        writer.add_tensor(name, data.copy())
    q_source = rng.standard_normal((2, 64)).astype(np.float32)
    q8 = gguf.quants.quantize(q_source, gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("q8", q8, raw_shape=q8.shape,
                      raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return tensors, q8


def test_gguf_written_by_gguf_py(tmp):
    path = os.path.join(tmp, "m.gguf")
    tensors, q8 = write_gguf(path, gguf.GGUFEndian.LITTLE)
    [file] = inspect_files(path)
    assert file["format"] == "gguf"
    assert file["format_version"] == 3
    md = file["metadata"]
    assert md["test.u32"] == 4000000000
    assert md["test.i64"] == -(2 ** 63)
    assert md["test.u64"] == 2 ** 64 - 1
    assert md["test.f32"] == 0.5
    assert md["test.bool"] is True
    assert md["test.str"] == "héllo"
    assert md["test.tokens"]["len"] == 3
    got = {t["name"]: t for t in file["tensors"]}
    expected_dtypes = {"f32": "F32", "f16": "F16", "i8": "I8", "i32": "I32"}
    for name, data in tensors.items():
        assert got[name]["dtype"] == expected_dtypes[name]
        assert got[name]["shape"] == list(data.shape)
        assert got[name]["sha256"] == sha256(data)
    assert got["q8"]["dtype"] == "Q8_0"
    assert got["q8"]["shape"] == [2, 64]
    assert got["q8"]["nbytes"] == 2 * 34 * 2
    assert got["q8"]["sha256"] == sha256(q8)
    full = inspect_files(path, extra=("--full-metadata",))[0]["metadata"]
    assert full["test.tokens"] == ["a", "b", "c"]


def test_big_endian_gguf_is_read(tmp):
    path = os.path.join(tmp, "be.gguf")
    tensors, _ = write_gguf(path, gguf.GGUFEndian.BIG)
    [file] = inspect_files(path)
    assert file["metadata"]["test.u32"] == 4000000000
    got = {t["name"]: t for t in file["tensors"]}
    assert got["f32"]["shape"] == [3, 5]
    assert got["f32"]["sha256"] == sha256(tensors["f32"].byteswap())


def test_large_sparse_file_lists_without_reading_data(tmp):
    """A 2 GB checkpoint (sparse on disk) is listed from its header alone."""
    path = os.path.join(tmp, "big.safetensors")
    nbytes = 2 * 10 ** 9
    header = json.dumps({"big": {"dtype": "U8", "shape": [nbytes],
                                 "data_offsets": [0, nbytes]}}).encode()
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as f:
        f.write(len(header).to_bytes(8, "little") + header)
        f.truncate(8 + len(header) + nbytes)
    [file] = inspect_files(path, extra=())
    assert file["tensors"][0]["nbytes"] == nbytes


# Q8_1 is 36 bytes a block in ggml (two f16 and 32 int8); gguf-py still
# says 40, the 2023 layout (daemon/formats/spec/GGUF_FORMAT.md, §6 note 1).
GGUF_PY_SIZE_DIFFERS = {"Q8_1"}


def test_every_ggml_type_gguf_py_knows(tmp):
    # Before, files using types newer than the reader's table (NVFP4,
    # Q1_0) were refused as "not supported". Each type gguf-py 0.19 knows is
    # written by gguf-py as two rows of one block; inspect must name it and
    # size it as gguf-py does.
    from gguf.constants import GGML_QUANT_SIZES
    path = os.path.join(tmp, "types.gguf")
    writer = gguf.GGUFWriter(path, "test")
    written = {}
    for qtype in gguf.GGMLQuantizationType:
        if qtype.name in GGUF_PY_SIZE_DIFFERS:
            continue
        block, type_size = GGML_QUANT_SIZES[qtype]
        data = (np.arange(2 * type_size) % 251).astype(np.uint8)
        data = data.reshape(2, type_size)
        name = "t." + qtype.name.lower()
        writer.add_tensor(name, data, raw_shape=data.shape, raw_dtype=qtype)
        written[name] = (qtype.name, block, type_size, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert {"t.nvfp4", "t.q1_0", "t.mxfp4"} <= set(written)

    [file] = inspect_files(path)
    got = {t["name"]: t for t in file["tensors"]}
    assert set(got) == set(written)
    for name, (dtype, block, type_size, data) in written.items():
        assert got[name]["dtype"] == dtype, name
        assert got[name]["shape"] == [2, block], name
        assert got[name]["nbytes"] == 2 * type_size, name
        assert got[name]["sha256"] == sha256(data), name
