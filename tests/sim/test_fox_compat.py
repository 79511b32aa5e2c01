"""NVFlare "Fox" programs' runner and names: collab_sim.FoxSimulator, collab_core.constants,
random.shuffle of a group, parallel=0, collab.fl_ctx.get_job_id(), filter_direction, get_obj_logger."""

from __future__ import annotations

import logging
import os
import tempfile
import time

import numpy as np
import pytest

from collab_core import CollabRecipe, RecipeError, RunFailedError, collab
from collab_core.job import run_job_folder
from collab_sim import FoxSimulator, SimEnv

from . import fox_compat_app as app


def test_fox_simulator_runs_a_fox_program_and_returns_its_result(tmp_path, capsys):
    sim = FoxSimulator(root_dir=str(tmp_path), experiment_name="cyclic", server=app.Cyclic(num_rounds=3),
                       client=app.Trainer(delta=1.0), server_objects={"metric_receiver": app.Receiver()},
                       num_clients=3)
    sim.set_client_prop("scale", 2)
    result = sim.run()
    assert result["model"] == 3 * 3 * 2.0  # 3 rounds x 3 sites x delta 1 x scale 2
    assert result["orders"] == [["site-1", "site-2", "site-3"]] * 3  # shuffled, every site once
    assert result["parallel"] == ["site-1", "site-2", "site-3"]
    assert result["backend"] == ["sim", True]
    assert result["result_prop"] == "unset"  # main's result is there only once main returned...
    assert "FINAL 18.0" in capsys.readouterr().out  # ...in @collab.final
    assert result["run_dir"] is True and result["job_id"] == "cyclic"  # the workspace given: its name
    assert "only sees its own job's run folder" in result["wrong_job"]
    assert result["logger"] == f"{app.__name__}.Cyclic"
    assert result["outside_filter"] == [None, None]
    assert (tmp_path / "cyclic" / "server").is_dir()  # the run's workspace: root_dir/experiment_name


def test_fox_simulator_hierarchy_is_height_by_width_and_failures_raise(tmp_path):
    sim = FoxSimulator(root_dir=str(tmp_path), experiment_name="h", server=app.Cyclic(num_rounds=1),
                       client=app.Trainer(), server_objects={"metric_receiver": app.Receiver()},
                       num_clients=(2, 2))
    result = sim.run()
    assert len(result["parallel"]) == 6  # Fox's (height 2, width 2): 2 top-level sites, 4 below
    with pytest.raises(RecipeError, match="height, width"):
        FoxSimulator(str(tmp_path), "bad", app.Cyclic(), app.Trainer(), num_clients=(2, 0)).run()
    with pytest.raises(RecipeError, match="launch_external_process"):
        FoxSimulator(str(tmp_path), "sub", app.Cyclic(), app.Trainer(), inprocess=False)
    failing = FoxSimulator(str(tmp_path), "fails", app.Cyclic(), app.Trainer(), num_clients=2)  # no receiver
    with pytest.raises(RunFailedError, match="accept_metric"):
        failing.run()
    with pytest.raises(AttributeError, match="no attribute 'execute'"):
        failing.execute  # noqa: B018 (only the Fox methods are handed through)


def test_a_kept_group_can_be_shuffled_and_reordered_only_with_its_own_sites():
    from collab_core.calls import Group, Proxy

    g = Group(["site-1", "site-2", "site-3"])
    g[0] = Proxy("site-3")
    g[2] = "site-1"
    assert g.names == ["site-3", "site-2", "site-1"]
    with pytest.raises(ValueError, match="not a site of this group"):
        g[0] = Proxy("site-9")
    with pytest.raises(TypeError, match="by position"):
        g["site-1"] = Proxy("site-1")


def test_filter_direction_and_qual_func_name_inside_filters():
    app.Tag.seen = []
    recipe = CollabRecipe(job_name="tags", server=app.Cyclic(num_rounds=1), client=app.Trainer(),
                          server_objects={"metric_receiver": app.Receiver()}, min_clients=1)
    recipe.add_client_output_filter(app.Tag(), tasks=["train"])
    recipe.add_server_input_filter(app.Tag(), tasks=["train"])
    run = recipe.execute(SimEnv(num_clients=1))
    assert run.status == "finished", run.error
    assert ("site-1", True, "client.train") in app.Tag.seen  # outgoing, on the site
    assert ("server", True, "client.train") in app.Tag.seen  # incoming, on the server
    # in a run folder of its own, collab.fl_ctx.get_job_id() is the Run's job id
    assert run.result["job_id"] == run.job_id and run.job_id.startswith("tags-")


def test_simenv_takes_nvflares_keywords(tmp_path, caplog):
    from collab_core import RecipeError

    env = SimEnv(num_clients=0, clients=["a", "b"], num_threads=3, workspace_root=tmp_path / "root",
                 log_config="full", gpu_config="0,1", extra={"note": 1})
    assert (env.clients, env.max_workers, env.extra) == (["a", "b"], 3, {"note": 1})
    assert env.log_level == logging.DEBUG
    assert "assigns no GPUs" in caplog.text
    recipe = CollabRecipe(job_name="kw", server=app.Cyclic(num_rounds=1), client=app.Trainer(),
                          server_objects={"metric_receiver": app.Receiver()})
    run = recipe.execute(env)
    assert run.status == "finished", run.error
    runs = list((tmp_path / "root").iterdir())  # a run folder per run under workspace_root
    assert [p.name for p in runs] == [run.job_id] and (runs[0] / "server").is_dir()
    with pytest.raises(RecipeError, match="not both"):
        SimEnv(num_clients=2, workspace=tmp_path / "w", workspace_root=tmp_path / "r")
    with pytest.raises(RecipeError, match="not both"):
        SimEnv(num_clients=2, max_workers=2, num_threads=4)
    with pytest.raises(RecipeError, match="log_level must be a logging level"):
        SimEnv(num_clients=2, log_config="chatty")


class _Sender:
    @collab.publish
    def send(self, path):
        from collab_core.downloader import Downloader

        seen = []
        d = Downloader(num_receivers=1, timeout=5.0)
        return {"t": d.add_arrays({"w": np.arange(6.0)}), "f": d.add_file(path, lambda *a: seen.append(a)),
                "seen": seen}


class _Receiver:
    @collab.main
    def run(self):
        from collab_core.downloader import download_arrays, download_file, download_tensors

        refs = collab.clients["site-1"].send(self.path)
        err, arrays = download_arrays(refs["t"])
        ferr, fpath = download_file(refs["f"])
        with open(fpath, "rb") as f:
            content = f.read()
        os.unlink(fpath)
        return {"err": err, "w": arrays["w"].tolist(), "ferr": ferr, "content": content,
                "name_safe": os.path.dirname(fpath) == tempfile.gettempdir(), "seen": refs["seen"],
                "wrong": download_tensors(refs["t"])}


def test_fox_downloader_references_carry_their_data_across_the_wire(tmp_path):
    src = tmp_path / "model.bin"
    src.write_bytes(b"\x00weights\xff" * 1000)
    server = _Receiver()
    server.path = str(src)
    run = CollabRecipe(job_name="dl", server=server, client=_Sender()).execute(SimEnv(num_clients=1))
    assert run.status == "finished", run.error
    r = run.result
    assert r["err"] is None and r["w"] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert r["ferr"] is None and r["content"] == src.read_bytes() and r["name_safe"]
    assert r["seen"] == [("*", "ok", str(src))]
    assert r["wrong"][1] is None and "not a reference to tensors" in r["wrong"][0]


class _CbServer:
    @collab.main
    def run(self):
        seen = []

        def accept(gcc, result, acc):
            acc.append([str(gcc), gcc.target_name, gcc.func_name, gcc.call_opt.timeout, result])
            return result

        collab.clients(process_resp_cb=accept, acc=seen, timeout=30).train(0, 1.0)
        collab.server(process_resp_cb=accept, acc=seen).metric_receiver.accept_metric(5)
        return sorted(seen)


def test_process_resp_cb_gets_nvflares_group_call_context_names():
    recipe = CollabRecipe(job_name="gcc", server=_CbServer(), client=app.Trainer(delta=2.0),
                          server_objects={"metric_receiver": app.Receiver()}, min_clients=2)
    run = recipe.execute(SimEnv(num_clients=2))
    assert run.status == "finished", run.error
    assert run.result == [
        ["server", "server.metric_receiver", "accept_metric", None, 3],  # after the sites' 2 reports
        ["site-1", "site-1", "train", 30, 3.0],
        ["site-2", "site-2", "train", 30, 3.0],
    ]


class _Once:
    @collab.main
    def run(self):
        return dict(collab.clients.train(0, 1.0))


def test_fox_filter_base_classes_and_native_decomposers(tmp_path):
    from collab_core.wire import NumpyArrayDecomposer, TensorDecomposer

    recipe = CollabRecipe(job_name="foxfilters", server=_Once(), client=app.Trainer(delta=1.0),
                          server_objects={"metric_receiver": app.Receiver()}, min_clients=2)
    recipe.add_server_outgoing_call_filters("*.train", [app.Double()])
    recipe.add_client_outgoing_result_filters("*.train", [app.AddTen()])
    recipe.add_decomposers([TensorDecomposer(), NumpyArrayDecomposer()])  # native here: nothing added
    run = recipe.execute(SimEnv(num_clients=2))
    assert run.status == "finished", run.error
    assert run.result == {"site-1": 13.0, "site-2": 13.0}  # (1.0 * 2) + delta 1, then + 10
    job = recipe.export(tmp_path / "job")  # Fox-style filters travel like any other filter
    again = run_job_folder(job, env="sim", num_clients=2, workspace=tmp_path / "ws")
    assert again.status == "finished" and again.result == run.result, again.error
    with pytest.raises(TypeError, match="impl=.*not supported"):
        app.Double.__bases__[0](impl=object())



class _Slow:
    @collab.publish
    def work(self, seconds):
        until = time.monotonic() + seconds[collab.site_name]
        while time.monotonic() < until:
            if collab.is_aborted:
                return "aborted"
            time.sleep(0.01)
        return collab.site_name


class _Queued:
    @collab.main
    def run(self):
        each = {s: 1.0 for s in collab.clients.names}
        # four 1 s calls one after another: 4 s in all, each well inside its own 2.5 s timeout
        all_ok = collab.clients(parallel=1, timeout=2.5).work(each)
        slow = dict(each, **{"site-2": 20.0})
        some = collab.clients(parallel=1, timeout=2.5, min_responses=3).work(slow)
        return {"all": sorted(all_ok.sites), "some": sorted(some.sites),
                "failed": {s: str(e) for s, e in some.failures.items()}}


def test_with_parallel_each_calls_timeout_starts_when_it_is_sent():
    run = CollabRecipe(job_name="queued", server=_Queued(), client=_Slow(), min_clients=4).execute(
        SimEnv(num_clients=4))
    assert run.status == "finished", run.error
    sites = ["site-1", "site-2", "site-3", "site-4"]
    assert run.result["all"] == sites  # a group-wide 2.5 s deadline would have failed the later ones
    assert run.result["some"] == ["site-1", "site-3", "site-4"]  # only the slow one timed out
    assert list(run.result["failed"]) == ["site-2"] and "timeout of 2.5 s" in run.result["failed"]["site-2"]
