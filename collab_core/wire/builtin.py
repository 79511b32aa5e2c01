"""The serializers core registers through its built-in plugin: :class:`Blob` (large binary data out of
band), numpy arrays and scalars, torch tensors (only where torch is installed) and
:class:`~collab_core.fl_model.FLModel`.

Nothing here imports numpy or torch until a value of theirs is encoded or one of their tags is
decoded: types are matched by name (``numpy.ndarray``, ``torch.Tensor``).

Array payload (a ``bytes`` payload, so it is decoded straight from msgpack's ``ext_hook``)::

    u8 flags (bit 0: Fortran order) | u8 ndim | u8 len(dtype) | u32 buffer index
    | dtype name (ASCII, from a fixed table) | ndim x i64 shape | [torch: device, UTF-8]

Data is always little-endian on the wire; ``prod(shape) * itemsize`` must equal the buffer's
length. Numpy scalars carry their bytes inline: ``u8 len(dtype) | dtype name | raw bytes``.
A Blob's payload is ``u32 buffer index``: its bytes are that one out-of-band buffer.
"""

from __future__ import annotations

import ctypes
import importlib.util
import math
import struct
import sys
import threading
from typing import Any

from ._codec import (
    DecodeContext,
    EncodeContext,
    Serializer,
    WireError,
    attrs_serializer,
    qualified_name,
)

__all__ = ["Blob", "builtin_serializers", "NUMPY_DTYPES", "TORCH_DTYPES"]

_HEAD = struct.Struct("<BBBI")  # flags, ndim, len(dtype name), buffer index
_F_ORDER = 1
_MAX_NDIM = 64
_MAX_DIM = 1 << 62
_record_structs: dict[tuple[int, int], struct.Struct] = {}


def _record_struct(nlen: int, ndim: int) -> struct.Struct:
    """flags, ndim, nlen, index, dtype name, *shape -- cached (at most 256 x 65 of them)."""
    st = _record_structs.get((nlen, ndim))
    if st is None:
        st = _record_structs[(nlen, ndim)] = struct.Struct(f"<BBBI{nlen}s{ndim}q")
    return st


#: wire dtype name -> numpy dtype string (explicit little-endian). Nothing else is accepted.
NUMPY_DTYPES: dict[str, str] = {
    "bool": "|b1",
    "int8": "|i1",
    "uint8": "|u1",
    "int16": "<i2",
    "uint16": "<u2",
    "int32": "<i4",
    "uint32": "<u4",
    "int64": "<i8",
    "uint64": "<u8",
    "float16": "<f2",
    "float32": "<f4",
    "float64": "<f8",
    "complex64": "<c8",
    "complex128": "<c16",
}

#: wire dtype names of torch (each is also the name of the ``torch`` attribute). Decoding looks
#: the peer's name up in a table built from this fixed list, never with getattr on its string.
TORCH_DTYPES: tuple[str, ...] = (
    "bool",
    "uint8",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "bfloat16",
    "float32",
    "float64",
    "complex32",
    "complex64",
    "complex128",
    "float8_e4m3fn",
    "float8_e5m2",
    "float8_e4m3fnuz",
    "float8_e5m2fnuz",
)


def _parse_record(payload: Any, what: str) -> tuple[int, str, int, tuple[int, ...], int]:
    """(flags, dtype name, buffer index, shape, end offset) of an array record, or WireError."""
    if type(payload) is not bytes or len(payload) < _HEAD.size:
        raise WireError(f"malformed {what} record")
    flags, ndim, nlen, _ = _HEAD.unpack_from(payload, 0)
    if ndim > _MAX_NDIM or flags & ~_F_ORDER:
        raise WireError(f"malformed {what} record (ndim={ndim}, flags={flags})")
    st = _record_struct(nlen, ndim)
    if len(payload) < st.size:
        raise WireError(f"truncated {what} record")
    fields = st.unpack_from(payload, 0)
    shape = fields[5:]
    for d in shape:
        if d < 0 or d > _MAX_DIM:
            raise WireError(f"invalid array dimension {d} in {what} record")
    try:
        dtype = fields[4].decode("ascii")
    except UnicodeDecodeError:
        raise WireError(f"malformed dtype name in {what} record") from None
    return flags, dtype, fields[3], shape, st.size


def _check_length(shape: tuple[int, ...], itemsize: int, buf: memoryview, dtype: str) -> None:
    expected = math.prod(shape) * itemsize
    if expected != buf.nbytes:
        raise WireError(
            f"array of dtype {dtype} and shape {tuple(shape)} needs {expected} bytes but its buffer has {buf.nbytes}"
        )


# -- Blob -------------------------------------------------------------------------------------------


class _PyBuffer(ctypes.Structure):
    """CPython's ``Py_buffer`` (to read the address of a read-only buffer)."""

    _fields_ = [
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.c_void_p),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    ]


def _address(view: memoryview) -> int:
    """Address of the first byte of a contiguous buffer (the export stays held by ``view``)."""
    get = ctypes.pythonapi.PyObject_GetBuffer
    get.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
    get.restype = ctypes.c_int
    release = ctypes.pythonapi.PyBuffer_Release
    release.argtypes = [ctypes.POINTER(_PyBuffer)]
    release.restype = None
    pb = _PyBuffer()
    if get(view, ctypes.byref(pb), 0) != 0:  # pragma: no cover - a memoryview always exports
        raise BufferError("cannot read the address of the buffer")
    try:
        return int(pb.buf or 0)
    finally:
        release(ctypes.byref(pb))


#: Per-length classes (Python < 3.12 can only export a buffer from a C type: a ctypes array of
#: exactly the blob's length). A bounded cache; a class evicted from it stays valid.
_blob_types: dict[int, type] = {}
_BLOB_TYPES_MAX = 4096
_blob_lock = threading.Lock()


class Blob:
    """Read-only bytes over any buffer (``bytes``, ``bytearray``, ``memoryview``, ``mmap``), sent by
    the wire format as ONE out-of-band buffer: neither encoding nor decoding copies its bytes.

    A received Blob wraps the received buffer. ``bytes(blob)`` copies; ``len(blob)``,
    ``memoryview(blob)``, ``blob.view`` (a read-only memoryview), ``blob[i]`` (an int),
    ``blob[a:b]`` (a Blob over the slice, no copy), iteration, and equality and hashing like the
    equal ``bytes`` work as for bytes. The Blob keeps its buffer alive (and, for an ``mmap``, open);
    it does not copy it, so changes made through another reference to a writable buffer show.

    Use it for big binary data (job files, checkpoints, archives): a plain ``bytes`` value
    travels inside the msgpack header instead, which is bounded by ``Limits.max_header_bytes``.

    Never write through ``memoryview(blob)``: before Python 3.12 the class can export its
    buffer only as a (writable) ctypes array; ``blob.view`` is read-only everywhere.
    """

    __slots__ = ()
    _wire_uncached = True  # a class per length: the encoder table must not remember each

    def __new__(cls, data: Any = b"") -> Blob:
        if isinstance(data, Blob):
            return data
        try:
            mv = data if type(data) is memoryview else memoryview(data)
        except TypeError:
            raise TypeError(f"Blob needs a bytes-like object, got {type(data).__name__}") from None
        if mv.ndim != 1 or mv.format not in ("B", "b", "c"):
            if not mv.c_contiguous:
                raise TypeError("Blob needs a C-contiguous buffer")
            mv = mv.cast("B")
        elif mv.format != "B":
            mv = mv.cast("B")
        n = mv.nbytes
        kind = _blob_type(n)
        if n == 0:
            obj = kind.from_buffer(bytearray())
        elif mv.readonly:
            obj = kind.from_address(_address(mv))
        else:
            obj = kind.from_buffer(mv)
        obj.__dict__["_view"] = mv.toreadonly()  # keeps the source (and its export) alive
        return obj

    def __init__(self, data: Any = b"") -> None:  # the ctypes base must not see ``data``
        pass

    @property
    def view(self) -> memoryview:
        """A read-only memoryview of the bytes (no copy)."""
        return self.__dict__["_view"]

    def __len__(self) -> int:
        return self.__dict__["_view"].nbytes

    def __bytes__(self) -> bytes:
        return self.__dict__["_view"].tobytes()

    def tobytes(self) -> bytes:
        return self.__dict__["_view"].tobytes()

    def __getitem__(self, key: Any) -> Any:
        v = self.__dict__["_view"]
        if isinstance(key, slice):
            if key.step not in (None, 1):
                return v[key].tobytes()
            return Blob(v[key])
        return v[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        raise TypeError("a Blob is read-only")

    def __delitem__(self, key: Any) -> None:
        raise TypeError("a Blob is read-only")

    def __iter__(self) -> Any:
        return iter(self.__dict__["_view"])

    def __eq__(self, other: Any) -> bool:
        if isinstance(other, Blob):
            other = other.view
        elif not isinstance(other, (bytes, bytearray, memoryview)):
            try:
                other = memoryview(other)
            except TypeError:
                return NotImplemented
        return self.__dict__["_view"] == other

    def __ne__(self, other: Any) -> bool:
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    def __hash__(self) -> int:
        h = self.__dict__.get("_hash")
        if h is None:
            h = self.__dict__["_hash"] = hash(self.__dict__["_view"].tobytes())
        return h

    def __repr__(self) -> str:
        v = self.__dict__["_view"]
        head = v[:16].tobytes()
        return f"Blob({head!r}{'...' if v.nbytes > 16 else ''}, {v.nbytes} bytes)"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Blob, (self.tobytes(),))

    def __copy__(self) -> Blob:
        return self

    def __deepcopy__(self, memo: Any) -> Blob:
        return Blob(self.tobytes())

    def __buffer__(self, flags: int) -> memoryview:  # Python >= 3.12: exports are read-only
        return self.__dict__["_view"]


def _blob_type(n: int) -> type:
    kind = _blob_types.get(n)
    if kind is None:
        kind = type("Blob", (Blob, ctypes.c_ubyte * n), {"__module__": Blob.__module__, "__qualname__": "Blob"})
        with _blob_lock:
            if len(_blob_types) >= _BLOB_TYPES_MAX:
                _blob_types.clear()
            _blob_types[n] = kind
    return kind


_BLOB_RECORD = struct.Struct("<I")


def _encode_blob(b: Any, ctx: EncodeContext) -> bytes:
    return _BLOB_RECORD.pack(ctx.add_buffer(b.view))


def _decode_blob(payload: Any, ctx: DecodeContext) -> Blob:
    if type(payload) is not bytes or len(payload) != _BLOB_RECORD.size:
        raise WireError("malformed collab.Blob record")
    return Blob(ctx.buffer(_BLOB_RECORD.unpack(payload)[0]))


# -- numpy ------------------------------------------------------------------------------------------

_np: Any = None
_np_decode_table: dict[str, Any] = {}  # wire name -> numpy dtype
_np_encode_table: dict[str, bytes] = {}  # numpy dtype.str (little-endian) -> wire name


def _numpy() -> Any:
    global _np
    if _np is None:
        import numpy

        for name, code in NUMPY_DTYPES.items():
            dt = numpy.dtype(code)
            _np_decode_table[name] = dt
            _np_encode_table[dt.str] = name.encode("ascii")
        _np = numpy
    return _np


def _np_wire_dtype(a: Any) -> tuple[Any, bytes]:
    """(the array in little-endian byte order, its wire dtype name), or WireError."""
    dt = a.dtype
    name = _np_encode_table.get(dt.str)
    if name is None and dt.byteorder == ">":
        le = dt.newbyteorder("<")
        name = _np_encode_table.get(le.str)
        if name is not None:
            a = a.astype(le)
    if name is None:
        raise WireError(
            f"cannot encode a numpy value of dtype {dt}: the wire carries only "
            f"{', '.join(NUMPY_DTYPES)}. Convert it first (e.g. .astype(np.float64))"
        )
    return a, name


def _encode_ndarray(a: Any, ctx: EncodeContext) -> bytes:
    np = _np or _numpy()
    name = _np_encode_table.get(a.dtype.str)
    if name is None:
        a, name = _np_wire_dtype(a)
    if type(a) is not np.ndarray:
        if isinstance(a, np.ma.MaskedArray):
            raise WireError("cannot encode a numpy masked array; send .data and .mask separately")
        a = a.view(np.ndarray)
    flags = 0
    if a.flags.c_contiguous:
        data = a
    elif a.flags.f_contiguous:  # the transpose of a Fortran-order array is C-order: no copy
        flags = _F_ORDER
        data = a.T
    else:
        data = np.ascontiguousarray(a)
    index = ctx.add_buffer(memoryview(data) if data.size else b"")
    ndim = a.ndim
    return _record_struct(len(name), ndim).pack(flags, ndim, len(name), index, name, *a.shape)


def _decode_ndarray(payload: Any, ctx: DecodeContext) -> Any:
    flags, dtype, index, shape, end = _parse_record(payload, "numpy.ndarray")
    np = _np or _numpy()
    dt = _np_decode_table.get(dtype)
    if dt is None:
        raise WireError(f"numpy dtype {dtype[:40]!r} is not allowed on the wire")
    if end != len(payload):
        raise WireError("malformed numpy.ndarray record (trailing bytes)")
    buf = ctx.buffer(index)
    _check_length(shape, dt.itemsize, buf, dtype)
    # one array object straight over the buffer (no intermediate 1-D array)
    return np.ndarray(shape, dtype=dt, buffer=buf, order="F" if flags else "C")


def _encode_np_scalar(x: Any, ctx: EncodeContext) -> bytes:
    a, name = _np_wire_dtype(_numpy().asarray(x))
    return bytes([len(name)]) + name + a.tobytes()


def _decode_np_scalar(payload: Any, ctx: DecodeContext) -> Any:
    if type(payload) is not bytes or not payload:
        raise WireError("malformed numpy scalar record")
    np = _numpy()
    n = payload[0]
    name = payload[1 : 1 + n]
    dt = _np_decode_table.get(name.decode("ascii", "replace"))
    if dt is None:
        raise WireError(f"numpy dtype {name[:40]!r} is not allowed on the wire")
    raw = payload[1 + n :]
    if len(raw) != dt.itemsize:
        raise WireError(f"numpy scalar of dtype {dt} needs {dt.itemsize} bytes, got {len(raw)}")
    return np.frombuffer(raw, dtype=dt)[0]


# -- torch ------------------------------------------------------------------------------------------

_torch: Any = None
_torch_decode_table: dict[str, Any] = {}  # wire name -> torch.dtype
_torch_encode_table: dict[Any, bytes] = {}  # torch.dtype -> wire name
_BIG_ENDIAN = sys.byteorder != "little"


def _get_torch() -> Any:
    global _torch
    if _torch is None:
        import torch

        for name in TORCH_DTYPES:
            dt = getattr(torch, name, None)  # our fixed list, never a peer's string
            if isinstance(dt, torch.dtype):
                _torch_decode_table[name] = dt
                _torch_encode_table[dt] = name.encode("ascii")
        _torch = torch
    return _torch


def _tensor_memory(t: Any) -> memoryview:
    """A writable byte view of a contiguous CPU tensor's memory that keeps the tensor alive."""
    n = t.nbytes
    if n == 0:
        return memoryview(b"")
    arr = (ctypes.c_ubyte * n).from_address(t.data_ptr())
    arr._collab_owner = t  # type: ignore[attr-defined]  # the view keeps arr, arr keeps t
    return memoryview(arr).cast("B")


def _encode_tensor(t: Any, ctx: EncodeContext) -> bytes:
    torch = _torch or _get_torch()
    name = _torch_encode_table.get(t.dtype)
    if name is None:
        raise WireError(
            f"cannot encode a torch tensor of dtype {t.dtype}: the wire carries only {', '.join(_torch_decode_table)}"
        )
    if t.layout is not torch.strided:
        raise WireError(f"cannot encode a torch tensor with layout {t.layout}; call .to_dense() first")
    if t.is_quantized:
        raise WireError("cannot encode a quantized torch tensor; dequantize it first")
    device = b""
    if t.requires_grad:
        t = t.detach()
    if not t.is_cpu:
        device = str(t.device).encode("utf-8")
        t = t.detach().to("cpu")
    if t.is_conj():
        t = t.resolve_conj()
    if t.is_neg():
        t = t.resolve_neg()
    if not t.is_contiguous():
        t = t.contiguous()
    if _BIG_ENDIAN and t.element_size() > 1:  # pragma: no cover - big-endian hosts
        raise WireError("torch tensors can be sent from little-endian hosts only")
    index = ctx.add_buffer(_tensor_memory(t))
    shape = t.shape
    ndim = len(shape)
    return _record_struct(len(name), ndim).pack(0, ndim, len(name), index, name, *shape) + device


def _decode_tensor(payload: Any, ctx: DecodeContext) -> Any:
    flags, dtype, index, shape, end = _parse_record(payload, "torch.Tensor")
    if flags:
        raise WireError("malformed torch.Tensor record (flags)")
    torch = _torch or _get_torch()
    dt = _torch_decode_table.get(dtype)
    if dt is None:
        raise WireError(f"torch dtype {dtype[:40]!r} is not allowed on the wire")
    device = "cpu"
    if end < len(payload):
        try:
            device = payload[end:].decode("utf-8")
        except UnicodeDecodeError:
            raise WireError("malformed device in torch.Tensor record") from None
    buf = ctx.buffer(index)
    _check_length(shape, dt.itemsize, buf, dtype)
    if buf.nbytes == 0:
        t = torch.empty(shape, dtype=dt)
    else:
        if buf.readonly:  # torch.frombuffer cannot honour read-only memory: copy
            buf = memoryview(bytearray(buf))
        t = torch.frombuffer(buf, dtype=dt).view(shape)
    loc = ctx.map_location
    if loc is not None:
        t = _place(t, device, loc)
    return t


def _place(t: Any, device: str, loc: Any) -> Any:
    if callable(loc):
        return loc(t, device)
    if isinstance(loc, dict):
        target = loc.get(device)
        return t if target is None else t.to(target)
    return t.to(loc)


# -- the list ---------------------------------------------------------------------------------------


def torch_available() -> bool:
    """Whether torch is installed (without importing it)."""
    if "torch" in sys.modules:
        return True
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


def builtin_serializers() -> list[Serializer]:
    """collab.Blob, numpy.ndarray, numpy.scalar, torch.Tensor (if torch is installed) and collab.FLModel."""
    from ..fl_model import FLModel

    out = [
        Serializer("collab.Blob", (qualified_name(Blob),), _encode_blob, _decode_blob),
        Serializer("numpy.ndarray", ("numpy.ndarray",), _encode_ndarray, _decode_ndarray),
        Serializer("numpy.scalar", ("numpy.generic",), _encode_np_scalar, _decode_np_scalar),
        attrs_serializer(FLModel, "collab.FLModel"),
    ]
    if torch_available():
        out.append(Serializer("torch.Tensor", ("torch.Tensor",), _encode_tensor, _decode_tensor))
    return out
