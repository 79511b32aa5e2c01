"""Mode 3 job: the server calls collab.clients.train(weights) as with any @collab.publish client;
each site runs the call in all ranks of its torchrun group.

    python examples/ddp/mode3_job.py            # SimEnv
    python examples/ddp/mode3_job.py poc        # PocEnv
"""

import sys

import mode3_client

from collab_core import CollabRecipe, collab
from collab_sim import SimEnv


class FedAvg:
    def __init__(self, num_rounds=3):
        self.num_rounds = num_rounds

    @collab.main
    def run(self):
        weights, losses, workers = None, [], set()
        for _ in range(self.num_rounds):
            results = collab.clients.train(weights)
            total = sum(n for _, (_, n, _, _) in results)
            keys = results[0][1][0].keys()
            weights = {k: sum(w[k] * (n / total) for _, (w, n, _, _) in results) for k in keys}
            losses.append(sum(loss for _, (_, _, loss, _) in results) / len(results))
            workers |= {(site, info["pid"], info["world"]) for site, (_, _, _, info) in results}
        return {"weights": weights, "losses": losses, "workers": sorted(workers)}


recipe = CollabRecipe(job_name="ddp_mode3", server=FedAvg(num_rounds=3), client=mode3_client, min_clients=2,
                      launch_external_process=True, command="torchrun --nproc_per_node=2", subprocess_timeout=300)

if __name__ == "__main__":
    if sys.argv[1:] == ["poc"]:
        from collab_tcp import PocEnv

        env = PocEnv(num_clients=2, start_timeout=120)
    else:
        env = SimEnv(num_clients=2)
    run = recipe.execute(env)
    print(f"status: {run.status}")
    if run.status != "finished":
        print(run.error)
        raise SystemExit(1)
    for r, loss in enumerate(run.result["losses"], 1):
        print(f"round {r}: mean loss {loss:.5f}")
    print("workers (site, rank-0 pid, world size):", run.result["workers"])
