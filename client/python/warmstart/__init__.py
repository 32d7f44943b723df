"""Zero-copy access to model weights that warmstartd keeps resident.

::

    import warmstart

    with warmstart.connect("/run/warmstart/warmstart.sock") as client:
        with client.acquire("llama") as model:
            embed = model.tensors["model.embed_tokens.weight"]  # NumPy
            model.dtypes["model.embed_tokens.weight"]           # "BF16"
            weights = model.to_torch()                          # no copy

To build a torch ``nn.Module`` over the weights (tensorizer's and
transformers' two steps: build empty, then bind), see `warmstart.torch`.

The package wraps libwarmstart.so (the C interface, warmstart.h) with
ctypes. The library is found through the environment variable
``WARMSTART_LIBRARY`` (its path), else next to this package, else in the
``lib`` directory of the installation prefix the package is installed
under (``PREFIX/lib/python3/site-packages/warmstart`` -> ``PREFIX/lib``).

Arrays. On the host backend, ``model.tensors`` holds NumPy arrays over the
daemon's sealed shared memory, mapped read-only: no copy is made, and the
arrays cannot be made writeable. Dtypes NumPy lacks come as raw views:
BF16 as uint16 and the 8-bit floats (F8_*) as uint8, with the tensor's
shape; sub-byte (F4, F6_*), GGUF's quantized types (Q*, IQ*, TQ*, MXFP4)
and any other as 1-D uint8 of the tensor's bytes. ``model.dtypes[name]``
always gives the real dtype name. On a GPU, tensors are `CudaTensor`
objects with ``__cuda_array_interface__`` (for torch, CuPy, Numba).

Lifetime. Every array (and every torch tensor made from one) keeps the
model's mapping and lease alive: using an array after ``model.release()``
or after the ``with`` block is safe. ``release()`` only drops the model's
own hold; the lease is released and the memory unmapped when the last
array referring to it is gone (at once in CPython when its reference count
drops to zero; later if it sits in a reference cycle, until the garbage
collector runs).

Never write to the weights. Host memory is mapped read-only: writing
through an array is refused, and through a torch tensor (torch does not
know the memory is read-only) kills the process with SIGSEGV. GPU memory is
read-only only where the driver allowed a read-only mapping of a CUDA VMM
import (``CudaTensor.read_only``); a write there poisons this process's CUDA
context, and through a legacy IPC mapping (or a VMM import the driver mapped
read-write) it would silently change every worker's weights.

Fork. Handles belong to the process that made them: in a forked child
(a DataLoader worker, say) dropping a model, an array or a client does not
touch the parent's lease, session or CUDA state; the child simply lets go.
"""
import collections.abc
import ctypes
import json
import math
import os
import types
import warnings
import weakref

import numpy as _np

from . import _dtypes
from ._lib import LIB as _LIB
from . import _lib

__all__ = [
    "AlreadyExists", "Client", "CudaTensor", "DataLoss", "DeadlineExceeded",
    "DEFAULT_SOCKET", "Error", "FailedPrecondition", "InvalidArgument",
    "Model", "NotFound", "PermissionDenied", "ResourceExhausted",
    "SOCKET_ENV", "Unavailable", "Unimplemented", "UnsupportedDType",
    "connect",
]

__version__ = _LIB.warmstart_version().decode()

# Where warmstartd listens unless told otherwise.
DEFAULT_SOCKET = "/run/warmstart/warmstart.sock"
# connect() without a path uses this variable when set (as warmstartctl).
SOCKET_ENV = "WARMSTART_SOCKET"


class Error(Exception):
    """A warmstart failure. ``code`` is the gRPC/Abseil status code (as the
    WARMSTART_* codes of warmstart.h)."""

    code = 2  # UNKNOWN

    def __init__(self, message, code=None):
        super().__init__(message)
        if code is not None:
            self.code = code


class InvalidArgument(Error):
    code = 3


class DeadlineExceeded(Error):
    code = 4


class NotFound(Error):
    code = 5


class AlreadyExists(Error):
    code = 6


class PermissionDenied(Error):
    code = 7


class ResourceExhausted(Error):
    code = 8


class FailedPrecondition(Error):
    code = 9


class Unimplemented(Error):
    code = 12


class Unavailable(Error):
    code = 14


class DataLoss(Error):
    code = 15


class UnsupportedDType(Error, TypeError):
    """A tensor whose dtype the consumer (torch) cannot represent."""

    code = 12


_ERRORS = {cls.code: cls for cls in (
    InvalidArgument, DeadlineExceeded, NotFound, AlreadyExists,
    PermissionDenied, ResourceExhausted, FailedPrecondition, Unimplemented,
    Unavailable, DataLoss)}


def _error(code, message):
    return _ERRORS.get(code, Error)(message, code)


def _call(function, *args):
    """Calls a fallible C function with an errptr as its last argument;
    raises the error it reports."""
    err = ctypes.c_void_p()
    code = function(*args, ctypes.byref(err))
    if code == 0:
        return
    if err.value:
        message = ctypes.string_at(err.value).decode("utf-8", "replace")
        _LIB.warmstart_free(err)
    else:
        message = f"warmstart: error {code}"
    raise _error(code, message)


def _name(name):
    if isinstance(name, bytes):
        return name
    if not isinstance(name, str):
        raise TypeError(f"warmstart: a model name is a str, not "
                        f"{type(name).__name__}")
    return name.encode()


def _timeout(timeout):
    """None waits forever (a negative value for the C interface)."""
    if timeout is None:
        return -1.0
    timeout = float(timeout)
    if math.isnan(timeout) or timeout < 0:
        raise ValueError(f"warmstart: bad timeout {timeout}")
    return timeout


def _text(value):
    return value.decode("utf-8", "surrogateescape") if value else ""


class _Lease:
    """Owns one warmstart_model handle: destroying it releases the lease
    and unmaps the memory. Every array of the model refers to it; it is
    destroyed when the last reference goes."""

    __slots__ = ("handle", "_destroy", "_pid", "__weakref__")

    def __init__(self, handle):
        self.handle = handle
        # Kept here: module globals may be gone at interpreter exit.
        self._destroy = _LIB.warmstart_model_destroy
        self._pid = os.getpid()

    def close(self):
        handle, self.handle = self.handle, None
        # In a forked child the handle is the parent's (its lease, session
        # and CUDA mappings): let go without touching it.
        if handle and os.getpid() == self._pid:
            self._destroy(handle)

    def __del__(self):
        self.close()


class _HostMemory:
    """A tensor's host memory for NumPy: read-only, and holding the lease
    (the base of the arrays NumPy makes from it)."""

    __slots__ = ("_lease", "__array_interface__")

    def __init__(self, lease, address, typestr, shape):
        self._lease = lease
        self.__array_interface__ = {
            "version": 3,
            "shape": shape,
            "typestr": typestr,
            "data": (address, True),  # Read-only.
            "strides": None,
        }


def _host_array(lease, address, dtype, shape, nbytes):
    typestr, layout = _dtypes.array_layout(dtype, shape, nbytes)
    if nbytes == 0 or not address:
        array = _np.empty(layout, dtype=typestr)
        array.flags.writeable = False
        return array
    return _np.asarray(_HostMemory(lease, address, typestr, layout))


class CudaTensor:
    """A tensor in GPU memory, imported into this process's primary context
    of its GPU, as ``__cuda_array_interface__`` (version 3): hand it to
    ``torch.as_tensor``, ``cupy.asarray`` or Numba. Never write to it:
    ``read_only`` says whether the driver would even let you (CUDA VMM
    imports are read-only where the driver allows it; legacy IPC mappings
    are not). Holds the
    model's lease, as host arrays do; so do the objects made from it that
    keep a reference (torch does).

    ``dtype`` and ``shape`` follow the same rules as the host arrays
    (raw unsigned integers or bytes where NumPy lacks the dtype)."""

    __slots__ = ("_lease", "ptr", "shape", "typestr", "nbytes",
                 "device_uuid", "dtype_name", "read_only")

    def __init__(self, lease, ptr, dtype, shape, nbytes, device_uuid,
                 read_only):
        self._lease = lease
        self.read_only = bool(read_only)
        self.ptr = ptr or 0
        self.typestr, self.shape = _dtypes.array_layout(dtype, shape, nbytes)
        self.nbytes = nbytes
        self.device_uuid = device_uuid
        self.dtype_name = dtype

    @property
    def dtype(self):
        return _np.dtype(self.typestr)

    @property
    def __cuda_array_interface__(self):
        return {
            "version": 3,
            "shape": self.shape,
            "typestr": self.typestr,
            "data": (self.ptr, self.read_only),
            "strides": None,
        }

    def _as_bytes(self):
        return _CudaBytes(self)

    def __repr__(self):
        return (f"CudaTensor({self.dtype_name}, shape={self.shape}, "
                f"device={self.device_uuid})")


class _CudaBytes:
    """A CudaTensor's memory as 1-D bytes for torch (torch 1.x reads no
    uint16). It claims to be writable: torch refuses interfaces marked
    read-only ("the read only flag is not supported"), and the weights are
    no more writable for it (see the module's note on writing)."""

    __slots__ = ("_tensor",)

    def __init__(self, tensor):
        self._tensor = tensor

    @property
    def __cuda_array_interface__(self):
        return {
            "version": 3,
            "shape": (self._tensor.nbytes,),
            "typestr": "|u1",
            "data": (self._tensor.ptr, False),
            "strides": None,
        }


def _torch_device(torch, uuid):
    """The torch device of the GPU with this UUID ("GPU-..."), or the
    current one where torch cannot tell UUIDs."""
    for index in range(torch.cuda.device_count()):
        properties = torch.cuda.get_device_properties(index)
        if f"GPU-{getattr(properties, 'uuid', '')}" == uuid:
            return torch.device("cuda", index)
    return torch.device("cuda", torch.cuda.current_device())


def _to_torch(torch, name, dtype, shape, array):
    attribute = _dtypes.TORCH.get(dtype)
    torch_dtype = getattr(torch, attribute, None) if attribute else None
    if torch_dtype is None:
        raise UnsupportedDType(
            f"warmstart: tensor {name!r} has dtype {dtype}, which torch "
            f"{torch.__version__} cannot represent; its raw bytes are "
            f"model.tensors[{name!r}]")
    if isinstance(array, CudaTensor):
        if array.nbytes == 0:
            return torch.empty(shape, dtype=torch_dtype,
                               device=_torch_device(torch, array.device_uuid))
        raw = torch.as_tensor(array._as_bytes())
    else:
        if array.nbytes == 0:
            return torch.empty(shape, dtype=torch_dtype)
        with warnings.catch_warnings():
            # "The given NumPy array is not writable": it is not, on purpose.
            warnings.simplefilter("ignore", UserWarning)
            raw = torch.from_numpy(array.reshape(-1).view(_np.uint8))
    try:
        return raw.view(torch_dtype).reshape(shape)
    except RuntimeError as error:
        raise UnsupportedDType(
            f"warmstart: tensor {name!r} ({dtype}, shape {list(shape)}, "
            f"{array.nbytes} bytes) cannot be viewed as {torch_dtype}: "
            f"{error}") from None


class _Table:
    """A model's tensor table, column by column (indexed by row, the C
    library's tensor index), read in one call
    (warmstart_model_tensor_table). The numbers are kept both as lists
    (per-row access) and as NumPy arrays (whole-table work: `to_torch`);
    per-tensor Python objects (shape tuples, records) are made only when
    asked for."""

    __slots__ = ("names", "dtypes", "devices", "nbytes", "data", "on_host",
                 "read_only", "shape_starts", "shapes", "columns",
                 "_dtype_codes", "_dims")

    def __init__(self, handle):
        table = _lib.TensorTable()
        _call(_LIB.warmstart_model_tensor_table, handle, ctypes.byref(table))
        count = table.count

        def strings(pointer, size):
            if not size:
                return []
            # Each string ends with a NUL: the last split is empty.
            return ctypes.string_at(pointer, size).decode(
                "utf-8", "surrogateescape").split("\0")[:-1]

        def column(pointer, ctype, length):
            """A NumPy copy: the C table is freed with the handle."""
            if not length:
                return _np.zeros(0, dtype=_np.dtype(ctype))
            address = ctypes.cast(pointer, ctypes.c_void_p).value
            return _np.array(_np.frombuffer(
                (ctype * length).from_address(address),
                dtype=_np.dtype(ctype)))

        self.names = strings(table.names, table.names_bytes)
        self.dtypes = strings(table.dtypes, table.dtypes_bytes)
        self.devices = strings(table.device_uuids, table.device_uuids_bytes)
        nbytes = column(table.nbytes, ctypes.c_uint64, count)
        data = column(table.data, ctypes.c_uint64, count)
        on_host = column(table.on_host, ctypes.c_uint8, count)
        shape_starts = column(table.shape_starts, ctypes.c_uint64,
                              count + 1 if count else 0)
        shapes = column(table.shapes, ctypes.c_uint64,
                        int(shape_starts[-1]) if count else 0)
        if not (len(self.names) == len(self.dtypes) == len(self.devices) ==
                count):
            raise DataLoss(f"warmstart: the tensor table lists {count} "
                           f"tensors but {len(self.names)} names, "
                           f"{len(self.dtypes)} dtypes and "
                           f"{len(self.devices)} devices")
        if count and (_np.any(shape_starts[1:] < shape_starts[:-1]) or
                      shape_starts[0] != 0):
            raise DataLoss("warmstart: the tensor table's shape_starts "
                           "decrease")
        # The NumPy columns, for whole-table work.
        self.columns = types.SimpleNamespace(
            nbytes=nbytes, data=data, on_host=on_host,
            shape_starts=shape_starts, shapes=shapes)
        self.nbytes = nbytes.tolist()
        self.data = data.tolist()
        self.on_host = on_host.tolist()
        self.read_only = column(table.read_only, ctypes.c_uint8,
                                count).tolist()
        self.shape_starts = shape_starts.tolist()
        self.shapes = shapes.tolist()
        self._dtype_codes = None
        self._dims = None

    def shape(self, row):
        return tuple(self.shapes[self.shape_starts[row]:
                                 self.shape_starts[row + 1]])

    def record(self, row):
        """(dtype, shape, on_host, data, nbytes, device, read_only)."""
        return (self.dtypes[row], self.shape(row), self.on_host[row],
                self.data[row] or None, self.nbytes[row], self.devices[row],
                self.read_only[row])

    def dtype_codes(self):
        """(every distinct dtype name, in order of first use; each row's
        index into it as a NumPy array). Made on first use."""
        if self._dtype_codes is None:
            names = {}
            codes = [names.setdefault(name, len(names))
                     for name in self.dtypes]
            self._dtype_codes = (list(names),
                                 _np.array(codes, dtype=_np.int64))
        return self._dtype_codes

    def dims(self):
        """Every row's shape as a NumPy matrix: (rows, most dimensions),
        ndim first, then the dimensions, padded with zeros."""
        if self._dims is None:
            starts = self.columns.shape_starts.astype(_np.int64)
            count = len(self.names)
            ndim = _np.diff(starts) if count else _np.zeros(0, _np.int64)
            widest = int(ndim.max()) if count else 0
            dims = _np.zeros((count, 1 + widest), dtype=_np.int64)
            dims[:, 0] = ndim
            if widest:
                row = _np.repeat(_np.arange(count), ndim)
                within = _np.arange(len(self.shapes)) - _np.repeat(
                    starts[:-1], ndim)
                # Dimensions past 2**63 do not fit: such a shape cannot
                # match its byte count, and its tensor is not grouped.
                dims[row, 1 + within] = _np.minimum(
                    self.columns.shapes, _np.uint64(2**63 - 1)).astype(
                        _np.int64)
            self._dims = dims
        return self._dims


def _first_rows(names, rows=None):
    """name -> the first of `rows` (ascending; None: every row) that has
    it, in row order; at C speed when no name repeats (one device's
    copy)."""
    if rows is None:
        keys, rows = names, range(len(names))
    else:
        keys = list(map(names.__getitem__, rows))
    first = dict(zip(keys, rows))
    if len(first) != len(keys):
        first = {}
        for name, row in zip(keys, rows):
            first.setdefault(name, row)
    return first


class _ByName(collections.abc.Mapping):
    """Read-only mapping name -> a value of the tensor's row, computed on
    access (shapes: a tuple per tensor is made only when asked for)."""

    __slots__ = ("_rows", "_value")

    def __init__(self, rows, value):
        self._rows = rows
        self._value = value

    def __getitem__(self, name):
        return self._value(self._rows[name])

    def __contains__(self, name):
        return name in self._rows

    def __iter__(self):
        return iter(self._rows)

    def __len__(self):
        return len(self._rows)

    def __repr__(self):
        return repr(dict(self.items()))


class _LazyTensors(collections.abc.Mapping):
    """Read-only mapping name -> array over one device's copy of a model,
    in the model's order. An array is made on first access and kept, so
    acquiring a model costs no per-tensor array (NumPy's array interface
    costs microseconds each)."""

    __slots__ = ("_lease", "_table", "_rows", "_arrays", "_span")

    def __init__(self, lease, table, rows):
        self._lease = lease
        self._table = table
        self._rows = rows  # name -> row of `table`
        self._arrays = {}
        self._span = None

    def __getitem__(self, name):
        array = self._arrays.get(name)
        if array is None:
            (dtype, shape, on_host, data, nbytes, device,
             read_only) = self._table.record(self._rows[name])
            if on_host:
                array = _host_array(self._lease, data, dtype, shape, nbytes)
            else:
                array = CudaTensor(self._lease, data, dtype, shape, nbytes,
                                   device, read_only)
            self._arrays[name] = array
        return array

    def __contains__(self, name):
        return name in self._rows

    def __iter__(self):
        return iter(self._rows)

    def __len__(self):
        return len(self._rows)

    def __repr__(self):
        return f"<warmstart tensors: {len(self._rows)}>"

    def _row_array(self):
        """The rows of `_rows`, in its order, as a NumPy array."""
        return _np.fromiter(self._rows.values(), dtype=_np.int64,
                            count=len(self._rows))

    def _host_span(self, torch):
        """One torch uint8 tensor over every host tensor's bytes (and what
        lies between them, never read), and its address; None when there
        are no host bytes."""
        if self._span is None:
            columns = self._table.columns
            rows = self._row_array()
            data = columns.data[rows]
            nbytes = columns.nbytes[rows]
            mapped = (columns.on_host[rows] != 0) & (data != 0) & (nbytes != 0)
            if not mapped.any():
                self._span = (None, 0)
            else:
                low = int(data[mapped].min())
                high = int((data[mapped] + nbytes[mapped]).max())
                memory = _np.asarray(_HostMemory(self._lease, low, "|u1",
                                                 (high - low,)))
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    self._span = (torch.from_numpy(memory), low)
        return self._span

    def _to_torch(self, torch):
        """name -> torch tensor, no copy. Host tensors are views of one
        tensor over the mapping (see `_host_views`: a few calls for a whole
        layered model, not one per tensor); the others (GPU tensors, a host
        tensor whose address is not a multiple of its element size from
        the span's start, dtypes torch lacks) go through their array."""
        names = list(self._rows)
        out = [None] * len(names)
        span, low = self._host_span(torch)
        filled = 0
        if span is not None:
            filled = _host_views(torch, self._table, self._row_array(), span,
                                 low, out)
        if filled < len(out):
            table = self._table
            for position, view in enumerate(out):
                if view is None:
                    name = names[position]
                    row = self._rows[name]
                    out[position] = _to_torch(torch, name, table.dtypes[row],
                                              table.shape(row), self[name])
        return dict(zip(names, out))


# The longest period looked for among the offsets of tensors of one shape:
# a layered model interleaves them (q_proj and o_proj of each layer), every
# period-th one equally spaced.
_MAX_PERIOD = 8
# Groups smaller than this are split into runs without looking for a period.
_PERIOD_SEARCH_MIN = 16
# Groups smaller than this are viewed one call per tensor, with no NumPy:
# what runs save there, NumPy's per-call overhead costs.
_RUN_MIN = 4


def _spaced_runs(offsets):
    """Splits `offsets` (ascending ints, a NumPy int64 array) into runs of
    equally spaced ones, as few as it finds: a list of (indices into
    `offsets` as a NumPy array, step). Looks for the period (every c-th
    offset equally spaced) that gives the fewest runs."""
    count = len(offsets)
    period = 1
    if count >= _PERIOD_SEARCH_MIN:
        fewest = None
        # At least four offsets a residue: a group of irregular offsets
        # costs a few NumPy calls, not _MAX_PERIOD squared.
        for candidate in range(1, min(_MAX_PERIOD, count // 4) + 1):
            runs = 0
            for residue in range(candidate):
                steps = _np.diff(offsets[residue::candidate])
                runs += 1 + int(_np.count_nonzero(steps[1:] != steps[:-1]))
            if fewest is None or runs < fewest:
                fewest, period = runs, candidate
            if runs == candidate:
                break  # Each residue is one run: nothing does better.
    result = []
    for residue in range(period):
        indices = _np.arange(residue, count, period)
        chosen = offsets[residue::period]
        steps = _np.diff(chosen)
        if len(steps) and (steps == steps[0]).all():
            result.append((indices, int(steps[0])))  # One run: no loop.
            continue
        chosen = chosen.tolist()
        length = len(chosen)
        i = 0
        while i < length:
            if i + 1 == length:
                result.append((indices[i:i + 1], 0))
                break
            step = chosen[i + 1] - chosen[i]
            j = i + 2
            while j < length and chosen[j] - chosen[j - 1] == step:
                j += 1
            result.append((indices[i:j], step))
            i = j
    return result


def _host_views(torch, table, rows, span, low, out):
    """Sets out[i] to a view of `span` (torch uint8 over the host bytes from
    address `low`) for every rows[i] that torch can view in place: a host
    tensor of a dtype torch has, whose address is a whole number of
    elements from `low` and whose shape matches its byte count. Tensors of
    one dtype and shape are grouped and their offsets split into equally
    spaced runs (`_spaced_runs`); a run is one `as_strided` over all of it
    and one `unbind`, so the per-tensor work is torch's, in C++. Leaves
    the others None; returns how many it set."""
    dtype_names, codes = table.dtype_codes()
    torch_dtypes = []
    items = _np.zeros(len(dtype_names), dtype=_np.int64)
    for code, name in enumerate(dtype_names):
        attribute = _dtypes.TORCH.get(name)
        torch_dtype = getattr(torch, attribute, None) if attribute else None
        torch_dtypes.append(torch_dtype)
        if torch_dtype is not None:
            items[code] = torch.empty((), dtype=torch_dtype).element_size()
    columns = table.columns
    code = codes[rows]
    item = items[code]
    data = columns.data[rows]
    nbytes = columns.nbytes[rows]
    on_host = columns.on_host[rows] != 0
    viewable = on_host & (data != 0) & (nbytes != 0) & (item > 0)
    viewable &= data >= _np.uint64(low)
    # Rows outside `viewable` may wrap here; they are dropped below.
    relative = (data - _np.uint64(low)).astype(_np.int64)
    viewable &= relative % _np.maximum(item, 1) == 0
    positions = _np.flatnonzero(viewable)
    if not len(positions):
        return 0
    dims = table.dims()[rows[positions]]
    offsets = relative[positions] // item[positions]
    # Sorted by dtype, then shape, then offset (lexsort's last key first).
    order = _np.lexsort((offsets,) + tuple(dims.T[::-1]) +
                        (code[positions],))
    positions = positions[order]
    key = _np.column_stack((code[positions], dims[order]))
    offsets = offsets[order]
    group_nbytes = nbytes[positions]
    offsets_list = offsets.tolist()
    nbytes_list = group_nbytes.tolist()
    positions_list = positions.tolist()
    breaks = (_np.flatnonzero(_np.any(key[1:] != key[:-1], axis=1)) +
              1).tolist()
    typed = {}
    filled = 0
    for start, end in zip([0] + breaks, breaks + [len(positions_list)]):
        first = positions_list[start]
        shape = table.shape(int(rows[first]))
        dtype_code = int(code[first])
        torch_dtype = torch_dtypes[dtype_code]
        item_size = int(items[dtype_code])
        elements = 1
        for extent in shape:
            elements *= extent
        expected = elements * item_size
        base = typed.get(torch_dtype)
        if base is None:
            usable = span.numel() - span.numel() % item_size
            base = span[:usable].view(torch_dtype)
            typed[torch_dtype] = base
        strides = []
        step = 1
        for extent in reversed(shape):
            strides.append(step)
            step *= extent
        strides = tuple(strides[::-1])
        if end - start < _RUN_MIN:
            # Too few to gain from runs: one call each, no NumPy.
            for i in range(start, end):
                if nbytes_list[i] == expected:
                    out[positions_list[i]] = base.as_strided(
                        shape, strides, offsets_list[i])
                    filled += 1
            continue
        if expected >= 2**64:
            continue
        members = start + _np.flatnonzero(
            group_nbytes[start:end] == _np.uint64(expected))
        member_offsets = offsets[members]
        member_positions = positions[members]
        for indices, spacing in _spaced_runs(member_offsets):
            first_offset = int(member_offsets[indices[0]])
            targets = member_positions[indices].tolist()
            filled += len(targets)
            if len(targets) == 1:
                out[targets[0]] = base.as_strided(shape, strides,
                                                  first_offset)
                continue
            views = base.as_strided((len(targets),) + shape,
                                    (spacing,) + strides,
                                    first_offset).unbind(0)
            for target, view in zip(targets, views):
                out[target] = view
    return filled


class Model:
    """A leased model, mapped into this process. Use it as a context manager
    or call `release()`.

    Attributes: ``name``, ``lease_id``, ``devices`` (the devices holding a
    copy, "host" or GPU UUIDs), ``tensors`` (name -> array, on the first
    device), ``dtypes`` (name -> real dtype name: "BF16", "Q4_K", ...),
    ``shapes`` (name -> the tensor's shape, whatever the array's),
    ``roles`` (name -> "parameter", "buffer" or "state_dict" where the
    format records it: tensorizer; "" otherwise), ``metadata`` (the
    checkpoint's key-value metadata: safetensors' ``__metadata__``, GGUF's
    key-values with arrays summarised as {"type", "len"}; {} for
    tensorizer).

    The lease is held until `release()` (or the end of the ``with`` block)
    *and* until the last array taken from the model is gone: arrays stay
    valid after the model is released.
    """

    def __init__(self, lease):
        handle = lease.handle
        self._name = _text(_LIB.warmstart_model_name(handle))
        self._lease_id = _text(_LIB.warmstart_model_lease_id(handle))
        # The C table in one call, as columns: the arrays, the shape tuples
        # and the roles (one more call per tensor) are made only when asked
        # for, which keeps acquiring a model with thousands of tensors in
        # the milliseconds.
        table = _Table(handle)
        first_index = _first_rows(table.names)
        if len(set(table.devices)) <= 1:
            # One device (or none): its rows are every row.
            by_device = {table.devices[0]: first_index} if table.names else {}
        else:
            by_device = {}
            for row, device in enumerate(table.devices):
                by_device.setdefault(device, []).append(row)
            by_device = {device: _first_rows(table.names, device_rows)
                         for device, device_rows in by_device.items()}
        metadata = _text(_LIB.warmstart_model_metadata_json(handle)) or "{}"
        try:
            self._metadata = types.MappingProxyType(json.loads(metadata))
        except ValueError as error:
            raise DataLoss(f"warmstart: model {self._name}: the daemon sent "
                           f"metadata that is not JSON ({error})") from None
        self._first_index = first_index
        self._roles = None
        self._by_device = {device: _LazyTensors(lease, table, device_rows)
                           for device, device_rows in by_device.items()}
        self._devices = list(by_device)
        self._dtypes = _ByName(first_index, table.dtypes.__getitem__)
        self._shapes = _ByName(first_index, table.shape)
        self._lease = lease
        self._lease_ref = weakref.ref(lease)

    @property
    def name(self):
        return self._name

    @property
    def lease_id(self):
        return self._lease_id

    @property
    def devices(self):
        return list(self._devices)

    @property
    def dtypes(self):
        return self._dtypes

    @property
    def shapes(self):
        return self._shapes

    @property
    def roles(self):
        if self._roles is None:
            lease = self._lease_ref()
            handle = lease.handle if lease is not None else None
            role = _LIB.warmstart_model_tensor_role
            self._roles = types.MappingProxyType(
                {name: _text(role(handle, index)) if handle else ""
                 for name, index in self._first_index.items()})
        return self._roles

    @property
    def metadata(self):
        return self._metadata

    @property
    def released(self):
        """Whether `release()` was called (arrays may still hold the
        lease: see `lease_held`)."""
        return self._lease is None

    @property
    def lease_held(self):
        """Whether the lease is still held, by the model or by an array."""
        lease = self._lease_ref()
        return lease is not None and lease.handle is not None

    def _check_held(self):
        if self._lease is None:
            raise FailedPrecondition(
                f"warmstart: model {self._name} was released (arrays taken "
                f"before stay valid)")

    @property
    def tensors(self):
        """Read-only mapping: tensor name -> array (NumPy on the host,
        `CudaTensor` on a GPU), on the model's first device. Each array is
        made on first access and then kept."""
        self._check_held()
        if not self._devices:
            return types.MappingProxyType({})
        return self._by_device[self._devices[0]]

    def tensors_on(self, device):
        """The tensors of the copy on `device` ("host" or a GPU UUID)."""
        self._check_held()
        if device not in self._by_device:
            raise NotFound(f"warmstart: model {self._name} has no copy on "
                           f"{device} (it has {', '.join(self._devices)})")
        return self._by_device[device]

    @property
    def file_paths(self):
        """For a model held as a file image (layout "file_image", the
        default for a GGUF file in host memory): a list with one path per
        file ("/proc/self/fd/N") under which this process can open or map
        the resident bytes as the model's file, with no copy:
        ``llama_cpp.Llama(model_path=...)``, ``gguf.GGUFReader``,
        ``safetensors.safe_open``, ``numpy.memmap``. Read-only: opening it
        for writing, writing and truncating fail. Valid while the lease is
        held. FailedPrecondition for a packed model (load it with
        ``layout="file_image"``)."""
        self._check_held()
        path = ctypes.c_char_p()
        _call(_LIB.warmstart_model_file_path, self._lease.handle,
              ctypes.byref(path))
        return [os.fsdecode(path.value)]

    def to_torch(self, device=None):
        """A dict name -> torch tensor sharing the memory (no copy), with
        torch's dtype for each (BF16 -> torch.bfloat16, F8_E4M3 ->
        torch.float8_e4m3fn where torch has it, ...). Raises
        `UnsupportedDType` naming the first tensor torch has no dtype for
        (GGUF quantized types, sub-byte floats): read those from `tensors`.
        `device` picks the copy, as `tensors_on`."""
        import torch  # Only here: NumPy users need not have torch.

        tensors = self.tensors if device is None else self.tensors_on(device)
        if not tensors:
            return {}  # A model without tensors (and so without devices).
        return tensors._to_torch(torch)

    def release(self):
        """Drops the model's hold on its lease: it is released (and the
        memory unmapped) now, or when the last array taken from the model
        is gone. Idempotent."""
        self._by_device = {}
        lease, self._lease = self._lease, None
        del lease

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.release()

    def __repr__(self):
        state = "released" if self._lease is None else "held"
        return (f"<warmstart.Model {self._name} lease={self._lease_id} "
                f"{state}>")


class Client:
    """A connection to warmstartd. Thread-safe, except that `close()` must
    not race with other calls. Models acquired through it stay valid after
    it is closed."""

    def __init__(self, handle, socket):
        self._handle = handle
        self._pid = os.getpid()
        self._socket = socket
        self._destroy = _LIB.warmstart_client_destroy

    @property
    def socket(self):
        return self._socket

    def _h(self):
        if not self._handle:
            raise FailedPrecondition("warmstart: the client is closed")
        return self._handle

    def acquire(self, name, timeout=None):
        """Takes a lease on model `name` (waiting up to `timeout` seconds
        for a load in progress; None waits forever) and maps it. NotFound
        when there is no such model."""
        handle = ctypes.c_void_p()
        _call(_LIB.warmstart_acquire, self._h(), _name(name),
              _timeout(timeout), ctypes.byref(handle))
        return Model(_Lease(handle.value))

    def load(self, name, path, timeout=None, layout=None):
        """Loads model `name` from `path` (absolute, beneath one of the
        daemon's model roots) and waits until it is ready (up to `timeout`
        seconds; a timeout leaves the load running). Returns its status.
        `layout`: "packed" or "file_image" (see `Model.file_paths`); None
        lets the daemon choose (file_image for one GGUF file in host
        memory) and joins a model loaded in either."""
        _call(_LIB.warmstart_load_layout, self._h(), _name(name),
              os.fsencode(path),
              None if layout is None else layout.encode(),
              _timeout(timeout))
        return self.status(name)

    def unload(self, name, force=False):
        """Frees a model; with `force`, a leased one once its last lease is
        released. FailedPrecondition for a leased model without `force`."""
        _call(_LIB.warmstart_unload, self._h(), _name(name),
              1 if force else 0)

    def _status_json(self, name):
        text = ctypes.c_void_p()
        _call(_LIB.warmstart_status_json, self._h(), name,
              ctypes.byref(text))
        try:
            return json.loads(ctypes.string_at(text.value).decode())
        finally:
            _LIB.warmstart_free(text)

    def status(self, name):
        """A model's status: a dict with name, path, state ("loading",
        "ready", "failed", "unloading"), leases, bytes_loaded, bytes_total,
        error, devices, tensor_count, pinned, ... NotFound when unknown."""
        return self._status_json(_name(name))

    def models(self):
        """Every model's status (as `status`), in the daemon's order."""
        return self._status_json(None)

    def close(self):
        handle, self._handle = self._handle, None
        # As for models: a forked child does not touch the parent's handle.
        if handle and os.getpid() == self._pid:
            self._destroy(handle)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __del__(self):
        self.close()

    def __repr__(self):
        state = "open" if self._handle else "closed"
        return f"<warmstart.Client {self._socket} {state}>"


def connect(path=None, timeout=10.0, wait=False):
    """Connects to warmstartd at the unix socket `path` (None: as
    warmstartctl, $WARMSTART_SOCKET when set, else
    /run/warmstart/warmstart.sock) and checks its protocol version, waiting
    up to `timeout` seconds (None: forever) for an answer; with `wait`,
    also while the socket does not exist yet. Raises Unavailable (naming
    the socket) when nothing answers."""
    if path is None:
        socket = os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET
    else:
        socket = os.fspath(path)
    handle = ctypes.c_void_p()
    seconds = math.inf if timeout is None else _timeout(timeout)
    _call(_LIB.warmstart_connect, os.fsencode(socket), seconds,
          1 if wait else 0, ctypes.byref(handle))
    return Client(handle.value, socket)
