"""Hierarchical FedAvg: the server talks to the top-level sites, each of which aggregates its own
children before it answers (NVFlare's fed_avg_h pattern).

    pip install collab-core collab-sim numpy            # collab-tcp too for --env poc
    python hierarchy.py                                 # SimEnv, 3 top-level sites with 2 children each
    python hierarchy.py --shape 2x3 --rounds 3          # 2 top-level sites with 3 children each
    python hierarchy.py --env poc                       # the same job as 9 site processes
    python hierarchy.py --export job/ && collab run job/ --clients 3x2

``num_clients=(3, 2)`` makes ``site-1`` ... ``site-3`` and below them ``site-1-1``, ``site-1-2``,
``site-2-1`` ... The code asks where it stands: ``collab.has_children`` and ``collab.child_clients``
(the server's children are the top-level sites), ``collab.leaf_clients`` (every site without
children). Here the leaves hold the data (a small linear regression each, of different sizes);
a parent averages its children's models weighted by their sample counts and answers with the
total count, so the server's weighted mean of the top level is the weighted mean of every leaf.
Under PocEnv each site is its own process; a parent's calls to its children are site-to-site
calls relayed by the server.
"""

from __future__ import annotations

import argparse
import zlib

import numpy as np

from collab_core import CollabRecipe, collab
from collab_core.topology import count_sites, parse_shape

TRUE_W = np.array([2.0, -1.0, 0.5])
LR, STEPS = 0.1, 5


def site_data(site: str) -> tuple[np.ndarray, np.ndarray]:
    """A leaf's own data: its size and noise depend on its name."""
    rng = np.random.default_rng(zlib.crc32(site.encode()))
    n = int(rng.integers(20, 90))
    x = rng.normal(size=(n, TRUE_W.size))
    return x, x @ TRUE_W + 0.05 * rng.normal(size=n)


def local_train(w: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    for _ in range(STEPS):
        w = w - LR * 2 * x.T @ (x @ w - y) / len(y)
    return w


def weighted_mean(results) -> tuple[np.ndarray, int]:
    """The weighted mean of ``(site, (w, n))`` results, and the total count."""
    total = sum(n for _, (_, n) in results)
    return sum(w * (n / total) for _, (w, n) in results), total


class Trainer:
    """Every client site: a leaf trains on its data, a parent aggregates its children."""

    @collab.init
    def load(self):
        if not collab.has_children:
            self.x, self.y = site_data(collab.site_name)

    @collab.publish
    def train(self, w):
        if collab.has_children:
            results = collab.child_clients.train(w)
            w_avg, n = weighted_mean(results)
            print(f"{collab.site_name} aggregated {len(results)} children {results.sites} (n={n})")
            return w_avg, n
        return local_train(w, self.x, self.y), len(self.y)

    @collab.publish
    def evaluate(self, w):
        return float(np.mean((self.x @ w - self.y) ** 2))


class HierarchicalFedAvg:
    def __init__(self, num_rounds: int = 5):
        self.num_rounds = num_rounds

    @collab.main
    def run(self):
        print(f"server's children: {', '.join(collab.child_clients.names)}; "
              f"leaves: {', '.join(collab.leaf_clients.names)}")
        w = np.zeros_like(TRUE_W)
        for r in range(1, self.num_rounds + 1):
            w, n = weighted_mean(collab.child_clients.train(w))
            mse = collab.leaf_clients.evaluate(w)
            print(f"round {r}: n={n} mean leaf mse {np.mean(mse.values):.5f}")
        print(f"final model: {[float(v) for v in w]}")
        return w


def make_recipe(shape, rounds: int) -> CollabRecipe:
    return CollabRecipe(job_name="hierarchy", server=HierarchicalFedAvg(num_rounds=rounds), client=Trainer(),
                        min_clients=count_sites(shape))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="hierarchical FedAvg: parents aggregate their children")
    parser.add_argument("--shape", type=parse_shape, default=(3, 2),
                        help="TOPxCHILDREN, e.g. 3x2 (default) or 2x2x2 for three levels")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--env", choices=("sim", "poc"), default="sim")
    parser.add_argument("--export", metavar="DIR", help="write the job folder instead of running it")
    args = parser.parse_args(argv)

    recipe = make_recipe(args.shape, args.rounds)
    if args.export:
        print(f"job folder written to {recipe.export(args.export)}")
        return 0
    if args.env == "poc":
        from collab_tcp import PocEnv

        env = PocEnv(num_clients=args.shape)
    else:
        from collab_sim import SimEnv

        env = SimEnv(num_clients=args.shape)
    run = recipe.execute(env)
    print(f"status: {run.status}")
    if run.status != "finished":
        print(run.error)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
