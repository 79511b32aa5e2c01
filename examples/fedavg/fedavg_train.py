"""FedAvg in one file, with classes: a server class with @collab.main, a client class with
@collab.publish. Run it:

    python examples/fedavg/fedavg_train.py            # 5 simulated sites, 5 rounds
    python examples/fedavg/fedavg_train.py --env poc  # the same recipe as 6 processes over TLS
    python examples/fedavg/fedavg_train.py --export /tmp/fedavg_job && collab run /tmp/fedavg_job

Each site fits a small linear model to its own synthetic data (same true weights, different
inputs); the server averages the models weighted by each site's number of samples.
"""

from __future__ import annotations

import argparse
import logging
import zlib

import torch
import torch.nn as nn

from collab_core import CollabRecipe, collab, report_round

log = logging.getLogger("fedavg")

TRUE_W = torch.tensor([[2.0, -3.0, 0.5, 1.0, 0.0, -1.5, 4.0, 0.25, -0.75, 1.25]])


class SimpleModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(10, 1)

    def forward(self, x):
        return self.fc(x)


def site_data(site_name: str):
    """Synthetic data of one site: a different size and input distribution per site."""
    seed = zlib.crc32(site_name.encode())
    g = torch.Generator().manual_seed(seed)
    n = 64 + seed % 64
    x = torch.randn(n, 10, generator=g) + (seed % 5) * 0.1
    y = x @ TRUE_W.T + 0.3 + 0.01 * torch.randn(n, 1, generator=g)
    return x, y


def weighted_avg(results):
    """Average state_dicts weighted by sample counts; results iterate as (site, (weights, n))."""
    total = sum(n for _, (_, n) in results)
    keys = next(iter(results))[1][0].keys()
    return {k: sum(w[k] * (n / total) for _, (w, n) in results) for k in keys}


# --- Client ---
class Trainer:
    def __init__(self, epochs: int = 20, lr: float = 0.1):
        self.epochs = epochs
        self.lr = lr

    @collab.publish
    def train(self, weights=None):
        model = SimpleModel()
        if weights is not None:
            model.load_state_dict(weights)
        x, y = site_data(collab.site_name)
        opt = torch.optim.SGD(model.parameters(), lr=self.lr)
        for _ in range(self.epochs):
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            opt.step()
        log.info("%s: loss %.4f on %d samples", collab.site_name, loss.item(), len(x))
        return model.state_dict(), len(x)

    @collab.publish
    def evaluate(self, weights):
        model = SimpleModel()
        model.load_state_dict(weights)
        x, y = site_data(collab.site_name)
        with torch.no_grad():
            return nn.functional.mse_loss(model(x), y).item()


# --- Server ---
class FedAvg:
    def __init__(self, num_rounds: int = 5):
        self.num_rounds = num_rounds

    @collab.main
    def fed_avg(self):
        global_weights = SimpleModel().state_dict()
        losses = []
        for r in range(self.num_rounds):
            client_results = collab.clients.train(global_weights)  # parallel call to all clients
            global_weights = weighted_avg(client_results)
            loss = sum(v for _, v in collab.clients.evaluate(global_weights)) / len(collab.clients)
            losses.append(loss)
            report_round(r + 1, self.num_rounds, {"global_loss": loss})  # a console line per round
        return {"weights": global_weights, "losses": losses}


def make_env(name: str, clients: int):
    if name == "poc":
        from collab_tcp import PocEnv

        return PocEnv(num_clients=clients)
    from collab_sim import SimEnv

    return SimEnv(num_clients=clients)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--env", choices=["sim", "poc"], default="sim", help="where to run (default: sim)")
    parser.add_argument("--export", metavar="DIR", help="write the job folder instead of running it")
    args = parser.parse_args(argv)

    recipe = CollabRecipe(
        job_name="fedavg", server=FedAvg(num_rounds=args.rounds), client=Trainer(), min_clients=args.clients
    )
    if args.export:
        print(f"job folder written to {recipe.export(args.export)}")
        return 0
    run = recipe.execute(make_env(args.env, args.clients))
    print(f"status: {run.status}")
    if run.status != "finished":
        print(run.error)
        return 1
    for r, loss in enumerate(run.result["losses"], 1):
        print(f"round {r}: global loss {loss:.5f}")
    learned = run.result["weights"]["fc.weight"]
    print(f"max |w - true_w| = {(learned - TRUE_W).abs().max().item():.4f}")
    print(f"workspace (logs per site): {run.workspace}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
