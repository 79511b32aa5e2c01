"""SimEnv overhead: FedAvg with trivial local training, so what is timed is the framework.

    .venv/bin/python benchmarks/sim.py [--quick]

Workloads (from shared/ANCHORS.md): W1 = 10 clients x 20 rounds, W2 = 100 clients x 5 rounds,
100k float32 parameters. Baselines measured in the same run: a plain Python loop calling the
train function directly, and a thread pool doing the same calls (the "threads floor"). SimEnv is
timed with isolation="none" (references) and isolation="wire" (copies through the wire format).
Then: per-call overhead of a single call, and 1000 clients x 3 rounds with peak memory.
"""

from __future__ import annotations

import argparse
import gc
import logging
import resource
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from collab_core import CollabRecipe, collab
from collab_sim import SimEnv

PARAMS = 100_000


def local_train(weights: np.ndarray) -> tuple[np.ndarray, int]:
    return weights + np.float32(0.01), 100


def aggregate(results) -> np.ndarray:
    total = sum(n for _, (_, n) in results)
    acc = None
    for _, (w, n) in results:
        acc = w * (n / total) if acc is None else acc + w * (n / total)
    return acc.astype(np.float32)


class Trainer:
    @collab.publish
    def train(self, weights):
        return local_train(weights)

    @collab.publish
    def noop(self):
        return None


class FedAvg:
    def __init__(self, rounds: int):
        self.rounds = rounds

    @collab.main
    def run(self):
        w = np.zeros(PARAMS, dtype=np.float32)
        for _ in range(self.rounds):
            w = aggregate(collab.clients.train(w))
        return w


class CallLoop:
    def __init__(self, calls: int):
        self.calls = calls

    @collab.main
    def run(self):
        proxy = collab.clients["site-1"]
        t0 = time.perf_counter()
        for _ in range(self.calls):
            proxy.noop()
        return (time.perf_counter() - t0) / self.calls


def plain_loop(clients: int, rounds: int) -> np.ndarray:
    w = np.zeros(PARAMS, dtype=np.float32)
    for _ in range(rounds):
        w = aggregate([(i, local_train(w)) for i in range(clients)])
    return w


def thread_floor(clients: int, rounds: int) -> np.ndarray:
    w = np.zeros(PARAMS, dtype=np.float32)
    with ThreadPoolExecutor(min(32, clients + 4)) as pool:
        for _ in range(rounds):
            futs = [pool.submit(local_train, w) for _ in range(clients)]
            w = aggregate([(i, f.result()) for i, f in enumerate(futs)])
    return w


def sim(clients: int, rounds: int, isolation: str, workspace) -> np.ndarray:
    recipe = CollabRecipe(job_name="bench", server=FedAvg(rounds), client=Trainer(), min_clients=clients)
    run = recipe.execute(SimEnv(num_clients=clients, isolation=isolation, workspace=workspace))
    assert run.status == "finished", run.error
    return run.result


def timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="one repetition, smaller 1000-client run")
    args = parser.parse_args()
    repeat = 1 if args.quick else 3
    logging.disable(logging.INFO)
    import tempfile

    ws_root = tempfile.mkdtemp(prefix="collab-bench-")
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}; median of {repeat}\n")
    print(f"{'workload':<22}{'plain loop':>12}{'threads':>10}{'sim none':>10}{'sim wire':>10}"
          f"{'none/loop':>11}{'wire/loop':>11}{'none/thr':>10}")
    for name, clients, rounds in (("W1 10x20x100k", 10, 20), ("W2 100x5x100k", 100, 5)):
        expected = plain_loop(clients, rounds)
        assert np.allclose(sim(clients, rounds, "wire", f"{ws_root}/check"), expected)
        t_loop = timed(lambda: plain_loop(clients, rounds), repeat)
        t_thr = timed(lambda: thread_floor(clients, rounds), repeat)
        t_none = timed(lambda: sim(clients, rounds, "none", f"{ws_root}/{name}-none"), repeat)
        t_wire = timed(lambda: sim(clients, rounds, "wire", f"{ws_root}/{name}-wire"), repeat)
        print(f"{name:<22}{t_loop:>11.3f}s{t_thr:>9.3f}s{t_none:>9.3f}s{t_wire:>9.3f}s"
              f"{t_none / t_loop:>11.2f}{t_wire / t_loop:>11.2f}{t_none / t_thr:>10.2f}")

    calls = 2000 if args.quick else 10000

    def direct():
        t = Trainer()
        t0 = time.perf_counter()
        for _ in range(calls):
            t.noop()
        return (time.perf_counter() - t0) / calls

    base = direct()
    for isolation in ("none", "wire"):
        run = CollabRecipe(job_name="calls", server=CallLoop(calls), client=Trainer()).execute(
            SimEnv(num_clients=1, isolation=isolation, workspace=f"{ws_root}/calls-{isolation}"))
        per_call = run.result
        print(f"\nsingle call, isolation={isolation}: {per_call * 1e6:.1f} us per call "
              f"(plain method call {base * 1e6:.2f} us; overhead {(per_call - base) * 1e6:.1f} us)")

    n = 300 if args.quick else 1000
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    sim(n, 3, "wire", f"{ws_root}/many")
    elapsed = time.perf_counter() - t0
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"\n{n} clients x 3 rounds x 100k params (isolation=wire): {elapsed:.2f} s, "
          f"peak RSS {rss1 / 1024:.0f} MiB (+{(rss1 - rss0) / 1024:.0f} MiB over the earlier peak; "
          f"one model is {PARAMS * 4 / 2**20:.2f} MiB, {n} results {n * PARAMS * 4 / 2**20:.0f} MiB)")
    import shutil

    shutil.rmtree(ws_root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
