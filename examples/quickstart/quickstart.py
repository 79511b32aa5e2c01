"""Quickstart: federated averaging with nothing but numpy, on 3 simulated sites.

    pip install collab-core collab-sim numpy
    python quickstart.py                                   # runs the job in this process
    python quickstart.py --export job/ && collab run job/  # the same job as a job folder

Each site fits a linear model y = x @ w to its own private data by a few steps of gradient
descent; the server averages the sites' models, weighted by their number of samples, each round.
"""

from __future__ import annotations

import argparse
import zlib

import numpy as np

from collab_core import CollabRecipe, collab
from collab_sim import SimEnv

TRUE_W = np.array([2.0, -1.0, 0.5, 3.0])


def site_data(site_name: str):
    """This site's data: its own size and inputs, the same true weights everywhere."""
    rng = np.random.default_rng(zlib.crc32(site_name.encode()))
    n = int(rng.integers(40, 100))
    x = rng.normal(size=(n, TRUE_W.size))
    y = x @ TRUE_W + 0.01 * rng.normal(size=n)
    return x, y


class Trainer:
    """The client: runs on every site."""

    def __init__(self, steps: int = 5, lr: float = 0.1):
        self.steps = steps
        self.lr = lr

    @collab.publish
    def train(self, w):
        x, y = site_data(collab.site_name)
        for _ in range(self.steps):
            w = w - self.lr * 2 * x.T @ (x @ w - y) / len(y)
        loss = float(np.mean((x @ w - y) ** 2))
        return w, len(y), loss


class FedAvg:
    """The server: runs once, calls every site each round."""

    def __init__(self, num_rounds: int = 5):
        self.num_rounds = num_rounds

    @collab.main
    def run(self):
        w = np.zeros_like(TRUE_W)
        for r in range(1, self.num_rounds + 1):
            results = collab.clients.train(w)  # every site, in parallel: [(site, (w, n, loss))]
            total = sum(n for _, (_, n, _) in results)
            w = sum(w_site * (n / total) for _, (w_site, n, _) in results)
            loss = sum(site_loss * (n / total) for _, (_, n, site_loss) in results)
            print(f"round {r}: mean client loss {loss:.6f}", flush=True)
        return w


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="FedAvg with numpy on SimEnv")
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--export", metavar="DIR", help="write the job folder instead of running it")
    args = parser.parse_args(argv)

    recipe = CollabRecipe(job_name="quickstart", server=FedAvg(num_rounds=args.rounds),
                          client=Trainer(), min_clients=args.clients)
    if args.export:
        print(f"job folder written to {recipe.export(args.export)}")
        return 0
    run = recipe.execute(SimEnv(num_clients=args.clients))
    print(f"status: {run.status}")
    if run.status != "finished":
        print(run.error)
        return 1
    print(f"learned w = {np.round(run.result, 3).tolist()}, true w = {TRUE_W.tolist()}")
    print(f"max |w - true_w| = {np.abs(run.result - TRUE_W).max():.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
