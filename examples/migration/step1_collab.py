"""Step 1 -- the prototype: both sides with the Collab API (@collab.publish on the client).

    python examples/migration/step1_collab.py
"""

from common import SimpleModel, local_train, site_data, weighted_avg

from collab_core import CollabRecipe, collab
from collab_sim import SimEnv


class Trainer:
    @collab.publish
    def train(self, weights=None):
        model = SimpleModel()
        if weights:
            model.load_state_dict(weights)
        x, y = site_data(collab.site_name)
        loss = local_train(model, x, y)
        return model.state_dict(), len(x), loss


class FedAvg:
    def __init__(self, num_rounds=4):
        self.num_rounds = num_rounds

    @collab.main
    def run(self):
        weights = SimpleModel().state_dict()
        losses = []
        for _ in range(self.num_rounds):
            results = collab.clients.train(weights)
            weights = weighted_avg([(w, n) for _, (w, n, _) in sorted(results)])
            losses.append(sum(loss for _, (_, _, loss) in results) / len(results))
        return losses


if __name__ == "__main__":
    run = CollabRecipe(job_name="migration-step1", server=FedAvg(), client=Trainer(), min_clients=3).execute(
        SimEnv(num_clients=3))
    print(f"status: {run.status}")
    print("losses:", " ".join(f"{x:.6f}" for x in run.result))
