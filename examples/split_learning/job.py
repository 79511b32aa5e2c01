"""Split learning, packaged: the end user needs no Collab API knowledge.

    python examples/split_learning/job.py [poc]
"""

import sys

from model import TopModel

from collab_core import SplitLearningRecipe

recipe = SplitLearningRecipe(name="sl", num_rounds=5, train_script="split_client.py", model=TopModel(),
                             min_clients=3, lr=0.05, steps_per_round=2)

if __name__ == "__main__":
    if sys.argv[1:] == ["poc"]:
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
    for r, loss in enumerate(run.result["losses"], 1):
        print(f"round {r}: mean loss {loss:.5f}")
