"""``collab new DIR``: a runnable project to start from (server, client, job, pyproject).

The template is numpy FedAvg (the quickstart, split the way a real project is): it needs
collab-core, collab-sim and numpy, and runs at once with ``python DIR/job.py``.
"""

from __future__ import annotations

import keyword
import re
from pathlib import Path

from .errors import CollabError

_PYPROJECT = '''\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "{dist}"
version = "0.1.0"
description = "A federated learning project built with collab"
requires-python = ">=3.10"
dependencies = ["collab-core", "collab-sim", "numpy"]

[project.optional-dependencies]
poc = ["collab-tcp"]

[tool.setuptools]
packages = ["{pkg}"]
'''

_README = '''\
# {dist}

A federated learning project made with `collab new`: federated averaging of a linear model with
numpy. Each site trains on its own data (`{pkg}/client.py`); the server averages the sites'
models every round (`{pkg}/server.py`); `job.py` puts them together and runs them.

```bash
pip install -e .                      # collab-core, collab-sim, numpy
python job.py                         # 3 simulated sites in this process (SimEnv)
python job.py --clients 5 --rounds 10
pip install -e '.[poc]' && python job.py --env poc   # a server and one process per site, over TLS
python job.py --export job/ && collab run job/       # the same job as a job folder
```

Next: replace `site_data` with your sites' real data (each site reads its own, e.g. from a path
in its workspace) and the model with yours (torch works the same way: return `state_dict()`s).
'''

_CLIENT = '''\
"""The client: what every site runs. Only models leave the site, never its data."""

from __future__ import annotations

import zlib

import numpy as np

from collab_core import collab

TRUE_W = np.array([2.0, -1.0, 0.5, 3.0])


def site_data(site_name: str):
    """This site's private data (synthetic here: each site its own size and inputs)."""
    rng = np.random.default_rng(zlib.crc32(site_name.encode()))
    n = int(rng.integers(40, 100))
    x = rng.normal(size=(n, TRUE_W.size))
    y = x @ TRUE_W + 0.01 * rng.normal(size=n)
    return x, y


class Trainer:
    def __init__(self, steps: int = 5, lr: float = 0.1):
        self.steps = steps
        self.lr = lr

    @collab.publish
    def train(self, w):
        """A few steps of gradient descent from the global model; returns (model, samples, loss)."""
        x, y = site_data(collab.site_name)
        for _ in range(self.steps):
            w = w - self.lr * 2 * x.T @ (x @ w - y) / len(y)
        return w, len(y), float(np.mean((x @ w - y) ** 2))
'''

_SERVER = '''\
"""The server: runs once; calls every site each round and averages what they send back."""

from __future__ import annotations

import numpy as np

from collab_core import collab, report_round


class FedAvg:
    def __init__(self, num_rounds: int = 5, num_features: int = 4):
        self.num_rounds = num_rounds
        self.num_features = num_features

    @collab.main
    def run(self):
        w = np.zeros(self.num_features)
        for r in range(1, self.num_rounds + 1):
            results = collab.clients.train(w)  # every site in parallel: [(site, (w, n, loss))]
            total = sum(n for _, (_, n, _) in results)
            w = sum(w_site * (n / total) for _, (w_site, n, _) in results)
            loss = sum(site_loss * (n / total) for _, (_, n, site_loss) in results)
            report_round(r, self.num_rounds, {{"loss": loss}}, sites=len(results))
        return w
'''

_JOB = '''\
"""Build the recipe and run it: python job.py [--env sim|poc] [--clients N] [--rounds R] [--export DIR]"""

from __future__ import annotations

import argparse

from collab_core import CollabRecipe

from {pkg}.client import TRUE_W, Trainer
from {pkg}.server import FedAvg


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--env", choices=["sim", "poc"], default="sim")
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--export", metavar="DIR", help="write the job folder instead of running it")
    args = parser.parse_args(argv)

    recipe = CollabRecipe(job_name="{pkg}", server=FedAvg(num_rounds=args.rounds), client=Trainer(),
                          min_clients=args.clients)
    if args.export:
        print(f"job folder written to {{recipe.export(args.export)}}")
        return 0
    if args.env == "poc":
        from collab_tcp import PocEnv

        env = PocEnv(num_clients=args.clients)
    else:
        from collab_sim import SimEnv

        env = SimEnv(num_clients=args.clients)
    run = recipe.execute(env)
    print(f"status: {{run.status}}")
    if run.status != "finished":
        print(run.error)
        return 1
    print(f"max |w - true_w| = {{abs(run.result - TRUE_W).max():.4f}}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
'''


def package_name(folder: Path) -> str:
    name = re.sub(r"\W+", "_", folder.resolve().name.lower()).strip("_") or "fl_project"
    if name[0].isdigit() or keyword.iskeyword(name):
        name = f"fl_{name}"
    return name


def new_project(folder: str | Path, force: bool = False) -> list[Path]:
    """Write the template into ``folder`` (new or empty, unless ``force``); returns the files."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise CollabError(f"{folder} exists and is not a folder")
    if folder.exists() and any(folder.iterdir()) and not force:
        raise CollabError(f"{folder} is not empty; choose a new folder (or pass --force to write into it)")
    pkg = package_name(folder)
    dist = pkg.replace("_", "-")
    files = {
        "pyproject.toml": _PYPROJECT.format(dist=dist, pkg=pkg),
        "README.md": _README.format(dist=dist, pkg=pkg),
        "job.py": _JOB.format(pkg=pkg),
        f"{pkg}/__init__.py": f'"""{dist}: a collab federated learning project."""\n',
        f"{pkg}/client.py": _CLIENT,
        f"{pkg}/server.py": _SERVER.format(),
    }
    written = []
    for rel, text in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
