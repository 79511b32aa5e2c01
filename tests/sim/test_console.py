"""The console while a job runs (collab_core.progress), sites' print() lines, and results that do not
depend on the order sites answer in."""

from __future__ import annotations

import logging
import re
import textwrap
import threading
import time

import numpy as np
import pytest

from collab_core import CollabRecipe, FedAvgRecipe, RecipeError, collab, report_round
from collab_core.progress import Progress
from collab_core.recipes import load_model
from collab_sim import SimEnv

LINE = re.compile(r"^collab \| (.*)$")


def progress_lines(text: str) -> list[str]:
    return [m.group(1) for ln in text.splitlines() if (m := LINE.match(ln))]


class Pinger:
    @collab.publish
    def ping(self, i):
        logging.getLogger("pinger").info("ping %s", i)
        if i == -1 and collab.site_name == "site-2":
            raise ValueError("site-2 refuses")
        return i

    @collab.publish
    def chatty(self, n):
        for k in range(n):
            print(f"{collab.site_name} says line {k} " + "x" * 60)
        return n


class Rounds:
    def __init__(self, rounds=3, calls=1):
        self.rounds = rounds
        self.calls = calls

    @collab.main
    def run(self):
        for r in range(1, self.rounds + 1):
            for _ in range(self.calls):
                collab.clients.ping(r)
            report_round(r, self.rounds, {"loss": 1.0 / r}, sites=len(collab.clients))
        return "done"


def test_default_console_shows_workspace_rounds_calls_and_outcome(capsys):
    run = CollabRecipe(job_name="con", server=Rounds(), client=Pinger()).execute(SimEnv(num_clients=3))
    assert run.status == "finished"
    lines = progress_lines(capsys.readouterr().err)
    assert lines[0] == f"job con: SimEnv with 3 client(s); workspace {run.workspace}"
    assert [ln for ln in lines if ln.startswith("round")] == [
        "round 1/3: 3 site(s), loss=1", "round 2/3: 3 site(s), loss=0.5", "round 3/3: 3 site(s), loss=0.33333"]
    assert re.fullmatch(r"ping\(\): 3 ok in \d+\.\d{3} s", lines[1])
    assert re.fullmatch(r"job con finished in \d+\.\d\d s; 3 group call\(s\): 9 site call\(s\) ok, 0 failed",
                        lines[-1])
    assert "collab.progress" in run.log("server")  # the same lines are in the server's log


def test_group_call_lines_are_rate_limited_but_counted(capsys):
    run = CollabRecipe(job_name="many", server=Rounds(rounds=2, calls=150), client=Pinger()).execute(
        SimEnv(num_clients=2))
    lines = progress_lines(capsys.readouterr().err)
    call_lines = [ln for ln in lines if ln.startswith("ping()")]
    # at most one line per second of the run (plus the first)
    assert 1 <= len(call_lines) <= run.duration_s / 1.0 + 2
    assert "300 group call(s): 600 site call(s) ok" in lines[-1]
    if len(call_lines) > 1:
        assert "more call(s) since the last line" in call_lines[-1]


def test_a_failed_group_call_always_gets_its_line(capsys):
    class FailsOnce:
        @collab.main
        def run(self):
            for _ in range(20):
                collab.clients(min_responses=1).ping(1)
            collab.clients(min_responses=1).ping(-1)
            return 1

    CollabRecipe(job_name="fail", server=FailsOnce(), client=Pinger()).execute(SimEnv(num_clients=3))
    lines = progress_lines(capsys.readouterr().err)
    assert any(re.fullmatch(r"ping\(\): 2 ok, 1 failed \(site-2\) in .*", ln) for ln in lines), lines
    assert "1 failed" in lines[-1]


def test_progress_off_and_verbose(capsys, monkeypatch):
    recipe = CollabRecipe(job_name="lvl", server=Rounds(rounds=2, calls=3), client=Pinger())
    recipe.execute(SimEnv(num_clients=2, progress=False))
    assert progress_lines(capsys.readouterr().err) == []
    monkeypatch.setenv("COLLAB_PROGRESS", "off")
    recipe.execute(SimEnv(num_clients=2))
    assert progress_lines(capsys.readouterr().err) == []
    monkeypatch.setenv("COLLAB_PROGRESS", "verbose")
    recipe.execute(SimEnv(num_clients=2))
    lines = progress_lines(capsys.readouterr().err)
    assert len([ln for ln in lines if ln.startswith("ping()")]) == 6  # every call
    assert "[site-1] INFO pinger: ping 1" in lines  # the sites' own records too
    monkeypatch.setenv("COLLAB_PROGRESS", "loud")
    with pytest.raises(RecipeError, match="COLLAB_PROGRESS must be one of off, normal, verbose"):
        recipe.execute(SimEnv(num_clients=2))
    with pytest.raises(RecipeError, match="SimEnv: progress must be one of"):
        SimEnv(num_clients=2, progress="loud")


def test_progress_rate_limit_unit():
    got = []
    p = Progress("j", "normal", interval=3600, on_line=got.append)
    for _ in range(10):
        p.group_call("train", 2, 0, 0.01)
    for _ in range(10):
        p.group_call("train", 1, 1, 0.01, {"site-2": RuntimeError()})
    p.group_call("train", 2, 0, 0.01)
    assert got[0] == "train(): 2 ok in 0.010 s"
    failed = [g for g in got if "failed" in g]
    assert len(failed) == 5  # at most 5 failure lines per interval; the other 5 are counted only
    assert "(+9 more call(s) since the last line)" in failed[0]
    assert len(got) == 6 and p.calls == 21 and p.site_calls_failed == 10


def test_prints_of_concurrent_sites_stay_whole_lines(capsys):
    class Chat:
        @collab.main
        def run(self):
            print("main's own line")
            return dict(collab.clients.chatty(150))

    run = CollabRecipe(job_name="chat", server=Chat(), client=Pinger()).execute(
        SimEnv(num_clients=4, progress=False))
    assert run.result == {f"site-{i}": 150 for i in range(1, 5)}
    out = capsys.readouterr().out.splitlines()
    site_lines = [ln for ln in out if ln.startswith("[site-")]
    assert len(site_lines) == 600
    for ln in site_lines:
        assert re.fullmatch(r"\[(site-\d)\] \1 says line \d+ x{60}", ln), ln
    assert "main's own line" in out
    log = run.log("site-3")
    assert log.count("collab.print: site-3 says line") == 150
    assert "site-1 says" not in log


def test_run_log_of_a_site_that_logged_nothing(tmp_path):
    class Quiet:
        @collab.main
        def run(self):
            return 1

    run = CollabRecipe(job_name="quiet", server=Quiet(), client=Pinger()).execute(
        SimEnv(num_clients=2, workspace=tmp_path / "ws", progress=False))
    assert run.log("site-1") == ""
    assert all(p.is_file() for p in run.logs.values())
    assert "site-1" not in run.logs and run.sites == ["server", "site-1", "site-2"]
    with pytest.raises(KeyError, match="no site 'site-9' in this run; its sites are: server, site-1, site-2"):
        run.log("site-9")


class Jittery:
    """Answers after a delay that depends on the site and the round, so arrival order changes."""

    @collab.publish
    def train(self, w, r):
        i = int(collab.site_name.split("-")[1])
        time.sleep(((i * 7 + r * 3) % 5) * 0.003)
        rng = np.random.default_rng(i)
        return w + rng.normal(size=w.shape).astype(np.float32) * (10.0 ** i), 10 + i


class Average:
    def __init__(self, rounds=4):
        self.rounds = rounds

    @collab.main
    def run(self):
        w = np.zeros(1000, dtype=np.float32)
        for r in range(self.rounds):
            results = collab.clients.train(w, r)
            assert results.sites == collab.clients.names  # target order, whatever the arrival order
            total = sum(n for _, (_, n) in results)
            w = sum(wi * np.float32(n / total) for _, (wi, n) in results)
        return w


def test_results_in_target_order_give_bit_identical_weights():
    recipe = CollabRecipe(job_name="det", server=Average(), client=Jittery())
    runs = [recipe.execute(SimEnv(num_clients=5, progress=False)) for _ in range(3)]
    assert all(r.status == "finished" for r in runs), [r.error for r in runs]
    assert all(r.result.tobytes() == runs[0].result.tobytes() for r in runs[1:])


def test_results_in_target_order_also_for_explicit_targets():
    class Targets:
        @collab.main
        def run(self):
            return collab.clients(targets=["site-3", "site-1", "site-2"]).train(np.zeros(2, np.float32), 0).sites

    run = CollabRecipe(job_name="tg", server=Targets(), client=Jittery()).execute(SimEnv(num_clients=3, progress=False))
    assert run.result == ["site-3", "site-1", "site-2"]


def test_arrival_order_stays_available_with_blocking_false():
    class Arrival:
        @collab.main
        def run(self):
            return [site for site, _ in collab.clients(blocking=False).slow()]

    class Slow:
        @collab.publish
        def slow(self):
            time.sleep(0.3 if collab.site_name == "site-1" else 0.0)
            return 1

    run = CollabRecipe(job_name="arr", server=Arrival(), client=Slow()).execute(SimEnv(num_clients=3, progress=False))
    assert run.result[-1] == "site-1"


EVAL_SCRIPT = """
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
        flare.send(FLModel(params={"w": params["w"] + i}, metrics={"loss": 1.0 / i}, meta={"num_samples": 1}))
"""


def evaluate_global(model, round_num):
    """A server-side evaluation: module level, so an exported job can import it."""
    return {"w0": float(model.params["w"][0]), "round_seen": round_num}


@pytest.fixture
def eval_script(tmp_path):
    path = tmp_path / "train.py"
    path.write_text(textwrap.dedent(EVAL_SCRIPT))
    return str(path)


def test_fedavg_evaluate_and_keep_models(eval_script, capsys, tmp_path):
    recipe = FedAvgRecipe(name="ev", min_clients=2, num_rounds=3, train_script=eval_script,
                          evaluate=evaluate_global, keep_models=2)
    run = recipe.execute(SimEnv(num_clients=2, workspace=tmp_path / "ws"))
    assert run.status == "finished", run.error
    history = run.result.meta["history"]
    assert [h["evaluate"] for h in history] == [
        {"w0": 1.5, "round_seen": 1}, {"w0": 3.0, "round_seen": 2}, {"w0": 4.5, "round_seen": 3}]
    lines = progress_lines(capsys.readouterr().err)
    assert "round 2/3: 2 site(s), loss=0.75 eval_w0=3 eval_round_seen=2" in lines
    kept = run.result.meta["models"]
    assert [p.rsplit("/", 1)[1] for p in kept] == ["global_model_round_2.collab", "global_model_round_3.collab"]
    assert not (tmp_path / "ws" / "server" / "global_model_round_1.collab").exists()
    assert float(load_model(kept[0]).params["w"][0]) == 3.0


def test_fedavg_evaluate_travels_with_an_exported_job(eval_script, tmp_path):
    import json
    import os
    import subprocess
    import sys

    helper = tmp_path / "evalmod.py"
    helper.write_text("def evaluate(model, r):\n    return {'w0': float(model.params['w'][0])}\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import evalmod

        job = FedAvgRecipe(name="evx", min_clients=2, num_rounds=2, train_script=eval_script,
                           evaluate=evalmod.evaluate, keep_models=True).export(tmp_path / "job")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("evalmod", None)
    config = json.loads((job / "job.json").read_text())
    assert config["server"]["args"]["evaluate"] == "evalmod:evaluate"
    assert (job / "code" / "evalmod.py").is_file()
    out = subprocess.run([sys.executable, "-m", "collab_core.cli", "run", str(job)], capture_output=True,
                         text=True, timeout=180, cwd=tmp_path / "job",
                         env=dict(os.environ, COLLAB_WORKSPACE_ROOT=str(tmp_path / "ws")))
    assert out.returncode == 0, out.stderr
    assert "eval_w0=3" in out.stderr


def test_fedavg_evaluate_and_keep_models_are_validated(eval_script):
    with pytest.raises(RecipeError, match="evaluate= takes a function"):
        FedAvgRecipe(name="x", train_script=eval_script, evaluate="nope")
    with pytest.raises(RecipeError, match="keep_models must be True, False or an integer"):
        FedAvgRecipe(name="x", train_script=eval_script, keep_models=0)
    from collab_core import ExportError

    recipe = FedAvgRecipe(name="x", train_script=eval_script, evaluate=lambda m, r: {})
    with pytest.raises(ExportError, match="defined at module level"):
        recipe.export(eval_script + "-job")


def test_progress_of_threads_is_thread_safe():
    got = []
    p = Progress("j", "verbose", on_line=got.append)
    threads = [threading.Thread(target=lambda: [p.group_call("m", 1, 0, 0.0) for _ in range(200)])
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert p.calls == 800 and len(got) == 800


JITTER_SCRIPT = """
    import time
    import numpy as np
    import collab_core.client as flare
    from collab_core import FLModel

    flare.init()
    i = int(flare.get_site_name().split("-")[1])
    while flare.is_running():
        task = flare.receive()
        if task is None:
            break
        r = task.current_round or 0
        time.sleep(((i * 7 + r * 3) % 5) * 0.003)
        w = (task.params or {"w": np.zeros(300, np.float32)})["w"]
        noise = np.random.default_rng(i * 100 + r).normal(size=w.shape).astype(np.float32)
        flare.send(FLModel(params={"w": w + noise * np.float32(10.0 ** i)}, meta={"num_samples": 3 + i}))
"""


def test_fedavg_recipe_gives_the_same_bits_every_run(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(JITTER_SCRIPT))
    recipe = FedAvgRecipe(name="bits", min_clients=5, num_rounds=4, train_script=str(script))
    runs = [recipe.execute(SimEnv(num_clients=5, progress=False)) for _ in range(3)]
    assert all(r.status == "finished" for r in runs), [r.error for r in runs]
    first = runs[0].result.params["w"].tobytes()
    assert all(r.result.params["w"].tobytes() == first for r in runs[1:])


def test_a_failed_main_says_so_once(capsys, caplog):
    class Broken:
        @collab.main
        def run(self):
            raise ValueError("bad data")

    run = CollabRecipe(job_name="broken", server=Broken(), client=Pinger()).execute(SimEnv(num_clients=1))
    assert run.status == "failed"
    assert run.error.count("@collab.main failed") == 1
    assert caplog.text.count("@collab.main failed") == 1  # the logged error: one header
    assert re.search(r"collab \| job broken failed in [0-9.]+ s: ValueError: bad data", capsys.readouterr().err)
    assert run.log("server").count("@collab.main failed") == 1


def test_a_progress_bar_redrawing_its_line_passes_through(capsys):
    class Bar:
        @collab.main
        def run(self):
            import sys

            for i in range(3):
                sys.stderr.write(f"\rbar {i}/3")
                sys.stderr.flush()
            sys.stderr.write("\n")
            return 1

    CollabRecipe(job_name="bar", server=Bar(), client=Pinger()).execute(SimEnv(num_clients=1, progress=False))
    assert "\rbar 0/3\rbar 1/3\rbar 2/3" in capsys.readouterr().err
