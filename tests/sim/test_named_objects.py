"""Several named objects per site (server_objects= / client_objects=): qualified and unqualified
calls, target=, ambiguity, lifecycle order, per-site copies, validation, export and job.json."""

from __future__ import annotations

import json

import pytest

from collab_core import CallValidationError, CollabRecipe, RecipeError, collab
from collab_core.job import load_job, read_job_config, run_job_folder
from collab_sim import SimEnv

from . import named_objects_app as app


def run(recipe, n=2):
    result = recipe.execute(SimEnv(num_clients=n))
    assert result.status == "finished", result.error
    return result.result


def test_qualified_unqualified_and_target_calls_reach_the_right_object():
    events = []
    recipe = CollabRecipe(
        job_name="named", server=app.Server(events), client=app.Client(),
        server_objects={"metrics": app.Metrics(events), "audit": app.Audit(events)},
        client_objects={"counter": app.Counter(), "other": app.Other()},
    )
    out = run(recipe)
    # client -> server: qualified and unqualified reach the one Metrics object, with the caller
    assert out["train"] == {"site-1": [1, 2], "site-2": [3, 4]}
    assert [e for e in events if e[0] == "metric"] == [
        ("metric", "site-1", "q"), ("metric", "site-1", "u"), ("metric", "site-2", "q"), ("metric", "site-2", "u"),
    ]
    # each site has its own Counter: three bumps through three spellings count 1, 2, 3 per site
    assert out["bumps"] == [{"site-1": 1, "site-2": 1}, {"site-1": 2, "site-2": 2}, 3, 1]
    assert out["main_wins"] == {"site-1": "client", "site-2": "client"}
    assert out["target_main"] == {"site-1": "client", "site-2": "client"}
    assert out["other"] == {"site-1": "other", "site-2": "other"}
    assert out["peer"] == 4  # site-1 calls site-2's counter (its 4th bump)
    assert "ambiguous" in out["ambiguous"] and "'counter'" in out["ambiguous"] and "'other'" in out["ambiguous"]
    assert "collab.clients.counter.hello(...)" in out["ambiguous"]
    assert "no object named 'nope'" in out["unknown_target"] and "counter, other" in out["unknown_target"]
    assert "the object 'counter' of the client" in out["missing"]
    assert "publishes no method 'missing'" in out["missing"] and "bump(), hello()" in out["missing"]


def test_init_and_final_of_every_object_run_main_object_first_in_given_order():
    events = []
    recipe = CollabRecipe(job_name="life", server=app.Server(events, quick=True), client=app.Client(),
                          server_objects={"metrics": app.Metrics(events), "audit": app.Audit(events)})
    run(recipe)
    lifecycle = [e for e in events if e[0] in ("init", "final")]
    assert lifecycle == [("init", "server"), ("init", "metrics"), ("init", "audit"),
                         ("final", "server"), ("final", "metrics"), ("final", "audit")]


@pytest.mark.parametrize("objects, message", [
    ({"1x": app.Counter()}, "not a valid object name"),
    ({"bad-name": app.Counter()}, "not a valid object name"),
    ({"server": app.Counter()}, "reserved name"),
    ({"name": app.Counter()}, "reserved name"),
    ({"counter": app.Counter}, "pass an instance"),
    ({"counter": None}, "is None"),
    ({"train": app.Counter()}, "also the name of a method"),
    ({"m": app.Server([])}, "has a @collab.main"),
    (["counter"], "must be a dict"),
])
def test_bad_named_objects_are_clear_errors_at_recipe_time(objects, message):
    with pytest.raises(RecipeError, match=message):
        CollabRecipe(job_name="bad", server=app.Server([]), client=app.Client(), client_objects=objects)


def test_export_records_named_objects_and_collab_run_rebuilds_them(tmp_path):
    events = []
    recipe = CollabRecipe(
        job_name="named_export", server=app.Server(events), client=app.Client(),
        server_objects={"metrics": app.Metrics(events), "audit": app.Audit(events)},
        client_objects={"counter": app.Counter(), "other": app.Other()},
    )
    job = recipe.export(tmp_path / "job")
    config = json.loads((job / "job.json").read_text())
    assert config["server_objects"] == {
        "metrics": {"module": app.__name__, "class": "Metrics", "args": {}},
        "audit": {"module": app.__name__, "class": "Audit", "args": {}},
    }
    assert list(config["client_objects"]) == ["counter", "other"]
    rebuilt = load_job(job)
    assert list(rebuilt.client_objects) == ["counter", "other"]
    result = run_job_folder(job, env="sim", num_clients=2, workspace=tmp_path / "ws")
    assert result.status == "finished", result.error
    assert result.result["train"] == {"site-1": [1, 2], "site-2": [3, 4]}


@pytest.mark.parametrize("change, message", [
    ({"client_objects": ["counter"]}, "client_objects must be an object"),
    ({"client_objects": {"../x": {"module": "m", "class": "C"}}}, "invalid object name"),
    ({"server_objects": {"ok": {"module": "os; rm", "class": "C"}}}, "not a dotted module name"),
    ({"server_objects": {"ok": {"module": "m", "class": "__class__"}}}, "not a class name"),
    ({"client_objects": {"ok": "m:C"}}, "must be {module, class, args}"),
])
def test_hostile_named_objects_in_job_json_are_refused(tmp_path, change, message):
    recipe = CollabRecipe(job_name="hostile", server=app.Server([]), client=app.Client())
    job = recipe.export(tmp_path / "job")
    config = json.loads((job / "job.json").read_text())
    config.update(change)
    (job / "job.json").write_text(json.dumps(config))
    with pytest.raises(RecipeError, match=message):
        read_job_config(job)


def test_named_object_methods_show_in_the_interface_and_survive_the_wire():
    from collab_core.app import App, Interface

    a = App(app.Client(), role="client", objects={"counter": app.Counter(), "other": app.Other()})
    again = Interface.from_wire(a.interface.to_wire())
    assert again.objects == ("counter", "other")
    assert again.resolve("bump", None) == "counter.bump"
    assert again.resolve("hello", "other") == "other.hello"
    assert again.resolve("train", "client") == "train"
    with pytest.raises(CallValidationError, match="ambiguous"):
        again.resolve("hello", None)


def test_a_site_serves_an_unqualified_call_for_its_single_object():
    """A caller that sends the plain name (e.g. an older peer) still reaches the one object."""
    from collab_core.app import App

    a = App(app.Client(), role="client", objects={"counter": app.Counter()})
    assert a.method("bump").__self__ is a.objects["counter"]
    assert a.method("counter.bump").__self__ is a.objects["counter"]
    with pytest.raises(CallValidationError, match="publishes no method 'nope'"):
        a.method("nope")


def test_named_objects_outside_a_job_are_plain_methods():
    # a proxy built outside a job cannot know the objects: attribute access stays a method name
    from collab_core.calls import Proxy

    assert repr(Proxy("server").metrics).startswith("<remote method metrics")
    assert repr(collab) == "<collab facade: no active job>"
