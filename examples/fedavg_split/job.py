"""Ties server.py and client.py together. Run from anywhere:

    python examples/fedavg_split/job.py [--export DIR | poc]
"""

import sys

import client as client_module
import server as server_module

from collab_core import CollabRecipe
from collab_sim import SimEnv

recipe = CollabRecipe(
    job_name="fedavg_split",
    server=server_module,
    client=client_module,
    min_clients=5,
)

if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--export":
        print(f"job folder written to {recipe.export(sys.argv[2])}")
        raise SystemExit(0)
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
    print("final weights:", {k: v.flatten().tolist() for k, v in run.result.items()})
