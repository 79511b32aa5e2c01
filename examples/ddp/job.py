"""The DDP job: each site runs client.py with torchrun, 2 processes per site (CPU, gloo).

    python examples/ddp/job.py            # SimEnv
    python examples/ddp/job.py poc        # PocEnv: a server and 2 site processes, each with 2 ranks
"""

import sys

from server import FedAvg

from collab_core import CollabRecipe
from collab_sim import SimEnv

recipe = CollabRecipe(
    job_name="fedavg_ddp",
    server=FedAvg(num_rounds=3),
    train_script="client.py",
    min_clients=2,
    launch_external_process=True,                # subprocess mode
    command="torchrun --nproc_per_node=2",       # 2 processes per site
    subprocess_timeout=300.0,
)

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
