"""Loads libwarmstart.so and declares the C interface of warmstart.h.

The library is ``WARMSTART_LIBRARY`` when that variable is set (and only
that path then); otherwise the first found of:

1. next to this package (``warmstart/libwarmstart.so``: what
   ``tools/install`` does);
2. in the ``lib`` directory of an installation prefix the package sits in
   (``PREFIX/lib/python3/site-packages/warmstart`` -> ``PREFIX/lib``).
"""
import ctypes
import os

ENV_LIBRARY = "WARMSTART_LIBRARY"
LIBRARY_NAME = "libwarmstart.so"


class Tensor(ctypes.Structure):
    """struct warmstart_tensor."""

    _fields_ = [
        ("name", ctypes.c_char_p),
        ("dtype", ctypes.c_char_p),
        ("device_uuid", ctypes.c_char_p),
        ("shape", ctypes.POINTER(ctypes.c_uint64)),
        ("ndim", ctypes.c_size_t),
        ("nbytes", ctypes.c_uint64),
        ("data", ctypes.c_void_p),
        ("on_host", ctypes.c_int),
        ("read_only", ctypes.c_int),
    ]


class TensorTable(ctypes.Structure):
    """struct warmstart_tensor_table."""

    _fields_ = [
        ("count", ctypes.c_size_t),
        ("names", ctypes.POINTER(ctypes.c_char)),
        ("names_bytes", ctypes.c_size_t),
        ("dtypes", ctypes.POINTER(ctypes.c_char)),
        ("dtypes_bytes", ctypes.c_size_t),
        ("device_uuids", ctypes.POINTER(ctypes.c_char)),
        ("device_uuids_bytes", ctypes.c_size_t),
        ("nbytes", ctypes.POINTER(ctypes.c_uint64)),
        ("data", ctypes.POINTER(ctypes.c_uint64)),
        ("on_host", ctypes.POINTER(ctypes.c_uint8)),
        ("read_only", ctypes.POINTER(ctypes.c_uint8)),
        ("shape_starts", ctypes.POINTER(ctypes.c_uint64)),
        ("shapes", ctypes.POINTER(ctypes.c_uint64)),
    ]


def candidates():
    """The paths tried, in order."""
    package = os.path.dirname(os.path.abspath(__file__))
    explicit = os.environ.get(ENV_LIBRARY)
    if explicit:
        return [explicit]
    return [
        os.path.join(package, LIBRARY_NAME),
        os.path.normpath(os.path.join(package, "..", "..", "..",
                                      LIBRARY_NAME)),
    ]


def _declare(lib):
    c_void_p_p = ctypes.POINTER(ctypes.c_void_p)
    signatures = {
        "warmstart_version": (ctypes.c_char_p, []),
        "warmstart_free": (None, [ctypes.c_void_p]),
        "warmstart_connect": (ctypes.c_int, [
            ctypes.c_char_p, ctypes.c_double, ctypes.c_int, c_void_p_p,
            c_void_p_p]),
        "warmstart_client_destroy": (None, [ctypes.c_void_p]),
        "warmstart_load": (ctypes.c_int, [
            ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p,
            ctypes.c_double, c_void_p_p]),
        "warmstart_load_layout": (ctypes.c_int, [
            ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p,
            ctypes.c_char_p, ctypes.c_double, c_void_p_p]),
        "warmstart_unload": (ctypes.c_int, [
            ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, c_void_p_p]),
        "warmstart_status_json": (ctypes.c_int, [
            ctypes.c_void_p, ctypes.c_char_p, c_void_p_p, c_void_p_p]),
        "warmstart_acquire": (ctypes.c_int, [
            ctypes.c_void_p, ctypes.c_char_p, ctypes.c_double, c_void_p_p,
            c_void_p_p]),
        "warmstart_release": (ctypes.c_int, [ctypes.c_void_p, c_void_p_p]),
        "warmstart_model_destroy": (None, [ctypes.c_void_p]),
        "warmstart_model_name": (ctypes.c_char_p, [ctypes.c_void_p]),
        "warmstart_model_lease_id": (ctypes.c_char_p, [ctypes.c_void_p]),
        "warmstart_model_tensor_count": (ctypes.c_size_t,
                                         [ctypes.c_void_p]),
        "warmstart_model_tensor": (ctypes.c_int, [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(Tensor)]),
        "warmstart_model_file_path": (ctypes.c_int, [
            ctypes.c_void_p, ctypes.POINTER(ctypes.c_char_p), c_void_p_p]),
        "warmstart_model_tensor_table": (ctypes.c_int, [
            ctypes.c_void_p, ctypes.POINTER(TensorTable), c_void_p_p]),
        "warmstart_model_tensor_role": (ctypes.c_char_p, [
            ctypes.c_void_p, ctypes.c_size_t]),
        "warmstart_model_metadata_json": (ctypes.c_char_p,
                                          [ctypes.c_void_p]),
    }
    for name, (restype, argtypes) in signatures.items():
        function = getattr(lib, name)
        function.restype = restype
        function.argtypes = argtypes
    return lib


def load():
    """Returns the declared library; ImportError naming the paths tried
    when none loads."""
    tried = []
    for path in candidates():
        if not os.path.exists(path):
            tried.append(f"{path} (no such file)")
            continue
        try:
            return _declare(ctypes.CDLL(path))
        except (OSError, AttributeError) as error:
            tried.append(f"{path} ({error})")
    raise ImportError(
        "warmstart: cannot load libwarmstart.so; tried " + "; ".join(tried) +
        f". Set {ENV_LIBRARY} to its path.")


LIB = load()
