"""Per-site configuration: each site finds its own data through the recipe's per-site config.

    pip install collab-core collab-sim numpy            # collab-tcp too for --env poc
    python per_site_config.py                           # SimEnv, 3 sites
    python per_site_config.py --env poc                 # the same job as real processes
    python per_site_config.py --export job/ && collab run job/

The script first writes one CSV file per site into --data-dir (a stand-in for data that already
lives on each site's machine, at a path only that site knows). The recipe then says where each
site's file is::

    recipe.set_client_prop("lr", 0.1)                                  # every client
    recipe.set_per_site_config({"site-1": {"data_path": ".../site-1.csv"}, ...})   # one site each

and the client reads it with ``collab.get_app_prop("data_path")``. A per-site value overrides a
client prop of the same name on that site only (here site-3 also gets a smaller learning rate).
The values are JSON data, stored in the exported job.json, and reach every site process.
"""

from __future__ import annotations

import argparse
import tempfile
import zlib
from pathlib import Path

import numpy as np

from collab_core import CollabRecipe, collab

TRUE_W = np.array([1.5, -2.0, 0.5])


def write_site_data(data_dir: Path, sites: list[str]) -> dict[str, dict[str, str]]:
    """One CSV per site (x0, x1, x2, y); returns the per-site config pointing at each file."""
    data_dir.mkdir(parents=True, exist_ok=True)
    config = {}
    for site in sites:
        rng = np.random.default_rng(zlib.crc32(site.encode()))
        n = int(rng.integers(30, 80))
        x = rng.normal(size=(n, TRUE_W.size))
        y = x @ TRUE_W + 0.01 * rng.normal(size=n)
        path = data_dir / f"{site}.csv"
        np.savetxt(path, np.column_stack([x, y]), delimiter=",")
        config[site] = {"data_path": str(path.resolve())}
    return config


class Trainer:
    """The client: loads the data its per-site config names, once, in @collab.init."""

    @collab.init
    def load(self):
        path = collab.get_app_prop("data_path")
        if path is None:
            raise RuntimeError(f"{collab.site_name} has no data_path in its per-site config")
        data = np.loadtxt(path, delimiter=",", ndmin=2)
        self.x, self.y = data[:, :-1], data[:, -1]
        self.lr = collab.get_app_prop("lr")
        print(f"{collab.site_name} read {len(self.y)} rows from {path} (lr {self.lr})")

    @collab.publish
    def train(self, w, steps=10):
        for _ in range(steps):
            w = w - self.lr * 2 * self.x.T @ (self.x @ w - self.y) / len(self.y)
        return w, len(self.y)


class FedAvg:
    def __init__(self, num_rounds: int = 5):
        self.num_rounds = num_rounds

    @collab.main
    def run(self):
        w = np.zeros_like(TRUE_W)
        for r in range(1, self.num_rounds + 1):
            results = collab.clients.train(w)
            total = sum(n for _, (_, n) in results)
            w = sum(w_site * (n / total) for _, (w_site, n) in results)
            print(f"round {r}: |w - true_w| = {np.abs(w - TRUE_W).max():.4f}")
        return w


def make_recipe(data_dir: Path, num_clients: int, rounds: int) -> CollabRecipe:
    sites = [f"site-{i}" for i in range(1, num_clients + 1)]
    per_site = write_site_data(data_dir, sites)
    per_site[sites[-1]]["lr"] = 0.05  # overrides the client prop on this site only
    recipe = CollabRecipe(job_name="per_site_config", server=FedAvg(num_rounds=rounds), client=Trainer(),
                          min_clients=num_clients)
    recipe.set_client_prop("lr", 0.1)
    recipe.set_per_site_config(per_site)
    return recipe


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="each site reads its own data path from its per-site config")
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--env", choices=("sim", "poc"), default="sim")
    parser.add_argument("--data-dir", type=Path, default=None, help="where to write the sites' CSV files")
    parser.add_argument("--export", metavar="DIR", help="write the job folder instead of running it")
    args = parser.parse_args(argv)

    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="collab-per-site-"))
    recipe = make_recipe(data_dir, args.clients, args.rounds)
    print(f"configured sites: {', '.join(recipe.configured_sites())}")
    if args.export:
        print(f"job folder written to {recipe.export(args.export)}")
        return 0
    if args.env == "poc":
        from collab_tcp import PocEnv

        env = PocEnv(num_clients=args.clients)
    else:
        from collab_sim import SimEnv

        env = SimEnv(num_clients=args.clients)
    run = recipe.execute(env)
    print(f"status: {run.status}")
    if run.status != "finished":
        print(run.error)
        return 1
    print(f"learned w = {np.round(run.result, 3).tolist()}, true w = {TRUE_W.tolist()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
