"""Framing: one message as a self-delimiting run of bytes, for files and sockets.

Frame layout (all integers little-endian)::

    offset  size      field
    0       4         magic b"CLBW"
    4       1         format version (1)
    5       1         flags (0; anything else is rejected)
    6       2         reserved (0)
    8       4         n: number of out-of-band buffers (u32)
    12      8         h: header length in bytes (u64)
    20      8 * n     length of each buffer (u64 each)
    ...     h         msgpack header
    ...     ...       the n buffers, back to back, no padding

Every future version keeps the first 8 bytes, so a reader can always say which version a peer
speaks before it reads anything else.
"""

from __future__ import annotations

import itertools
import mmap
import os
import socket
import struct
from collections.abc import Callable, Sequence
from typing import Any

from ._codec import (
    DEFAULT_LIMITS,
    FrameEOFError,
    Limits,
    WireError,
    WireVersionError,
    dumps,
    loads,
)

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "FrameDecoder",
    "frame_parts",
    "read_frame",
    "read_frame_from",
    "read_raw_frame",
    "write_frame",
]

MAGIC = b"CLBW"
FORMAT_VERSION = 1
_START = struct.Struct("<4sBBH")  # magic, version, flags, reserved
_COUNTS = struct.Struct("<IQ")  # buffer count, header length
PREFIX_SIZE = _START.size + _COUNTS.size  # 20

#: Buffers received into a shared arena start at multiples of this (cache line, SIMD friendly).
_ALIGN = 64
#: Receive regions of at least this size are anonymous memory maps rather than bytearrays: the
#: kernel hands out zeroed pages as they are written (no memset pass) and growing one is a remap.
_MMAP_THRESHOLD = 1 << 20
#: The first allocation of a received field: what a frame costs before its bytes arrive.
_INITIAL = 64 << 10
#: A region is advised for transparent huge pages once it grows to this size (half of it received).
_HUGE_FROM = 4 << 20
#: Buffers up to this size share arenas of up to this size (one allocation for many small buffers).
_ARENA_MAX = 64 << 20
try:
    _IOV_MAX = max(16, min(os.sysconf("SC_IOV_MAX"), 1024))
except (AttributeError, ValueError, OSError):
    _IOV_MAX = 1024

_MAP_PRIVATE = getattr(mmap, "MAP_PRIVATE", 0x02)
_MADV_HUGEPAGE = getattr(mmap, "MADV_HUGEPAGE", None)

RawFrame = tuple[memoryview, list[memoryview]]


def _prefix(header_len: int, lengths: Sequence[int]) -> bytes:
    n = len(lengths)
    return _START.pack(MAGIC, FORMAT_VERSION, 0, 0) + _COUNTS.pack(n, header_len) + struct.pack(f"<{n}Q", *lengths)


def frame_parts(obj: Any, *, serializers: Sequence[Any] | None = None) -> list[bytes | memoryview]:
    """The pieces of one frame, in order: prefix, header, then each buffer (not copied).

    ``b"".join(frame_parts(obj))`` is the frame; a transport can send the pieces itself (e.g.
    in chunks). Raises WireError if ``obj`` cannot be encoded.
    """
    header, buffers = dumps(obj, serializers=serializers)
    return [_prefix(len(header), [b.nbytes for b in buffers]), header, *buffers]


def write_frame(writer: Any, obj: Any, *, serializers: Sequence[Any] | None = None) -> int:
    """Encode ``obj`` and write one frame to a socket or a binary file; return the bytes written.

    Sockets get one scatter-gather ``sendmsg`` per up to IOV_MAX pieces (header and buffers are
    never concatenated); file objects get one ``write`` per piece.
    """
    parts = frame_parts(obj, serializers=serializers)
    if isinstance(writer, socket.socket):
        return _send_parts(writer, parts)
    return _write_parts(writer, parts)


def _send_parts(sock: socket.socket, parts: list[Any]) -> int:
    views = [p if type(p) is memoryview else memoryview(p) for p in parts]
    views = [v for v in views if v.nbytes]
    total = sum(v.nbytes for v in views)
    if not hasattr(sock, "sendmsg"):  # e.g. Windows
        for v in views:
            sock.sendall(v)
        return total
    i = 0
    while i < len(views):
        sent = sock.sendmsg(views[i : i + _IOV_MAX])
        while sent:
            n = views[i].nbytes
            if sent >= n:
                sent -= n
                i += 1
            else:
                views[i] = views[i][sent:]
                sent = 0
    return total


def _write_parts(writer: Any, parts: list[Any]) -> int:
    write = writer.write
    total = 0
    for p in parts:
        mv = p if type(p) is memoryview else memoryview(p)
        n = mv.nbytes
        done = 0
        while done < n:
            w = write(mv[done:] if done else mv)
            if w is None:  # raw non-blocking file with nothing written
                raise WireError("write_frame: the writer accepted no bytes (non-blocking file?)")
            done += w
        total += n
    return total


# -- receiving --------------------------------------------------------------------------------------
#
# Memory is committed as bytes arrive, never from a declared size: every field (the length table
# and header, a big buffer of its own, or a run of smaller buffers sharing one arena) is received
# into a _Region that starts at min(size, 64 KiB) and doubles -- by at most
# Limits.max_prealloc_bytes a step -- each time the bytes already received fill it. So a region
# holds at most twice what arrived (plus its first 64 KiB), whatever the frame declares. Regions of
# 1 MiB or more are anonymous memory maps grown in place (mremap: no copy), and only a map at least
# half of whose bytes arrived is advised for transparent huge pages: with huge pages a write can
# commit up to 2 MiB around it, so advice is given only where the peer has already paid for it.


class _Region:
    """Memory for ``size`` bytes received in order, grown as they arrive (see above)."""

    __slots__ = ("size", "buf", "step", "advised")

    def __init__(self, size: int, step: int):
        self.size = size
        self.step = step
        self.advised = False
        self.buf: Any = _alloc(min(size, _INITIAL, step), size >= _MMAP_THRESHOLD)

    def grow(self) -> Any:
        """Room beyond the current end (which the received bytes have reached)."""
        old = self.buf
        n = len(old)
        new_len = min(self.size, n + max(min(n, self.step), 1))
        if isinstance(old, mmap.mmap):
            try:
                old.resize(new_len)
            except (BufferError, OSError, SystemError, ValueError):
                pass
            else:
                self._advise(old)
                return old
        new = _alloc(new_len, self.size >= _MMAP_THRESHOLD)
        self._advise(new)
        if n:
            dst = memoryview(new)
            src = memoryview(old)
            dst[:n] = src[:n]
            dst.release()
            src.release()
        self.buf = new
        return new

    def _advise(self, m: Any) -> None:
        # Called only as the region grows: at least half of ``m`` holds bytes that arrived.
        if self.advised or _MADV_HUGEPAGE is None or len(m) < _HUGE_FROM or not isinstance(m, mmap.mmap):
            return
        self.advised = True
        try:
            m.madvise(_MADV_HUGEPAGE)
        except (OSError, ValueError):
            pass


class _Target:
    """Where the bytes of one field go: ``size`` bytes from offset ``base`` of a region."""

    __slots__ = ("size", "filled", "region", "base")

    def __init__(self, size: int, region: _Region, base: int = 0):
        self.size = size
        self.filled = 0
        self.region = region
        self.base = base

    def view(self) -> memoryview:
        region = self.region
        buf = region.buf
        start = self.base + self.filled
        while start >= len(buf):
            buf = region.grow()
        return memoryview(buf)[start : min(self.base + self.size, len(buf))]

    def result(self) -> memoryview:
        mv = memoryview(self.region.buf)
        if self.base == 0 and mv.nbytes == self.size:
            return mv
        return mv[self.base : self.base + self.size]

    def reserved(self) -> int:
        """Bytes allocated in its region beyond those received."""
        return max(len(self.region.buf) - self.base - self.filled, 0)


def _alloc(n: int, mapped: bool = False) -> Any:
    if mapped or n >= _MMAP_THRESHOLD:
        try:
            return mmap.mmap(-1, max(n, 1), flags=_MAP_PRIVATE)
        except (OSError, ValueError, TypeError):
            pass
    try:
        return bytearray(n)
    except MemoryError:
        raise WireError(f"cannot allocate {n} bytes for a received buffer") from None


def _small(size: int) -> _Target:
    return _Target(size, _Region(size, size))


#: the one zero-length buffer every empty field of every frame gets (writable, holds nothing)
_EMPTY = memoryview(bytearray())


class FrameDecoder:
    """Incremental frame reader for push-style transports (asyncio ``BufferedProtocol`` and the like).

    Zero-copy use: write received bytes directly into ``get_buffer()`` (a part of the current
    field, never beyond the current frame) and report them with ``buffer_updated(n)``, which
    returns a raw frame ``(header, buffers)`` when one completes. Release the view before the next
    ``get_buffer()`` so that memory can grow in place. Or call ``feed(data)`` with any chunk
    (copied) to get every completed frame. Decode a raw frame with ``loads(header, buffers, ...)``.
    Buffers are writable (bytearray or, from 1 MiB up, anonymous mmap), so arrays and tensors
    built over them are writable too.

    Memory follows the bytes that arrived, not the sizes the frame declares: each field starts at
    64 KiB at most and doubles as it fills (by at most ``Limits.max_prealloc_bytes`` a step);
    :attr:`reserved_bytes` says how much is allocated beyond the bytes received.

    Framing errors (bad magic, wrong version, limits) raise WireError and poison the decoder.
    """

    def __init__(self, limits: Limits | None = None):
        self.limits = DEFAULT_LIMITS if limits is None else limits
        self._error: WireError | None = None
        self._reset()

    def _reset(self) -> None:
        self._state = 0  # 0: start, 1: counts, 2: table+header, 3: buffers
        self._target = _small(_START.size)
        self._nbuf = 0
        self._hlen = 0
        self._lengths: tuple[int, ...] = ()
        self._header: memoryview | None = None
        self._buffers: list[Any] = []  # memoryviews (empty ones) and completed _Targets
        self._arena: _Region | None = None
        self._arena_pos = 0

    def _new_arena(self, first: int) -> None:
        """A region for the run of buffers from ``first`` on that fit in ``_ARENA_MAX`` together."""
        total = 0
        for n in itertools.islice(self._lengths, first, None):
            padded = (n + _ALIGN - 1) & -_ALIGN
            if n > _ARENA_MAX or (total and total + padded > _ARENA_MAX):
                break
            total += padded
        self._arena = _Region(total, self.limits.max_prealloc_bytes)
        self._arena_pos = 0

    @property
    def at_boundary(self) -> bool:
        """True when no bytes of a next frame have arrived yet (a clean place to stop)."""
        return self._state == 0 and self._target.filled == 0

    @property
    def reserved_bytes(self) -> int:
        """Bytes of receive memory allocated beyond the bytes received so far."""
        return self._target.reserved()

    def bytes_wanted(self) -> int:
        """How many more bytes the current field needs (a good size for the next read)."""
        t = self._target
        return t.size - t.filled

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """A writable view for the next received bytes (a part of the rest of the current field)."""
        if self._error is not None:
            raise self._error
        return self._target.view()

    def buffer_updated(self, nbytes: int) -> RawFrame | None:
        """Record ``nbytes`` written into the last ``get_buffer()``; return a frame if it completed."""
        if self._error is not None:
            raise self._error
        t = self._target
        t.filled += nbytes
        if t.filled < t.size:
            return None
        try:
            return self._advance()
        except WireError as exc:
            self._error = exc
            raise

    def feed(self, data: Any) -> list[RawFrame]:
        """Copy ``data`` in; return every frame it completed (possibly none)."""
        src = data if type(data) is memoryview else memoryview(data)
        if src.ndim != 1 or src.format != "B":
            src = src.cast("B")
        frames = []
        pos, end = 0, src.nbytes
        while pos < end:
            dst = self.get_buffer()
            n = min(dst.nbytes, end - pos)
            dst[:n] = src[pos : pos + n]
            dst.release()
            pos += n
            frame = self.buffer_updated(n)
            if frame is not None:
                frames.append(frame)
        return frames

    def close(self) -> None:
        """The stream ended: raise WireError if it ended inside a frame."""
        if not self.at_boundary:
            raise WireError(f"truncated frame: the stream ended {self.bytes_wanted()} bytes short of the current field")

    # -- state machine --------------------------------------------------------------------------

    def _advance(self) -> RawFrame | None:
        """The current field is complete: move to the next non-empty field, or finish the frame."""
        lim = self.limits
        state = self._state
        buf = self._target.region.buf
        if state == 0:
            magic, version, flags, reserved = _START.unpack_from(buf, 0)
            if magic != MAGIC:
                raise WireVersionError(
                    f"not a collab wire frame: expected magic {MAGIC!r}, got {bytes(magic)!r}. "
                    f"Is the peer a collab endpoint of the same kind?",
                    peer_version=None,
                    version=FORMAT_VERSION,
                )
            if version != FORMAT_VERSION:
                raise WireVersionError(
                    f"the peer speaks collab wire format version {version}, this side speaks "
                    f"version {FORMAT_VERSION}: run compatible collab-core versions on both sides",
                    peer_version=version,
                    version=FORMAT_VERSION,
                )
            if flags or reserved:
                raise WireError(f"unsupported frame flags {flags:#x}/{reserved:#x} in a version {version} frame")
            self._state = 1
            self._target = _small(_COUNTS.size)
            return None
        if state == 1:
            nbuf, hlen = _COUNTS.unpack_from(buf, 0)
            if nbuf > lim.max_buffers:
                raise WireError(f"frame declares {nbuf} buffers, over Limits.max_buffers={lim.max_buffers}")
            if hlen > lim.max_header_bytes:
                raise WireError(f"frame declares a {hlen}-byte header, over Limits.max_header_bytes={lim.max_header_bytes}")
            if hlen == 0:
                raise WireError("frame declares an empty header")
            self._nbuf, self._hlen = nbuf, hlen
            self._state = 2
            size = 8 * nbuf + hlen
            self._target = _Target(size, _Region(size, lim.max_prealloc_bytes))
            return None
        if state == 2:
            nbuf = self._nbuf
            lengths = struct.unpack_from(f"<{nbuf}Q", buf, 0)
            total = self._hlen + sum(lengths)
            if lim.max_frame_bytes is not None and total > lim.max_frame_bytes:
                raise WireError(f"frame declares {total} bytes, over Limits.max_frame_bytes={lim.max_frame_bytes}")
            self._lengths = lengths
            self._header = self._target.result()[8 * nbuf : 8 * nbuf + self._hlen]
            self._state = 3
            return self._next_buffer()
        # state 3: a buffer is complete
        self._buffers.append(self._target)
        return self._next_buffer()

    def _next_buffer(self) -> RawFrame | None:
        lengths = self._lengths
        buffers = self._buffers
        while len(buffers) < len(lengths):
            i = len(buffers)
            n = lengths[i]
            if not n:
                buffers.append(_EMPTY)
                continue
            if n > _ARENA_MAX:  # a big buffer of its own, grown as it arrives
                self._target = _Target(n, _Region(n, self.limits.max_prealloc_bytes))
                return None
            arena = self._arena
            if arena is None or self._arena_pos + n > arena.size:
                self._new_arena(i)
                arena = self._arena
                assert arena is not None
            self._target = _Target(n, arena, self._arena_pos)
            self._arena_pos += (n + _ALIGN - 1) & -_ALIGN
            return None
        header = self._header
        assert header is not None
        out = [b if type(b) is memoryview else b.result() for b in buffers]
        self._reset()
        return header, out


def _recv_into_of(reader: Any) -> Callable[[memoryview], int]:
    if isinstance(reader, socket.socket):
        return reader.recv_into
    readinto = getattr(reader, "readinto", None)
    if readinto is not None:

        def recv_into(mv: memoryview) -> int:
            n = readinto(mv)
            if n is None:
                raise WireError("read_frame: the reader returned None (non-blocking file with no data?)")
            return n

        return recv_into
    read = getattr(reader, "read", None)
    if read is None:
        raise TypeError(f"read_frame needs a socket or a binary file object, got {type(reader).__name__}")

    def recv_into_by_read(mv: memoryview) -> int:
        data = read(mv.nbytes)
        if data is None:
            raise WireError("read_frame: the reader returned None (non-blocking file with no data?)")
        n = len(data)
        mv[:n] = data
        return n

    return recv_into_by_read


def _read_raw(recv_into: Callable[[memoryview], int], limits: Limits | None) -> RawFrame:
    dec = FrameDecoder(limits)
    while True:
        mv = dec.get_buffer()
        n = recv_into(mv)
        mv.release()  # release the export so the buffer may grow in place
        if not n:
            if dec.at_boundary:
                raise FrameEOFError("the stream ended before a frame started (peer closed the connection)")
            raise WireError(f"truncated frame: the stream ended {dec.bytes_wanted()} bytes short of the current field")
        frame = dec.buffer_updated(n)
        if frame is not None:
            return frame


def read_raw_frame(reader: Any, *, limits: Limits | None = None) -> RawFrame:
    """Read one frame from a socket or binary file without decoding it: ``(header, buffers)``."""
    return _read_raw(_recv_into_of(reader), limits)


def read_frame_from(
    recv_into: Callable[[memoryview], int],
    *,
    limits: Limits | None = None,
    map_location: Any = None,
    serializers: Sequence[Any] | None = None,
) -> Any:
    """Read and decode one frame using ``recv_into(view) -> nbytes`` (0 means end of stream)."""
    header, buffers = _read_raw(recv_into, limits)
    return loads(header, buffers, limits=limits, map_location=map_location, serializers=serializers)


def read_frame(
    reader: Any,
    *,
    limits: Limits | None = None,
    map_location: Any = None,
    serializers: Sequence[Any] | None = None,
) -> Any:
    """Read and decode one frame from a socket (``recv_into``) or a binary file (``readinto``).

    Buffers are received in place (``recv_into``/``readinto``, no intermediate copies) into fresh
    writable memory, so decoded arrays and tensors are writable and share memory with nothing
    the sender has (see :class:`FrameDecoder` for how that memory is allocated). Raises :class:`FrameEOFError` (a WireError and an EOFError) when the
    stream ends before a frame starts, WireError for anything malformed or over ``limits``
    (:class:`WireVersionError` for a peer of another version); I/O errors (``OSError``) pass through.
    """
    return read_frame_from(_recv_into_of(reader), limits=limits, map_location=map_location, serializers=serializers)
