"""Step 2 -- the same algorithm, the client now a Client API script (train.py)."""

import torch
from common import SimpleModel

from collab_core import CollabRecipe, FLModel, collab
from collab_sim import SimEnv


class FedAvg:
    def __init__(self, num_rounds=3):
        self.num_rounds = num_rounds

    @collab.main
    def run(self):
        torch.manual_seed(0)
        weights = SimpleModel().state_dict()
        for r in range(self.num_rounds):
            results = collab.clients.execute(fl_model=FLModel(params=weights, current_round=r + 1))
            total = sum(m.meta["num_samples"] for _, m in results)
            weights = {k: sum(m.params[k] * (m.meta["num_samples"] / total) for _, m in results) for k in weights}
            loss = sum(m.metrics["loss"] for _, m in results) / len(results)
        collab.clients.stop()
        return loss


if __name__ == "__main__":
    recipe = CollabRecipe(job_name="step2", server=FedAvg(), train_script="train.py", min_clients=3)
    run = recipe.execute(SimEnv(num_clients=3))
    print(f"step 2 (Client API): {run.status}, final loss {run.result:.6f}")
