"""`warmstartctl inspect --json --hash` on every shared fixture agrees with
the fixture's expected-values file, written from the reference writers."""
import glob
import json
import os
import subprocess

import pytest

CTL = os.environ["WARMSTART_CTL"]
FIXTURES = os.environ["WARMSTART_FIXTURES"]


def inspect(*args):
    return subprocess.run([CTL, "inspect", *args], capture_output=True,
                          text=True, timeout=120)


def inspect_json(path, *extra):
    result = inspect("--json", "--hash", *extra, path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    files = json.loads(result.stdout)["files"]
    assert len(files) == 1
    return files[0]


def valid(pattern):
    return sorted(p for p in glob.glob(os.path.join(FIXTURES, pattern)))


SAFETENSORS = valid("safetensors/*.safetensors")
TENSORIZER = valid("tensorizer/*.tensors")
GGUF = valid("gguf/*.gguf")
INVALID = valid("*/invalid/*.safetensors") + valid("*/invalid/*.gguf") + \
    valid("*/invalid/*.tensors")


def test_every_format_has_fixtures():
    assert SAFETENSORS and TENSORIZER and GGUF and INVALID


@pytest.mark.parametrize("path", SAFETENSORS, ids=os.path.basename)
def test_safetensors_matches_expected(path):
    expected = json.load(open(path + ".json"))["independent_parse"]
    got = inspect_json(path)
    assert got["format"] == "safetensors"
    assert got["format_version"] is None
    assert got["metadata"] == (expected.get("metadata") or {})
    want = {t["name"]: t for t in expected["tensors"]}
    assert sorted(t["name"] for t in got["tensors"]) == sorted(want)
    for tensor in got["tensors"]:
        w = want[tensor["name"]]
        assert tensor["dtype"] == w["dtype"]
        assert tensor["shape"] == w["shape"]
        assert tensor["nbytes"] == w["nbytes"]
        assert tensor["offset"] == w["absolute_offset"]
        assert tensor["sha256"] == w["sha256"]


def tensorizer_key_args(expected_file):
    doc = json.load(open(expected_file))
    if "key_hex" in doc:
        return ["--key-hex", doc["key_hex"]]
    if "password" in doc:
        return ["--password", doc["password"]]
    return []


TORCH_TO_DTYPE = {
    "torch.float32": "F32", "torch.float16": "F16", "torch.bfloat16": "BF16",
    "torch.float64": "F64", "torch.complex64": "C64",
    "torch.complex128": "C128", "torch.complex32": "C32",
    "torch.int64": "I64", "torch.int32": "I32", "torch.int16": "I16",
    "torch.int8": "I8", "torch.uint8": "U8", "torch.bool": "BOOL",
}


@pytest.mark.parametrize("path", TENSORIZER, ids=os.path.basename)
def test_tensorizer_matches_expected(path):
    expected = json.load(open(path + ".json"))["expected"]
    got = inspect_json(path, *tensorizer_key_args(path + ".json"))
    assert got["format"] == "tensorizer"
    assert got["format_version"] == expected["file_format_version"]
    assert len(got["tensors"]) == expected["tensor_count"]
    for tensor, want in zip(got["tensors"], expected["tensors"]):
        assert tensor["name"] == want["name"]
        assert tensor["shape"] == want["shape"]
        assert tensor["nbytes"] == want["nbytes"]
        assert tensor["sha256"] == want["sha256"]
        if want.get("torch_dtype") in TORCH_TO_DTYPE:
            assert tensor["dtype"] == TORCH_TO_DTYPE[want["torch_dtype"]]


@pytest.mark.parametrize("path", TENSORIZER, ids=os.path.basename)
def test_tensorizer_stored_checksums_verify(path):
    result = inspect("--verify", *tensorizer_key_args(path + ".json"), path)
    assert result.returncode == 0, result.stderr
    assert "all match" in result.stdout


def gguf_expected(path):
    return json.load(open(path[:-len(".gguf")] + ".json"))


@pytest.mark.parametrize("path", GGUF, ids=os.path.basename)
def test_gguf_matches_expected(path):
    expected = gguf_expected(path)
    got = inspect_json(path)
    assert got["format"] == "gguf"
    assert got["format_version"] == expected["version"]
    tensors = expected["tensors"]
    assert [t["name"] for t in got["tensors"]] == [t["name"] for t in tensors]
    for tensor, want in zip(got["tensors"], tensors):
        assert tensor["shape"] == list(reversed(want["dims"]))
        assert tensor["dtype"] == want["type"]
        assert tensor["nbytes"] == want["nbytes"]
        assert tensor["offset"] == want["absolute_offset"]
        assert tensor["sha256"] == want["sha256"]


@pytest.mark.parametrize("path", GGUF, ids=os.path.basename)
def test_gguf_metadata_keys_in_file_order(path):
    expected = gguf_expected(path)
    got = inspect_json(path)
    keys = [kv["key"] for kv in expected["metadata"]]
    assert list(got["metadata"].keys()) == keys
    for kv in expected["metadata"]:
        value = got["metadata"][kv["key"]]
        if kv["type"] == "array":
            assert value["len"] == kv["length"], kv["key"]
            assert value["type"].lower() == kv["array_type"], kv["key"]
        elif kv["type"] in ("float32", "float64"):
            want = kv["value"]
            if isinstance(want, str) or isinstance(value, str):
                assert str(value) == str(want), kv["key"]
            else:
                assert value == pytest.approx(want, rel=1e-6), kv["key"]
        else:
            assert value == kv["value"], kv["key"]


@pytest.mark.parametrize("path", GGUF, ids=os.path.basename)
def test_gguf_full_metadata_arrays(path):
    expected = gguf_expected(path)
    got = inspect_json(path, "--full-metadata")
    for kv in expected["metadata"]:
        if kv["type"] != "array" or kv["array_type"] == "array":
            continue
        values = got["metadata"][kv["key"]]
        assert isinstance(values, list), kv["key"]
        assert len(values) == kv["length"], kv["key"]
        if values and kv["array_type"] not in ("float32", "float64"):
            assert values[0] == kv["first"], kv["key"]
            assert values[-1] == kv["last"], kv["key"]


@pytest.mark.parametrize("path", INVALID, ids=os.path.basename)
def test_invalid_fixtures_exit_2_with_one_line(path):
    result = inspect("--json", path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().split("\n")
    assert len(lines) == 1
    assert os.path.basename(path) in lines[0]


def test_encrypted_without_key_lists_but_refuses_hash():
    path = [p for p in TENSORIZER if "encrypted_key" in p][0]
    listing = inspect("--json", path)
    assert listing.returncode == 0, listing.stderr
    assert json.loads(listing.stdout)["files"][0]["tensors"]
    for flag in ("--hash", "--verify"):
        result = inspect(flag, path)
        assert result.returncode == 2
        assert result.stdout == ""
        assert "key is needed" in result.stderr


def test_wrong_key_is_refused():
    path = [p for p in TENSORIZER if "encrypted_key" in p][0]
    result = inspect("--hash", "--key-hex", "00" * 32, path)
    assert result.returncode == 2
    assert "decryption failed" in result.stderr


def test_missing_path_exits_4():
    result = inspect(os.path.join(FIXTURES, "no-such-file.safetensors"))
    assert result.returncode == 4
    assert "no-such-file.safetensors" in result.stderr


def test_checksum_mismatch_exits_7(tmp_path):
    source = [p for p in TENSORIZER if "module_simple_v1" in p][0]
    data = bytearray(open(source, "rb").read())
    tensors = json.loads(inspect("--json", source).stdout)["files"][0]["tensors"]
    data[tensors[-1]["offset"]] ^= 0x01
    damaged = tmp_path / "damaged.tensors"
    damaged.write_bytes(bytes(data))
    result = inspect("--verify", str(damaged))
    assert result.returncode == 7, result.stderr
    assert result.stdout == ""
    assert "mismatch" in result.stderr
    assert len(result.stderr.strip().split("\n")) == 1


def test_mistyped_flag_is_a_usage_error():
    result = inspect("--verfy", SAFETENSORS[0])
    assert result.returncode == 1
    assert "unknown flag --verfy" in result.stderr
