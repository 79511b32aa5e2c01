"""Ties the Collab server and the Client API script together:

    python examples/client_api/job.py            # SimEnv, 2 sites
    python examples/client_api/job.py poc        # PocEnv: a server and 2 site processes
    python examples/client_api/job.py export DIR # a job folder for collab run / collab submit
"""

import sys

from server import FedAvg

from collab_core import CollabRecipe
from collab_sim import SimEnv

recipe = CollabRecipe(
    job_name="fedavg_client_api",
    server=FedAvg(num_rounds=3),
    train_script="client.py",  # Client API pattern (not client= object)
    script_args="--epochs 20",
    min_clients=2,
)

if __name__ == "__main__":
    if sys.argv[1:2] == ["export"]:
        print(f"job folder written to {recipe.export(sys.argv[2])}")
        raise SystemExit(0)
    if sys.argv[1:] == ["poc"]:
        from collab_tcp import PocEnv

        env = PocEnv(num_clients=2)
    else:
        env = SimEnv(num_clients=2)
    run = recipe.execute(env)
    print(f"status: {run.status}")
    if run.status != "finished":
        print(run.error)
        raise SystemExit(1)
    for r, loss in enumerate(run.result["losses"], 1):
        print(f"round {r}: mean client loss {loss:.5f}")
