"""Job classes for benchmarks/tcp.py (exported as job folders, so they live in an importable file).

Kept import-light on purpose: numpy and torch are imported inside the methods that need them, so a
site that loads the start-up job pays only for collab itself (as the bare-process baseline does).
"""

from __future__ import annotations

import gc
import resource
import ssl
import time
import weakref

from collab_core import collab


def rss_now() -> int:
    """Resident set size of this process now, in bytes."""
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def rss_peak() -> int:
    """Peak resident set size of this process so far, in bytes: VmHWM of /proc/self/status.

    Not ru_maxrss: on Linux a process started by fork/vfork + exec inherits its parent's ru_maxrss
    (the kernel keeps the larger of the two across exec), so a site started by a big parent would
    report the parent's peak. VmHWM belongs to this process's own address space.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return ru_maxrss()


def ru_maxrss() -> int:
    """getrusage(RUSAGE_SELF).ru_maxrss in bytes (Linux reports KiB); see rss_peak for its catch."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def cpu() -> tuple[float, float, int]:
    """(user s, system s, minor page faults) of this process so far."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime, r.ru_minflt


def tls_ciphers() -> list:
    """The cipher of every live TLS socket in this process (the backend's own connections)."""
    return sorted({tuple(s.cipher() or ()) for s in gc.get_objects()
                   if isinstance(s, ssl.SSLSocket) and s.fileno() != -1 and s.cipher()})


def make_state(n_tensors: int, numel: int, side: int):
    import torch

    g = torch.Generator().manual_seed(0)
    return {f"layer{i}.weight": torch.empty(side, numel // side).uniform_(generator=g) for i in range(n_tensors)}


def checksum(state) -> float:
    import torch

    with torch.no_grad():
        return float(sum(t.sum(dtype=torch.float64).item() for t in state.values()))


# -- 1. echo a state_dict server -> site -> server ------------------------------------------------


def still_alive(refs: list) -> tuple[int, int]:
    """How many of the weakly referenced payloads are alive now, and after a full gc.collect()."""
    before = sum(r() is not None for r in refs)
    gc.collect()
    return before, sum(r() is not None for r in refs)


class EchoClient:
    def __init__(self):
        self.received = []  # a weak reference to one tensor of every state received

    @collab.init
    def setup(self):
        import torch  # noqa: F401  (the baseline RSS includes torch, as it must to hold tensors)

    @collab.publish
    def echo(self, state):
        if len(state) > 1:
            self.received.append(weakref.ref(next(iter(state.values()))))
        return state

    @collab.publish
    def stats(self):
        out = {"rss": rss_now(), "peak": rss_peak(), "ru_maxrss": ru_maxrss(), "cpu": cpu(), "ciphers": tls_ciphers()}
        out["alive"] = still_alive(self.received)  # read after the peak: the collection cannot lower it
        return out


class EchoServer:
    def __init__(self, n_tensors: int, numel: int, side: int, reps: int):
        self.n_tensors = n_tensors
        self.numel = numel
        self.side = side
        self.reps = reps

    @collab.main
    def run(self):
        import torch

        site = collab.clients["site-1"]
        site.echo({"warm": torch.zeros(4)})  # a first call, so the timed ones find everything started
        site_before = site.stats()
        rss0, peak0 = rss_now(), rss_peak()
        state = make_state(self.n_tensors, self.numel, self.side)
        nbytes = sum(t.nbytes for t in state.values())
        rss_payload = rss_now()
        want = checksum(state)
        times, sums, exact, echoed, used = [], [], None, [], [0.0, 0.0, 0]
        for rep in range(self.reps):
            c0 = cpu()
            t0 = time.perf_counter()
            back = site.echo(state)
            times.append(time.perf_counter() - t0)
            used = [u + b - a for u, a, b in zip(used, c0, cpu(), strict=True)]
            sums.append(checksum(back))
            if rep == 0:
                exact = list(back) == list(state) and all(torch.equal(back[k], v) for k, v in state.items())
            echoed.append(weakref.ref(next(iter(back.values()))))
            del back
        peak = rss_peak()
        alive = still_alive(echoed)
        site_after = site.stats()
        return {
            "nbytes": nbytes, "times": times, "checksum_sent": want, "checksums_back": sums, "exact": exact,
            "server": {"cpu": used, "rss_before": rss0, "peak_before": peak0, "rss_with_payload": rss_payload,
                       "peak": peak, "ru_maxrss": ru_maxrss(), "alive": alive, "ciphers": tls_ciphers()},
            "site": {"cpu": [b - a for a, b in zip(site_before["cpu"], site_after["cpu"], strict=True)],
                     "rss_before": site_before["rss"], "peak_before": site_before["peak"],
                     "peak": site_after["peak"], "ru_maxrss": site_after["ru_maxrss"], "alive": site_after["alive"],
                     "ciphers": site_after["ciphers"]},
        }


# -- 2. PocEnv start-up to the first delivered call -------------------------------------------------


class HelloClient:
    @collab.publish
    def hello(self):
        return time.time()


class HelloServer:
    @collab.main
    def run(self):
        main_start = time.time()
        delivered = dict(collab.clients.hello())
        return {"main_start": main_start, "delivered": delivered, "main_end": time.time()}


# -- 3. FedAvg, trivial training (as benchmarks/sim.py) ---------------------------------------------


def local_train(weights):
    import numpy as np

    return weights + np.float32(0.01), 100


def aggregate(results):
    import numpy as np

    total = sum(n for _, (_, n) in results)
    acc = None
    for _, (w, n) in results:
        acc = w * (n / total) if acc is None else acc + w * (n / total)
    return acc.astype(np.float32)


class FedAvgClient:
    @collab.publish
    def train(self, weights):
        return local_train(weights)


class FedAvgServer:
    def __init__(self, rounds: int, params: int):
        self.rounds = rounds
        self.params = params

    @collab.main
    def run(self):
        import numpy as np

        marks = [time.time()]
        w = np.zeros(self.params, dtype=np.float32)
        for _ in range(self.rounds):
            w = aggregate(collab.clients.train(w))
            marks.append(time.time())
        return {"marks": marks, "weights": w}
