"""The safe wire format: a small msgpack header plus out-of-band buffers, no pickle.

Public API::

    dumps(obj, *, serializers=None) -> (header: bytes, buffers: list[memoryview])
    loads(header, buffers=(), *, limits=None, map_location=None, serializers=None) -> obj

    frame_parts(obj, *, serializers=None) -> [prefix, header, *buffers]
    write_frame(writer, obj, *, serializers=None) -> int          # socket or binary file
    read_frame(reader, *, limits=None, map_location=None, serializers=None) -> obj
    read_frame_from(recv_into, *, limits=None, map_location=None, serializers=None) -> obj
    read_raw_frame(reader, *, limits=None) -> (header, buffers)
    FrameDecoder(limits=None)        # get_buffer()/buffer_updated(n), feed(data), close()

    Serializer(name, type_names, encode, decode)   # registered by plugins
    register_type(cls, name=None)    # attrs classes / dataclasses, also a decorator
    Limits(max_header_bytes, max_depth, max_buffers, max_frame_bytes, max_prealloc_bytes)
    WireError, WireVersionError, FrameEOFError, RemoteError

What round-trips exactly: None, bool, int (any size), float (nan/inf too), complex, str, bytes,
list, tuple (also as a dict key), set, frozenset, dict (any hashable keys, insertion order),
timezone-aware datetime (returned in UTC), numpy arrays (bool, int8..uint64, float16/32/64,
complex64/128; any shape and memory order) and numpy scalars, torch tensors (see
:mod:`collab_core.wire.builtin` for dtypes), FLModel, registered attrs classes and dataclasses.

What changes on the way:

* ``bytearray`` and ``memoryview`` arrive as ``bytes``; subclasses of dict (``OrderedDict``, a
  state dict), list and tuple (namedtuples) arrive as the plain container, order kept.
* ``torch.nn.Parameter`` arrives as a plain tensor; ``requires_grad`` is dropped; a tensor on an
  accelerator arrives on the CPU unless ``loads(..., map_location=...)`` says otherwise.
* A non-contiguous array/tensor is copied to contiguous memory on send; a Fortran-order numpy
  array is sent as is and arrives in Fortran order; big-endian arrays arrive little-endian.
* Any exception arrives as :class:`RemoteError` (``type_name``, ``message``, ``traceback``).
* ``str``/``bytes`` values travel in the header (bounded by ``Limits.max_header_bytes``); send
  large binary data as a numpy uint8 array to keep it out of band.

Memory: ``dumps`` does not copy contiguous arrays (its buffers view them) and ``loads`` builds
arrays over the buffers it is given, so an in-process ``loads(*dumps(x))`` shares memory with
``x``. ``read_frame`` receives into fresh writable memory.

Safety: decoding never imports a module, never calls ``getattr`` with a peer's string, never
unpickles; tags and dtypes are looked up in fixed tables; every malformed input raises
WireError, and a frame reader allocates at most ``Limits.max_prealloc_bytes`` ahead of the data
actually received.
"""

from ._codec import (
    DecodeContext,
    EncodeContext,
    FrameEOFError,
    Limits,
    RemoteError,
    Serializer,
    WireError,
    WireVersionError,
    attrs_serializer,
    dumps,
    loads,
    qualified_name,
    register_serializer,
    register_type,
    registered_types,
    unregister_serializer,
    unregister_type,
)
from ._frame import (
    FORMAT_VERSION,
    MAGIC,
    FrameDecoder,
    frame_parts,
    read_frame,
    read_frame_from,
    read_raw_frame,
    write_frame,
)
from .builtin import Blob


class _NativeDecomposer:
    """NVFlare's decomposer objects for types collab's wire format carries natively:
    ``recipe.add_decomposers([TensorDecomposer()])`` is accepted and adds nothing."""

    collab_native_decomposer = True

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class TensorDecomposer(_NativeDecomposer):
    """torch tensors: native (out-of-band buffers; see docs/wire.md)."""


class NumpyArrayDecomposer(_NativeDecomposer):
    """numpy arrays: native."""

__all__ = [
    "TensorDecomposer",
    "NumpyArrayDecomposer",
    "FORMAT_VERSION",
    "MAGIC",
    "Blob",
    "DecodeContext",
    "EncodeContext",
    "FrameDecoder",
    "FrameEOFError",
    "Limits",
    "RemoteError",
    "Serializer",
    "WireError",
    "WireVersionError",
    "attrs_serializer",
    "dumps",
    "frame_parts",
    "loads",
    "qualified_name",
    "read_frame",
    "read_frame_from",
    "read_raw_frame",
    "register_serializer",
    "register_type",
    "registered_types",
    "unregister_serializer",
    "unregister_type",
    "write_frame",
]
