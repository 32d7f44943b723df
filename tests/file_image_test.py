"""Models held as file images, through the Python package against the real
warmstartd: the worker opens the resident bytes as the model's file
(Model.file_paths), and the reference readers of each format (gguf-py's
GGUFReader, safetensors' safe_open) and NumPy's memmap read them exactly as
they read the file, while writes and resizes fail. Layout errors are clear.
"""
import hashlib
import importlib
import json
import mmap
import os
import sys

import gguf  # The reference readers, from the venv tools/test makes.
import numpy as np
import pytest
import safetensors

from harness import (FIXTURES, GGUF, GGUF_ALLTYPES, RUNFILES, SAFETENSORS_BF16,
                     ctl, in_root)

PACKAGE_DIR = os.path.join(RUNFILES, "client/python")
os.environ["WARMSTART_LIBRARY"] = os.path.join(RUNFILES,
                                               "client/libwarmstart.so")
sys.path.insert(0, PACKAGE_DIR)
warmstart = importlib.import_module("warmstart")

ENCRYPTED = "tensorizer/encrypted_key_v3.tensors"
SAFETENSORS_MIXED = "safetensors/golden_py_i32_f16_alignment.safetensors"

WORKDIR_PREFIX = "wsimg-"
MODEL_ROOT_FIXTURES = (GGUF, GGUF_ALLTYPES, SAFETENSORS_BF16,
                       SAFETENSORS_MIXED, ENCRYPTED)


@pytest.fixture
def client(daemon):
    with warmstart.connect(daemon.socket, timeout=30) as c:
        yield c


def file_sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_a_gguf_file_is_held_as_its_image_by_default(client, root):
    path = in_root(root, GGUF)
    status = client.load("tiny", path, timeout=60)
    assert status["layout"] == "file_image"
    assert status["resident_bytes"] == os.path.getsize(path)
    with client.acquire("tiny", timeout=30) as model:
        [image] = model.file_paths
        assert image.startswith("/proc/self/fd/")
        assert os.path.getsize(image) == os.path.getsize(path)
        assert file_sha256(image) == file_sha256(path)


@pytest.mark.parametrize("fixture", (GGUF, GGUF_ALLTYPES))
def test_gguf_reader_reads_the_image_as_the_file(client, root, fixture):
    path = in_root(root, fixture)
    client.load("m", path, timeout=60)
    with client.acquire("m", timeout=30) as model:
        from_file = gguf.GGUFReader(path)
        from_image = gguf.GGUFReader(model.file_paths[0])
        assert list(from_image.fields) == list(from_file.fields)
        assert len(from_image.tensors) == len(from_file.tensors) > 0
        for mine, theirs in zip(from_image.tensors, from_file.tensors):
            assert mine.name == theirs.name
            assert mine.tensor_type == theirs.tensor_type
            assert mine.data_offset == theirs.data_offset
            assert np.array_equal(mine.data, theirs.data), mine.name
        del from_image


@pytest.mark.parametrize("fixture", (SAFETENSORS_BF16, SAFETENSORS_MIXED))
def test_safe_open_and_memmap_read_the_image_as_the_file(client, root,
                                                         fixture):
    path = in_root(root, fixture)
    client.load("m", path, timeout=60, layout="file_image")
    with client.acquire("m", timeout=30) as model:
        image = model.file_paths[0]
        assert np.array_equal(np.memmap(image, dtype=np.uint8, mode="r"),
                              np.fromfile(path, dtype=np.uint8))
        if fixture == SAFETENSORS_BF16:
            return  # NumPy has no bfloat16 for safe_open to give.
        with safetensors.safe_open(image, framework="np") as mine, \
                safetensors.safe_open(path, framework="np") as theirs:
            assert sorted(mine.keys()) == sorted(theirs.keys())
            for key in theirs.keys():
                assert np.array_equal(mine.get_tensor(key),
                                      theirs.get_tensor(key)), key


def test_the_image_refuses_writes_and_resizes(client, root):
    path = in_root(root, GGUF)
    client.load("tiny", path, timeout=60)
    before = file_sha256(path)
    with client.acquire("tiny", timeout=30) as model:
        image = model.file_paths[0]
        with pytest.raises(OSError):
            with open(image, "r+b") as f:
                f.write(b"x")
        with pytest.raises(OSError):
            open(image, "wb")  # O_TRUNC: a resize
        with pytest.raises(OSError):
            os.truncate(image, 1)
        fd = os.open(image, os.O_RDWR)
        try:
            with pytest.raises(OSError):
                mmap.mmap(fd, 0, mmap.MAP_SHARED,
                          mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        assert file_sha256(image) == before
        assert os.path.getsize(image) == os.path.getsize(path)


def test_a_packed_model_has_no_file_path(client, root):
    client.load("packed", in_root(root, GGUF), timeout=60, layout="packed")
    assert client.status("packed")["layout"] == "packed"
    with client.acquire("packed", timeout=30) as model:
        with pytest.raises(warmstart.FailedPrecondition) as refused:
            model.file_paths
    assert "packed layout" in str(refused.value)
    assert "file_image" in str(refused.value)


def test_the_path_goes_with_the_lease(client, root):
    client.load("tiny", in_root(root, GGUF), timeout=60)
    model = client.acquire("tiny", timeout=30)
    assert model.file_paths
    model.release()
    with pytest.raises(warmstart.FailedPrecondition):
        model.file_paths


def test_what_no_file_image_can_hold_is_refused_clearly(client, root):
    with pytest.raises(warmstart.InvalidArgument) as encrypted:
        client.load("secret", in_root(root, ENCRYPTED), timeout=60,
                    layout="file_image")
    message = str(encrypted.value)
    assert "is encrypted" in message and "packed layout" in message
    with pytest.raises(warmstart.InvalidArgument) as unknown:
        client.load("odd", in_root(root, GGUF), timeout=60, layout="sideways")
    assert "expected packed or file_image" in str(unknown.value)
    assert client.models() == []


def test_another_layout_of_a_loaded_model_is_already_exists(client, root):
    path = in_root(root, GGUF)
    client.load("tiny", path, timeout=60)
    with pytest.raises(warmstart.AlreadyExists) as exists:
        client.load("tiny", path, timeout=60, layout="packed")
    assert "held as file_image, not packed" in str(exists.value)


def test_warmstartctl_loads_in_a_layout_and_shows_it(daemon, root):
    path = in_root(root, SAFETENSORS_MIXED)
    loaded = daemon.ctl("load", "m", path, "--layout", "file_image", "--json")
    assert loaded.returncode == 0, loaded.stderr
    assert json.loads(loaded.stdout)["layout"] == "file_image"
    shown = daemon.ctl("status", "m")
    assert "layout:   file_image" in shown.stdout
    bad = daemon.ctl("load", "n", path, "--layout", "sideways")
    assert bad.returncode == 1  # usage
    assert "expected packed or file_image" in bad.stderr
