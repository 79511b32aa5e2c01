"""Several objects per site: a FedAvg job whose server keeps a metric receiver and whose clients
each keep an evaluator, beside the main server and client objects.

    pip install collab-core collab-sim numpy            # collab-tcp too for --env poc
    python named_objects.py                             # SimEnv, 3 sites
    python named_objects.py --env poc                   # the same job as real processes
    python named_objects.py --export job/ && collab run job/

The recipe names the extra objects::

    CollabRecipe(..., server=FedAvg(), client=Trainer(),
                 server_objects={"metric_receiver": MetricReceiver()},
                 client_objects={"evaluator": Evaluator()})

and code calls them by name -- ``collab.server.metric_receiver.accept_metric(m)``,
``collab.clients.evaluator.evaluate(w)`` or ``collab.clients(target="evaluator").evaluate(w)`` --
or unqualified (``collab.server.accept_metric(m)``) when exactly one object of that side publishes
the method. Each client site has its own Evaluator; every object's @collab.init and @collab.final
run on its site.
"""

from __future__ import annotations

import argparse
import zlib

import numpy as np

from collab_core import CollabRecipe, collab

TRUE_W = np.array([2.0, -1.0, 0.5])


def site_data(site: str, n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(zlib.crc32(site.encode()))
    x = rng.normal(size=(n, TRUE_W.size))
    return x, x @ TRUE_W + 0.01 * rng.normal(size=n)


class MetricReceiver:
    """On the server: clients report their training loss to it."""

    def __init__(self):
        self.reports: list[tuple[str, int, float]] = []

    @collab.publish
    def accept_metric(self, round_num: int, loss: float) -> int:
        self.reports.append((collab.caller, round_num, loss))
        return len(self.reports)

    @collab.final
    def summary(self):
        per_round: dict[int, list[float]] = {}
        for _, r, loss in self.reports:
            per_round.setdefault(r, []).append(loss)
        for r, losses in sorted(per_round.items()):
            print(f"metric_receiver: round {r}: {len(losses)} report(s), mean loss {np.mean(losses):.6f}")


class Evaluator:
    """On every client: scores a model on held-out data it loads in its own @collab.init."""

    @collab.init
    def load(self):
        self.x, self.y = site_data(collab.site_name + "/test", n=40)

    @collab.publish
    def evaluate(self, w) -> float:
        return float(np.mean((self.x @ w - self.y) ** 2))


class Trainer:
    @collab.init
    def load(self):
        self.x, self.y = site_data(collab.site_name)

    @collab.publish
    def train(self, w, round_num: int, lr: float = 0.1, steps: int = 5):
        for _ in range(steps):
            w = w - lr * 2 * self.x.T @ (self.x @ w - self.y) / len(self.y)
        loss = float(np.mean((self.x @ w - self.y) ** 2))
        collab.server.metric_receiver.accept_metric(round_num, loss)  # a qualified call
        return w


class FedAvg:
    def __init__(self, num_rounds: int = 5):
        self.num_rounds = num_rounds

    @collab.main
    def run(self):
        w = np.zeros_like(TRUE_W)
        for r in range(1, self.num_rounds + 1):
            results = collab.clients.train(w, r)
            w = np.mean([w_site for _, w_site in results], axis=0)
            scores = collab.clients.evaluator.evaluate(w)
            print(f"round {r}: evaluator mse {np.mean([s for _, s in scores]):.6f}")
        return w


def make_recipe(num_clients: int, rounds: int) -> CollabRecipe:
    return CollabRecipe(
        job_name="named_objects", server=FedAvg(num_rounds=rounds), client=Trainer(),
        server_objects={"metric_receiver": MetricReceiver()},
        client_objects={"evaluator": Evaluator()},
        min_clients=num_clients,
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="FedAvg with named server and client objects")
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--env", choices=("sim", "poc"), default="sim")
    parser.add_argument("--export", metavar="DIR", help="write the job folder instead of running it")
    args = parser.parse_args(argv)

    recipe = make_recipe(args.clients, args.rounds)
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
