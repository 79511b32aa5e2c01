"""The message codec: ``dumps``/``loads`` between Python objects and (msgpack header, buffers).

How a value is written
----------------------
The header is one msgpack document packed with ``strict_types=True``, so only exact ``None``,
``bool``, ``int`` (64-bit), ``float``, ``str``, ``bytes``/``bytearray``/``memoryview``, ``list``
and ``dict`` are packed natively; every other object goes through ``default``, which looks its
type up (once per type, then cached) and rewrites it into one of these msgpack shapes:

* ``ExtType(TAGGED, <u8 len><name><payload>)`` -- a :class:`Serializer` whose ``encode`` returned
  ``bytes`` (numpy arrays, numpy scalars, torch tensors): decoded directly in ``ext_hook``.
* ``[ExtType(TAG, <name>), payload]`` -- a :class:`Serializer` whose payload is any other
  msgpack-able value (attrs classes, FLModel). The payload is packed by msgpack itself, so the
  values inside it follow the same rules (arrays inside travel out of band).
* ``[ExtType(TUPLE), *items]``, ``[ExtType(SET), ...]``, ``[ExtType(FROZENSET), ...]``,
  ``[ExtType(EXC), type_name, message, traceback]``; ``ExtType(BIGINT, <signed little-endian>)``,
  ``ExtType(COMPLEX, <2 x float64>)``. Timezone-aware ``datetime`` uses msgpack's timestamp.

Decoding is msgpack's C unpacker with three hooks: ``ext_hook`` (turns markers into sentinel
objects, decodes TAGGED payloads), ``list_hook`` (a list starting with a marker becomes the value
it marks) and ``object_hook`` (bookkeeping for the depth limit). Nothing on the decoding side
imports a module, calls ``getattr`` or looks up anything by a peer-provided name except in the
dictionaries of registered serializers.
"""

from __future__ import annotations

import collections
import dataclasses
import re
import struct
import threading
import traceback as _traceback
from collections.abc import Callable, Iterable, Sequence
from itertools import chain, repeat
from typing import Any

import attrs
import msgpack

from ..errors import CollabError
from ..registry import get_registry

__all__ = [
    "DecodeContext",
    "EncodeContext",
    "FrameEOFError",
    "Limits",
    "RemoteError",
    "Serializer",
    "WireError",
    "WireVersionError",
    "attrs_serializer",
    "dumps",
    "loads",
    "qualified_name",
    "register_type",
    "registered_types",
    "unregister_type",
]

MiB = 1 << 20

# msgpack extension codes used by the header (0..127 are application codes; -1 is timestamp).
EXT_TAG = 1  # [Ext(TAG, name), payload] -- serializer with a structured payload
EXT_TAGGED = 2  # Ext(TAGGED, u8 len + name + payload bytes) -- serializer with a bytes payload
EXT_TUPLE = 3
EXT_SET = 4
EXT_FROZENSET = 5
EXT_BIGINT = 6
EXT_COMPLEX = 7
EXT_EXC = 8

_COMPLEX = struct.Struct("<dd")


# -- errors -----------------------------------------------------------------------------------------


class WireError(CollabError):
    """A value cannot be encoded, or bytes received from a peer are not a valid message.

    Decoding raises only this (and its subclasses) for malformed input, whatever the bytes.
    """


class WireVersionError(WireError):
    """The peer speaks another version of the wire format (or is not a collab peer at all)."""

    def __init__(self, message: str, *, peer_version: int | None, version: int):
        super().__init__(message)
        self.peer_version = peer_version
        self.version = version


class FrameEOFError(WireError, EOFError):
    """The stream ended cleanly between two frames (the peer closed the connection)."""


class RemoteError(CollabError):
    """An exception raised on a peer, carried by the wire format.

    Any exception given to :func:`dumps` arrives as a ``RemoteError``: ``type_name`` is the
    qualified name of the original class (``"ValueError"`` for builtins, else
    ``"module.QualName"``), ``message`` its
    ``str()``, ``traceback`` the traceback formatted on the peer ("" when it had none). The
    original class is never imported or instantiated on the receiving side.
    """

    def __init__(self, type_name: str, message: str, traceback: str = ""):
        super().__init__(type_name, message, traceback)
        self.type_name = type_name
        self.message = message
        self.traceback = traceback
        if traceback and hasattr(self, "add_note"):  # Python >= 3.11: shown under the error
            self.add_note(f"Traceback on the remote side:\n{traceback.rstrip()}")

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message}" if self.message else self.type_name

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.type_name, self.message, self.traceback))


# -- limits -----------------------------------------------------------------------------------------


def _positive(_inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is None and attribute.name in ("max_frame_bytes", "max_header_expansion"):
        return
    if type(value) is not int or value < 1:
        raise ValueError(f"Limits.{attribute.name} must be a positive int, got {value!r}")


#: What any header may cost beyond ``max_header_expansion`` times its size (small messages).
HEADER_COST_ALLOWANCE = 1 * MiB


@attrs.frozen
class Limits:
    """Bounds on what a received message may make this process do. Exceeding one is a WireError
    raised before the memory is spent. Every field is a positive int (or ``None`` where noted).

    ``max_header_bytes`` (default 128 MiB)
        Size of the msgpack header (all str/bytes values live there; arrays, tensors and
        :class:`~collab_core.wire.Blob` do not). Checked against the frame's declared header
        length before any of it is received.
    ``max_depth`` (default 100)
        Nesting of lists/tuples/sets/dicts/serializer records in the header.
    ``max_buffers`` (default 2**20)
        Number of out-of-band buffers in one message (checked on the declared count).
    ``max_frame_bytes`` (default ``None``)
        Declared size of one whole frame (header + buffers); ``None`` means no cap, and a frame
        reader still allocates only as the declared bytes actually arrive (see below).
    ``max_prealloc_bytes`` (default 64 MiB)
        Growth step of a frame reader's receive memory: a field starts at min(its size, 64 KiB,
        this) and doubles, by at most this much a step, each time the bytes received fill it. So
        what a frame holds is at most twice the bytes that arrived plus 64 KiB a field, whatever
        it declares, and never more than this much beyond the bytes that arrived.
    ``max_header_expansion`` (default ``None``: off)
        Bounds the Python memory decoding a header may cost: at most this many times the
        header's size plus 1 MiB (``HEADER_COST_ALLOWANCE``). When set, ``loads`` first scans a
        header that could cost more than that (one of more than a few KiB) without building
        anything, adding up a safe upper estimate of what each msgpack object will cost as a
        Python object (a float 32 bytes, a short str about 64, an empty dict 64 plus 64 a pair,
        8 for each list slot...); it stops and raises WireError as soon as the estimate passes the
        bound, and it checks ``max_depth`` before anything is built. The scan's work is linear in
        the header. Off by default (in-process copies do not pay for it); on, at 8, for peers
        (``collab_core.connection.PEER_LIMITS``). An 8x bound accepts a state dict of 10,000
        tensors or a list of a million floats, and rejects headers made mostly of tiny objects
        (a list of millions of short strings or of small negative ints): send those as numpy
        arrays or :class:`~collab_core.wire.Blob`.
    """

    max_header_bytes: int = attrs.field(default=128 * MiB, validator=_positive)
    max_depth: int = attrs.field(default=100, validator=_positive)
    max_buffers: int = attrs.field(default=1 << 20, validator=_positive)
    max_frame_bytes: int | None = attrs.field(default=None, validator=_positive)
    max_prealloc_bytes: int = attrs.field(default=64 * MiB, validator=_positive)
    max_header_expansion: int | None = attrs.field(default=None, validator=_positive)


DEFAULT_LIMITS = Limits()


# -- the header cost scan -----------------------------------------------------------------------------
#
# msgpack's C unpacker has no per-object hook, so a header of 16 Mi empty maps (16 MiB) would build
# 16 Mi dicts (about 1.2 GB) before anything could object. _header_cost walks the msgpack bytes
# first: it skips str/bin/ext payloads by their lengths, tracks container nesting, and adds up an
# upper estimate of the Python memory each object will take (pymalloc rounds to 16 bytes; a list
# slot is 8 bytes; a dict costs up to ~60 bytes a pair right after it grows). Runs of float64 and of
# cost-free one-byte values (small ints, nil, bools) are skipped by a regex, in C.

_R16 = 15
_C_LIST = 64  # the list object (56, rounded); + 9 a slot (msgpack appends: 1/8 over-allocation)
_C_DICT = 96  # an empty dict (64) and what msgpack's unpacking leaves around it
_C_DICT1 = 192  # a dict with its first keys table (up to 5 pairs: 184 bytes, rounded); + _C_PAIR a pair past 5
_C_GENERAL = 32  # a dict whose keys are not all str has bigger entries: 224 bytes up to 5 pairs
_C_UNSHARE = 160  # ... and one that started with str keys is rebuilt as a general one: 352
_C_PAIR = 64  # a dict right after it grows: ~60 bytes a pair
_C_NUM = 32  # float, or an int outside CPython's small-int cache
_C_BIGNUM = 48  # an int of 63-64 bits
_C_OBJ = 320  # what one serializer record decodes into (an ndarray, a tensor, an attrs object)
_C_TUPLE = 48  # + 16 an element (the tuple and the slice it is built from)
_C_SET = 216  # + 120 an element (hash table right after it grows, and the slice)
_C_EXC = 640
_C_DATETIME = 64
#: No msgpack byte can cost more than this when decoded, including the bookkeeping of the
#: depth check loads does without a scan: headers up to budget / this are not scanned.
WORST_COST_PER_BYTE = 256
#: float64 runs are checked this many at a time (a strided slice of their type bytes)
_RUN = 1 << 14

#: one-byte tokens: (token size, cost) for fixed-size values; size 0 = handled in the slow path
_FIXED_SIZE = [0] * 256
_FIXED_COST = [0] * 256
for _b in range(0x00, 0x80):  # positive fixint (cached)
    _FIXED_SIZE[_b] = 1
for _b in range(0xE0, 0x100):  # negative fixint; -5..-1 are cached
    _FIXED_SIZE[_b] = 1
    _FIXED_COST[_b] = 0 if _b >= 0xFB else _C_NUM
for _b, _size, _cost in (
    (0xC0, 1, 0),  # nil
    (0xC2, 1, 0),  # false
    (0xC3, 1, 0),  # true
    (0xCA, 5, _C_NUM),  # float32
    (0xCB, 9, _C_NUM),  # float64
    (0xCC, 2, 0),  # uint8 (cached)
    (0xCD, 3, _C_NUM),
    (0xCE, 5, _C_NUM),
    (0xCF, 9, _C_BIGNUM),
    (0xD0, 2, _C_NUM),
    (0xD1, 3, _C_NUM),
    (0xD2, 5, _C_NUM),
    (0xD3, 9, _C_BIGNUM),
):
    _FIXED_SIZE[_b] = _size
    _FIXED_COST[_b] = _cost
_FIXED_SIZE_T = tuple(_FIXED_SIZE)
_FIXED_COST_T = tuple(_FIXED_COST)
del _FIXED_SIZE, _FIXED_COST

_FREE_RUN = re.compile(rb"[\x00-\x7f\xc0\xc2\xc3\xfb-\xff]+")  # one-byte values that cost nothing
_FOUR_BYTE = re.compile(rb"[\xf0-\xff]")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
#: marker ext codes that turn the list they start into something else: extra cost (base, per element)
_MARK_COST = {EXT_TUPLE: (_C_TUPLE, 16), EXT_SET: (_C_SET, 120), EXT_FROZENSET: (_C_SET, 120), EXT_EXC: (_C_EXC, 0)}
_CHUNK = 1 << 16


def _str_cost(data: bytes, p: int, n: int) -> int:
    if n < 2:  # "" and one-character ASCII strings are cached
        return 0
    if n <= _CHUNK:
        ascii_ = data[p : p + n].isascii()
    else:
        ascii_ = all(data[q : min(q + _CHUNK, p + n)].isascii() for q in range(p, p + n, _CHUNK))
    if ascii_:
        return (49 + n + _R16) & ~_R16
    if _FOUR_BYTE.search(data, p, p + n) is None:  # at most 2 bytes a character
        return (76 + 2 * n + _R16) & ~_R16
    return (80 + 4 * n + _R16) & ~_R16


#: distinct map keys remembered by the scan (each costs the scan ~100 bytes); past this every key
#: counts as new, which only overestimates
_MAX_KEYS = 1 << 14
_MAX_KEY_LEN = 64
_C_INTERN = 64  # a new interned string's slot in the interpreter's table of interned strings (as it grows)


def _key_cost(keys: set, data: bytes, p: int, n: int) -> int:
    """Cost of a str map key: msgpack interns them, so only the first of equal keys costs."""
    if n <= _MAX_KEY_LEN:
        key = data[p : p + n]
        if key in keys:
            return 0
        if len(keys) < _MAX_KEYS:
            keys.add(key)
    return _str_cost(data, p, n) + _C_INTERN


def _ext_cost(code: int, n: int, array_n: int) -> int:
    """Cost of an ext value; ``array_n`` is the length of the list it starts (-1: not first)."""
    if code == EXT_TAGGED or code == EXT_TAG:
        return _C_OBJ
    if code == EXT_BIGINT:
        return 48 + 2 * n
    if code == EXT_COMPLEX:
        return _C_NUM
    if code == -1:
        return _C_DATETIME
    extra = _MARK_COST.get(code)
    if extra is None or array_n < 0:
        return 0  # unknown codes and stray markers fail at once
    return extra[0] + extra[1] * array_n


def _header_cost(header: Any, budget: int, max_depth: int) -> int:
    """An upper estimate of the Python memory ``loads`` spends on msgpack ``header``, or a figure
    over ``budget`` as soon as the estimate passes it. Raises WireError if containers nest deeper
    than ``max_depth``. Malformed data just ends the scan (msgpack then reports it). Work and
    memory are linear in the header (a memoryview is copied to bytes once, for fast slicing)."""
    data = header if type(header) is bytes else bytes(header)
    size_of = _FIXED_SIZE_T
    cost_of = _FIXED_COST_T
    free_run = _FREE_RUN.match
    end = len(data)
    pos = 0
    cost = 0
    rem = 1  # values still to come in the innermost open container (the document itself: 1)
    stack: list[tuple[int, int, int]] = []
    array_end = -1  # where the last non-empty array header ended
    array_n = 0
    in_map = 0  # the innermost open container is a map: its values alternate key, value
    kstate = 0  # its keys so far: 0 none, 1 all str (a compact dict), 2 some other (a general one)
    keys: set[bytes] = set()  # map keys seen (msgpack interns str keys: a repeated one is free)
    while cost <= budget:
        if not rem:
            if not stack:
                break
            rem, in_map, kstate = stack.pop()
            continue
        if pos >= end:
            break
        b = data[pos]
        size = size_of[b]
        if size:
            if in_map:  # one value at a time: a key that is not a str makes the dict a general one
                if not rem & 1 and kstate != 2:
                    cost += _C_GENERAL if not kstate else _C_UNSHARE
                    kstate = 2
            elif rem > 1:
                if b == 0xCB:  # a run of float64: their type bytes, 9 apart
                    types = data[pos : pos + 9 * min(rem, _RUN) : 9]
                    k = len(types) - len(types.lstrip(b"\xcb"))
                    if pos + 9 * k > end:  # the last one is cut short: msgpack reports it
                        k = (end - pos) // 9
                    if k:
                        cost += _C_NUM * k
                        rem -= k
                        pos += 9 * k
                        continue
                if size == 1 and not cost_of[b]:
                    m = free_run(data, pos, min(end, pos + rem))
                    if m is not None:
                        rem -= m.end() - pos
                        pos = m.end()
                        continue
            cost += cost_of[b]
            pos += size
            rem -= 1
            continue
        rem -= 1
        if in_map and rem & 1 and kstate != 2:  # a key
            if 0xA0 <= b <= 0xBF or 0xD9 <= b <= 0xDB:
                kstate = 1
            else:
                cost += _C_GENERAL if not kstate else _C_UNSHARE
                kstate = 2
        if 0xA0 <= b <= 0xBF:  # fixstr
            n = b & 0x1F
            if pos + 1 + n > end:
                break
            if in_map and rem & 1:  # a key (rem was just counted down)
                cost += _key_cost(keys, data, pos + 1, n)
            else:
                cost += _str_cost(data, pos + 1, n)
            pos += 1 + n
            continue
        if 0x80 <= b <= 0x9F or 0xDC <= b <= 0xDF:  # containers
            if b <= 0x9F:
                n, hdr, is_map = b & 0x0F, 1, b <= 0x8F
            else:
                wide = b & 1
                hdr = 5 if wide else 3
                if pos + hdr > end:
                    break
                n = (_U32 if wide else _U16).unpack_from(data, pos + 1)[0]
                is_map = b >= 0xDE
            pos += hdr
            if len(stack) >= max_depth:
                raise WireError(f"message nests deeper than Limits.max_depth={max_depth}")
            if is_map:
                cost += (_C_DICT1 + _C_PAIR * max(0, n - 5)) if n else _C_DICT
                n *= 2
            else:
                cost += _C_LIST + 9 * n
                if n:
                    array_end, array_n = pos, n
            if n:
                stack.append((rem, in_map, kstate))
                rem = n
                in_map = is_map
                kstate = 0
            continue
        if 0xD9 <= b <= 0xDB or 0xC4 <= b <= 0xC6:  # str8/16/32, bin8/16/32
            w = 1 << ((b - 0xD9) if b >= 0xD9 else (b - 0xC4))
            if pos + 1 + w > end:
                break
            n = data[pos + 1] if w == 1 else (_U16 if w == 2 else _U32).unpack_from(data, pos + 1)[0]
            p = pos + 1 + w
            if p + n > end:
                break
            if b <= 0xC6:
                cost += 0 if n < 2 else (33 + n + _R16) & ~_R16
            elif in_map and rem & 1:
                cost += _key_cost(keys, data, p, n)
            else:
                cost += _str_cost(data, p, n)
            pos = p + n
            continue
        if 0xD4 <= b <= 0xD8 or 0xC7 <= b <= 0xC9:  # fixext, ext8/16/32
            if b >= 0xD4:
                n, hdr = 1 << (b - 0xD4), 2
            else:
                w = 1 << (b - 0xC7)
                hdr = 2 + w
                if pos + hdr > end:
                    break
                n = data[pos + 1] if w == 1 else (_U16 if w == 2 else _U32).unpack_from(data, pos + 1)[0]
            if pos + hdr > end:
                break
            code = data[pos + hdr - 1]
            if code >= 128:
                code -= 256
            cost += _ext_cost(code, n, array_n if pos == array_end else -1)
            pos += hdr + n
            continue
        break  # 0xc1 (never used): msgpack rejects it
    return cost


def _check_header_cost(header: Any, hlen: int, lim: Limits) -> bool:
    """Raise WireError if decoding ``header`` could cost more than ``lim`` allows; True if it was
    scanned (then nesting was checked too)."""
    expansion = lim.max_header_expansion
    if expansion is None:
        return False
    budget = expansion * hlen + HEADER_COST_ALLOWANCE
    if hlen * WORST_COST_PER_BYTE <= budget:
        return False
    cost = _header_cost(header, budget, lim.max_depth)
    if cost > budget:
        raise WireError(
            f"a {hlen}-byte message header would cost over {budget} bytes of memory to decode "
            f"(estimated {cost} bytes before the scan stopped), over Limits.max_header_expansion="
            f"{expansion} x its size + {HEADER_COST_ALLOWANCE} bytes: it holds too many small values. "
            f"Send large or numerous values as numpy arrays or collab_core.wire.Blob (out of band)"
        )
    return True


# -- serializers ------------------------------------------------------------------------------------


class EncodeContext:
    """Given to :attr:`Serializer.encode`: collects the out-of-band buffers of one message."""

    __slots__ = ("buffers",)

    def __init__(self) -> None:
        self.buffers: list[memoryview] = []

    def add_buffer(self, data: Any) -> int:
        """Append ``data`` (any C-contiguous buffer; not copied) and return its index."""
        mv = data if type(data) is memoryview else memoryview(data)
        if mv.ndim != 1 or mv.format != "B":
            if not mv.c_contiguous:
                raise WireError("EncodeContext.add_buffer needs a C-contiguous buffer")
            mv = mv.cast("B")
        self.buffers.append(mv)
        return len(self.buffers) - 1


class DecodeContext:
    """Given to :attr:`Serializer.decode`: the message's buffers and decoding options."""

    __slots__ = ("_buffers", "_used", "map_location", "limits")

    def __init__(self, buffers: list[memoryview], map_location: Any, limits: Limits):
        self._buffers = buffers
        self._used = bytearray(len(buffers))
        self.map_location = map_location
        self.limits = limits

    def buffer(self, index: Any) -> memoryview:
        """The out-of-band buffer ``index`` (a 1-D byte memoryview). Each may be taken once."""
        if type(index) is not int or not 0 <= index < len(self._buffers):
            raise WireError(f"message refers to buffer {index!r} but carries {len(self._buffers)} buffers")
        if self._used[index]:
            raise WireError(f"message refers to buffer {index} twice")
        self._used[index] = 1
        return self._buffers[index]


def _check_name(_inst: Any, _attr: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"Serializer.name must be a non-empty str, got {value!r}")
    if len(value.encode("utf-8")) > 255:
        raise ValueError(f"Serializer.name must be at most 255 UTF-8 bytes, got {value!r}")


def _type_names(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    return tuple(value)


@attrs.frozen
class Serializer:
    """How one family of types travels on the wire.

    ``name`` is the tag written on the wire (at most 255 UTF-8 bytes); the receiver looks the
    decoder up by this name only. ``type_names`` are the fully qualified names
    (``module.QualName``) of the classes it encodes; they are matched against the names along
    ``type(obj).__mro__``, so the library that defines them is never imported to find them, and a
    subclass uses its closest base's serializer.

    ``encode(obj, ctx)`` returns a msgpack-able payload (values inside it are encoded with these
    same rules, so arrays in it still travel out of band) and may call ``ctx.add_buffer(view)`` to
    send memory without copying it. Returning ``bytes`` selects a compact form decoded without
    any intermediate containers. ``decode(payload, ctx)`` rebuilds the object; ``ctx.buffer(i)``
    gives the received buffers. Anything ``decode`` raises reaches the caller as a WireError.
    """

    name: str = attrs.field(validator=_check_name)
    type_names: tuple[str, ...] = attrs.field(converter=_type_names)
    encode: Callable[[Any, EncodeContext], Any] = attrs.field(repr=False)
    decode: Callable[[Any, DecodeContext], Any] = attrs.field(repr=False)


def qualified_name(cls: type) -> str:
    """``module.QualName`` of a class, the form :attr:`Serializer.type_names` uses."""
    return f"{cls.__module__}.{cls.__qualname__}"


def attrs_serializer(cls: type, name: str | None = None) -> Serializer:
    """A Serializer for an attrs class or a dataclass.

    The payload is a dict of the ``__init__`` fields; each value is encoded with the wire rules
    (nested arrays go out of band, nested registered classes keep their types). Decoding calls
    ``cls(**fields)`` with the received names only if they are fields of ``cls``, so validators
    and converters run. Only ``cls`` itself is encoded this way, not its subclasses.
    """
    if attrs.has(cls):
        pairs = tuple((f.name, f.alias or f.name.lstrip("_")) for f in attrs.fields(cls) if f.init)
    elif dataclasses.is_dataclass(cls) and isinstance(cls, type):
        pairs = tuple((f.name, f.name) for f in dataclasses.fields(cls) if f.init)
    else:
        raise WireError(
            f"register_type needs an attrs class or a dataclass, got {cls!r}; for other types "
            f"provide a Serializer from a plugin's collab_register_serializers hook"
        )
    qname = qualified_name(cls)
    tag = name or qname
    field_names = tuple(p[0] for p in pairs)
    alias_of = dict(pairs)

    def encode(obj: Any, ctx: EncodeContext) -> dict[str, Any]:
        if type(obj) is not cls:
            raise WireError(
                f"cannot encode object of type {qualified_name(type(obj))}: only its base class "
                f"{qname} is registered. Register it too with "
                f"collab_core.wire.register_type({type(obj).__qualname__})"
            )
        return {n: getattr(obj, n) for n in field_names}

    def decode(payload: Any, ctx: DecodeContext) -> Any:
        if type(payload) is not dict:
            raise WireError(f"{tag!r}: expected a dict of fields, got {type(payload).__name__}")
        kwargs = {}
        for key, value in payload.items():
            alias = alias_of.get(key) if type(key) is str else None
            if alias is None:
                raise WireError(f"{tag!r}: {qname} has no field {str(key)[:100]!r}")
            kwargs[alias] = value
        return cls(**kwargs)

    return Serializer(name=tag, type_names=(qname,), encode=encode, decode=decode)


# -- user registrations (register_type) -------------------------------------------------------------

_lock = threading.RLock()
_user_serializers: dict[str, Serializer] = {}
_user_classes: dict[type, str] = {}
_user_version = 0


def register_type(cls: Any = None, name: str | None = None) -> Any:
    """Let instances of an attrs class (or a dataclass) travel on the wire under ``name``.

    ``name`` defaults to ``module.QualName`` and must be the same on both sides; the receiver
    finds the class by this registered name only (never by importing what the peer names).
    Usable as ``register_type(Point)``, ``@register_type`` or ``@register_type(name="geo.Point")``.
    Registering the same class under the same name again is a no-op.
    """
    if cls is None:
        return lambda c: register_type(c, name)
    if isinstance(cls, str) and name is None:  # @register_type("geo.Point")
        tag = cls
        return lambda c: register_type(c, tag)
    serializer = attrs_serializer(cls, name)
    global _user_version
    with _lock:
        previous = _user_classes.get(cls)
        if previous == serializer.name:
            return cls
        if previous is not None:
            raise WireError(f"{qualified_name(cls)} is already registered under the name {previous!r}")
        if serializer.name in _user_serializers:
            other = _user_serializers[serializer.name].type_names[0]
            raise WireError(f"wire name {serializer.name!r} is already registered for {other}")
        cached = _default_cache[2] if _default_cache else None
        if cached is not None and serializer.name in cached.by_name:
            raise WireError(f"wire name {serializer.name!r} is already used by a plugin serializer")
        _user_serializers[serializer.name] = serializer
        _user_classes[cls] = serializer.name
        _user_version += 1
    return cls


def unregister_type(cls_or_name: type | str) -> None:
    """Undo :func:`register_type` (by class or by wire name); unknown ones are ignored."""
    global _user_version
    with _lock:
        if isinstance(cls_or_name, str):
            name = cls_or_name
            cls = next((c for c, n in _user_classes.items() if n == name), None)
        else:
            cls, name = cls_or_name, _user_classes.get(cls_or_name)  # type: ignore[assignment]
        if name is None or cls is None:
            return
        _user_serializers.pop(name, None)
        _user_classes.pop(cls, None)
        _user_version += 1


def register_serializer(serializer: Serializer) -> Serializer:
    """Register a :class:`Serializer` in this process (what ``recipe.add_decomposers`` does on
    each site); registering the same serializer again is a no-op, another one under a name in
    use is an error."""
    if not isinstance(serializer, Serializer):
        raise WireError(f"register_serializer takes a collab_core.wire.Serializer, got {type(serializer).__name__}")
    global _user_version
    with _lock:
        existing = _user_serializers.get(serializer.name)
        if existing is not None:
            if existing == serializer:
                return serializer
            raise WireError(f"wire name {serializer.name!r} is already registered for {existing.type_names[0]}")
        cached = _default_cache[2] if _default_cache else None
        if cached is not None and serializer.name in cached.by_name:
            raise WireError(f"wire name {serializer.name!r} is already used by a plugin serializer")
        _user_serializers[serializer.name] = serializer
        _user_version += 1
    return serializer


def unregister_serializer(name: str) -> None:
    """Undo :func:`register_serializer` (unknown names are ignored)."""
    global _user_version
    with _lock:
        if name in _user_serializers and name not in _user_classes.values():
            del _user_serializers[name]
            _user_version += 1


def registered_types() -> dict[str, type]:
    """Wire name -> class for every :func:`register_type` registration."""
    with _lock:
        return {n: c for c, n in _user_classes.items()}


# -- the compiled type table ------------------------------------------------------------------------


class _Mark:
    """A sentinel produced by ``ext_hook`` for the first element of a marked list."""

    __slots__ = ("build", "name")

    def __init__(self, build: Callable[[list, DecodeContext], Any], name: str):
        self.build = build
        self.name = name


def _build_tuple(lst: list, ctx: DecodeContext) -> tuple:
    return tuple(lst[1:])


def _build_set(lst: list, ctx: DecodeContext) -> set:
    return set(lst[1:])


def _build_frozenset(lst: list, ctx: DecodeContext) -> frozenset:
    return frozenset(lst[1:])


def _build_exc(lst: list, ctx: DecodeContext) -> RemoteError:
    if len(lst) != 4 or not all(type(x) is str for x in lst[1:]):
        raise WireError("malformed exception record")
    return RemoteError(lst[1], lst[2], lst[3])


_MARK_TUPLE = _Mark(_build_tuple, "tuple")
_MARK_SET = _Mark(_build_set, "set")
_MARK_FROZENSET = _Mark(_build_frozenset, "frozenset")
_MARK_EXC = _Mark(_build_exc, "exception")
_BUILTIN_MARKS = {EXT_TUPLE: _MARK_TUPLE, EXT_SET: _MARK_SET, EXT_FROZENSET: _MARK_FROZENSET, EXT_EXC: _MARK_EXC}

_X_TUPLE = msgpack.ExtType(EXT_TUPLE, b"")
_X_SET = msgpack.ExtType(EXT_SET, b"")
_X_FROZENSET = msgpack.ExtType(EXT_FROZENSET, b"")
_X_EXC = msgpack.ExtType(EXT_EXC, b"")


def _enc_tuple(obj: tuple, ctx: EncodeContext) -> list:
    return [_X_TUPLE, *obj]


def _enc_set(obj: set, ctx: EncodeContext) -> list:
    return [_X_SET, *obj]


def _enc_frozenset(obj: frozenset, ctx: EncodeContext) -> list:
    return [_X_FROZENSET, *obj]


def _enc_bigint(obj: int, ctx: EncodeContext) -> msgpack.ExtType:
    n = int(obj)
    return msgpack.ExtType(EXT_BIGINT, n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True))


def _enc_complex(obj: complex, ctx: EncodeContext) -> msgpack.ExtType:
    return msgpack.ExtType(EXT_COMPLEX, _COMPLEX.pack(obj.real, obj.imag))


def _enc_dict(obj: dict, ctx: EncodeContext) -> dict:
    return dict(obj)


def _enc_list(obj: list, ctx: EncodeContext) -> list:
    return list(obj)


def _enc_exc(obj: BaseException, ctx: EncodeContext) -> list:
    if isinstance(obj, RemoteError):  # forwarded: keep what the first peer said
        return [_X_EXC, str(obj.type_name), str(obj.message), str(obj.traceback)]
    try:
        message = str(obj)
    except Exception:  # a broken __str__ must not break error reporting
        message = f"<unprintable {type(obj).__name__}>"
    tb = ""
    if obj.__traceback__ is not None:
        try:
            tb = "".join(_traceback.format_exception(type(obj), obj, obj.__traceback__))
        except Exception:
            tb = ""
    return [_X_EXC, qualified_name(type(obj)).removeprefix("builtins."), message, tb]


#: Encoders for builtin container/scalar types met along an MRO (identity match on the class).
_MRO_BUILTINS: dict[type, Callable[[Any, EncodeContext], Any]] = {
    tuple: _enc_tuple,
    set: _enc_set,
    frozenset: _enc_frozenset,
    dict: _enc_dict,
    list: _enc_list,
    BaseException: _enc_exc,
}


class _Codec:
    """The compiled lookup tables for one set of serializers."""

    def __init__(self, serializers: Iterable[Any]):
        self.by_name: dict[str, Any] = {}
        self.by_type_name: dict[str, Any] = {}
        for s in serializers:
            name = getattr(s, "name", None)
            if not isinstance(name, str) or not name or len(name.encode("utf-8")) > 255:
                raise WireError(f"invalid serializer {s!r}: its name must be a str of 1..255 UTF-8 bytes")
            if name in self.by_name:
                raise WireError(f"two serializers use the wire name {name!r}: {self.by_name[name]!r} and {s!r}")
            self.by_name[name] = s
            for tn in s.type_names:
                if tn in self.by_type_name:
                    raise WireError(
                        f"type {tn} is claimed by two serializers: {self.by_type_name[tn].name!r} and {name!r}"
                    )
                self.by_type_name[tn] = s
        # decoding: wire name (bytes) -> marker / serializer
        self.marks: dict[bytes, _Mark] = {}
        self.tagged: dict[bytes, Any] = {}
        for name, s in self.by_name.items():
            self.marks[name.encode("utf-8")] = _Mark(_serializer_builder(s), name)
            self.tagged[name.encode("utf-8")] = s
        # encoding: exact type -> encoder, filled lazily by resolve()
        self.encoders: dict[type, Callable[[Any, EncodeContext], Any]] = {
            tuple: _enc_tuple,
            set: _enc_set,
            frozenset: _enc_frozenset,
            int: _enc_bigint,
            complex: _enc_complex,
            collections.OrderedDict: _enc_dict,
            collections.defaultdict: _enc_dict,
        }
        self._serializer_encoders: dict[str, Callable[[Any, EncodeContext], Any]] = {}

    def resolve(self, cls: type) -> Callable[[Any, EncodeContext], Any]:
        for k in cls.__mro__:
            s = self.by_type_name.get(qualified_name(k))
            if s is not None:
                enc = self._serializer_encoders.get(s.name)
                if enc is None:
                    enc = self._serializer_encoders[s.name] = _serializer_encoder(s)
                break
            enc = _MRO_BUILTINS.get(k)  # type: ignore[assignment]
            if enc is not None:
                break
        else:
            raise WireError(_unknown_type_message(cls))
        if not getattr(cls, "_wire_uncached", False):  # Blob makes a class per length: not kept
            self.encoders[cls] = enc
        return enc


def _unknown_type_message(cls: type) -> str:
    tn = qualified_name(cls)
    msg = (
        f"cannot encode object of type {tn}: no serializer is registered for it. Register it with "
        f"collab_core.wire.register_type({cls.__qualname__}) if it is an attrs class or a dataclass, "
        f"or provide a Serializer from a plugin's collab_register_serializers hook"
    )
    if tn == "datetime.datetime":
        msg += " (timezone-aware datetimes are supported: attach a tzinfo)"
    elif any(k in (int, float, str, bytes) for k in cls.__mro__):
        msg += f" (or convert it to a plain {next(k for k in cls.__mro__ if k in (int, float, str, bytes)).__name__})"
    return msg


def _serializer_encoder(s: Any) -> Callable[[Any, EncodeContext], Any]:
    name_b = s.name.encode("utf-8")
    marker = msgpack.ExtType(EXT_TAG, name_b)
    prefix = bytes([len(name_b)]) + name_b
    encode = s.encode
    ExtType = msgpack.ExtType
    new_ext = tuple.__new__  # ExtType without its Python-level argument checks

    def encoder(obj: Any, ctx: EncodeContext) -> Any:
        try:
            payload = encode(obj, ctx)
        except WireError:
            raise
        except Exception as exc:
            raise WireError(
                f"serializer {s.name!r} failed to encode a {qualified_name(type(obj))}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if type(payload) is bytes:
            return new_ext(ExtType, (EXT_TAGGED, prefix + payload))
        return [marker, payload]

    return encoder


def _serializer_builder(s: Any) -> Callable[[list, DecodeContext], Any]:
    decode = s.decode

    def build(lst: list, ctx: DecodeContext) -> Any:
        if len(lst) != 2:
            raise WireError(f"malformed {s.name!r} record")
        return decode(lst[1], ctx)

    return build


_default_cache: tuple[Any, int, _Codec] | None = None
_explicit_cache: tuple[tuple[Any, ...], int, _Codec] | None = None


def _codec(serializers: Sequence[Any] | None) -> _Codec:
    global _default_cache, _explicit_cache
    if serializers is None:
        reg = get_registry()
        c = _default_cache
        if c is not None and c[0] is reg and c[1] == _user_version:
            return c[2]
        with _lock:
            codec = _Codec(chain(reg.serializers(), _user_serializers.values()))
            _default_cache = (reg, _user_version, codec)
        return codec
    key = tuple(serializers)
    e = _explicit_cache
    if e is not None and e[1] == _user_version and e[0] == key:
        return e[2]
    with _lock:
        codec = _Codec(chain(key, _user_serializers.values()))
        _explicit_cache = (key, _user_version, codec)
    return codec


# -- dumps / loads ----------------------------------------------------------------------------------


def dumps(obj: Any, *, serializers: Sequence[Any] | None = None) -> tuple[bytes, list[memoryview]]:
    """Encode ``obj`` into a msgpack header and a list of out-of-band buffers.

    The buffers are memoryviews of the original memory of contiguous arrays and tensors (not
    copies): keep the objects unchanged until the buffers are sent. ``serializers`` replaces the
    plugin registry's serializers (``register_type`` registrations still apply). Raises
    WireError for a type nobody registered, naming it.
    """
    codec = _codec(serializers)
    encoders = codec.encoders
    resolve = codec.resolve
    ctx = EncodeContext()

    def default(o: Any) -> Any:
        enc = encoders.get(type(o))
        if enc is None:
            enc = resolve(type(o))
        return enc(o, ctx)

    try:
        header = msgpack.Packer(default=default, strict_types=True, use_bin_type=True, datetime=True).pack(obj)
    except WireError:
        raise
    except ValueError as exc:
        if "recursion" in str(exc):
            raise WireError("cannot encode: the value is nested too deeply or contains a reference cycle") from exc
        raise WireError(f"cannot encode: {exc}") from exc
    except Exception as exc:
        raise WireError(f"cannot encode: {type(exc).__name__}: {exc}") from exc
    return header, ctx.buffers


def _as_byte_view(b: Any) -> memoryview:
    mv = b if type(b) is memoryview else memoryview(b)
    if mv.ndim != 1 or mv.format != "B":
        if not mv.c_contiguous:
            raise WireError("buffers given to loads must be C-contiguous")
        mv = mv.cast("B")
    return mv


def loads(
    header: Any,
    buffers: Sequence[Any] = (),
    *,
    limits: Limits | None = None,
    map_location: Any = None,
    serializers: Sequence[Any] | None = None,
) -> Any:
    """Decode what :func:`dumps` produced. Malformed input raises WireError, nothing else.

    Arrays and tensors are built over ``buffers`` without copying when the buffers are writable
    (read-only buffers give read-only numpy arrays; torch tensors over read-only buffers are
    copied, because torch cannot mark a tensor read-only). After an in-process ``dumps`` the
    results therefore share memory with the originals. ``map_location`` places torch tensors:
    ``None`` (CPU), a device, ``{recorded device: device}``, or ``f(tensor, recorded_device)``.
    """
    lim = DEFAULT_LIMITS if limits is None else limits
    try:
        hlen = len(header) if type(header) is bytes else memoryview(header).nbytes
    except TypeError:
        raise WireError(f"the header must be bytes-like, got {type(header).__name__}") from None
    if hlen > lim.max_header_bytes:
        raise WireError(f"header of {hlen} bytes exceeds Limits.max_header_bytes={lim.max_header_bytes}")
    if not isinstance(buffers, (list, tuple)):
        try:
            buffers = list(buffers)
        except TypeError:
            raise WireError(f"buffers must be a sequence of bytes-like objects, got {type(buffers).__name__}") from None
    if len(buffers) > lim.max_buffers:
        raise WireError(f"{len(buffers)} buffers exceed Limits.max_buffers={lim.max_buffers}")
    try:
        views = [_as_byte_view(b) for b in buffers]
    except TypeError:
        raise WireError("buffers must be bytes-like objects") from None
    scanned = _check_header_cost(header, hlen, lim)  # also checked the nesting if it scanned
    codec = _codec(serializers)
    ctx = DecodeContext(views, map_location, lim)
    marks = codec.marks
    tagged = codec.tagged
    raws: list[Any] = []  # every container, in completion (post-) order; keeps ids unique
    outs: list[Any] = []  # what each became
    pending = 0

    def ext_hook(code: int, data: bytes) -> Any:
        nonlocal pending
        if code == EXT_TAGGED:
            n = data[0] if data else 0
            s = tagged.get(data[1 : 1 + n])
            if s is None:
                raise WireError(_unknown_tag_message(data[1 : 1 + n]))
            try:
                return s.decode(data[1 + n :], ctx)
            except WireError:
                raise
            except Exception as exc:
                raise WireError(f"malformed {s.name!r} value: {type(exc).__name__}: {exc}") from exc
        if code == EXT_TAG:
            mark = marks.get(data)
            if mark is None:
                raise WireError(_unknown_tag_message(data))
            pending += 1
            return mark
        if code == EXT_BIGINT:
            return int.from_bytes(data, "little", signed=True)
        if code == EXT_COMPLEX:
            if len(data) != 16:
                raise WireError("malformed complex value")
            re, im = _COMPLEX.unpack(data)
            return complex(re, im)
        mark = _BUILTIN_MARKS.get(code)
        if mark is None:
            raise WireError(f"unknown msgpack extension code {code} in header")
        pending += 1
        return mark

    def list_hook(lst: list) -> Any:
        nonlocal pending
        out = lst
        if lst and type(lst[0]) is _Mark:
            pending -= 1
            mark = lst[0]
            try:
                out = mark.build(lst, ctx)
            except WireError:
                raise
            except Exception as exc:
                raise WireError(f"malformed {mark.name!r} value: {type(exc).__name__}: {exc}") from exc
        if not scanned:
            raws.append(lst)
            outs.append(out)
        return out

    def object_hook(d: dict) -> dict:
        raws.append(d)
        outs.append(d)
        return d

    try:
        obj = msgpack.unpackb(
            header,
            ext_hook=ext_hook,
            list_hook=list_hook,
            object_hook=None if scanned else object_hook,
            strict_map_key=False,
            raw=False,
            timestamp=3,
        )
    except WireError:
        raise
    except Exception as exc:
        raise WireError(f"malformed message header: {type(exc).__name__}: {exc}") from exc
    if pending:
        raise WireError("malformed message header: a type marker appears outside its record")
    if len(raws) > lim.max_depth:
        _check_depth(raws, outs, lim.max_depth)
    return obj


def _check_depth(raws: list, outs: list, max_depth: int) -> None:
    """Raise if containers nest deeper than ``max_depth`` (runs only if there are that many)."""
    depth: dict[int, int] = {}
    get = depth.get
    for raw, out in zip(raws, outs, strict=False):
        children = chain(raw.keys(), raw.values()) if type(raw) is dict else raw
        d = 1 + max(map(get, map(id, children), repeat(0)), default=0)
        if d > max_depth:
            raise WireError(f"message nests deeper than Limits.max_depth={max_depth}")
        depth[id(out)] = max(d, get(id(out), 0))


def _unknown_tag_message(name_b: bytes) -> str:
    name = name_b[:100].decode("utf-8", "replace")
    hint = ""
    if name == "torch.Tensor":
        hint = " Install torch on this side (pip install torch==2.13.0)."
    elif name.startswith("numpy."):
        hint = " Install numpy on this side (pip install numpy)."
    return (
        f"unknown wire tag {name!r}: the sender encoded a value with a serializer that is not "
        f"registered here.{hint} Install the plugin whose collab_register_serializers hook "
        f"registers {name!r} (see `collab plugins`), or call "
        f"collab_core.wire.register_type(cls, name={name!r}) on this side too."
    )
