"""Where `warmstart.torch` puts a model's tensors, and the host-to-GPU copy.

Pure decisions (which resident copy a bind reads, whether its tensors are
bound or copied, which page ranges to register with the driver) are plain
functions over plain data, so that they are tested without a GPU. The
driver calls (`CudaDriver`, ctypes over libcuda.so.1) and torch's CUDA
state (`TorchCuda`) are the only parts that need one.

Why the driver API and not ``torch.cuda.cudart().cudaHostRegister``: torch
1.10 to 2.x all expose that runtime call, but a failed runtime call (memory
already registered, a GPU without read-only registration) leaves its error
as the thread's last CUDA error, and torch reports it at its next kernel
launch, in unrelated code. A failed driver call leaves nothing behind.
libcuda.so.1 is the driver torch itself loaded: no new dependency.
"""
import ctypes
import dataclasses
import mmap
import threading

from . import FailedPrecondition, InvalidArgument

HOST = "host"  # The daemon's name of the host copy (Model.devices).

# cuda.h: CU_MEMHOSTREGISTER_PORTABLE | CU_MEMHOSTREGISTER_READ_ONLY (the
# model's mapping is PROT_READ: registering it writable fails).
_REGISTER_FLAGS = 0x01 | 0x08
_CUDA_SUCCESS = 0
_CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED = 712

# Held by a host -> GPU copy from its registration to its unregistration:
# two binds of one model in one process would otherwise share pages, and
# the first to finish would unregister them under the other's copies
# (which compete for the same link anyway).
TRANSFER_LOCK = threading.Lock()


@dataclasses.dataclass(frozen=True)
class Source:
    """Which resident copy a bind reads, and where its tensors go.

    copy_key: the key of `Model.tensors_on` ("host" or a GPU UUID).
    target: the torch device the module's tensors end on (None: the copy's
      own, host tensors on the CPU).
    transfer: whether the tensors are copied host -> GPU (`target`).
    """

    copy_key: str
    target: object
    transfer: bool


def parse_device(torch, label, device):
    """`device` (None, a str, an int GPU index or a torch.device) as a
    torch.device of type cpu or cuda, or None. Raises InvalidArgument naming
    `label` (the model) and the reason."""
    if device is None:
        return None
    try:
        parsed = device if isinstance(device, torch.device) else \
            torch.device(device)
    except (RuntimeError, TypeError, ValueError) as error:
        raise InvalidArgument(
            f"warmstart.torch: {label}: device {device!r} is no device "
            f"torch knows ({error}); pass None, 'cpu' or 'cuda[:N]'") from None
    if parsed.type not in ("cpu", "cuda"):
        raise InvalidArgument(
            f"warmstart.torch: {label}: device {device!r} is of type "
            f"{parsed.type}; warmstart binds to 'cpu' or 'cuda[:N]' (or None, "
            f"the model's own device)")
    return parsed


@dataclasses.dataclass(frozen=True)
class CudaState:
    """What the choice of a source needs from torch's CUDA: whether it
    works (and why not), how many GPUs it sees, its current one, and the
    index of each of the model's GPU UUIDs (None where unknown)."""

    available: bool
    why_not: str
    device_count: int
    current: int
    index_of: dict


def require_cuda(label, device, cuda, what=None):
    """Raises FailedPrecondition when `device` (a torch.device) is a GPU and
    torch cannot use one, InvalidArgument when the index is past the GPUs
    torch sees. `what` names what needs the GPU (default: the device
    asked for)."""
    if device is None or device.type != "cuda":
        return
    if not cuda.available:
        raise FailedPrecondition(
            f"warmstart.torch: {label}: {what or f'device={str(device)!r}'} "
            f"needs a GPU, but {cuda.why_not}; the module is untouched "
            f"(pass device=None or 'cpu' to bind a host copy)")
    if device.index is not None and device.index >= cuda.device_count:
        raise InvalidArgument(
            f"warmstart.torch: {label}: device='{device}', but torch sees "
            f"{cuda.device_count} GPU(s) (cuda:0 to "
            f"cuda:{cuda.device_count - 1})")


def choose_source(torch, label, devices, device, cuda):
    """The `Source` a bind of a model resident on `devices` (Model.devices:
    "host" and/or GPU UUIDs, the first the default) reads for `device` (a
    parsed torch.device or None; `require_cuda` passed).

    None binds the first copy where it is. 'cpu' binds the host copy (a
    model only on GPUs is refused: that would be a copy off the GPU).
    'cuda[:N]' binds the copy on that GPU (no index: the model's first
    GPU, else torch's current one); failing that, the host copy is copied
    to it. Raises InvalidArgument naming the model and its devices."""
    gpus = [key for key in devices if key != HOST]
    if not devices:
        raise InvalidArgument(f"warmstart.torch: {label} has no tensors")
    if device is None:
        first = devices[0]
        if first == HOST:
            return Source(HOST, None, False)
        return Source(first, _gpu(torch, cuda, first), False)
    if device.type == "cpu":
        if HOST in devices:
            return Source(HOST, None, False)
        raise InvalidArgument(
            f"warmstart.torch: {label} is resident on "
            f"{_describe(torch, cuda, gpus)} only; device='cpu' would copy "
            f"it off the GPU: pass device=None (or the model's GPU) to bind "
            f"it there")
    index = device.index
    if index is None:
        known = [cuda.index_of.get(key) for key in gpus]
        known = [i for i in known if i is not None]
        index = known[0] if known else cuda.current
    for key in gpus:
        if cuda.index_of.get(key) == index:
            return Source(key, torch.device("cuda", index), False)
    if HOST in devices:
        return Source(HOST, torch.device("cuda", index), True)
    raise InvalidArgument(
        f"warmstart.torch: {label} is resident on "
        f"{_describe(torch, cuda, gpus)}, not on cuda:{index}, and has no "
        f"host copy to copy from: pass device=None to bind it where it is")


def _gpu(torch, cuda, key):
    index = cuda.index_of.get(key)
    return torch.device("cuda", cuda.current if index is None else index)


def _describe(torch, cuda, gpus):
    names = []
    for key in gpus:
        index = cuda.index_of.get(key)
        names.append(key if index is None else f"cuda:{index} ({key})")
    return ", ".join(names)


def steps(have_device, have_dtype, want_dtype, target, copy):
    """What turns a resident tensor (on `have_device`, of `have_dtype`) into
    the module's: a tuple of "move" (to `target`), "convert" (to
    `want_dtype`) and "clone" (a private copy), in that order; () is a
    zero-copy bind. A move or a conversion is already a private copy, so
    ``copy`` adds "clone" only when neither happens. Moves come first: a
    conversion then runs on the GPU, and a host->GPU copy reads the
    resident bytes straight from the registered mapping."""
    plan = []
    if target is not None and have_device != target:
        plan.append("move")
    if have_dtype != want_dtype:
        plan.append("convert")
    if copy and not plan:
        plan.append("clone")
    return tuple(plan)


def page_ranges(spans, page_size=mmap.PAGESIZE):
    """The (address, length) ranges to register for host spans (address,
    nbytes): each rounded out to whole pages (the driver pins pages, and
    two registrations may not share one), overlapping or touching ones
    merged, sorted by address. Empty spans are left out."""
    rounded = []
    for address, nbytes in spans:
        if nbytes <= 0:
            continue
        start = address - address % page_size
        end = -(-(address + nbytes) // page_size) * page_size
        rounded.append((start, end))
    rounded.sort()
    merged = []
    for start, end in rounded:
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1][1] = end
        else:
            merged.append([start, end])
    return [(start, end - start) for start, end in merged]


class CudaDriver:
    """cuMemHostRegister / cuMemHostUnregister of the CUDA driver
    (libcuda.so.1, which torch has loaded), for the context current on the
    calling thread. Not thread-safe per range: one caller registers a
    range and unregisters it."""

    def __init__(self):
        lib = ctypes.CDLL("libcuda.so.1")
        self._register = lib.cuMemHostRegister_v2
        self._register.argtypes = [ctypes.c_void_p, ctypes.c_size_t,
                                   ctypes.c_uint]
        self._register.restype = ctypes.c_int
        self._unregister = lib.cuMemHostUnregister
        self._unregister.argtypes = [ctypes.c_void_p]
        self._unregister.restype = ctypes.c_int
        self._current = lib.cuCtxGetCurrent
        self._current.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
        self._current.restype = ctypes.c_int
        self._name = lib.cuGetErrorName
        self._name.argtypes = [ctypes.c_int,
                               ctypes.POINTER(ctypes.c_char_p)]
        self._name.restype = ctypes.c_int

    def has_context(self):
        context = ctypes.c_void_p()
        return (self._current(ctypes.byref(context)) == _CUDA_SUCCESS and
                bool(context.value))

    def register(self, address, length):
        """0 on success, else the driver's CUresult."""
        return self._register(address, length, _REGISTER_FLAGS)

    def unregister(self, address):
        return self._unregister(address)

    def error_name(self, code):
        name = ctypes.c_char_p()
        if self._name(code, ctypes.byref(name)) != _CUDA_SUCCESS or \
                not name.value:
            return f"CUresult {code}"
        return name.value.decode()


def load_driver():
    """(CudaDriver, "") or (None, why it cannot be loaded)."""
    try:
        return CudaDriver(), ""
    except (OSError, AttributeError) as error:
        return None, f"libcuda.so.1 cannot be used ({error})"


class HostRegistration:
    """Registers host ranges with the driver read-only for the duration of
    a host->GPU copy (a context manager; `driver` a CudaDriver, or None
    with `no_driver` saying why there is none). `pinned` says whether
    every range is page-locked (registered here, or already registered by
    someone else: left registered on exit); `note` says why not where
    not. A range the driver refuses makes the whole copy pageable: the
    ranges registered so far are unregistered at once, and the copy still
    runs (slower).

    `before_unregister` (the caller's wait for its copies) runs on exit
    before any range is unregistered, whatever happened: unregistering
    memory a copy still reads is undefined."""

    def __init__(self, driver, ranges, before_unregister, no_driver=""):
        self._driver = driver
        self._no_driver = no_driver
        self._ranges = ranges
        self._before_unregister = before_unregister
        self._registered = []
        self.pinned = False
        self.note = ""

    def __enter__(self):
        if not self._ranges:
            self.note = "nothing to copy"
            return self
        if self._driver is None:
            self.note = f"pageable: {self._no_driver}"
            return self
        if not self._driver.has_context():
            self.note = "pageable: no CUDA context current on this thread"
            return self
        for address, length in self._ranges:
            code = self._driver.register(address, length)
            if code == _CUDA_SUCCESS:
                self._registered.append(address)
            elif code != _CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED:
                self.note = (f"pageable: cuMemHostRegister(read-only) of "
                             f"{length} bytes failed: "
                             f"{self._driver.error_name(code)}")
                self._unregister_all()
                return self
        self.pinned = True
        self.note = (f"pinned: {len(self._ranges)} range(s), "
                     f"{sum(n for _, n in self._ranges)} bytes registered "
                     f"read-only")
        return self

    def __exit__(self, *exc_info):
        try:
            self._before_unregister()
        finally:
            self._unregister_all()
        return False

    def _unregister_all(self):
        registered, self._registered = self._registered, []
        for address in registered:
            self._driver.unregister(address)


def torch_cuda_state(torch, uuids, torch_device):
    """The `CudaState` of this process's torch; `torch_device(torch, uuid)`
    maps a GPU UUID to its torch device (warmstart._torch_device)."""
    if torch.version.cuda is None:
        return CudaState(False, f"torch {torch.__version__} was built "
                         f"without CUDA", 0, 0, {})
    if not torch.cuda.is_available():
        return CudaState(False, f"torch {torch.__version__} (CUDA "
                         f"{torch.version.cuda}) sees no GPU "
                         f"(torch.cuda.is_available() is False)", 0, 0, {})
    index_of = {uuid: torch_device(torch, uuid).index for uuid in uuids}
    return CudaState(True, "", torch.cuda.device_count(),
                     torch.cuda.current_device(), index_of)
