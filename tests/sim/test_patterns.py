"""The seed patterns that need a module: module-level functions found in the caller's module."""

from __future__ import annotations

import importlib.util
import logging
import sys
import textwrap

import pytest

MODULE = """
    from collab_core import CollabRecipe, collab
    from collab_sim import SimEnv

    calls = []

    @collab.publish
    def train(weights=None):
        return (weights or 0) + int(collab.site_name.split("-")[1])

    @collab.main
    def fed_avg():
        w = 0
        for _ in range(2):
            res = collab.clients.train(w)
            w = sum(v for _, v in res)
        return w

    def make():
        return CollabRecipe(job_name="modlevel", min_clients=3)

    recipe_at_import = CollabRecipe(job_name="modlevel", min_clients=3)
"""


@pytest.fixture
def user_module(tmp_path):
    path = tmp_path / "user_algo.py"
    path.write_text(textwrap.dedent(MODULE))
    spec = importlib.util.spec_from_file_location("user_algo", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["user_algo"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("user_algo", None)


def test_module_level_functions_are_found_in_the_calling_module(user_module):
    from collab_sim import SimEnv

    for recipe in (user_module.recipe_at_import, user_module.make()):
        assert recipe.server is user_module and recipe.client is user_module
        run = recipe.execute(SimEnv(num_clients=3))
        assert run.status == "finished", run.error
        # round 1: 0+1 + 0+2 + 0+3 = 6; round 2: 7 + 8 + 9 = 24
        assert run.result == 24


def test_reassigned_module_state_is_warned_about(user_module, caplog):
    from collab_core import collab
    from collab_sim import SimEnv

    @collab.publish
    def bump():
        user_module.counter = getattr(user_module, "counter", 0) + 1
        return user_module.counter

    user_module.bump = bump
    user_module.counter = 0

    @collab.main
    def fed_avg():
        return sorted(v for _, v in collab.clients(parallel=1).bump())

    user_module.fed_avg = fed_avg
    with caplog.at_level(logging.WARNING, logger="collab.sim"):
        run = user_module.make().execute(SimEnv(num_clients=3))
    assert run.result == [1, 2, 3]  # one module, shared by every simulated site
    assert "module-level state counter of client module user_algo" in caplog.text
    assert "share" in caplog.text
