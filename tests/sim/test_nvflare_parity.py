"""Names that NVFlare Collab programs call on what ``recipe.execute(env)`` returns (NVFlare's
``nvflare/recipe/run.py``): ``get_status()``, ``get_result(timeout=, clean_up=)``, ``get_job_id()``
and ``abort()``, so a ported program's last lines run unchanged."""

from __future__ import annotations

import pytest

from collab_core import CollabRecipe, Run, collab
from collab_sim import SimEnv


class Doubler:
    @collab.publish
    def double(self, x):
        return 2 * x


class SumOfDoubles:
    @collab.main
    def run(self):
        return sum(v for _, v in collab.clients.double(21))


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Run:
    recipe = CollabRecipe(job_name="parity_run", server=SumOfDoubles(), client=Doubler(), min_clients=2)
    return recipe.execute(SimEnv(num_clients=2, workspace=tmp_path_factory.mktemp("ws")))


def test_get_result_takes_nvflare_keywords(run):
    assert run.get_status() == "finished"
    assert run.get_result() == 84
    assert run.get_result(timeout=30.0) == 84
    assert run.get_result(timeout=0, clean_up=False) == 84
    assert run.get_result(10, True) == 84  # positional, as NVFlare's signature allows
    assert run.workspace.is_dir()  # clean_up=True keeps the workspace (collab clean removes old ones)


@pytest.mark.parametrize("bad", [-1, "10", None, True])
def test_get_result_rejects_a_timeout_that_is_not_seconds(run, bad):
    with pytest.raises(ValueError, match="timeout must be a number of seconds"):
        run.get_result(timeout=bad)


def test_get_job_id_names_this_run(run, tmp_path):
    job_id = run.get_job_id()
    assert job_id.startswith("parity_run-") and run.get_job_id() == job_id  # stable for this run
    again = CollabRecipe(job_name="parity_run", server=SumOfDoubles(), client=Doubler(), min_clients=2)
    other = again.execute(SimEnv(num_clients=2, workspace=tmp_path))
    assert other.get_job_id().startswith("parity_run-") and other.get_job_id() != job_id
    bare = Run(job_name="bare", status="finished")
    assert bare.get_job_id().startswith("bare-") and bare.get_job_id() != Run("bare", "finished").get_job_id()


def test_get_job_id_is_the_generated_workspace_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("COLLAB_WORKSPACE_ROOT", str(tmp_path))
    recipe = CollabRecipe(job_name="parity_run", server=SumOfDoubles(), client=Doubler(), min_clients=2)
    run = recipe.execute(SimEnv(num_clients=2))
    assert run.get_job_id() == run.workspace.name and run.workspace.is_relative_to(tmp_path)


def test_abort_after_the_run_ended_is_a_no_op(run):
    assert run.abort() is None
    assert run.get_status() == "finished" and run.get_result() == 84
