"""The standard recipes on the same training script -- no Collab API code here at all.

    python examples/recipes/run_recipes.py [fedavg|cyclic|swarm] [--env poc]
"""

import argparse

from model import SimpleModel

from collab_core import CyclicRecipe, FedAvgRecipe, SwarmRecipe


def make(name):
    if name == "fedavg":  # 2 of the 3 sites each round, weighted by their sample counts
        return FedAvgRecipe(name="fedavg", min_clients=2, num_rounds=4, train_script="train.py", model=SimpleModel(),
                            clients_per_round=2)
    if name == "cyclic":
        return CyclicRecipe(name="cyclic", min_clients=3, num_rounds=2, train_script="train.py", model=SimpleModel())
    return SwarmRecipe(name="swarm", min_clients=3, num_rounds=3, train_script="train.py")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("recipe", choices=["fedavg", "cyclic", "swarm"], nargs="?", default="fedavg")
    parser.add_argument("--env", choices=["sim", "poc"], default="sim")
    args = parser.parse_args()
    recipe = make(args.recipe)
    if args.env == "poc":
        from collab_tcp import PocEnv

        env = PocEnv(num_clients=3)
    else:
        from collab_sim import SimEnv

        env = SimEnv(num_clients=3)
    run = recipe.execute(env)
    print(f"status: {run.status}")
    if run.status != "finished":
        print(run.error)
        raise SystemExit(1)
    final = run.result
    print(f"final loss: {final.metrics.get('loss'):.6f}")
    for step in final.meta.get("history") or final.meta.get("visits") or []:
        print(step)
