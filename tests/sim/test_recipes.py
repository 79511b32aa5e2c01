"""The standard recipes (built on RecipeBase like any third party's) and the recipe registry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from collab_core import (
    CollabRecipe,
    CyclicRecipe,
    FedAvgRecipe,
    RecipeBase,
    RecipeError,
    SwarmRecipe,
    collab,
)
from collab_core.recipes import MODEL_FILE, load_model
from collab_sim import SimEnv

SCRIPT = """
    import numpy as np
    import collab_core.client as flare
    from collab_core import FLModel

    flare.init()
    i = int(flare.get_site_name().split("-")[1])
    while flare.is_running():
        task = flare.receive()
        if task is None:
            break
        params = task.params or {"w": np.zeros(2)}
        out = {"w": params["w"] + i}
        if "site" in task.meta:  # CyclicRecipe: keep a log of the visits in the model itself
            out["visits"] = list(params.get("visits", [])) + [flare.get_site_name()]
        flare.send(FLModel(params=out,
                           metrics={"loss": 1.0 / (i + (task.current_round or 0))},
                           meta={"num_samples": 10 * i}))
"""


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "train.py"
    path.write_text(textwrap.dedent(SCRIPT))
    return str(path)


def weighted_step(sites):
    return sum(i * 10 * i for i in sites) / sum(10 * i for i in sites)


def test_fedavg_weighted_average_over_rounds_and_saved_model(script):
    recipe = FedAvgRecipe(name="fedavg", min_clients=3, num_rounds=3, train_script=script)
    run = recipe.execute(SimEnv(num_clients=3))
    assert run.status == "finished", run.error
    final = run.result
    assert np.allclose(final.params["w"], 3 * weighted_step([1, 2, 3]))
    history = final.meta["history"]
    assert [h["round"] for h in history] == [1, 2, 3]
    assert all(h["sites"] == ["site-1", "site-2", "site-3"] for h in history)
    saved = load_model(run.workspace / "server" / MODEL_FILE)
    assert saved.current_round == 3 and np.allclose(saved.params["w"], final.params["w"])


def test_fedavg_resumes_from_a_saved_model(script, tmp_path):
    first = FedAvgRecipe(name="fedavg", min_clients=3, num_rounds=2, train_script=script).execute(SimEnv(num_clients=3))
    saved = first.workspace / "server" / MODEL_FILE
    resumed = FedAvgRecipe(name="fedavg", min_clients=3, num_rounds=4, train_script=script,
                           initial_model=saved).execute(SimEnv(num_clients=3))
    assert resumed.status == "finished", resumed.error
    assert [h["round"] for h in resumed.result.meta["history"]] == [3, 4]
    straight = FedAvgRecipe(name="fedavg", min_clients=3, num_rounds=4, train_script=script).execute(SimEnv(num_clients=3))
    assert np.allclose(resumed.result.params["w"], straight.result.params["w"])


def test_fedavg_k_of_n_participation(script):
    run = FedAvgRecipe(name="fedavg", min_clients=2, num_rounds=4, train_script=script, clients_per_round=2,
                       seed=7).execute(SimEnv(num_clients=4))
    assert run.status == "finished", run.error
    rounds = [h["sites"] for h in run.result.meta["history"]]
    assert all(len(s) == 2 for s in rounds)
    assert len({tuple(s) for s in rounds}) > 1  # a different draw each round
    again = FedAvgRecipe(name="fedavg", min_clients=2, num_rounds=4, train_script=script, clients_per_round=2,
                         seed=7).execute(SimEnv(num_clients=4))
    assert [h["sites"] for h in again.result.meta["history"]] == rounds  # reproducible with the seed
    expected = sum(weighted_step([int(s.split("-")[1]) for s in sites]) for sites in rounds)
    assert np.allclose(run.result.params["w"], expected)


def test_fedavg_export_runs_with_collab_run(script, tmp_path):
    job = FedAvgRecipe(name="fedavg", min_clients=2, num_rounds=2, train_script=script).export(tmp_path / "job")
    config = json.loads((job / "job.json").read_text())
    assert config["server"]["module"] == "collab_core.recipes.fedavg"
    assert config["recipe"] == "collab_core.recipes.fedavg:FedAvgRecipe"
    assert (job / "code" / "train.py").is_file()
    out = subprocess.run([sys.executable, "-m", "collab_core.cli", "run", str(job), "--clients", "2", "--result",
                          str(tmp_path / "r.bin")], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, COLLAB_WORKSPACE_ROOT=str(tmp_path / "ws")))
    assert out.returncode == 0, out.stderr
    from collab_core import wire

    with open(tmp_path / "r.bin", "rb") as f:
        result = wire.read_frame(f)
    assert np.allclose(result.params["w"], 2 * weighted_step([1, 2]))


def test_cyclic_visits_every_site_in_order(script):
    run = CyclicRecipe(name="cyclic", min_clients=3, num_rounds=2, train_script=script).execute(SimEnv(num_clients=3))
    assert run.status == "finished", run.error
    final = run.result
    assert final.params["visits"] == ["site-1", "site-2", "site-3"] * 2
    assert np.allclose(final.params["w"], 2 * (1 + 2 + 3))
    assert [v["site"] for v in final.meta["visits"]] == ["site-1", "site-2", "site-3"] * 2


def test_swarm_aggregates_peer_to_peer(script):
    class Spy(SwarmRecipe):
        pass

    run = SwarmRecipe(name="swarm", min_clients=3, num_rounds=2, train_script=script).execute(SimEnv(num_clients=3))
    assert run.status == "finished", run.error
    final = run.result
    # each round every site adds its index, then all average (weighted by samples): same on every site
    assert np.allclose(final.params["w"], 2 * weighted_step([1, 2, 3]))
    for h in final.meta["history"]:
        assert h["models_averaged"] == {"site-1": 3, "site-2": 3, "site-3": 3}


def test_recipe_parameters_are_validated_at_construction(script, tmp_path):
    with pytest.raises(RecipeError, match="num_rounds must be an integer >= 1"):
        FedAvgRecipe(name="x", num_rounds=0, train_script=script)
    with pytest.raises(RecipeError, match="needs train_script="):
        FedAvgRecipe(name="x", num_rounds=1)
    with pytest.raises(RecipeError, match="clients_per_round=1 is below min_clients=2"):
        FedAvgRecipe(name="x", min_clients=2, num_rounds=1, train_script=script, clients_per_round=1)
    with pytest.raises(RecipeError, match="initial_model .* is not a file"):
        FedAvgRecipe(name="x", num_rounds=1, train_script=script, initial_model=tmp_path / "missing.collab")
    with pytest.raises(RecipeError, match="state_dict"):
        FedAvgRecipe(name="x", num_rounds=1, train_script=script, model=object())
    with pytest.raises(RecipeError, match="min_clients >= 2"):
        SwarmRecipe(name="x", min_clients=1, train_script=script)
    with pytest.raises(RecipeError, match="job_name 'bad name'"):
        CyclicRecipe(name="bad name", train_script=script)


def test_a_recipe_author_writes_only_the_parts_that_differ(script, tmp_path):
    """The authoring path: subclass RecipeBase, give the server; the rest comes for free."""

    class CountServer:
        def __init__(self, rounds):
            self.rounds = rounds

        @collab.main
        def run(self):
            from collab_core import FLModel

            for r in range(self.rounds):
                collab.clients.execute(fl_model=FLModel(current_round=r + 1))
            collab.clients.stop()
            return self.rounds

    class CountRecipe(RecipeBase):
        def __init__(self, name, rounds, train_script, **options):
            super().__init__(name, min_clients=2, train_script=train_script, **options)
            self.rounds = rounds

        def make_server(self):
            return CountServer(self.rounds)

    recipe = CountRecipe("count", 3, script, tracking=None)
    assert recipe.train_script == script
    run = recipe.execute(SimEnv(num_clients=2))
    assert run.status == "finished" and run.result == 3, run.error
    assert isinstance(CollabRecipe.__mro__[1], type) and issubclass(CollabRecipe, RecipeBase)


THIRD_PARTY = """
from collab_core import RecipeBase, hookimpl


class MyRecipe(RecipeBase):
    \"\"\"A recipe from another distribution.\"\"\"


@hookimpl
def collab_register_recipes(register):
    register("my-recipe", MyRecipe)
"""


def test_third_party_recipe_distribution_is_listed(installed_distribution):
    site = installed_distribution("collab-myrecipe", THIRD_PARTY, version="3.1")
    out = subprocess.run([sys.executable, "-m", "collab_core.cli", "recipes", "--json"], capture_output=True, text=True,
                         timeout=60, env=dict(os.environ, PYTHONPATH=str(site)))
    assert out.returncode == 0, out.stderr
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    assert rows["my-recipe"]["distribution"] == "collab-myrecipe" and rows["my-recipe"]["version"] == "3.1"
    assert rows["my-recipe"]["summary"] == "A recipe from another distribution."
    assert {"fedavg", "cyclic", "swarm", "split-learning"} <= set(rows)
