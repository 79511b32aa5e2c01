"""Benchmark collab_core.wire against torch.save and a raw socket copy.

Run: .venv/bin/python benchmarks/wire.py [--quick] [--reps N]

Every figure is the median of N repetitions measured in this run; ratios compare figures from
this run only. (No pickle here: collab never unpickles anything, not even in a benchmark.)

Cases
  (a) one 100 MB float32 numpy array
  (b) a 100 MB torch state dict of 200 float32 tensors
  in process: dumps+loads, vs torch.save/torch.load (BytesIO)
  socket:     write_frame/read_frame over a socketpair (writer thread), vs one sendall of a
              100 MB bytes object received with recv_into into a preallocated, already-touched
              buffer, and into a freshly allocated one (what any receiver of new data must do).
"""

from __future__ import annotations

import argparse
import gc
import io
import mmap
import os
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

from collab_core.wire import dumps, loads, read_frame, write_frame  # noqa: E402

try:
    import torch
except ImportError:  # the numpy half still runs
    torch = None  # type: ignore[assignment]


def median_time(fn: Callable[[], Any], reps: int) -> float:
    """Median seconds per call; calls under a millisecond are timed in batches of 200."""
    t0 = time.perf_counter()
    fn()  # warm up
    inner = 200 if time.perf_counter() - t0 < 1e-3 else 1
    times = []
    for _ in range(reps):
        gc.collect()
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - t0) / inner)
    return statistics.median(times)


# -- in-process -------------------------------------------------------------------------------------


def wire_roundtrip(obj: Any) -> Any:
    header, buffers = dumps(obj)
    return loads(header, buffers)


def wire_roundtrip_copy(obj: Any) -> Any:
    """As a receiver that owns its memory sees it: the buffers are copied once."""
    header, buffers = dumps(obj)
    return loads(header, [bytearray(b) for b in buffers])


def torch_save_roundtrip(obj: Any) -> Any:
    f = io.BytesIO()
    torch.save(obj, f)
    f.seek(0)
    return torch.load(f, weights_only=not isinstance(obj, np.ndarray))


# -- sockets ----------------------------------------------------------------------------------------


def _pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    return a, b


def socket_wire(obj: Any) -> Callable[[], Any]:
    def run() -> Any:
        a, b = _pair()
        t = threading.Thread(target=write_frame, args=(a, obj))
        t.start()
        out = read_frame(b)
        t.join()
        a.close()
        b.close()
        return out

    return run


def socket_raw(payload: bytes, fresh: bool) -> Callable[[], Any]:
    prealloc = bytearray(len(payload))
    prealloc[:] = payload  # touched: no page faults while receiving

    def run() -> Any:
        a, b = _pair()
        t = threading.Thread(target=a.sendall, args=(payload,))
        t.start()
        buf: Any = mmap.mmap(-1, len(payload), flags=mmap.MAP_PRIVATE) if fresh else prealloc
        if fresh and hasattr(mmap, "MADV_HUGEPAGE"):
            buf.madvise(mmap.MADV_HUGEPAGE)  # the same allocation read_frame makes
        mv = memoryview(buf)
        pos = 0
        while pos < len(mv):
            pos += b.recv_into(mv[pos:])
        del mv
        t.join()
        a.close()
        b.close()
        return buf

    return run


def check_equal(a: Any, b: Any) -> None:
    if isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            check_equal(a[k], b[k])
    elif torch is not None and isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    else:
        assert np.array_equal(a, b)


# -- report -----------------------------------------------------------------------------------------


def fmt(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:8.1f} us"
    return f"{seconds * 1e3:8.1f} ms"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="20 MB payloads, 3 repetitions")
    ap.add_argument("--reps", type=int, default=None, help="repetitions per figure (default 5, 3 with --quick)")
    args = ap.parse_args()
    mb = 20 if args.quick else 100
    reps = args.reps or (3 if args.quick else 5)
    nbytes = mb * 1_000_000
    rows: list[tuple[str, str, float, float | None]] = []  # case, method, seconds, wire seconds

    def add(case: str, method: str, fn: Callable[[], Any], ref: float | None = None) -> float:
        t = median_time(fn, reps)
        rows.append((case, method, t, ref))
        return t

    t_start = time.perf_counter()
    arr = np.random.default_rng(0).standard_normal(nbytes // 4, dtype=np.float32)
    check_equal(arr, wire_roundtrip(arr))
    check_equal(arr, socket_wire(arr)())
    case = f"(a) numpy {mb} MB float32"
    add(case, "wire dumps+loads (zero-copy)", lambda: wire_roundtrip(arr))
    wc = add(case, "wire dumps+loads, buffers copied", lambda: wire_roundtrip_copy(arr))
    if torch is not None:
        add(case, "torch.save/torch.load BytesIO", lambda: torch_save_roundtrip(arr), wc)
    payload = arr.tobytes()
    ws = add(case, "socket: wire write_frame/read_frame", socket_wire(arr))
    add(case, "socket: raw sendall/recv_into prealloc", socket_raw(payload, fresh=False), ws)
    add(case, "socket: raw sendall/recv_into fresh", socket_raw(payload, fresh=True), ws)

    if torch is not None:
        n_tensors = 200
        per = nbytes // 4 // n_tensors
        g = torch.Generator().manual_seed(0)
        sd = {f"layer{i}.weight": torch.randn(per, generator=g).reshape(-1, 100) for i in range(n_tensors)}
        check_equal(sd, wire_roundtrip(sd))
        check_equal(sd, socket_wire(sd)())
        case = f"(b) torch state_dict {mb} MB, {n_tensors} tensors"
        w = add(case, "wire dumps+loads (zero-copy)", lambda: wire_roundtrip(sd))
        add(case, "torch.save/torch.load BytesIO", lambda: torch_save_roundtrip(sd), w)
        wc = add(case, "wire dumps+loads, buffers copied", lambda: wire_roundtrip_copy(sd))
        add(case, "torch.save/torch.load (vs copied)", lambda: torch_save_roundtrip(sd), wc)
        ws = add(case, "socket: wire write_frame/read_frame", socket_wire(sd))
        add(case, "socket: raw sendall/recv_into prealloc", socket_raw(payload, fresh=False), ws)
        add(case, "socket: raw sendall/recv_into fresh", socket_raw(payload, fresh=True), ws)
    else:
        print("torch is not installed: skipping the state_dict case and the torch.save baseline")

    print(f"collab_core.wire benchmark: median of {reps} runs, {mb} MB payloads, Python {sys.version.split()[0]}, "
          f"numpy {np.__version__}" + (f", torch {torch.__version__}" if torch is not None else "")
          + f", {os.cpu_count()} CPUs")  # fmt: skip
    print(f"{'case':<38} {'method':<40} {'time':>11}  {'baseline/wire':>13}")
    last = None
    for case, method, t, ref in rows:
        ratio = f"{t / ref:12.2f}x" if ref else ""
        print(f"{case if case != last else '':<38} {method:<40} {fmt(t)}  {ratio:>13}")
        last = case
    print(
        "baseline/wire > 1 means the wire format is faster; for socket rows the baseline is the raw copy,\n"
        "so a value < 1 is the wire path's overhead (e.g. 0.80x = the wire path takes 1.25x the raw time).\n"
        "'zero-copy' rows: dumps gives views of the arrays and loads builds arrays over them, so they cost\n"
        "microseconds whatever the size."
    )
    print(f"total benchmark time {time.perf_counter() - t_start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
