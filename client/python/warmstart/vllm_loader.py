"""vLLM's `warmstart` load format: the model's weights come from
warmstartd's resident memory instead of the checkpoint files.

    vllm serve DIR --load-format warmstart \\
        --model-loader-extra-config '{"socket": "/run/warmstart/warmstart.sock"}'

The warmstart distribution declares `register` as a `vllm.general_plugins`
entry point, which vLLM runs in every one of its processes, so nothing else
needs installing or importing. The loader asks the daemon to load DIR under
the model's name if it is not resident (the same name from the same files
joins the load in progress or finds it ready), takes a lease, and feeds the
resident tensors to the model's own `load_weights`: every architecture,
quantisation and tensor-parallel size vLLM supports works, and every rank on
a host reads the same host copy. The lease is released once the weights are
in vLLM's parameters.

Extra-config keys (warmstart's own; they are removed before anything is
handed to vLLM's default loader, which refuses keys it does not know):
  socket    the daemon's socket (default: $WARMSTART_SOCKET, then the
            client's default)
  model     the name the model has in the daemon (default: DIR's base name,
            made a valid name)
  fallback  true (default): when the daemon cannot be reached, load with
            vLLM's default loader after one warning; false: fail, naming
            the socket
  timeout   seconds to wait for the daemon's load (default: no limit)
Any other key is passed on to vLLM's default loader when it is used.

Supported vLLM versions: SUPPORTED_VLLM below; others are refused with an
error naming both versions.
"""
import logging
import os
import re
import time

SUPPORTED_VLLM = ("0.32.",)
LOAD_FORMAT = "warmstart"
_OWN_KEYS = ("socket", "model", "fallback", "timeout")
_logger = logging.getLogger("vllm.warmstart")


def check_vllm_version(version):
    """Raises RuntimeError naming `version` and the supported ones when
    this loader was not built for it."""
    if not any(version.startswith(prefix) for prefix in SUPPORTED_VLLM):
        raise RuntimeError(
            f"warmstart's vLLM loader supports vLLM "
            f"{', '.join(p + 'x' for p in SUPPORTED_VLLM)}; this is vLLM "
            f"{version}. Use --load-format auto, or a warmstart release "
            f"made for this vLLM.")


def model_name_for(path):
    """The daemon's name for the checkpoint folder `path`: its base name
    with characters a model name may not hold replaced by '-'."""
    base = os.path.basename(os.path.normpath(path)) or "model"
    return re.sub(r"[^A-Za-z0-9._-]", "-", base)[:128]


def split_extra_config(extra):
    """(warmstart's options, what is left for vLLM's default loader).
    Raises ValueError for a bad value of one of warmstart's keys."""
    extra = dict(extra or {})
    options = {key: extra.pop(key) for key in _OWN_KEYS if key in extra}
    fallback = options.get("fallback", True)
    if not isinstance(fallback, bool):
        raise ValueError(f"warmstart: extra-config \"fallback\" must be true "
                         f"or false, not {fallback!r}")
    timeout = options.get("timeout")
    if timeout is not None and (not isinstance(timeout, (int, float))
                                or isinstance(timeout, bool) or timeout <= 0):
        raise ValueError(f"warmstart: extra-config \"timeout\" must be a "
                         f"positive number of seconds, not {timeout!r}")
    for key in ("socket", "model"):
        if key in options and not isinstance(options[key], str):
            raise ValueError(f"warmstart: extra-config \"{key}\" must be a "
                             f"string, not {options[key]!r}")
    options["fallback"] = fallback
    return options, extra


def register():
    """The `vllm.general_plugins` entry point: registers the loader."""
    import vllm
    from vllm.model_executor.model_loader import register_model_loader

    try:
        check_vllm_version(vllm.__version__)
    except RuntimeError as error:
        # Registered anyway: choosing the format then fails with this
        # message instead of vLLM's "load format not supported".
        _logger.warning("%s", error)
    register_model_loader(LOAD_FORMAT)(_loader_class())


_LOADER_CLASS = None


def _loader_class():
    """The BaseModelLoader subclass, made once (vLLM is imported only
    inside vLLM's processes)."""
    global _LOADER_CLASS
    if _LOADER_CLASS is not None:
        return _LOADER_CLASS
    import dataclasses

    import vllm
    from vllm.logger import init_logger
    from vllm.model_executor.model_loader import DefaultModelLoader
    from vllm.model_executor.model_loader.base_loader import BaseModelLoader

    # Under "vllm.", so that it goes where vLLM logs.
    logger = init_logger("vllm.warmstart")

    class WarmstartModelLoader(BaseModelLoader):
        """Loads weights from warmstartd; see the module's docstring."""

        def __init__(self, load_config):
            check_vllm_version(vllm.__version__)
            options, rest = split_extra_config(
                load_config.model_loader_extra_config)
            super().__init__(load_config)
            self._options = options
            # vLLM's default loader, for the fallback and for its checks:
            # the same configuration without warmstart's keys.
            self._default_config = dataclasses.replace(
                load_config, load_format="auto",
                model_loader_extra_config=rest)
            self._default = None

        def _default_loader(self):
            if self._default is None:
                self._default = DefaultModelLoader(self._default_config)
            return self._default

        def download_model(self, model_config):
            # The daemon reads the files; a folder that is not there yet is
            # the default loader's business (a hub download).
            if not os.path.isdir(model_config.model):
                self._default_loader().download_model(model_config)

        def load_weights(self, model, model_config):
            import warmstart

            socket = self._options.get("socket") or os.environ.get(
                "WARMSTART_SOCKET")
            shown = socket or "the default socket"
            try:
                client = warmstart.connect(socket, timeout=10)
            except warmstart.Unavailable as error:
                if not self._options["fallback"]:
                    raise RuntimeError(
                        f"warmstart: the daemon at {shown} cannot be reached "
                        f"({error}); start it, or set \"fallback\": true to "
                        f"load with vLLM's default loader") from error
                logger.warning(
                    "warmstart: the daemon at %s cannot be reached (%s); "
                    "loading %s with vLLM's default loader", shown, error,
                    model_config.model)
                self._default_loader().load_weights(model, model_config)
                return
            with client:
                self._load_from(client, model, model_config)

        def _load_from(self, client, model, model_config):
            import warmstart

            path = os.path.abspath(model_config.model)
            name = self._options.get("model") or model_name_for(path)
            start = time.perf_counter()
            try:
                state = client.status(name)["state"]
            except warmstart.NotFound:
                state = None
            client.load(name, path, timeout=self._options.get("timeout"))
            outcome = {"ready": "resident hit", "loading": "joined the load",
                       None: "loaded"}.get(state, "loaded")
            with client.acquire(name) as lease:
                weights = lease.to_torch()
                nbytes = sum(t.numel() * t.element_size()
                             for t in weights.values())
                loaded = model.load_weights(iter(weights.items()))
                del weights
            if loaded is not None and model_config.quantization is None:
                # The default loader's check that every parameter was set.
                self._default_loader().track_weights_loading(
                    model, loaded, quantized=False)
            logger.info(
                "warmstart: %s: model %s (%s), %.1f MiB of weights from "
                "resident memory in %.2f s", outcome, name, path,
                nbytes / 2**20, time.perf_counter() - start)

    _LOADER_CLASS = WarmstartModelLoader
    return _LOADER_CLASS
