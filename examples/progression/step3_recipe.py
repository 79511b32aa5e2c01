"""Step 3 -- the algorithm is plain weighted FedAvg, so the named recipe replaces the server code.
Steps 4 and 5 run the very same recipe object as processes and export it.

    python examples/progression/step3_recipe.py            # SimEnv
    python examples/progression/step3_recipe.py poc        # step 4: PocEnv, a process per site
    python examples/progression/step3_recipe.py export DIR # step 5: a job folder for collab submit
"""

import sys

import torch
from common import SimpleModel

from collab_core import FedAvgRecipe

torch.manual_seed(0)
recipe = FedAvgRecipe(name="fedavg", min_clients=3, num_rounds=3, train_script="train.py", model=SimpleModel())

if __name__ == "__main__":
    if sys.argv[1:2] == ["export"]:
        print(f"step 5 (export): job folder written to {recipe.export(sys.argv[2])}")
        raise SystemExit(0)
    if sys.argv[1:] == ["poc"]:
        from collab_tcp import PocEnv

        env, label = PocEnv(num_clients=3), "step 4 (PocEnv)"
    else:
        from collab_sim import SimEnv

        env, label = SimEnv(num_clients=3), "step 3 (FedAvgRecipe)"
    run = recipe.execute(env)
    print(f"{label}: {run.status}, final loss {run.result.metrics['loss']:.6f}")
