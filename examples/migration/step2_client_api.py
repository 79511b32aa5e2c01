"""Step 2, server side -- the same algorithm, now driving the Client API script: train() becomes
execute(fl_model=...), and stop() ends the scripts. Same data, same seeds: the same losses as step 1.

    python examples/migration/step2_client_api.py
"""

from common import SimpleModel, weighted_avg

from collab_core import CollabRecipe, FLModel, collab
from collab_sim import SimEnv


class FedAvg:
    def __init__(self, num_rounds=4):
        self.num_rounds = num_rounds

    @collab.main
    def run(self):
        weights = SimpleModel().state_dict()
        losses = []
        for r in range(self.num_rounds):
            results = collab.clients.execute(fl_model=FLModel(params=weights, current_round=r + 1))
            weights = weighted_avg([(m.params, m.meta["num_samples"]) for _, m in sorted(results)])
            losses.append(sum(m.metrics["loss"] for _, m in results) / len(results))
        collab.clients.stop()
        return losses


if __name__ == "__main__":
    recipe = CollabRecipe(job_name="migration-step2", server=FedAvg(), train_script="step2_train.py", min_clients=3)
    run = recipe.execute(SimEnv(num_clients=3))
    print(f"status: {run.status}")
    print("losses:", " ".join(f"{x:.6f}" for x in run.result))
