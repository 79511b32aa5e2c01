"""FedAvg with module-level functions -- no classes needed. CollabRecipe finds @collab.main and
@collab.publish in this module by itself. Run it:

    python examples/fedavg_no_class/fedavg_no_class.py          # SimEnv
    python examples/fedavg_no_class/fedavg_no_class.py poc      # PocEnv: real processes

Note: in SimEnv every simulated site shares this one module; keep per-site state out of module
globals (or use a client class, which gives each site its own instance).
"""

import sys
import zlib

import torch
import torch.nn as nn

from collab_core import CollabRecipe, collab
from collab_sim import SimEnv

TRUE_W = torch.tensor([[1.0, -2.0, 0.5, 3.0, 0.0, -1.0, 2.0, 0.5, -0.5, 1.5]])


class SimpleModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(10, 1)

    def forward(self, x):
        return self.fc(x)


@collab.publish
def train(weights=None):
    model = SimpleModel()
    if weights is not None:
        model.load_state_dict(weights)
    g = torch.Generator().manual_seed(zlib.crc32(collab.site_name.encode()))
    x = torch.randn(96, 10, generator=g)
    y = x @ TRUE_W.T
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(20):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
    return model.state_dict(), loss.item()


def weighted_avg(client_results):
    """Plain average of the state_dicts (equal sizes), and the mean loss."""
    results = [value for _, value in client_results]
    keys = results[0][0].keys()
    avg = {k: sum(w[k] for w, _ in results) / len(results) for k in keys}
    return avg, sum(loss for _, loss in results) / len(results)


NUM_ROUNDS = 5


@collab.main
def fed_avg():
    global_weights = None
    losses = []
    for _ in range(NUM_ROUNDS):
        client_results = collab.clients.train(global_weights)
        global_weights, avg_loss = weighted_avg(client_results)
        losses.append(avg_loss)
    return {"weights": global_weights, "losses": losses}


if __name__ == "__main__":
    recipe = CollabRecipe(job_name="fedavg", min_clients=5)
    if sys.argv[1:] == ["poc"]:
        from collab_tcp import PocEnv

        env = PocEnv(num_clients=5)
    else:
        env = SimEnv(num_clients=5)
    run = recipe.execute(env)
    print(f"status: {run.status}")
    if run.status != "finished":
        print(run.error)
        raise SystemExit(1)
    for r, loss in enumerate(run.result["losses"], 1):
        print(f"round {r}: mean client loss {loss:.5f}")
