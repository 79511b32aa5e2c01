"""Step 1 -- the research prototype: Collab API on both sides, in one process (SimEnv)."""

import torch
from common import SimpleModel, local_train, site_data

from collab_core import CollabRecipe, collab
from collab_sim import SimEnv


class Trainer:
    @collab.publish
    def train(self, weights):
        model = SimpleModel()
        model.load_state_dict(weights)
        x, y = site_data(collab.site_name)
        loss = local_train(model, x, y)
        return model.state_dict(), len(x), loss


class FedAvg:
    def __init__(self, num_rounds=3):
        self.num_rounds = num_rounds

    @collab.main
    def run(self):
        torch.manual_seed(0)
        weights = SimpleModel().state_dict()
        for _ in range(self.num_rounds):
            results = collab.clients.train(weights)
            total = sum(n for _, (_, n, _) in results)
            weights = {k: sum(w[k] * (n / total) for _, (w, n, _) in results) for k in weights}
            loss = sum(loss_ for _, (_, _, loss_) in results) / len(results)
        return loss


if __name__ == "__main__":
    run = CollabRecipe(job_name="step1", server=FedAvg(), client=Trainer(), min_clients=3).execute(SimEnv(num_clients=3))
    print(f"step 1 (prototype): {run.status}, final loss {run.result:.6f}")
