"""The Client API bridge in SimEnv: flare.receive()/send() scripts driven by collab.clients.execute()."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from collab_core import CollabCallError, CollabRecipe, FLModel, GroupCallError, RecipeError, collab
from collab_core.bridge import ScriptClient
from collab_sim import SimEnv

GOOD = """
    import sys
    import collab_core.client as flare
    from collab_core import FLModel

    counter = 0          # module state of this site's copy of the script
    flare.init()
    while flare.is_running():
        task = flare.receive()
        if task is None:
            break
        counter += 1
        flare.log("seen", counter, step=task.current_round)
        flare.send(FLModel(params={"w": (task.params or {}).get("w", 0) + 1},
                           metrics={"count": counter, "argv": sys.argv[1:], "site": flare.get_site_name()}))
"""


def script(tmp_path, body, name="client.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


class Driver:
    def __init__(self, rounds=3, stop=True):
        self.rounds = rounds
        self.stop = stop

    @collab.main
    def run(self):
        w = 0
        out = []
        for r in range(self.rounds):
            res = collab.clients.execute(fl_model=FLModel(params={"w": w}, current_round=r + 1))
            out.append(dict(res))
            w = max(m.params["w"] for _, m in res)
        if self.stop:
            collab.clients.stop()
        return out


def test_scripts_run_per_site_with_their_own_state_and_args(tmp_path):
    path = script(tmp_path, GOOD)
    recipe = CollabRecipe(job_name="capi", server=Driver(3), train_script=str(path), script_args="--lr 0.1 -v",
                          min_clients=3)
    run = recipe.execute(SimEnv(num_clients=3))
    assert run.status == "finished", run.error
    rounds = run.result
    assert [m.params["w"] for m in rounds[2].values()] == [3, 3, 3]
    for site, m in rounds[2].items():
        assert m.metrics == {"count": 3, "argv": ["--lr", "0.1", "-v"], "site": site}
    assert "metric seen=3 step=3" in run.log("site-2")
    assert "sent a result with metrics" in run.log("site-1")
    assert not [t for t in threading.enumerate() if t.name.startswith("script-")]


def test_receive_after_stop_returns_none_and_is_running_is_false(tmp_path):
    marker = tmp_path / "after-stop.txt"
    path = script(tmp_path, f"""
        import collab_core.client as flare
        from collab_core import FLModel
        flare.init()
        while flare.is_running():
            t = flare.receive()
            if t is None:
                break
            flare.send(FLModel(params={{"w": 1}}))
        open({str(marker)!r}, "w").write(f"{{flare.receive()}} {{flare.is_running()}}")
    """)
    run = CollabRecipe(job_name="capi", server=Driver(1), train_script=str(path)).execute(SimEnv(num_clients=1))
    assert run.status == "finished", run.error
    assert marker.read_text() == "None False"


@pytest.mark.parametrize(
    "body, message",
    [
        ("raise ValueError('bad data on this site')", "ValueError: bad data on this site"),
        ("flare.receive()\n", "ended without sending a result"),
        ("flare.receive()\nflare.receive()\n", "receive() was called again before flare.send()"),
        ("flare.receive()\nimport sys; sys.exit(3)\n", "sys.exit(3)"),
    ],
)
def test_script_failures_fail_the_call_with_the_reason(tmp_path, body, message):
    path = script(tmp_path, "import collab_core.client as flare\nflare.init()\n" + body)

    class Once:
        @collab.main
        def run(self):
            t0 = time.monotonic()
            with pytest.raises(GroupCallError) as err:
                collab.clients.execute(fl_model=FLModel(params=1))
            return str(err.value), time.monotonic() - t0

    run = CollabRecipe(job_name="capi", server=Once(), train_script=str(path)).execute(SimEnv(num_clients=2))
    assert run.status == "finished", run.error
    text, elapsed = run.result
    assert message in text and "site-1" in text and "site-2" in text
    assert elapsed < 10


def test_min_responses_decides_when_one_script_fails(tmp_path):
    path = script(tmp_path, """
        import collab_core.client as flare
        from collab_core import FLModel
        flare.init()
        if flare.get_site_name() == "site-2":
            raise RuntimeError("disk full")
        while flare.is_running():
            t = flare.receive()
            if t is None:
                break
            flare.send(FLModel(params=2))
    """)

    class Quorum:
        @collab.main
        def run(self):
            res = collab.clients(min_responses=2).execute(fl_model=FLModel())
            collab.clients.stop()
            return sorted(res.sites), {s: str(e) for s, e in res.failures.items()}

    run = CollabRecipe(job_name="capi", server=Quorum(), train_script=str(path)).execute(SimEnv(num_clients=3))
    assert run.status == "finished", run.error
    sites, failures = run.result
    assert sites == ["site-1", "site-3"]
    assert "disk full" in failures["site-2"] and "Traceback" in failures["site-2"]


def test_script_that_ignores_stop_is_reported_and_not_waited_for(tmp_path, caplog):
    path = script(tmp_path, """
        import time
        import collab_core.client as flare
        from collab_core import FLModel
        flare.init()
        t = flare.receive()
        flare.send(FLModel(params={"w": 0}))
        time.sleep(30)
    """)
    recipe = CollabRecipe(job_name="capi", server=Driver(1), client=ScriptClient(path, stop_timeout=0.5))
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="collab.client"):
        run = recipe.execute(SimEnv(num_clients=1))
    assert run.status == "finished", run.error
    assert time.monotonic() - t0 < 10
    assert "did not finish within 0.5 s after stop()" in caplog.text


def test_abort_makes_receive_raise_with_the_reason(tmp_path):
    marker = tmp_path / "abort.txt"
    path = script(tmp_path, f"""
        import collab_core.client as flare
        from collab_core import FLModel
        flare.init()
        t = flare.receive()
        flare.send(FLModel(params=0))
        try:
            flare.receive()
        except Exception as exc:
            open({str(marker)!r}, "w").write(f"{{type(exc).__name__}}: {{exc}} running={{flare.is_running()}}")
    """)

    class Aborter:
        @collab.main
        def run(self):
            collab.clients.execute(fl_model=FLModel())
            collab.clients.abort("quality check failed")

    run = CollabRecipe(job_name="capi", server=Aborter(), train_script=str(path)).execute(SimEnv(num_clients=1))
    assert run.status == "finished", run.error
    assert marker.read_text() == "ScriptError: the server aborted the job: quality check failed running=False"


def test_receive_timeout_and_send_type_check(tmp_path):
    marker = tmp_path / "timeout.txt"
    path = script(tmp_path, f"""
        import collab_core.client as flare
        from collab_core import FLModel
        flare.init()
        t = flare.receive()
        try:
            flare.send({{"not": "an FLModel"}})
        except TypeError as exc:
            msg = str(exc)
        flare.send(FLModel(params=0))
        try:
            flare.receive(timeout=0.2)
        except TimeoutError as exc:
            open({str(marker)!r}, "w").write(msg + " | " + str(exc))
    """)

    class Slow:
        @collab.main
        def run(self):
            collab.clients.execute(fl_model=FLModel())
            time.sleep(1.0)
            collab.clients.stop()

    run = CollabRecipe(job_name="capi", server=Slow(), train_script=str(path)).execute(SimEnv(num_clients=1))
    assert run.status == "finished", run.error
    text = marker.read_text()
    assert "flare.send() takes an FLModel, got dict" in text and "no task from the server within 0.2 s" in text


def test_execute_after_the_script_ended_fails_clearly(tmp_path):
    path = script(tmp_path, """
        import collab_core.client as flare
        from collab_core import FLModel
        flare.init()
        flare.send(FLModel()) if False else None
        t = flare.receive()
        flare.send(FLModel(params=1))
    """)

    class Twice:
        @collab.main
        def run(self):
            collab.clients.execute(fl_model=FLModel())
            time.sleep(0.2)
            with pytest.raises(CollabCallError, match="has already ended"):
                collab.clients["site-1"].execute(fl_model=FLModel())
            return "ok"

    run = CollabRecipe(job_name="capi", server=Twice(), train_script=str(path)).execute(SimEnv(num_clients=1))
    assert run.status == "finished" and run.result == "ok", run.error


def test_call_timeout_cancels_a_waiting_execute(tmp_path):
    path = script(tmp_path, """
        import time
        import collab_core.client as flare
        from collab_core import FLModel
        flare.init()
        while flare.is_running():
            t = flare.receive()
            if t is None:
                break
            time.sleep(0.6)
            flare.send(FLModel(params=1))
    """)

    class Impatient:
        @collab.main
        def run(self):
            t0 = time.monotonic()
            with pytest.raises(CollabCallError) as err:
                collab.clients["site-1"](timeout=0.2).execute(fl_model=FLModel())
            collab.clients.stop()
            return type(err.value.cause).__name__, time.monotonic() - t0

    run = CollabRecipe(job_name="capi", server=Impatient(), train_script=str(path)).execute(SimEnv(num_clients=1))
    assert run.status == "finished", run.error
    kind, elapsed = run.result
    assert kind == "TimeoutError" and elapsed < 0.6


def test_recipe_validation(tmp_path):
    path = script(tmp_path, GOOD)
    with pytest.raises(RecipeError, match="either client= .* or train_script="):
        CollabRecipe(job_name="x", server=Driver(), client=Driver(), train_script=str(path))
    with pytest.raises(RecipeError, match="not found"):
        CollabRecipe(job_name="x", server=Driver(), train_script="no_such_script.py")
    with pytest.raises(RecipeError, match="needs server="):
        CollabRecipe(job_name="x", train_script=str(path))
    with pytest.raises(RecipeError, match="script_args is for train_script"):
        CollabRecipe(job_name="x", server=Driver(), client=ScriptClient(path), script_args="-v")


def test_script_run_standalone_says_how_to_run_it(tmp_path):
    path = script(tmp_path, GOOD)
    out = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "not running under a collab job" in out.stderr
    assert f"train_script='{path}'" in out.stderr
