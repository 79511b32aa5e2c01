"""What a received message may cost: receive memory follows the bytes that arrived (never a
declared size), a header's decoding is bounded by Limits.max_header_expansion, legit big headers
still pass, Limits validates its fields; and wire.Blob, the out-of-band bytes type."""

from __future__ import annotations

import gc
import io
import mmap
import os
import random
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import tracemalloc
from pathlib import Path

import msgpack
import pytest

from collab_core.connection import PEER_LIMITS
from collab_core.wire import (
    FORMAT_VERSION,
    MAGIC,
    Blob,
    FrameDecoder,
    Limits,
    WireError,
    _codec,
    _frame,
    dumps,
    frame_parts,
    loads,
    read_frame,
    read_raw_frame,
    write_frame,
)

MiB = 1 << 20
KiB = 1 << 10


def frame_bytes(obj) -> bytes:
    return b"".join(bytes(p) for p in frame_parts(obj))


def prefix(nbuf: int, hlen: int) -> bytes:
    return struct.pack("<4sBBHIQ", MAGIC, FORMAT_VERSION, 0, 0, nbuf, hlen)


def rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def allocated(dec: FrameDecoder) -> int:
    """Bytes of the region the decoder is receiving into now."""
    return len(dec._target.region.buf)


# -- receive memory follows the bytes that arrived ------------------------------------------------


def test_a_declared_terabyte_buffer_with_one_byte_sent_allocates_at_most_64_kib():
    header = b"\x80"
    dec = FrameDecoder()
    dec.feed(prefix(1, 1) + struct.pack("<Q", 1 << 40) + header + b"\x01")
    assert allocated(dec) <= 64 * KiB
    assert dec.reserved_bytes < 64 * KiB
    assert not dec._target.region.advised


def test_a_declared_terabyte_header_with_one_byte_sent_allocates_at_most_64_kib():
    dec = FrameDecoder(Limits(max_header_bytes=1 << 41))
    dec.feed(prefix(0, 1 << 40) + b"\x80")
    assert allocated(dec) <= 64 * KiB


def test_an_arena_of_declared_small_buffers_starts_small_too():
    # 1000 buffers of 64 KiB: they would share 64 MiB arenas; one byte of the first arrives
    dec = FrameDecoder()
    dec.feed(prefix(1000, 1) + struct.pack("<1000Q", *[64 * KiB] * 1000) + b"\x80" + b"\x01")
    assert allocated(dec) <= 64 * KiB
    assert dec._target.region.size > 60 * MiB  # it is the arena, not a buffer of its own


@pytest.mark.parametrize("step", [64 * KiB, 4 * MiB, 64 * MiB])
def test_receive_memory_is_at_most_twice_what_arrived_and_one_step_ahead(step):
    dec = FrameDecoder(Limits(max_prealloc_bytes=step))
    dec.feed(prefix(1, 1) + struct.pack("<Q", 1 << 40) + b"\x80")
    received = 0
    piece = b"\x07" * (256 * KiB)
    while received < 48 * MiB:
        dec.feed(piece)
        received += len(piece)
        size = allocated(dec)
        assert size <= max(2 * received, 64 * KiB), (received, size)
        assert size - received <= step, (received, size)
        if dec._target.region.advised:  # huge pages only where half the bytes arrived
            assert size <= 2 * received


def test_regions_grow_in_place_and_the_result_is_exactly_the_declared_buffer():
    data = bytes(random.Random(1).randbytes(9 * MiB + 123))
    parts = frame_parts(Blob(data))
    raw = b"".join(bytes(p) for p in parts)
    dec = FrameDecoder(Limits(max_prealloc_bytes=1 * MiB))
    frames = []
    for i in range(0, len(raw), 100_000):
        frames += dec.feed(raw[i : i + 100_000])
    (header, buffers), = frames
    assert buffers[0].nbytes == len(data) and bytes(buffers[0]) == data
    out = loads(header, buffers)
    assert out == data


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_400_decoders_declaring_256_mib_headers_and_fed_1_byte_cost_little_rss():
    gc.collect()
    before = rss()
    decoders = []
    for _ in range(400):
        dec = FrameDecoder(Limits(max_header_bytes=256 * MiB))
        dec.feed(prefix(0, 256 * MiB) + b"\x80")
        decoders.append(dec)
    growth = rss() - before
    assert growth < 48 * MiB, growth  # was ~800 MiB: 64 MiB maps, huge pages, from the declared size
    assert sum(d.reserved_bytes for d in decoders) <= 400 * 64 * KiB


def test_read_frame_over_a_socket_with_a_declared_terabyte_stays_small():
    a, b = socket.socketpair()
    try:
        data = prefix(1, 1) + struct.pack("<Q", 1 << 40) + b"\x80" + b"\x01" * 300_000
        t = threading.Thread(target=lambda: (a.sendall(data), a.shutdown(socket.SHUT_WR)), daemon=True)
        sizes = []
        real = _frame._alloc

        def spy(n, *args):
            sizes.append(n)
            return real(n, *args)

        _frame._alloc = spy
        try:
            t.start()
            with pytest.raises(WireError, match="truncated"):
                read_frame(b)
        finally:
            _frame._alloc = real
        t.join(10)
        assert max(sizes) <= 64 * KiB  # and it grew in place from there (mremap), not by allocating
    finally:
        a.close()
        b.close()


# -- header decoding is bounded -------------------------------------------------------------------


N = 1 << 18  # values in each bomb below (a header of 256 KiB .. 1.5 MiB)


def _array(items: bytes, n: int) -> bytes:
    return b"\xdd" + struct.pack(">I", n) + items


BOMBS = {
    "empty maps": lambda: _array(b"\x80" * N, N),
    "empty lists": lambda: _array(b"\x90" * N, N),
    "non-cached negative fixints": lambda: _array(b"\xe0" * N, N),
    "int8": lambda: msgpack.packb([-100] * N),
    "2-char strings": lambda: msgpack.packb(["ab"] * N),
    "3-byte utf-8 strings": lambda: msgpack.packb(["€"] * N),
    "1-pair dicts": lambda: msgpack.packb([{0: 0}] * N),
    "dicts of a str key then an int key": lambda: msgpack.packb([{"a": 0, 0: 0}] * N),
    "tuples": lambda: dumps([(1, 2)] * N)[0],
    "empty sets": lambda: dumps([set()] * N)[0],
    "sets": lambda: dumps([{1, 2}] * N)[0],
}
#: not bombs (under 8x), but their estimates must hold too
OTHERS = {
    "bigints": lambda: dumps([2**70] * N)[0],
    "float pairs": lambda: dumps([[0.5, 1.5]] * N)[0],
    "datetimes": lambda: dumps([__import__("datetime").datetime(2024, 1, 1, tzinfo=__import__("datetime").timezone.utc)] * N)[0],
    "exceptions": lambda: dumps([ValueError("x")] * 5000)[0],
    "floats": lambda: dumps([i * 0.5 for i in range(N)])[0],
    "records (repeated str keys)": lambda: dumps([{"site": f"s-{i % 10}", "round": i, "loss": 0.5} for i in range(N // 4)])[0],
    "dicts of unique keys": lambda: dumps([{f"key{i:07d}": None} for i in range(N // 4)])[0],
    "int-keyed dicts": lambda: dumps([{i: 0, i + 1: 1, i + 2: 2} for i in range(N // 4)])[0],
    "10-char strings": lambda: dumps([f"{i:010d}" for i in range(N)])[0],
}


def _peak_of(fn) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        try:
            out = fn()
        except WireError:
            out = None
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    del out
    return peak


@pytest.mark.parametrize("kind", list(BOMBS))
def test_a_header_of_tiny_objects_is_rejected_before_its_memory_is_spent(kind):
    header = BOMBS[kind]()
    lim = Limits(max_header_expansion=8)
    with pytest.raises(WireError, match=r"max_header_expansion=8") as info:
        loads(header, [], limits=lim)
    assert "Blob" in str(info.value)  # and it says what to do instead
    spent = _peak_of(lambda: loads(header, [], limits=lim))
    assert spent < 2 * len(header) + 64 * KiB, (kind, spent)  # the scan's copy of the header, no more


@pytest.mark.parametrize("kind", list(BOMBS) + list(OTHERS))
def test_the_cost_estimate_is_an_upper_bound_of_what_decoding_spends(kind):
    header = {**BOMBS, **OTHERS}[kind]()
    # a bound loose enough that the header is scanned and then decoded: what is really spent
    lim = Limits(max_header_expansion=250)
    estimate = _codec._header_cost(header, 1 << 62, 100)
    spent = _peak_of(lambda: loads(header, [], limits=lim))
    assert spent <= estimate + 64 * KiB, (kind, spent / len(header), estimate / len(header))
    if kind in BOMBS and kind != "3-byte utf-8 strings":
        assert spent > 8 * len(header), "not a bomb"  # decoded unchecked, each really costs > 8x


def test_the_scan_stops_early_and_its_work_is_linear():
    small = BOMBS["empty maps"]()
    # 16 Mi empty maps (16 MiB of header), in 256 lists of 65535 so the estimate grows as the scan goes
    inner = b"\xdc" + struct.pack(">H", 65535) + b"\x80" * 65535
    big = b"\xdc" + struct.pack(">H", 256) + inner * 256
    lim = Limits(max_header_expansion=8)
    with pytest.raises(WireError, match="max_header_expansion"):
        loads(big, [], limits=lim)
    budget = 8 * len(big) + _codec.HEADER_COST_ALLOWANCE
    cost = _codec._header_cost(big, budget, 100)
    # the scan ends at the first value past the budget (at worst one inner list's own cost, 590 KB),
    # not after walking the rest of the header
    assert budget < cost <= budget + 64 + 9 * 65535 + 96
    assert _codec._header_cost(small, 1 << 62, 100) == 96 * N + 64 + 9 * N  # each empty map 96 bytes, the list 64 + 9 a slot


def _legit_headers():
    import numpy as np

    out = {
        "a state dict of 10,000 numpy arrays": {f"layer{i}.weight": np.ones((4, 4), np.float32) for i in range(10_000)},
        "a list of a million floats": [i * 0.5 for i in range(1_000_000)],
        "a list of a million small ints": [i % 100 for i in range(1_000_000)],
        "a 20 MiB string": "x" * (20 * MiB),
        "a 20 MiB bytes": b"x" * (20 * MiB),
        "100,000 records": [{"site": f"site-{i % 10}", "round": i, "loss": 0.25, "ok": True} for i in range(100_000)],
        "a call message": {"t": "call", "job": "j-1", "id": 7, "method": "train", "args": [1, 2.5, "x"], "kwargs": {}},
    }
    try:
        import torch
    except ImportError:
        pass
    else:
        out["a state dict of 10,000 torch tensors"] = {f"model.layers.{i}.weight": torch.ones(4, 4) for i in range(10_000)}
    return out


def test_legit_big_headers_pass_the_peer_limits_through_a_frame():
    pytest.importorskip("numpy")
    for name, value in _legit_headers().items():
        header, buffers = dumps(value)
        assert len(header) <= PEER_LIMITS.max_header_bytes, name
        out = read_frame(io.BytesIO(frame_bytes(value)), limits=PEER_LIMITS)
        assert type(out) is type(value), name
        assert len(out) == len(value), name
        budget = 8 * len(header) + _codec.HEADER_COST_ALLOWANCE
        assert _codec._header_cost(header, 1 << 62, 100) <= budget, name


def test_the_scan_checks_nesting_before_anything_is_built():
    lim = Limits(max_depth=10, max_header_expansion=8)
    inner = [0.5] * 100_000  # big enough to be scanned
    value = inner
    for _ in range(9):
        value = [value]
    assert len(loads(*dumps(value), limits=lim)) == 1  # 10 levels: fine
    with pytest.raises(WireError, match="max_depth=10"):
        loads(*dumps([value]), limits=lim)
    deep = b"\x91" * 20_000 + b"\xc0"  # deeper than msgpack's own stack
    with pytest.raises(WireError, match="max_depth"):
        loads(deep, [], limits=Limits(max_header_expansion=1))


def test_the_scan_and_the_unscanned_depth_check_agree_on_random_documents():
    rng = random.Random(5)

    def value(depth):
        r = rng.random()
        if depth > 14 or r < 0.3:
            return rng.choice([0, -7, 2**40, 1.5, "ab", b"xyz", None, True])
        if r < 0.55:
            return [value(depth + 1) for _ in range(rng.randrange(4))]
        if r < 0.7:
            return tuple(value(depth + 1) for _ in range(rng.randrange(3)))
        return {str(i): value(depth + 1) for i in range(rng.randrange(4))}

    for _ in range(300):
        v = value(0)
        header, _ = dumps(v)
        for max_depth in (3, 6, 10):
            plain = Limits(max_depth=max_depth)
            try:
                loads(header, [], limits=plain)
                expected = None
            except WireError as exc:
                expected = "max_depth" in str(exc)
            try:
                _codec._header_cost(header, 1 << 62, max_depth)
                got = False
            except WireError:
                got = True
            assert got == bool(expected), (v, max_depth)


def test_the_scan_survives_garbage_and_mutations():
    rng = random.Random(11)
    samples = [dumps(v)[0] for v in ([1.5] * 50, {"a": [1, (2, 3)], "b": "é" * 9}, [{1, 2}, b"x" * 300, 2**80])]
    for i in range(3000):
        if i % 3 == 0:
            data = rng.randbytes(rng.randrange(1, 300))
        else:
            data = bytearray(rng.choice(samples))
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            data = bytes(data)
        try:
            cost = _codec._header_cost(data, 1 << 20, 20)
        except WireError:
            continue
        assert cost >= 0
        try:
            loads(data + b"\x00" * 0, [], limits=Limits(max_depth=20, max_header_expansion=1))
        except WireError:
            pass


def test_small_messages_are_not_scanned_at_all(monkeypatch):
    calls = []
    real = _codec._header_cost
    monkeypatch.setattr(_codec, "_header_cost", lambda *a: calls.append(1) or real(*a))
    loads(*dumps({"t": "ping", "x": list(range(100))}), limits=PEER_LIMITS)
    assert not calls
    loads(*dumps([0.5] * 100_000), limits=PEER_LIMITS)
    assert calls


# -- Limits ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field", ["max_header_bytes", "max_depth", "max_buffers", "max_frame_bytes", "max_prealloc_bytes", "max_header_expansion"]
)
@pytest.mark.parametrize("bad", [0, -1, 1.5, "8", True])
def test_limits_reject_anything_but_a_positive_int(field, bad):
    with pytest.raises(ValueError, match=f"Limits.{field} must be a positive int"):
        Limits(**{field: bad})


def test_limits_defaults_and_none():
    lim = Limits()
    assert lim.max_header_expansion is None and lim.max_frame_bytes is None  # off in process
    assert Limits(max_header_expansion=None, max_frame_bytes=None) == lim
    with pytest.raises(ValueError):
        Limits(max_depth=None)  # type: ignore[arg-type]
    assert PEER_LIMITS.max_header_expansion == 8
    assert PEER_LIMITS.max_header_bytes == 32 * MiB
    assert PEER_LIMITS.max_prealloc_bytes == 4 * MiB
    doc = Limits.__doc__ or ""
    for field in attrs_fields(Limits):
        assert f"``{field}``" in doc, f"Limits.{field} is not documented"


def attrs_fields(cls) -> list[str]:
    import attrs

    return [f.name for f in attrs.fields(cls)]


# -- Blob -----------------------------------------------------------------------------------------


def test_blob_is_read_only_bytes_over_any_buffer(tmp_path):
    data = b"hello world"
    f = tmp_path / "f.bin"
    f.write_bytes(data)
    with open(f, "rb") as fh:
        mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    for source in (data, bytearray(data), memoryview(data), mapped):
        b = Blob(source)
        assert isinstance(b, Blob)
        assert bytes(b) == data and b.tobytes() == data
        assert len(b) == len(data)
        assert memoryview(b) == data and memoryview(b).nbytes == len(data)
        assert b.view.readonly and b.view == data
        assert b == data and data == b and b == Blob(data) and b != b"other"
        assert hash(b) == hash(data)
        assert b[0] == data[0] and b[-1] == data[-1]
        assert b[1:4] == data[1:4] and isinstance(b[1:4], Blob)
        assert list(b) == list(data)
        with pytest.raises(TypeError):
            b[0] = 1
        assert repr(b).startswith("Blob(")
    assert Blob(Blob(data)) == data
    assert Blob() == b"" and len(Blob()) == 0
    with pytest.raises(TypeError):
        Blob("text")  # type: ignore[arg-type]
    del b
    mapped.close()


def test_blob_wraps_without_copying():
    ba = bytearray(b"x" * 1000)
    b = Blob(ba)
    ba[0] = ord("y")  # the same memory
    assert bytes(b[:1]) == b"y"
    header, buffers = dumps({"f": b})
    assert len(buffers) == 1 and buffers[0].obj is ba  # one out-of-band buffer, the original memory
    assert len(header) < 64
    out = loads(header, buffers)["f"]
    assert isinstance(out, Blob) and out == b
    assert out.view.obj is buffers[0].obj  # decoded over the buffer it was given


def test_blobs_round_trip_through_frames_files_and_sockets():
    rng = random.Random(3)
    files = {f"dir/file-{i}.bin": Blob(rng.randbytes(n)) for i, n in enumerate([0, 1, 100, 70_000, 3 * MiB])}
    files["job.json"] = Blob(b'{"name": "job"}')
    f = io.BytesIO()
    write_frame(f, {"t": "deploy", "files": files})
    f.seek(0)
    out = read_frame(f, limits=PEER_LIMITS)["files"]
    assert out == files and all(isinstance(v, Blob) for v in out.values())
    a, b = socket.socketpair()
    try:
        t = threading.Thread(target=write_frame, args=(a, files), daemon=True)
        t.start()
        got = read_frame(b, limits=PEER_LIMITS)
        t.join(10)
    finally:
        a.close()
        b.close()
    assert got == files
    header, buffers = read_raw_frame(io.BytesIO(frame_bytes(files[next(iter(files))])))
    assert len(header) < 64 and len(buffers) == 1


def test_a_malformed_blob_record_is_a_wire_error():
    tag = b"collab.Blob"
    for payload in (b"", b"\x00\x00", b"\x05\x00\x00\x00"):
        ext = msgpack.ExtType(2, bytes([len(tag)]) + tag + payload)
        with pytest.raises(WireError):
            loads(msgpack.packb(ext), [memoryview(b"abc")])


def test_blob_needs_neither_numpy_nor_torch():
    code = textwrap.dedent(
        """
        import sys
        from collab_core import wire
        files = {"a.py": wire.Blob(b"print(1)"), "big": wire.Blob(bytearray(2 << 20))}
        out = wire.loads(*wire.dumps(files))
        assert out == files, out
        assert "numpy" not in sys.modules and "torch" not in sys.modules, sorted(sys.modules)
        print("ok")
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr
