"""PyTorch modules over warmstart's resident weights, with no copy.

The two steps of tensorizer or transformers, over the daemon's memory::

    import warmstart, warmstart.torch

    with warmstart.torch.no_init():          # no storage, no initialisation
        module = MyNet(config)
    client = warmstart.connect()
    report = warmstart.torch.load_into_module(module, "llama", client=client)

or, for a transformers model, one call in place of ``from_pretrained``::

    model = warmstart.torch.from_pretrained("/models/llama", "llama")

Every parameter and buffer the checkpoint holds becomes a tensor over the
model's mapping (``requires_grad=False``): the memory is shared with every
other worker and the daemon, and nothing is read from disk.

Devices. ``device=None`` binds the model where it is: host weights as
tensors over the shared memory, a GPU model's (warmstartd's CUDA backend)
as tensors over its imported CUDA memory, with no copy either way.
``device="cpu"`` binds the host copy (a model only on a GPU is refused).
``device="cuda[:N]"`` binds the copy on that GPU, or copies a host model
to it, registering the mapping's pages read-only with the CUDA driver for
the copy so that it runs at pinned speed (``BindReport.host_copy``); a GPU
model asked onto another device is refused. ``"cuda"`` where torch has no
usable GPU is refused, naming the model and the reason, before the model
is acquired or the module touched. The GPU path is tested without a GPU
(its decisions, the driver faked) and by tests/torch_gpu_test.py where a
GPU is present (tools/gpu-check); it has not run on hardware yet.

Writing. Host weights are mapped read-only: an in-place write to a bound
tensor (``param.add_(1)``, an optimiser step, ``load_state_dict`` into the
module) kills the process with SIGSEGV, because torch does not know the
memory is read-only. GPU weights are writable only where the driver mapped a
legacy IPC import read-write, and a write there changes every worker's
weights. Pass ``copy=True`` for private, writable weights (training,
fine-tuning): each tensor is then copied once, and the report says so.

Lifetime. Bound tensors hold the model's lease, as its arrays do: the
lease is released when the module (and every tensor taken from it) is gone.
"""
import contextlib
import dataclasses
import os
import re
import threading

import torch
from torch import nn

from . import FailedPrecondition, InvalidArgument, Model, connect
from . import _devices
from . import _dtypes
from . import _to_torch
from . import _torch_device

__all__ = ["BindError", "BindReport", "from_pretrained", "load_into_module",
           "no_init"]


class BindError(InvalidArgument):
    """The checkpoint does not fit the module (names, shapes, dtypes, roles).
    The module was left exactly as it was."""


@dataclasses.dataclass
class BindReport:
    """What `load_into_module` did, by the module's own tensor names.

    bound: bound to the resident memory with no copy.
    copied: bound to a copy (a dtype conversion with
      ``on_dtype_mismatch="copy"``, a device move, or ``copy=True``).
    tied: names that share the tensor bound under another name (a tied
      weight the checkpoint stores once, or a second stored copy of it).
    missing: module tensors the checkpoint lacks, left as they were
      (only with ``strict=False``; parameters stay on the meta device).
    unexpected: checkpoint tensors that name nothing in the module (only
      with ``strict=False``, or names transformers itself ignores under
      ``key_map="hf"``).
    materialised: buffers the checkpoint does not hold that the module's
      own code computed (non-persistent ones: rotary ``inv_freq``,
      ``position_ids``), moved to ``device`` when one was given.
    """

    bound: list = dataclasses.field(default_factory=list)
    copied: list = dataclasses.field(default_factory=list)
    tied: list = dataclasses.field(default_factory=list)
    missing: list = dataclasses.field(default_factory=list)
    unexpected: list = dataclasses.field(default_factory=list)
    materialised: list = dataclasses.field(default_factory=list)
    host_copy: str = ""
    """How the host -> GPU copies ran ("" where there were none): "pinned:
    ..." when the model's mapping was registered read-only with the CUDA
    driver for the copy, else "pageable: " and why it was not."""


# ----------------------------------------------------------------- no_init

_NO_INIT = threading.local()
_PATCH_LOCK = threading.Lock()
_PATCH_DEPTH = 0
_ORIGINALS = {}


def _no_init_active():
    return getattr(_NO_INIT, "depth", 0) > 0


def _skip_init(name):
    original = getattr(nn.init, name)

    def skipped(tensor, *args, **kwargs):
        if _no_init_active():
            return tensor
        return original(tensor, *args, **kwargs)

    skipped.__wrapped__ = original
    return skipped


def _register_parameter(self, name, param):
    # A parameter made under no_init() is moved to the meta device as it is
    # registered: its storage (torch.empty: allocated, never touched) goes.
    if (_no_init_active() and param is not None and
            param.device.type != "meta"):
        param = nn.Parameter(param.to("meta"),
                             requires_grad=param.requires_grad)
    return _ORIGINALS["register_parameter"](self, name, param)


# nn.init's functions that write a tensor in place; skipped under no_init()
# (modules call them from reset_parameters()).
_INIT_FUNCTIONS = (
    "uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_",
    "eye_", "dirac_", "xavier_uniform_", "xavier_normal_",
    "kaiming_uniform_", "kaiming_normal_", "orthogonal_", "sparse_")


@contextlib.contextmanager
def no_init():
    """Modules built inside get their parameters on the meta device (no
    storage) and skip initialisation; buffers are computed by the module's
    own code as usual (they are small, and non-persistent ones are in no
    checkpoint). The same mechanism on torch 1.13 (whose ``torch.device``
    is no context manager) and 2.x: ``nn.Module.register_parameter`` moves
    each new parameter to meta, and ``nn.init``'s functions do nothing.
    Thread-safe: the patches are process-wide while any thread is inside,
    but act only in the threads that are inside."""
    global _PATCH_DEPTH
    with _PATCH_LOCK:
        if _PATCH_DEPTH == 0:
            _ORIGINALS["register_parameter"] = nn.Module.register_parameter
            nn.Module.register_parameter = _register_parameter
            for name in _INIT_FUNCTIONS:
                if hasattr(nn.init, name):
                    _ORIGINALS["init." + name] = getattr(nn.init, name)
                    setattr(nn.init, name, _skip_init(name))
        _PATCH_DEPTH += 1
    _NO_INIT.depth = getattr(_NO_INIT, "depth", 0) + 1
    try:
        yield
    finally:
        _NO_INIT.depth -= 1
        with _PATCH_LOCK:
            _PATCH_DEPTH -= 1
            if _PATCH_DEPTH == 0:
                nn.Module.register_parameter = _ORIGINALS.pop(
                    "register_parameter")
                for key in list(_ORIGINALS):
                    setattr(nn.init, key[len("init."):], _ORIGINALS.pop(key))


# ---------------------------------------------------------------- key maps

def _hf_key_map(module, names):
    """The renames transformers' from_pretrained (4.46) applies to a
    checkpoint's names for `module`: legacy LayerNorm names (gamma ->
    weight, beta -> bias, as its _fix_key), and the base model prefix
    (``base_model_prefix``) stripped from or added to every name, as the
    checkpoint and the module disagree on it. Returns (mapping, ignore):
    checkpoint name -> module name, and the patterns of unexpected names
    transformers ignores (the class's _keys_to_ignore_on_load_unexpected
    and the module's non-persistent buffers)."""
    prefix = getattr(module, "base_model_prefix", "") or ""
    module_names = set(module.state_dict(keep_vars=True))

    def fix(name):
        if "beta" in name:
            return name.replace("beta", "bias")
        if "gamma" in name:
            return name.replace("gamma", "weight")
        return name

    fixed = {name: fix(name) for name in names}
    if prefix:
        dotted = prefix + "."
        ckpt_has = any(n.startswith(dotted) for n in fixed.values())
        module_has = any(n.startswith(dotted) for n in module_names)
        if ckpt_has and not module_has:
            fixed = {k: v[len(dotted):] if v.startswith(dotted) else v
                     for k, v in fixed.items()}
        elif module_has and not ckpt_has:
            fixed = {k: dotted + v for k, v in fixed.items()}
    ignore = [re.compile(p) for p in
              getattr(module, "_keys_to_ignore_on_load_unexpected", None) or
              ()]
    buffers = {name for name, _ in module.named_buffers()}
    ignore.append(re.compile(
        "^(" + "|".join(re.escape(b) for b in sorted(buffers)) + ")$"
        if buffers else "(?!)"))
    return fixed, ignore


def _tensorizer_name(name, role):
    # tensorizer's write_module names a root module's tensors ".name".
    if role in ("parameter", "buffer") and name.startswith("."):
        return name[1:]
    return name


# ------------------------------------------------------------------ binding

@dataclasses.dataclass
class _Slot:
    """One place a tensor lives in the module: module._parameters[attr] or
    module._buffers[attr]."""

    name: str
    owner: nn.Module
    attr: str
    is_param: bool
    persistent: bool
    current: torch.Tensor


def _slots(module):
    """Every parameter and buffer slot, tied ones included, in the
    module's order."""
    slots = []
    for prefix, owner in module.named_modules(remove_duplicate=False):
        dotted = prefix + "." if prefix else ""
        for attr, param in owner._parameters.items():
            if param is not None:
                slots.append(_Slot(dotted + attr, owner, attr, True, True,
                                   param))
        non_persistent = getattr(owner, "_non_persistent_buffers_set", set())
        for attr, buf in owner._buffers.items():
            if buf is not None:
                slots.append(_Slot(dotted + attr, owner, attr, False,
                                   attr not in non_persistent, buf))
    # The same submodule reached twice (remove_duplicate=False) lists its
    # slots twice under different names: they are tied too, and fine.
    return slots


def _as_model(model, client):
    """(Model, whether this call acquired it)."""
    if isinstance(model, Model):
        return model, False
    if isinstance(model, (str, bytes)):
        if client is None:
            raise InvalidArgument(
                f"warmstart.torch: model {model!r} is a name: pass client= "
                f"(warmstart.connect()) or an acquired warmstart.Model")
        return client.acquire(model), True
    raise TypeError(f"warmstart.torch: model is a warmstart.Model or a name, "
                    f"not {type(model).__name__}")


def _label(model):
    if isinstance(model, Model):
        return f"model {model.name}"
    if isinstance(model, (str, bytes)):
        return f"model {model!r}"
    return "model"


# Where neither the device asked for nor the model is a GPU, torch's CUDA
# is never asked about: torch.cuda.is_available() initialises the driver
# (cudaGetDeviceCount), which a host-only worker should not pay for and
# after which a forked child (a DataLoader worker) cannot use CUDA.
_NO_GPU_WANTED = _devices.CudaState(False, "no GPU was asked for", 0, 0, {})


def _wants_gpu(device, devices):
    return (device is not None and device.type == "cuda") or any(
        key != _devices.HOST for key in devices)


def _cuda_state(devices):
    uuids = [key for key in devices if key != _devices.HOST]
    return _devices.torch_cuda_state(torch, uuids, _torch_device)


def load_into_module(module, model, *, key_map=None, strict=True,
                     device=None, on_dtype_mismatch="error", copy=False,
                     client=None):
    """Binds every parameter and buffer of `module` to the tensor of the
    same name in `model` (an acquired `warmstart.Model`, or a model name
    with ``client=``) with no copy, and returns a `BindReport`.

    Parameters become ``nn.Parameter(tensor, requires_grad=False)`` over the
    model's memory (re-registered in the module: torch 1.13 has no
    ``load_state_dict(assign=True)``); buffers become the tensors. Tied
    parameters (one Parameter under several names, as the module ties
    them, after its ``tie_weights()`` where it has one) end as one shared
    Parameter, whether the checkpoint stores the weight once (Hugging Face
    drops ``lm_head.weight``) or under each name (tensorizer).

    key_map: None (the checkpoint's names; tensorizer's leading "." of a
      root module's tensors dropped), "hf" (transformers' renames: see
      _hf_key_map), or a callable checkpoint name -> module name (None
      drops the tensor).
    strict: missing or unexpected names are an error (`BindError`, listing
      them all); with False they are reported and left alone.
    device: where the tensors must be (None, "cpu", "cuda", "cuda:N", a
      torch.device). None binds the model's first copy where it is (a GPU
      model's tensors are its imported CUDA memory, zero-copy). "cpu" binds
      the host copy; a model only on GPUs is refused (InvalidArgument).
      "cuda[:N]" binds the copy on that GPU ("cuda": the model's GPU, else
      torch's current one); a host model is copied to it, with its mapping
      registered read-only with the CUDA driver for the copy (pinned
      speed; ``report.host_copy`` says how it ran) and the copies counted in
      ``copied``; a GPU model on another GPU is refused. Checked before
      anything is acquired or touched: a device string torch does not know
      or that is neither cpu nor cuda is an InvalidArgument, and "cuda"
      where torch has no usable GPU (a CPU-only torch, no GPU visible) a
      FailedPrecondition naming the model and the reason. Buffers the
      module computes are moved to the device the tensors end on.
    on_dtype_mismatch: "error" (a `BindError` naming each tensor and both
      dtypes), or "copy" (converted copies, reported in ``copied``).
    copy: private, writable copies of every tensor (for training).

    All-or-nothing: every check runs before the module is touched; any
    error (names, shapes, dtypes, a tensor torch cannot represent, the
    model released during the call) leaves it exactly as it was. A model
    acquired here by name is released by the call (the bound tensors hold
    its lease).
    """
    if on_dtype_mismatch not in ("error", "copy"):
        raise ValueError(f"warmstart.torch: on_dtype_mismatch is 'error' or "
                         f"'copy', not {on_dtype_mismatch!r}")
    if not isinstance(module, nn.Module):
        raise TypeError(f"warmstart.torch: module is a torch.nn.Module, not "
                        f"{type(module).__name__}")
    # The device is checked before the model is acquired: a device torch
    # cannot use costs no lease.
    label = _label(model)
    device = _devices.parse_device(torch, label, device)
    if _wants_gpu(device, ()):
        _devices.require_cuda(label, device, _cuda_state(()))
    model, acquired = _as_model(model, client)
    try:
        if model.released:
            raise FailedPrecondition(
                f"warmstart.torch: model {model.name} was released; acquire "
                f"it again")
        label = f"model {model.name}"
        cuda = _cuda_state(model.devices) if _wants_gpu(
            device, model.devices) else _NO_GPU_WANTED
        source = _devices.choose_source(torch, label, model.devices, device,
                                        cuda)
        _devices.require_cuda(
            label, source.target, cuda,
            None if device is not None else
            f"its copy on {source.copy_key}")
        return _bind(module, model, key_map, strict, source,
                     on_dtype_mismatch, copy)
    finally:
        if acquired:
            model.release()


def _bind(module, model, key_map, strict, source, on_dtype_mismatch, copy):
    label = f"model {model.name}"
    # Tie first, as the module declares it, so that tied names share one
    # Parameter (transformers ties in post_init; again here is harmless).
    tie = getattr(module, "tie_weights", None)
    if callable(tie):
        tie()
    slots = _slots(module)
    by_name = {slot.name: slot for slot in slots}

    # Checkpoint name -> module name.
    names = list(model.shapes)
    ignore = []
    if key_map is None:
        mapping = {n: _tensorizer_name(n, model.roles.get(n, ""))
                   for n in names}
    elif key_map == "hf":
        mapping, ignore = _hf_key_map(module, names)
    elif callable(key_map):
        mapping = {}
        for name in names:
            target = key_map(name)
            if target is not None and not isinstance(target, str):
                raise TypeError(
                    f"warmstart.torch: key_map({name!r}) returned "
                    f"{type(target).__name__}, not a str or None")
            mapping[name] = target
    else:
        raise ValueError(f"warmstart.torch: key_map is None, 'hf' or a "
                         f"callable, not {key_map!r}")

    report = BindReport()
    problems = []
    sources = {}  # module name -> checkpoint name.
    for name in names:
        target = mapping.get(name)
        if target is None:
            continue
        slot = by_name.get(target)
        if slot is None or (not slot.is_param and not slot.persistent and
                            model.roles.get(name, "") != "buffer"):
            # As load_state_dict: a non-persistent buffer is no
            # checkpoint's business, unless the writer recorded it as the
            # module's buffer (tensorizer's write_module writes them all,
            # and its load_into_module loads them).
            if any(p.search(target) for p in ignore):
                report.unexpected.append(name)
                continue
            problems.append(("unexpected", name, target))
            continue
        if target in sources:
            problems.append(("duplicate", name,
                             f"{target} (also mapped from "
                             f"{sources[target]})"))
            continue
        sources[target] = name

    # Group tied slots: one Parameter (or buffer) object, several names.
    groups = {}
    for slot in slots:
        groups.setdefault(id(slot.current), []).append(slot)

    plan = []  # (group, checkpoint name, source name)
    for group in groups.values():
        present = [s for s in group if s.name in sources]
        if present:
            plan.append((group, present[0]))
            continue
        for slot in group:
            if not slot.is_param and slot.current.device.type != "meta":
                # Computed by the module's own code (non-persistent, or a
                # persistent buffer this checkpoint lacks).
                if slot.persistent:
                    problems.append(("missing", slot.name, None))
                else:
                    report.materialised.append(slot.name)
            else:
                problems.append(("missing", slot.name, None))

    # Checks of shapes, dtypes and roles.
    for group, first in plan:
        ckpt = sources[first.name]
        dtype_name = model.dtypes[ckpt]
        shape = tuple(model.shapes[ckpt])
        want_shape = tuple(first.current.shape)
        if shape != want_shape:
            problems.append(("shape", first.name,
                             f"checkpoint {ckpt} has shape {list(shape)}, "
                             f"the module wants {list(want_shape)}"))
            continue
        role = model.roles.get(ckpt, "")
        if (role == "parameter" and not first.is_param) or (
                role == "buffer" and first.is_param):
            kind = "a parameter" if first.is_param else "a buffer"
            problems.append(("role", first.name,
                             f"checkpoint {ckpt} is a {role}, the module's "
                             f"{first.name} is {kind}"))
            continue
        attribute = _dtypes.TORCH.get(dtype_name)
        have = getattr(torch, attribute, None) if attribute else None
        if have is None:
            problems.append(("dtype", first.name,
                             f"checkpoint {ckpt} has dtype {dtype_name}, "
                             f"which torch {torch.__version__} cannot "
                             f"represent"))
            continue
        if have != first.current.dtype and on_dtype_mismatch == "error":
            problems.append(("dtype", first.name,
                             f"checkpoint {ckpt} is {have}, the module "
                             f"wants {first.current.dtype} (pass "
                             f"on_dtype_mismatch='copy' to convert)"))
            continue
        # Every stored copy of a tied weight must agree in shape (tensorizer
        # writes it under each name).
        for slot in group[1:]:
            if slot.name in sources:
                other = sources[slot.name]
                if tuple(model.shapes[other]) != shape:
                    problems.append(("shape", slot.name,
                                     f"checkpoint {other} has shape "
                                     f"{list(model.shapes[other])}, tied "
                                     f"to {ckpt} of shape {list(shape)}"))

    if problems:
        missing = [p for p in problems if p[0] == "missing"]
        unexpected = [p for p in problems if p[0] == "unexpected"]
        others = [p for p in problems if p[0] not in ("missing",
                                                      "unexpected")]
        if not strict and not others:
            report.missing.extend(n for _, n, _ in missing)
            report.unexpected.extend(n for _, n, _ in unexpected)
        else:
            raise BindError(_describe(label, module, missing, unexpected,
                                      others))

    # Make every tensor before touching the module. An error's traceback
    # would hold the tensors made so far (and so the lease) for as long as
    # the caller keeps the exception: it is raised without the helper's
    # frames.
    try:
        torch_tensors, materialised = _make_tensors(
            module, model, label, plan, sources, report, by_name, source,
            copy)
    except Exception as error:
        raise error.with_traceback(None)

    # Commit: nothing below can fail.
    for group, first in plan:
        made, copied = torch_tensors[id(group[0].current)]
        if first.is_param:
            grad = copy and first.current.requires_grad
            value = nn.Parameter(made, requires_grad=grad)
        else:
            value = made
        for i, slot in enumerate(group):
            if slot.is_param:
                slot.owner._parameters[slot.attr] = value
            else:
                slot.owner._buffers[slot.attr] = value
            if i == 0:
                (report.copied if copied else report.bound).append(slot.name)
            else:
                report.tied.append(slot.name)
    for slot, buf in materialised:
        slot.owner._buffers[slot.attr] = buf
    return report


def _make_tensors(module, model, label, plan, sources, report, by_name,
                  source, copy):
    """The tensors `plan` binds (id of the group's tensor -> (tensor,
    copied)) and the materialised buffers' (slot, buffer), made and checked
    without touching the module. Reads the copy `source` names; a host ->
    GPU transfer runs with the mapping registered (see _transfer)."""
    if model.released:
        raise FailedPrecondition(
            f"warmstart.torch: {label} was released while binding; the "
            f"module is untouched")
    tensors = model.tensors_on(source.copy_key)
    resident = {}  # id of the group's tensor -> the resident tensor.
    for group, first in plan:
        ckpt = sources[first.name]
        made = _to_torch(torch, ckpt, model.dtypes[ckpt],
                         model.shapes[ckpt], tensors[ckpt])
        # A weight the module ties and the checkpoint stores under several
        # names (tensorizer) must be stored the same each time.
        for slot in group:
            other = sources.get(slot.name)
            if other is None or other == ckpt:
                continue
            stored = _to_torch(torch, other, model.dtypes[other],
                               model.shapes[other], tensors[other])
            if stored.dtype != made.dtype or not torch.equal(stored, made):
                raise BindError(
                    f"warmstart.torch: {label} does not fit "
                    f"{type(module).__name__}; the module is untouched. "
                    f"{first.name} and {slot.name} are tied in the module, "
                    f"but the checkpoint's {ckpt} and {other} differ")
        resident[id(group[0].current)] = made

    target = source.target
    plans = {}
    for group, first in plan:
        key = id(group[0].current)
        made = resident[key]
        plans[key] = _devices.steps(made.device, made.dtype,
                                    first.current.dtype, target, copy)
    if source.transfer:
        moved, report.host_copy = _transfer(
            {key: made for key, made in resident.items()
             if "move" in plans[key]}, target)
    else:
        moved = {}
    torch_tensors = {}
    for group, first in plan:
        key = id(group[0].current)
        made = moved.get(key, resident[key])
        steps = plans[key]
        if "move" in steps and key not in moved:
            made = made.to(target)
        if "convert" in steps:
            made = made.to(first.current.dtype)
        if "clone" in steps:
            made = made.clone()
        torch_tensors[key] = (made, bool(steps))
    materialised = []
    for name in report.materialised:
        slot = by_name[name]
        buf = slot.current
        if target is not None and buf.device != target:
            buf = buf.to(target)
        materialised.append((slot, buf))
    if model.released:
        # Released by another thread (or a key_map) while binding: the
        # tensors made above go with this frame (see _bind).
        raise FailedPrecondition(
            f"warmstart.torch: {label} was released while binding; the "
            f"module is untouched")
    return torch_tensors, materialised


def _transfer(host_tensors, target):
    """Copies host tensors (key -> CPU tensor over the mapping) to the GPU
    `target`, with the pages they lie on registered read-only with the
    driver for the copies, so that they run as DMA from pinned memory (a
    pageable copy goes through the driver's staging buffers). Returns (key
    -> GPU tensor, the report's host_copy note). Falls back to pageable
    copies where the driver refuses the registration."""
    spans = [(t.data_ptr(), t.numel() * t.element_size())
             for t in host_tensors.values()]
    with torch.cuda.device(target):
        # Allocating first also makes torch's context current here, which
        # the driver's registration is made in.
        moved = {key: torch.empty(t.shape, dtype=t.dtype, device=target)
                 for key, t in host_tensors.items()}
        driver, no_driver = _devices.load_driver()
        registration = _devices.HostRegistration(
            driver, _devices.page_ranges(spans),
            lambda: torch.cuda.synchronize(target), no_driver)
        with _devices.TRANSFER_LOCK, registration:
            for key, tensor in host_tensors.items():
                moved[key].copy_(tensor, non_blocking=registration.pinned)
    return moved, registration.note


def _describe(label, module, missing, unexpected, others):
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing from the checkpoint: " +
                     ", ".join(n for _, n, _ in missing))
    if unexpected:
        parts.append(f"{len(unexpected)} in the checkpoint that name nothing "
                     f"in the module: " +
                     ", ".join(n if t == n else f"{n} (as {t})"
                               for _, n, t in unexpected))
    for kind, name, detail in others:
        parts.append(f"{name}: {detail}")
    return (f"warmstart.torch: {label} does not fit "
            f"{type(module).__name__}; the module is untouched. " +
            "; ".join(parts))


# ----------------------------------------------------------- transformers

def from_pretrained(config_or_dir, model, *, client=None, torch_dtype="auto",
                    device=None, strict=True, on_dtype_mismatch="error",
                    copy=False, key_map="hf", **config_kwargs):
    """A transformers model over the resident weights: what
    ``AutoModel.from_pretrained(dir)`` gives, with the weights of `model`
    (an acquired `warmstart.Model`, or a name: with ``client=``, else
    ``warmstart.connect()``).

    config_or_dir: a ``PretrainedConfig`` or a directory holding
      ``config.json`` (``config_kwargs`` go to ``AutoConfig.from_pretrained``).
      The class is the first of the config's ``architectures`` (else
      ``AutoModel``'s for its model type).
    torch_dtype: "auto" (the config's ``torch_dtype``, else float32) or a
      torch dtype: the dtype the module is built in; the weights must have
      it (or pass ``on_dtype_mismatch="copy"``).

    Builds the class under `no_init()`, binds (``key_map="hf"``), ties,
    ``eval()``s and returns it; the `BindReport` is the model's
    ``warmstart_report`` attribute."""
    import transformers

    if isinstance(config_or_dir, transformers.PretrainedConfig):
        config = config_or_dir
    else:
        config = transformers.AutoConfig.from_pretrained(
            os.fspath(config_or_dir), **config_kwargs)
    cls = None
    for architecture in getattr(config, "architectures", None) or ():
        cls = getattr(transformers, architecture, None)
        if cls is not None:
            break
    if torch_dtype == "auto":
        torch_dtype = getattr(config, "torch_dtype", None) or torch.float32
        if isinstance(torch_dtype, str):
            torch_dtype = getattr(torch, torch_dtype)
    # As load_into_module, checked before anything is built or acquired.
    parsed = _devices.parse_device(torch, _label(model), device)
    if _wants_gpu(parsed, ()):
        _devices.require_cuda(_label(model), parsed, _cuda_state(()))
    acquired = False
    if not isinstance(model, Model):
        if client is None:
            client = connect()
        model, acquired = _as_model(model, client)
    try:
        with no_init():
            if cls is not None:
                module = cls._from_config(config, torch_dtype=torch_dtype)
            else:
                module = transformers.AutoModel.from_config(
                    config, torch_dtype=torch_dtype)
        report = load_into_module(
            module, model, key_map=key_map, strict=strict, device=device,
            on_dtype_mismatch=on_dtype_mismatch, copy=copy)
    finally:
        if acquired:
            model.release()
    module.eval()
    module.warmstart_report = report
    return module
