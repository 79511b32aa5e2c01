"""A message channel between two processes: messages in chunks, heartbeats, liveness.

Used over TLS by collab-tcp (site <-> server) and over a local socket by collab-torchrun
(site <-> worker ranks).

Every message is a :mod:`collab_core.wire` frame, cut into chunks of at most ``CHUNK`` bytes. A
chunk is ``stream id (u32) | flags (u8) | length (u32)`` followed by its bytes; chunks of
different messages interleave, so a 4 GiB state dict never holds up heartbeats or small calls:
the writer sends every waiting control message before the next chunk of a bulk one, and
interleaves at most ``SEND_STREAMS`` bulk messages at a time (the rest wait their turn). The
reader writes each chunk straight into the destination buffers of that stream's
:class:`collab_core.wire.FrameDecoder` (no extra copy).

Memory a peer can make us spend: receive memory is committed as a message's bytes arrive, never
from the sizes it declares (see :class:`collab_core.wire.FrameDecoder`), and frames from peers
are decoded under :data:`PEER_LIMITS`. On top of that, each connection bounds (constructor
options; over a limit the connection is closed with a reason naming the limit and its value):

``max_streams`` (default 16)
    Inbound messages in progress at once (a first chunk arrived, the last one not yet). Each
    costs at most 64 KiB a field before its bytes arrive.
``max_reserved_bytes`` (default 32 MiB)
    Receive memory allocated, over all inbound messages in progress, beyond the bytes received
    (a field doubles as it fills, by at most ``PEER_LIMITS.max_prealloc_bytes`` = 4 MiB a step:
    an honest peer, which interleaves at most ``SEND_STREAMS`` = 4 messages, stays under 17 MiB).

So what a peer can make one connection hold beyond the bytes it actually sent is bounded by
about ``max_reserved_bytes`` + one growth step (36 MiB by default), and decoding a received
header by ``PEER_LIMITS.max_header_expansion`` (8) times its size + 1 MiB. Bytes that did
arrive are the peer's to spend: a message in progress holds what was sent of it.

Liveness: each side sends a ``ping`` every ``heartbeat`` seconds of send-silence, and closes a
connection from which nothing arrived for ``dead_after`` seconds -- unless bytes from the peer are
waiting unread in the kernel's socket buffer (a reader thread starved on a loaded machine is not
a dead peer; a reader that leaves them there for ``4 x dead_after`` closes it as stalled). TCP
sockets also get kernel keepalive, so a vanished host is detected even when nothing is sent. Any
malformed chunk or frame closes the connection with a logged reason; nothing else in the process
is affected.
"""

from __future__ import annotations

import logging
import select
import socket
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from collab_core import wire

log = logging.getLogger("collab.connection")

CHUNK = 1 << 20
MAX_CHUNK = 4 << 20
_CHUNK_HEADER = struct.Struct("<IBI")
START, END = 1, 2
#: A message whose frame is at most this big goes out as one chunk, ahead of bulk transfers.
SMALL = 64 << 10
#: Limits for frames from peers (see :class:`collab_core.wire.Limits`). No cap on a message's
#: size but memory. Headers are capped at 32 MiB: large binary data travels out of band
#: (arrays, tensors, :class:`collab_core.wire.Blob` -- job files too), so a header holds
#: structure and small values, and 32 MiB is still 3.5 million floats in a plain list; decoding
#: one costs at most 8 x its size + 1 MiB (max_header_expansion). 65,536 buffers a message (a
#: state dict of that many tensors); receive memory grows in steps of at most 4 MiB.
PEER_LIMITS = wire.Limits(
    max_header_bytes=32 << 20,
    max_buffers=1 << 16,
    max_prealloc_bytes=4 << 20,
    max_header_expansion=8,
)
#: Bulk (chunked) messages a writer interleaves at most; a receiver must accept one more stream
#: than this (a small message can start while they are in progress).
SEND_STREAMS = 4
MAX_STREAMS = 16
MAX_RESERVED_BYTES = 32 << 20
#: A reader that leaves bytes from the peer unread for this many times dead_after is stalled.
_STALLED_FACTOR = 4.0

try:
    import fcntl
    import termios

    _FIONREAD: int | None = termios.FIONREAD
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]
    _FIONREAD = None


class _LimitExceeded(Exception):
    """The peer went over one of this connection's limits (closes it with the message)."""


def _enable_keepalive(sock: socket.socket, dead_after: float) -> None:
    """Kernel keepalive on a TCP socket: probes after ``dead_after`` of silence, every third of it,
    three times, so a host that vanished is noticed within about twice ``dead_after``."""
    try:
        if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
            return
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        idle = max(1, int(dead_after))
        interval = max(1, int(dead_after / 3))
        for name, value in (("TCP_KEEPIDLE", idle), ("TCP_KEEPALIVE", idle), ("TCP_KEEPINTVL", interval),
                            ("TCP_KEEPCNT", 3)):
            opt = getattr(socket, name, None)
            if opt is not None:
                try:
                    sock.setsockopt(socket.IPPROTO_TCP, opt, value)
                except OSError:
                    pass
    except (OSError, ValueError):
        pass


class ConnectionClosed(ConnectionError):
    """The connection is closed; ``reason`` says why."""


class _Bulk:
    """A large outgoing message: its chunks, produced lazily from views of the frame parts."""

    def __init__(self, sid: int, parts: list[Any]):
        self.sid = sid
        self.views = [p if isinstance(p, memoryview) else memoryview(p) for p in parts]
        self.views = [v.cast("B") if v.format != "B" or v.ndim != 1 else v for v in self.views]
        self.chunks = _chunks(self.views)


def _chunks(views: list[memoryview]) -> Iterator[tuple[int, list[memoryview]]]:
    """(flags, views) of each chunk. A module-level function, not a method: a generator that
    refers to its _Bulk would form a cycle that keeps a sent payload alive until a full GC."""
    total = sum(v.nbytes for v in views)
    sent = 0
    batch: list[memoryview] = []
    size = 0
    for view in views:
        pos = 0
        while pos < view.nbytes:
            take = min(CHUNK - size, view.nbytes - pos)
            batch.append(view[pos : pos + take])
            size += take
            pos += take
            if size == CHUNK:
                flags = (START if sent == 0 else 0) | (END if sent + size == total else 0)
                yield flags, batch
                sent += size
                batch, size = [], 0
    if batch or sent == 0:
        yield (START if sent == 0 else 0) | END, batch


class Connection:
    """A message channel over a connected (TLS) socket. ``on_message(conn, msg)`` runs on the
    reader thread and must not block; ``on_close(conn, reason)`` runs once when it closes.

    ``max_streams`` (at least 2) and ``max_reserved_bytes`` bound what the peer can make this
    side hold (see the module's docstring); both ends of a connection should use the same values.
    """

    def __init__(
        self,
        sock: socket.socket,
        peer: str,
        role: str,
        on_message: Callable[[Connection, dict], None],
        on_close: Callable[[Connection, str], None],
        heartbeat: float = 2.0,
        dead_after: float = 10.0,
        name: str = "",
        logger: logging.Logger | None = None,
        max_streams: int = MAX_STREAMS,
        max_reserved_bytes: int = MAX_RESERVED_BYTES,
    ):
        if type(max_streams) is not int or max_streams < 2:
            raise ValueError(f"Connection max_streams must be an int >= 2, got {max_streams!r}")
        if type(max_reserved_bytes) is not int or max_reserved_bytes < 1:
            raise ValueError(f"Connection max_reserved_bytes must be a positive int, got {max_reserved_bytes!r}")
        self.sock = sock
        self.peer = peer
        self.role = role
        self.on_message = on_message
        self.on_close = on_close
        self.heartbeat = heartbeat
        self.dead_after = dead_after
        self.name = name or f"conn-{peer}"
        self.log = logger or log
        self.closed = threading.Event()
        self.close_reason = ""
        self.last_rx = time.monotonic()
        self._cond = threading.Condition()
        self._control: deque[tuple[int, list[Any]]] = deque()
        self._bulk: deque[_Bulk] = deque()
        self._next_sid = 1
        self._threads: list[threading.Thread] = []
        self._io_running = 0  # reader and writer threads still using the socket
        self.bytes_sent = 0
        self.bytes_received = 0
        self.max_streams = max_streams
        self.max_reserved_bytes = max_reserved_bytes
        self._send_streams = max(1, min(SEND_STREAMS, max_streams - 1))
        self._fd_lock = threading.Lock()  # the descriptor is not closed while check_alive reads it
        _enable_keepalive(sock, dead_after)

    def start(self) -> Connection:
        with self._cond:
            self._io_running = 2
        for target, suffix in ((self._read_loop, "rx"), (self._write_loop, "tx")):
            t = threading.Thread(target=self._io_thread, args=(target,), name=f"{self.name}-{suffix}", daemon=True)
            self._threads.append(t)
            t.start()
        return self

    def __repr__(self) -> str:
        return f"<Connection {self.role} {self.peer}{' closed' if self.closed.is_set() else ''}>"

    # -- sending ----------------------------------------------------------------------------------

    def send(self, msg: dict) -> None:
        """Queue ``msg`` for sending; raises ConnectionClosed if the connection is closed, and
        WireError (at the sender) if ``msg`` holds something the wire cannot carry."""
        parts = wire.frame_parts(msg)
        size = sum(memoryview(p).nbytes for p in parts)
        with self._cond:
            if self.closed.is_set():
                raise ConnectionClosed(f"connection to {self.peer} is closed: {self.close_reason}")
            sid = self._next_sid
            self._next_sid = (sid + 1) & 0xFFFFFFFF or 1
            if size <= SMALL:
                self._control.append((sid, parts))
            else:
                self._bulk.append(_Bulk(sid, parts))
            self._cond.notify()

    def _io_thread(self, loop: Callable[[], None]) -> None:
        try:
            loop()
        finally:
            with self._cond:
                self._io_running -= 1
                last = self._io_running == 0
            if last:  # the socket is closed once no thread can touch its descriptor any more
                self._close_socket()

    def _write_loop(self) -> None:
        sock = self.sock
        try:
            while True:
                with self._cond:
                    while not self._control and not self._bulk and not self.closed.is_set():
                        if not self._cond.wait(self.heartbeat):
                            self._control.append((0, wire.frame_parts({"t": "ping"})))
                    if self.closed.is_set():
                        return
                    if self._control:
                        sid, parts = self._control.popleft()
                        data = b"".join(parts)
                        out = [_CHUNK_HEADER.pack(sid, START | END, len(data)) + data]
                    else:
                        bulk = self._bulk[0]
                        flags, views = next(bulk.chunks)
                        if flags & END:
                            self._bulk.popleft()
                            bulk.chunks.close()
                        elif len(self._bulk) > 1:  # up to _send_streams bulk transfers share the line
                            self._bulk.popleft()
                            self._bulk.insert(min(self._send_streams, len(self._bulk) + 1) - 1, bulk)
                        n = sum(v.nbytes for v in views)
                        out = [_CHUNK_HEADER.pack(bulk.sid, flags, n), *views]
                for piece in out:
                    sock.sendall(piece)
                    self.bytes_sent += len(piece) if isinstance(piece, bytes) else piece.nbytes
                # drop our references now: a sent payload must not live until the next message
                out = piece = bulk = views = parts = data = None  # type: ignore[assignment]
        except (OSError, ValueError) as exc:
            self.close(f"send failed: {exc}")
        except Exception as exc:  # a bug: never leave the peer hanging
            self.log.exception("writer of %s crashed", self.name)
            self.close(f"writer crashed: {exc!r}")

    # -- receiving --------------------------------------------------------------------------------

    def _recv_exact(self, view: memoryview) -> None:
        got = 0
        n = view.nbytes
        while got < n:
            k = self.sock.recv_into(view[got:])
            if k == 0 or self.closed.is_set():
                raise ConnectionClosed("the peer closed the connection")
            got += k
            self.bytes_received += k
            self.last_rx = time.monotonic()

    def _read_loop(self) -> None:
        head = bytearray(_CHUNK_HEADER.size)
        head_view = memoryview(head)
        streams: dict[int, wire.FrameDecoder] = {}
        try:
            while not self.closed.is_set():
                self._recv_exact(head_view)
                sid, flags, n = _CHUNK_HEADER.unpack(head)
                if n > MAX_CHUNK:
                    raise wire.WireError(f"chunk of {n} bytes exceeds the maximum of {MAX_CHUNK}")
                if flags & ~(START | END):
                    raise wire.WireError(f"unknown chunk flags {flags:#x}")
                dec = streams.get(sid)
                if flags & START:
                    if dec is not None:
                        raise wire.WireError(f"stream {sid} started twice")
                    if len(streams) >= self.max_streams:
                        raise _LimitExceeded(
                            f"the peer opened more than max_streams={self.max_streams} inbound streams at once")
                    dec = streams[sid] = wire.FrameDecoder(PEER_LIMITS)
                elif dec is None:
                    raise wire.WireError(f"chunk for stream {sid}, which was never started")
                frame = None
                remaining = n
                while remaining:
                    if frame is not None:
                        raise wire.WireError(f"stream {sid}: bytes after the end of its frame")
                    buf = dec.get_buffer()
                    take = min(buf.nbytes, remaining)
                    self._recv_exact(buf[:take])
                    del buf
                    remaining -= take
                    frame = dec.buffer_updated(take)
                if flags & END:
                    del streams[sid]
                    if frame is None:
                        raise wire.WireError(f"stream {sid} ended inside a frame")
                    msg = wire.loads(*frame, limits=PEER_LIMITS)
                    if not isinstance(msg, dict) or not isinstance(msg.get("t"), str):
                        raise wire.WireError("a message must be a dict with a string 't'")
                    if msg["t"] != "ping":
                        self.on_message(self, msg)
                    msg = frame = None  # the handler owns the message now; keep no payload alive
                elif frame is not None:
                    raise wire.WireError(f"stream {sid}: frame complete before its last chunk")
                else:
                    reserved = sum(d.reserved_bytes for d in streams.values())
                    if reserved > self.max_reserved_bytes:
                        raise _LimitExceeded(
                            f"the peer's {len(streams)} inbound streams reserve {reserved} bytes of receive "
                            f"memory not yet received, over max_reserved_bytes={self.max_reserved_bytes}")
                dec = None
        except ConnectionClosed as exc:
            self.close(str(exc))
        except _LimitExceeded as exc:
            streams.clear()
            self.log.warning("closing connection to %s (%s): %s", self.peer, self.role, exc)
            self.close(f"limit exceeded: {exc}")
        except wire.WireError as exc:
            self.log.warning("closing connection to %s (%s): malformed data: %s", self.peer, self.role, exc)
            self.close(f"malformed data from peer: {exc}")
        except (OSError, ValueError) as exc:
            self.close(f"receive failed: {exc}")
        except Exception as exc:
            self.log.exception("reader of %s crashed", self.name)
            self.close(f"reader crashed: {exc!r}")

    # -- lifecycle --------------------------------------------------------------------------------

    def check_alive(self, now: float | None = None) -> bool:
        """Close the connection if nothing arrived for ``dead_after`` seconds; True if alive.

        Bytes from the peer waiting unread in the kernel's socket buffer count as alive (the
        reader thread may just not have run yet on a loaded machine), unless they have waited
        for ``4 x dead_after``: then the reader is stalled and the connection is closed too."""
        if self.closed.is_set():
            return False
        silent = (now or time.monotonic()) - self.last_rx
        if silent > self.dead_after:
            waiting = self.unread_bytes()
            if waiting and silent <= _STALLED_FACTOR * self.dead_after:
                return True
            if waiting:
                self.close(f"the reader left {waiting} bytes from {self.peer} unread for {silent:.1f} s")
            else:
                self.close(f"no heartbeat from {self.peer} for {silent:.1f} s")
            return False
        return True

    def unread_bytes(self) -> int:
        """Bytes that arrived from the peer and wait unread in the kernel (0 if unknown)."""
        with self._fd_lock:
            try:
                fd = self.sock.fileno()
            except (OSError, ValueError):
                return 0
            if fd < 0:
                return 0
            if _FIONREAD is not None:
                try:
                    buf = fcntl.ioctl(fd, _FIONREAD, b"\0\0\0\0")
                    return int.from_bytes(buf, sys.byteorder, signed=True)
                except OSError:
                    pass
            try:
                readable, _, _ = select.select([fd], [], [], 0)
            except (OSError, ValueError):
                return 0
            return 1 if readable else 0

    def close(self, reason: str) -> None:
        with self._cond:
            if self.closed.is_set():
                return
            self.close_reason = reason
            self.closed.set()
            self._control.clear()
            self._bulk.clear()
            self._cond.notify_all()
        self.log.info("connection to %s (%s) closed: %s", self.peer, self.role, reason)
        # Shut down, which wakes the reader and writer, but close the socket only when both have
        # stopped: closing it under them frees its descriptor number for the next socket this
        # process opens, and a reader or writer still running would then read or write that one.
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        with self._cond:
            idle = self._io_running == 0
        if idle:
            self._close_socket()
        try:
            self.on_close(self, reason)
        except Exception:
            self.log.exception("on_close handler of %s failed", self.name)

    def _close_socket(self) -> None:
        with self._fd_lock:
            try:
                self.sock.close()
            except OSError:
                pass


class Heartbeats:
    """One thread that checks every registered connection's liveness."""

    def __init__(self, interval: float = 1.0):
        self.interval = interval
        self._conns: set[Connection] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="collab-heartbeats", daemon=True)
        self._thread.start()

    def add(self, conn: Connection) -> None:
        with self._lock:
            self._conns.add(conn)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                conns = list(self._conns)
            for c in conns:
                if not c.check_alive():
                    with self._lock:
                        self._conns.discard(c)

    def stop(self) -> None:
        self._stop.set()
