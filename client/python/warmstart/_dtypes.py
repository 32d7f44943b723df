"""How the daemon's dtype names ("F32", "BF16", "Q4_K", ...) become NumPy
and torch dtypes."""

# Names NumPy represents exactly: the typestr of each (little-endian: the
# daemon serves bytes as stored, and every format stores little-endian).
NUMPY = {
    "BOOL": "|b1",
    "U8": "|u1",
    "I8": "|i1",
    "U16": "<u2",
    "I16": "<i2",
    "U32": "<u4",
    "I32": "<i4",
    "U64": "<u8",
    "I64": "<i8",
    "F16": "<f2",
    "F32": "<f4",
    "F64": "<f8",
    "C64": "<c8",
    "C128": "<c16",
}

# Names NumPy lacks but whose elements are whole bytes: served as unsigned
# integers of the element's size, with the tensor's shape.
RAW = {
    "BF16": "<u2",
    "C32": "<u4",
    "F8_E4M3": "|u1",
    "F8_E5M2": "|u1",
    "F8_E8M0": "|u1",
    "F8_E4M3FNUZ": "|u1",
    "F8_E5M2FNUZ": "|u1",
}

# Everything else (sub-byte F4 and F6_*, GGUF's quantized blocks Q*, IQ*,
# TQ*, MXFP4, names this version does not know) is served as 1-D bytes.
BYTES = "|u1"

# The torch dtype (an attribute of the torch module) for each name, where
# torch may have one; looked up at run time, as torch versions differ.
TORCH = {
    "BOOL": "bool",
    "U8": "uint8",
    "I8": "int8",
    "U16": "uint16",
    "I16": "int16",
    "U32": "uint32",
    "I32": "int32",
    "U64": "uint64",
    "I64": "int64",
    "F16": "float16",
    "BF16": "bfloat16",
    "F32": "float32",
    "F64": "float64",
    "C32": "complex32",
    "C64": "complex64",
    "C128": "complex128",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "F8_E8M0": "float8_e8m0fnu",
    "F8_E4M3FNUZ": "float8_e4m3fnuz",
    "F8_E5M2FNUZ": "float8_e5m2fnuz",
}


def array_layout(dtype, shape, nbytes):
    """(typestr, shape) of the array that serves a tensor: its own dtype
    and shape where NumPy has the dtype, a same-sized unsigned integer with
    its shape for other whole-byte dtypes, else 1-D bytes. Falls back to
    bytes when the shape does not match the byte count."""
    typestr = NUMPY.get(dtype) or RAW.get(dtype)
    if typestr is not None:
        itemsize = int(typestr[2:])
        count = 1
        for dim in shape:
            count *= dim
        if count * itemsize == nbytes:
            return typestr, tuple(shape)
    return BYTES, (nbytes,)
