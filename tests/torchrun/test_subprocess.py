"""collab-torchrun: worker groups started by a site, in every failure mode, with no orphans left."""

from __future__ import annotations

import importlib.util
import os
import sys
import textwrap
import time

import pytest

from collab_core import CollabCallError, CollabRecipe, FLModel, GroupCallError, collab
from collab_sim import SimEnv


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); check its state
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def wait_gone(pids, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not [p for p in pids if alive(p)]:
            return True
        time.sleep(0.05)
    return False


def load_module(tmp_path, name, body):
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(body))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    sys.path.insert(0, str(tmp_path))
    return module


@pytest.fixture
def cleanup_modules():
    added = []
    yield added
    for name in added:
        sys.modules.pop(name, None)


class Rounds:
    def __init__(self, rounds=2, method="work", args=()):
        self.rounds = rounds
        self.method = method
        self.args = list(args)

    @collab.main
    def run(self):
        return [dict(getattr(collab.clients, self.method)(*self.args)) for _ in range(self.rounds)]


MODULE = """
    import os, time
    from collab_core import collab

    calls = 0

    @collab.publish
    def work(x=1):
        global calls
        calls += 1
        print(f"working on {collab.site_name} call {calls}", flush=True)
        return {"pid": os.getpid(), "calls": calls, "site": collab.site_name, "x": x}

    @collab.publish
    def fail():
        raise ValueError("bad batch in " + collab.site_name)

    @collab.publish
    def spin():
        t0 = time.monotonic()
        while not collab.is_aborted and time.monotonic() - t0 < 30:
            time.sleep(0.01)
        open(os.path.join(os.environ["MARK_DIR"], collab.site_name), "w").write(str(collab.is_aborted))
        return "stopped"

    @collab.publish
    def die():
        os._exit(9)
"""


def test_mode3_python_worker_is_reused_and_streams_output(tmp_path, cleanup_modules):
    mod = load_module(tmp_path, "tr_mod_a", MODULE)
    cleanup_modules.append("tr_mod_a")
    recipe = CollabRecipe(job_name="tr", server=Rounds(3, "work", [5]), client=mod, min_clients=2,
                          launch_external_process=True, command="python", subprocess_timeout=60)
    assert "collab-torchrun>=0.1" in recipe.required_plugins
    run = recipe.execute(SimEnv(num_clients=2))
    assert run.status == "finished", run.error
    rounds = run.result
    for site in ("site-1", "site-2"):
        assert [r[site]["calls"] for r in rounds] == [1, 2, 3]  # one worker, kept across rounds
        assert len({r[site]["pid"] for r in rounds}) == 1
        assert rounds[0][site]["site"] == site and rounds[0][site]["x"] == 5
        assert f"[{site} rank 0] working on {site} call 3" in run.log(site)
    assert rounds[0]["site-1"]["pid"] != rounds[0]["site-2"]["pid"]
    assert wait_gone([r[s]["pid"] for r in rounds for s in r])


def test_mode3_failure_in_the_worker_fails_the_call_with_its_traceback(tmp_path, cleanup_modules):
    mod = load_module(tmp_path, "tr_mod_b", MODULE)
    cleanup_modules.append("tr_mod_b")

    class Main:
        @collab.main
        def run(self):
            with pytest.raises(GroupCallError) as err:
                collab.clients.fail()
            ok = dict(collab.clients.work())  # the worker survives a failed call
            return str(err.value), ok

    run = CollabRecipe(job_name="tr", server=Main(), client=mod, launch_external_process=True,
                       command="python", subprocess_timeout=60).execute(SimEnv(num_clients=1))
    assert run.status == "finished", run.error
    text, ok = run.result
    assert "fail() failed on rank 0 of site-1" in text and "ValueError: bad batch in site-1" in text
    assert ok["site-1"]["calls"] == 1


def test_timeout_cancels_the_call_in_the_worker(tmp_path, cleanup_modules, monkeypatch):
    mod = load_module(tmp_path, "tr_mod_c", MODULE)
    cleanup_modules.append("tr_mod_c")
    monkeypatch.setenv("MARK_DIR", str(tmp_path))

    class Main:
        @collab.main
        def run(self):
            t0 = time.monotonic()
            with pytest.raises(CollabCallError) as err:
                collab.clients["site-1"](timeout=1.0).spin()
            elapsed = time.monotonic() - t0
            after = collab.clients["site-1"].work()  # the worker finished the cancelled call and goes on
            return type(err.value.cause).__name__, elapsed, after["calls"]

    run = CollabRecipe(job_name="tr", server=Main(), client=mod, launch_external_process=True,
                       command="python", subprocess_timeout=60).execute(SimEnv(num_clients=1))
    assert run.status == "finished", run.error
    kind, elapsed, calls = run.result
    assert kind == "TimeoutError" and elapsed < 5
    assert calls == 1
    assert (tmp_path / "site-1").read_text() == "True"  # the worker saw collab.is_aborted


def test_a_dying_worker_fails_the_call_fast_and_leaves_no_process(tmp_path, cleanup_modules):
    mod = load_module(tmp_path, "tr_mod_d", MODULE)
    cleanup_modules.append("tr_mod_d")

    class Main:
        @collab.main
        def run(self):
            first = collab.clients["site-1"].work()
            t0 = time.monotonic()
            with pytest.raises(CollabCallError) as err:
                collab.clients["site-1"].die()
            elapsed = time.monotonic() - t0
            again = collab.clients["site-1"].work()  # a new group is started for later calls
            return first["pid"], str(err.value), elapsed, again["pid"], again["calls"]

    run = CollabRecipe(job_name="tr", server=Main(), client=mod, launch_external_process=True,
                       command="python", subprocess_timeout=60).execute(SimEnv(num_clients=1))
    assert run.status == "finished", run.error
    old_pid, text, elapsed, new_pid, calls = run.result
    assert "rank 0 died" in text or "exited with code 9" in text
    assert elapsed < 5
    assert new_pid != old_pid and calls == 1
    assert wait_gone([old_pid, new_pid])


SCRIPT = """
    import os, sys
    import collab_core.client as flare
    from collab_core import FLModel
    flare.init()
    print("script args", sys.argv[1:], flush=True)
    while flare.is_running():
        task = flare.receive()
        if task is None:
            break
        flare.send(FLModel(params={"w": (task.params or {}).get("w", 0) + 1}, meta={"pid": os.getpid()}))
"""


class Drive:
    def __init__(self, rounds=2):
        self.rounds = rounds

    @collab.main
    def run(self):
        w, pids = 0, set()
        for r in range(self.rounds):
            res = collab.clients.execute(fl_model=FLModel(params={"w": w}, current_round=r + 1))
            w = max(m.params["w"] for _, m in res)
            pids |= {m.meta["pid"] for _, m in res}
        collab.clients.stop()
        return w, sorted(pids)


def test_client_api_script_in_a_python_worker(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(SCRIPT))
    run = CollabRecipe(job_name="tr", server=Drive(3), train_script=str(script), script_args="--epochs 2",
                       launch_external_process=True, command="python", min_clients=2).execute(SimEnv(num_clients=2))
    assert run.status == "finished", run.error
    w, pids = run.result
    assert w == 3 and len(pids) == 2 and os.getpid() not in pids
    assert "[site-2 rank 0] script args ['--epochs', '2']" in run.log("site-2")
    assert wait_gone(pids)


@pytest.mark.parametrize(
    "body, message",
    [
        ("raise RuntimeError('no GPU here')\n", "RuntimeError: no GPU here"),
        ("import collab_core.client as flare\nflare.init()\nflare.receive()\n", "ended without sending a result"),
    ],
)
def test_script_failures_in_a_worker_fail_the_call_with_the_reason(tmp_path, body, message):
    script = tmp_path / "train.py"
    script.write_text(body)

    class Once:
        @collab.main
        def run(self):
            t0 = time.monotonic()
            with pytest.raises(CollabCallError) as err:
                collab.clients["site-1"].execute(fl_model=FLModel())
            return str(err.value), time.monotonic() - t0

    run = CollabRecipe(job_name="tr", server=Once(), train_script=str(script), launch_external_process=True,
                       command="python", subprocess_timeout=60).execute(SimEnv(num_clients=1))
    assert run.status == "finished", run.error
    text, elapsed = run.result
    assert message in text and elapsed < 10


def test_a_worker_that_never_gets_ready_fails_the_site_within_subprocess_timeout(tmp_path):
    hang = tmp_path / "hang.sh"
    hang.write_text("#!/bin/sh\necho launcher says hello\nexec sleep 60\n")
    hang.chmod(0o755)
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(SCRIPT))
    t0 = time.monotonic()
    run = CollabRecipe(job_name="tr", server=Drive(1), train_script=str(script), launch_external_process=True,
                       command=str(hang), subprocess_timeout=2).execute(SimEnv(num_clients=1))
    assert time.monotonic() - t0 < 20
    assert run.status == "failed"
    assert "only 0 of 1 clients started" in run.error
    log = run.log("site-1")
    assert "was not ready within subprocess_timeout=2 s" in log and "launcher says hello" in log


def test_a_worker_that_crashes_at_start_reports_exit_code_and_output(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(SCRIPT))
    run = CollabRecipe(job_name="tr", server=Drive(1), train_script=str(script), launch_external_process=True,
                       command="python --no-such-flag-xyz", subprocess_timeout=30).execute(SimEnv(num_clients=1))
    assert run.status == "failed"
    log = run.log("site-1")
    assert "exited with code 2" in log and "no-such-flag-xyz" in log


def test_recipe_needs_command_and_one_client_kind(tmp_path):
    from collab_core import RecipeError

    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    with pytest.raises(RecipeError, match="needs command="):
        CollabRecipe(job_name="tr", server=Drive(), train_script=str(script), launch_external_process=True)
    with pytest.raises(RecipeError, match="subprocess_timeout must be a positive"):
        CollabRecipe(job_name="tr", server=Drive(), train_script=str(script), launch_external_process=True,
                     command="python", subprocess_timeout=0)
    with pytest.raises(RecipeError, match="command= is for launch_external_process=True"):
        CollabRecipe(job_name="tr", server=Drive(), train_script=str(script), command="python")


def test_launchers_are_plugins_and_unknown_commands_are_prefixes():
    from collab_core import get_registry
    from collab_torchrun.launchers import (
        PrefixLauncher,
        PythonLauncher,
        TorchrunLauncher,
        make_launcher,
    )

    reg = get_registry()
    assert reg.component("launcher", "torchrun").distribution == "collab-torchrun"
    torchrun = make_launcher("torchrun --nproc_per_node=2")
    assert isinstance(torchrun, TorchrunLauncher)
    argv = torchrun.argv()
    assert argv[1:4] == ["-m", "torch.distributed.run", "--standalone"] and argv[-2:] == ["-m", "collab_torchrun.worker"]
    assert "--standalone" not in make_launcher("torchrun --nnodes=2 --rdzv-endpoint=h:1").argv()
    assert isinstance(make_launcher("python3 -X dev"), PythonLauncher)
    prefix = make_launcher("srun -n 2")
    assert isinstance(prefix, PrefixLauncher) and prefix.argv()[:3] == ["srun", "-n", "2"]


def test_missing_or_disabled_plugin_fails_at_once_with_the_install_line(tmp_path, monkeypatch):
    from collab_core import MissingPluginsError

    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    monkeypatch.setenv("COLLAB_DISABLE_PLUGINS", "collab-torchrun")
    with pytest.raises(MissingPluginsError, match="collab-torchrun .* disabled by COLLAB_DISABLE_PLUGINS"):
        CollabRecipe(job_name="tr", server=Drive(), train_script=str(script), launch_external_process=True,
                     command="python")
