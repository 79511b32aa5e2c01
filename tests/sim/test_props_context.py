"""App properties, per-site configuration, per-call properties and the call context (SimEnv)."""

from __future__ import annotations

import json
import logging
import textwrap

import pytest

from collab_core import CallValidationError, CollabRecipe, RecipeError, collab
from collab_core.job import load_job, read_job_config
from collab_sim import SimEnv


class PropsClient:
    @collab.publish
    def props(self):
        return {"lr": collab.get_app_prop("lr"), "data": collab.get_app_prop("data_path", "none"),
                "mine": collab.get_app_prop("mine"), "server_only": collab.get_app_prop("server_only")}

    @collab.publish
    def remember(self, value):
        collab.set_app_prop("mine", value)
        return collab.get_app_prop("mine")


class PropsServer:
    @collab.main
    def run(self):
        before = dict(collab.clients.props())
        collab.clients["site-1"].remember("one")
        after = dict(collab.clients.props())
        return {"before": before, "after": after, "server_only": collab.get_app_prop("server_only"),
                "server_lr": collab.get_app_prop("lr", "unset")}


def _props_recipe():
    recipe = CollabRecipe(job_name="props", server=PropsServer(), client=PropsClient(), min_clients=3)
    recipe.set_server_prop("server_only", {"k": [1, 2]})
    recipe.set_client_prop("lr", 0.1)
    recipe.set_client_prop("data_path", "/data/default")
    recipe.set_per_site_config({"site-2": {"data_path": "/data/two", "lr": 0.5}, "site-3": {"data_path": "/data/3"}})
    return recipe


def _check_props_result(result):
    before = result["before"]
    assert before["site-1"] == {"lr": 0.1, "data": "/data/default", "mine": None, "server_only": None}
    assert before["site-2"] == {"lr": 0.5, "data": "/data/two", "mine": None, "server_only": None}
    assert before["site-3"] == {"lr": 0.1, "data": "/data/3", "mine": None, "server_only": None}
    # set_app_prop is local to its site and kept for its later calls
    assert result["after"]["site-1"]["mine"] == "one"
    assert result["after"]["site-2"]["mine"] is None and result["after"]["site-3"]["mine"] is None
    assert result["server_only"] == {"k": [1, 2]}
    assert result["server_lr"] == "unset"  # client props are not the server's


def test_app_props_and_per_site_override(tmp_path):
    recipe = _props_recipe()
    assert recipe.configured_sites() == ["site-2", "site-3"]
    run = recipe.execute(SimEnv(num_clients=3, workspace=tmp_path))
    assert run.status == "finished", run.error
    _check_props_result(run.result)


def test_props_survive_export_and_load(tmp_path):
    job = _props_recipe().export(tmp_path / "job")
    config = json.loads((job / "job.json").read_text())
    assert config["client_props"] == {"lr": 0.1, "data_path": "/data/default"}
    assert config["server_props"] == {"server_only": {"k": [1, 2]}}
    assert config["per_site_config"]["site-2"] == {"data_path": "/data/two", "lr": 0.5}
    loaded = load_job(job)
    assert loaded.configured_sites() == ["site-2", "site-3"]
    run = loaded.execute(SimEnv(num_clients=3, workspace=tmp_path / "ws"))
    assert run.status == "finished", run.error
    _check_props_result(run.result)


def test_job_without_props_keeps_loading(tmp_path):
    recipe = CollabRecipe(job_name="noprops", server=PropsServer(), client=PropsClient(), min_clients=3)
    job = recipe.export(tmp_path / "job")
    config = json.loads((job / "job.json").read_text())
    assert not {"server_props", "client_props", "per_site_config"} & set(config)  # old format, unchanged
    assert read_job_config(job)["props"] == {"server_props": {}, "client_props": {}, "per_site_config": {}}
    assert load_job(job).configured_sites() == []


@pytest.mark.parametrize("key, value, message", [
    ("per_site_config", ["site-1"], "per_site_config must be a dict of dicts"),
    ("per_site_config", {"site-1": 3}, "for 'site-1' must be a dict"),
    ("per_site_config", {"site-1": {"x": json.loads("[" * 40 + "]" * 40)}}, "nests deeper than 32"),
    ("client_props", ["lr"], "client_props must be an object"),
    ("server_props", {"": 1}, "non-empty strings"),
])
def test_bad_props_in_job_json_are_refused(tmp_path, key, value, message):
    job = _props_recipe().export(tmp_path / "job")
    config = json.loads((job / "job.json").read_text())
    config[key] = value
    (job / "job.json").write_text(json.dumps(config))
    with pytest.raises(RecipeError, match=message):
        read_job_config(job)


def test_per_site_config_is_validated():
    def fresh():
        return CollabRecipe(job_name="v", server=PropsServer(), client=PropsClient())

    with pytest.raises(RecipeError, match="dict of dicts keyed by site name"):
        fresh().set_per_site_config([("site-1", {})])
    with pytest.raises(RecipeError, match="for 'site-1' must be a dict"):
        fresh().set_per_site_config({"site-1": "/data"})
    with pytest.raises(RecipeError, match="site names are non-empty strings"):
        fresh().set_per_site_config({1: {"a": 1}})
    with pytest.raises(RecipeError, match="JSON data"):
        fresh().set_per_site_config({"site-1": {"model": object()}})
    with pytest.raises(RecipeError, match="NaN"):
        fresh().set_per_site_config({"site-1": {"x": float("nan")}})
    with pytest.raises(RecipeError, match="set_server_prop"):
        fresh().set_per_site_config({"server": {"a": 1}})
    with pytest.raises(RecipeError, match="empty dict"):
        fresh().set_per_site_config({})
    recipe = fresh()
    recipe.set_per_site_config({"site-1": {"a": 1}})
    with pytest.raises(RecipeError, match="already called"):
        recipe.set_per_site_config({"site-2": {"a": 2}})
    assert recipe.configured_sites() == ["site-1"]
    with pytest.raises(RecipeError, match="JSON data"):
        fresh().set_client_prop("model", {1, 2})
    with pytest.raises(RecipeError, match="non-empty strings"):
        fresh().set_server_prop(3, 1)


def test_per_site_config_is_copied_when_set():
    config = {"site-1": {"data_path": "/a"}}
    recipe = CollabRecipe(job_name="copy", server=PropsServer(), client=PropsClient(), min_clients=3)
    recipe.set_per_site_config(config)
    config["site-1"]["data_path"] = "/changed"
    config["site-9"] = {}
    assert recipe.configured_sites() == ["site-1"]
    assert recipe.build_job().props["per_site_config"] == {"site-1": {"data_path": "/a"}}


def test_unknown_site_in_per_site_config_warns(tmp_path, caplog):
    recipe2 = CollabRecipe(job_name="unknown", server=PropsServer(), client=PropsClient(), min_clients=3)
    recipe2.set_per_site_config({"site-2": {"lr": 1.0}, "site-7": {"lr": 2.0}, "stie-3": {}})
    with caplog.at_level(logging.WARNING, logger="collab.props"):
        run = recipe2.execute(SimEnv(num_clients=3, workspace=tmp_path))
    assert run.status == "finished", run.error
    assert run.result["before"]["site-2"]["lr"] == 1.0
    warnings = [r.getMessage() for r in caplog.records if r.name == "collab.props"]
    assert len(warnings) == 1
    assert "site-7, stie-3" in warnings[0] and "site-1, site-2, site-3" in warnings[0]


# -- per-call properties and the call context --------------------------------------------------------


class CtxClient:
    def __init__(self):
        self.seen = []

    @collab.init
    def setup(self, context):
        context.set_prop("from_init", collab.site_name)
        self.init_info = (collab.call_info, context is collab.context)

    @collab.publish
    def info(self):
        collab.set_prop("mark", "set in this call")
        ctx = collab.context
        return {"caller": collab.caller, "callee": collab.callee, "call_info": collab.call_info,
                "site": ctx.site, "method": ctx.method, "aborted": ctx.is_aborted,
                "props": dict(ctx.props), "mark": collab.get_prop("mark"),
                "from_init": collab.get_prop("from_init", "not in a call"),
                "backend": collab.backend_type, "init_info": self.init_info}

    @collab.publish
    def fresh(self):
        return collab.get_prop("mark", "fresh")

    @collab.publish
    def with_context(self, a, context, b=2):
        return {"a": a, "b": b, "info": str(context), "is_current": context is collab.context}

    @collab.publish
    def ask_peer(self, peer):
        return collab.clients[peer].info()

    @collab.final
    def done(self):
        assert collab.get_prop("from_init") == collab.site_name


class CtxServer:
    @collab.main
    def run(self, context):
        collab.set_prop("main_prop", 1)
        out = {"main": (collab.call_info, collab.caller, collab.callee, context is collab.context,
                        collab.get_result("no result yet"), collab.backend_type)}
        out["info"] = dict(collab.clients.info())
        out["fresh"] = dict(collab.clients.fresh())
        out["ctx"] = collab.clients["site-2"].with_context(1, b=5)
        out["ctx_pos"] = collab.clients["site-2"].with_context(7, 8)
        try:
            collab.clients["site-1"].with_context(1, context="forged")
        except CallValidationError as exc:
            out["forged"] = str(exc)
        out["peer"] = collab.clients["site-1"].ask_peer("site-2")
        return out

    @collab.final
    def done(self):
        self.final_seen = (collab.get_result(), collab.get_prop("main_prop"), collab.call_info)


def test_call_context_and_per_call_props(tmp_path):
    server = CtxServer()
    run = CollabRecipe(job_name="ctx", server=server, client=CtxClient(), min_clients=2).execute(
        SimEnv(num_clients=2, workspace=tmp_path))
    assert run.status == "finished", run.error
    r = run.result
    assert r["main"] == ("server:server=>server", "server", "server", True, "no result yet", "sim")
    one = r["info"]["site-1"]
    assert one["caller"] == "server" and one["callee"] == "site-1" and one["site"] == "site-1"
    assert one["call_info"] == "site-1:server=>site-1"
    assert one["method"] == "info" and one["aborted"] is False and one["backend"] == "sim"
    # a call's props are its own: the init's are not there, the next call starts empty
    assert one["props"] == {"mark": "set in this call"} and one["mark"] == "set in this call"
    assert one["from_init"] == "not in a call"
    assert one["init_info"] == ("site-1:site-1=>site-1", True)
    assert r["fresh"] == {"site-1": "fresh", "site-2": "fresh"}
    # `context` is injected wherever it stands, and is not a call argument
    assert r["ctx"] == {"a": 1, "b": 5, "info": "site-2:server=>site-2", "is_current": True}
    assert r["ctx_pos"]["a"] == 7 and r["ctx_pos"]["b"] == 8
    assert "context" in r["forged"]
    # a call from site-1 to site-2: the caller is site-1
    assert r["peer"]["caller"] == "site-1" and r["peer"]["call_info"] == "site-2:site-1=>site-2"
    # the server's @collab.final shares main's context and sees its result
    assert server.final_seen[0] == r and server.final_seen[1] == 1
    assert server.final_seen[2] == "server:server=>server"


def test_context_is_not_part_of_the_interface():
    from collab_core.app import App

    app = App(CtxClient(), role="client")
    assert str(app.interface.methods["with_context"]) == "(a, b=2)"
    app.interface.bind("with_context", (1,), {"b": 3})
    with pytest.raises(CallValidationError):
        app.interface.bind("with_context", (1, 2, 3), {})
    wire = app.interface.to_wire()["methods"]["with_context"]
    assert [p[0] for p in wire["params"]] == ["a", "b"]


def test_main_may_take_only_context():
    class Bad:
        @collab.main
        def run(self, context, rounds):
            return None

    with pytest.raises(RecipeError, match="must take no arguments"):
        CollabRecipe(job_name="bad", server=Bad(), client=CtxClient())


def test_facade_outside_a_job_says_so():
    from collab_core import CollabError

    with pytest.raises(CollabError, match="needs a running collab job"):
        collab.get_app_prop("x")
    with pytest.raises(CollabError, match="needs a running collab job"):
        collab.call_info  # noqa: B018


SCRIPT = """
    import collab_core.client as flare
    from collab_core import FLModel, collab

    flare.init()
    while flare.is_running():
        task = flare.receive()
        if task is None:
            break
        flare.send(FLModel(params={"data_path": collab.get_app_prop("data_path", "none")}))
"""


class ScriptDriver:
    @collab.main
    def run(self):
        from collab_core import FLModel

        res = collab.clients.execute(fl_model=FLModel(params={}))
        collab.clients.stop()
        return {site: m.params["data_path"] for site, m in res}


def test_client_api_script_reads_its_sites_props(tmp_path):
    path = tmp_path / "train.py"
    path.write_text(textwrap.dedent(SCRIPT))
    recipe = CollabRecipe(job_name="scriptprops", server=ScriptDriver(), train_script=str(path), min_clients=2)
    recipe.set_per_site_config({"site-1": {"data_path": "/data/one"}})
    run = recipe.execute(SimEnv(num_clients=2, workspace=tmp_path / "ws"))
    assert run.status == "finished", run.error
    assert run.result == {"site-1": "/data/one", "site-2": "none"}
