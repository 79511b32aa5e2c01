"""A peer's bytes cost memory only as they arrive (DESIGN.md section 7), proved against a real
server process (`collab server start`): an attacker authenticates with a provisioned site kit over
TLS and speaks the raw chunk protocol. The server's memory is read from /proc/<pid>/status (its
peak RSS, VmHWM, reset before each attack through /proc/<pid>/clear_refs where the kernel allows).
After every attack a real site process connects and a small job runs on it.
"""

from __future__ import annotations

import contextlib
import ssl
import struct
import sys
import time
import uuid

import pytest

from collab_core.connection import MAX_RESERVED_BYTES, MAX_STREAMS, PEER_LIMITS
from collab_core.wire import FORMAT_VERSION, MAGIC

from .helpers import (
    END,
    START,
    TIMEOUT,
    MiB,
    PeakRss,
    ServerProcess,
    chunk,
    wait_closed_by_peer,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/<pid>/status"),
]


@pytest.fixture
def server(kits, tmp_path):
    srv = ServerProcess(kits, tmp_path / f"srv-{uuid.uuid4().hex[:6]}")
    try:
        yield srv
    finally:
        srv.stop()


# -- raw frames -----------------------------------------------------------------------------------


def prefix(nbuf: int, hlen: int) -> bytes:
    """The first 20 bytes of a frame that declares ``nbuf`` buffers and an ``hlen``-byte header."""
    return struct.pack("<4sBBHIQ", MAGIC, FORMAT_VERSION, 0, 0, nbuf, hlen)


def send_quietly(sock: ssl.SSLSocket, data: bytes) -> None:
    """Send ``data``; the server may close the connection half way (that is what we test)."""
    with contextlib.suppress(OSError):
        sock.sendall(data)


def open_streams(sock: ssl.SSLSocket, first_bytes: bytes, n: int) -> None:
    """Start ``n`` streams, each with the first bytes of a frame in one chunk that is not its last."""
    send_quietly(sock, b"".join(chunk(sid, START, first_bytes) for sid in range(1, n + 1)))


def empty_maps_header(n: int) -> bytes:
    return b"\xdd" + struct.pack(">I", n) + b"\x80" * n


def send_frame(sock: ssl.SSLSocket, sid: int, frame: bytes, piece: int = 1 << 20) -> None:
    pieces = [frame[i : i + piece] for i in range(0, len(frame), piece)]
    for i, p in enumerate(pieces):
        flags = (START if i == 0 else 0) | (END if i == len(pieces) - 1 else 0)
        send_quietly(sock, chunk(sid, flags, p))


# -- the promises ---------------------------------------------------------------------------------


def test_400_streams_declaring_256_mib_headers_cost_no_memory_and_close_the_connection(server, tmp_path):
    """The issue's attack as it was: 400 streams, each declaring a 256 MiB header and sending 1
    byte. Headers from peers are capped at PEER_LIMITS.max_header_bytes (32 MiB), so the first
    stream already closes the connection, naming that limit."""
    with PeakRss(server.pid) as rss:
        sock = server.attacker()
        try:
            open_streams(sock, prefix(0, 256 * MiB) + b"\x80", 400)
            wait_closed_by_peer(sock, TIMEOUT)
        finally:
            sock.close()
        line = server.wait_log(f"max_header_bytes={PEER_LIMITS.max_header_bytes}")
    assert "closing connection to site-1" in line
    print(f"\nserver peak RSS growth under the attack: {rss.growth / MiB:.1f} MiB")
    assert rss.growth < 16 * MiB, rss.growth
    server.still_serves(tmp_path)


@pytest.mark.parametrize("shape", ["largest-header", "terabyte-buffer"])
def test_400_streams_sending_1_byte_each_cost_under_64_mib_and_hit_the_stream_limit(server, tmp_path, shape):
    """400 streams each declaring the most a peer may declare -- a header of the largest allowed
    size, or a 1 TiB buffer after a complete header -- and sending 1 byte of it: memory stays
    small (each field starts at 64 KiB at most, nothing is advised for huge pages) and the
    connection is closed at stream MAX_STREAMS + 1 with a reason naming max_streams."""
    if shape == "largest-header":
        first = prefix(0, PEER_LIMITS.max_header_bytes) + b"\x80"
    else:
        header = b"\x80"  # an empty dict; the buffer is never reached by the decoder
        first = prefix(1, len(header)) + struct.pack("<Q", 1 << 40) + header + b"\x00"
    with PeakRss(server.pid) as rss:
        sock = server.attacker()
        try:
            open_streams(sock, first, 400)
            wait_closed_by_peer(sock, TIMEOUT)
        finally:
            sock.close()
        line = server.wait_log(f"max_streams={MAX_STREAMS}")
    assert "closing connection to site-1" in line and "inbound streams at once" in line
    print(f"\nserver peak RSS growth under the attack: {rss.growth / MiB:.1f} MiB")
    assert rss.growth < 64 * MiB, rss.growth
    server.still_serves(tmp_path)


def test_a_16_mib_header_of_16_mi_empty_maps_costs_under_8x_its_size_and_closes_the_connection(server, tmp_path):
    """16 Mi empty maps would be 16 Mi dicts (over 1 GiB); the decoder's scan rejects the header
    after a fraction of it, before building anything, naming max_header_expansion."""
    n = 16 * MiB
    header = empty_maps_header(n)
    with PeakRss(server.pid) as rss:
        sock = server.attacker()
        try:
            t0 = time.monotonic()
            send_frame(sock, 1, prefix(0, len(header)) + header)
            wait_closed_by_peer(sock, TIMEOUT)
            elapsed = time.monotonic() - t0
        finally:
            sock.close()
        line = server.wait_log(f"max_header_expansion={PEER_LIMITS.max_header_expansion}")
    assert "closing connection to site-1" in line
    print(f"\nserver peak RSS growth under the attack: {rss.growth / MiB:.1f} MiB")
    assert rss.growth < 8 * len(header), rss.growth
    assert rss.growth < 64 * MiB, rss.growth  # the header, its copy for the scan, and slack
    assert elapsed < 120, elapsed  # closed on the limit, not by some later timeout
    server.still_serves(tmp_path)


def test_reserved_but_unreceived_bytes_are_capped_per_connection(server, tmp_path):
    """Streams that each sent 4 MiB + 1 byte of a 1 TiB buffer make the receiver grow each buffer
    one step (4 MiB) ahead of the bytes received; over max_reserved_bytes (32 MiB) in total the
    connection is closed, naming that limit, long before MAX_STREAMS streams are open."""
    header = b"\x80"
    frame_start = prefix(1, len(header)) + struct.pack("<Q", 1 << 40) + header
    payload = b"\x01" * (4 * MiB)
    with PeakRss(server.pid) as rss:
        sock = server.attacker()
        try:
            for sid in range(1, MAX_STREAMS + 1):
                send_quietly(sock, chunk(sid, START, frame_start) + chunk(sid, 0, payload) + chunk(sid, 0, b"\x01"))
            wait_closed_by_peer(sock, TIMEOUT)
        finally:
            sock.close()
        line = server.wait_log(f"max_reserved_bytes={MAX_RESERVED_BYTES}")
    assert "closing connection to site-1" in line
    # what arrived before the close (about 9 x 4 MiB) and the pages around it; not the 16 TiB declared
    print(f"\nserver peak RSS growth under the attack: {rss.growth / MiB:.1f} MiB")
    assert rss.growth < 100 * MiB, rss.growth
    server.still_serves(tmp_path)
