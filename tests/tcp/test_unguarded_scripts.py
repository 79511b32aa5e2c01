"""The same script runs everywhere: job scripts WITHOUT ``if __name__ == "__main__":`` run as a
user runs them (``python script.py``) under PocEnv -- with classes, with module-level functions,
and with a Client API ``train_script`` -- and never start another environment in the deployed
processes (the import stops at the recipe line). A script that defines something the job needs
after that line fails at once with an error naming both lines and the fix."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from .helpers import kill_group, spawn, tail

pytestmark = pytest.mark.slow

ENV = 'PocEnv(num_clients=2, workspace=sys.argv[1], heartbeat=0.5, dead_after=10.0, job_timeout=120)'

CLASSES = f"""
import sys
from collab_core import CollabRecipe, collab
from collab_tcp import PocEnv


class Server:
    @collab.main
    def run(self):
        return sorted(collab.clients.double(3))


class Client:
    @collab.publish
    def double(self, x):
        return [collab.site_name, x * 2]


recipe = CollabRecipe(job_name="unguarded-classes", server=Server(), client=Client(), min_clients=2)
run = recipe.execute({ENV})
print("RESULT", run.status, run.result, run.error)
"""

FUNCTIONS = f"""
import sys
from collab_core import CollabRecipe, collab
from collab_tcp import PocEnv


@collab.main
def main():
    return sorted(collab.clients.double(3))


@collab.publish
def double(x):
    return [collab.site_name, x * 2]


run = CollabRecipe(job_name="unguarded-functions", min_clients=2).execute({ENV})
print("RESULT", run.status, run.result, run.error)
"""

CLIENT_SCRIPT = """
import collab_core.client as flare
from collab_core import FLModel

flare.init()
while flare.is_running():
    task = flare.receive()
    if task is None:
        break
    flare.send(FLModel(params={"w": (task.params or {}).get("w", 0) + 1}, metrics={"site": flare.get_site_name()}))
"""

CLIENT_API = f"""
import sys
from collab_core import CollabRecipe, FLModel, collab
from collab_tcp import PocEnv


class Driver:
    @collab.main
    def run(self):
        res = collab.clients.execute(fl_model=FLModel(params={{"w": 41}}, current_round=1))
        collab.clients.stop()
        return sorted((site, m.params["w"], m.metrics["site"]) for site, m in res)


recipe = CollabRecipe(job_name="unguarded-client-api", server=Driver(), train_script="client.py", min_clients=2)
run = recipe.execute({ENV})
print("RESULT", run.status, run.result, run.error)
"""

AFTER = f"""
import sys
from collab_core import CollabRecipe, collab
from collab_tcp import PocEnv


class Server:
    @collab.main
    def run(self):
        return helper(sorted(collab.clients.double(3)))


class Client:
    @collab.publish
    def double(self, x):
        return [collab.site_name, x * 2]


recipe = CollabRecipe(job_name="unguarded-after", server=Server(), client=Client(), min_clients=2)


def helper(values):
    return values


run = recipe.execute({ENV})
print("RESULT", run.status, run.result, run.error)
"""


def run_script(tmp_path: Path, source: str, files: dict[str, str] | None = None, timeout: float = 180) -> str:
    """Run ``source`` as ``python script.py <workspace>`` in its own folder and session; return its
    output. Bounded: a script that spawns environments recursively or hangs fails the test."""
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "script.py").write_text(textwrap.dedent(source))
    for name, text in (files or {}).items():
        (folder / name).write_text(textwrap.dedent(text))
    log = tmp_path / "script.log"
    proc = spawn([sys.executable, "script.py", str(tmp_path / "ws")], log, cwd=str(folder))
    try:
        proc.wait(timeout)
    except Exception:
        raise AssertionError(f"the script did not end within {timeout} s:\n{tail(log)}") from None
    finally:
        if proc.poll() is None:
            kill_group(proc)  # PocEnv's processes (their own sessions) follow it through their lifeline
    out = log.read_text(errors="replace")
    assert proc.returncode == 0, out
    # one server and two sites, never more: the deployed processes did not start environments
    logs = sorted(p.name for p in (tmp_path / "ws").rglob("processes/*.log"))
    assert logs == ["server.log", "site-1.log", "site-2.log"], logs
    return out


def result_line(out: str) -> str:
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, out
    return lines[0]


def test_an_unguarded_script_with_classes_runs_under_poc_env(tmp_path):
    line = result_line(run_script(tmp_path, CLASSES))
    assert line == "RESULT finished [('site-1', ['site-1', 6]), ('site-2', ['site-2', 6])] None", line


def test_an_unguarded_script_with_module_level_functions_runs_under_poc_env(tmp_path):
    line = result_line(run_script(tmp_path, FUNCTIONS))
    assert line == "RESULT finished [('site-1', ['site-1', 6]), ('site-2', ['site-2', 6])] None", line


def test_an_unguarded_script_with_a_client_api_train_script_runs_under_poc_env(tmp_path):
    line = result_line(run_script(tmp_path, CLIENT_API, {"client.py": CLIENT_SCRIPT}))
    assert line == "RESULT finished [('site-1', 42, 'site-1'), ('site-2', 42, 'site-2')] None", line


def test_a_name_defined_after_the_recipe_line_fails_naming_both_lines_and_the_fix(tmp_path):
    out = run_script(tmp_path, AFTER)
    line = result_line(out)
    assert line.startswith("RESULT failed None"), line
    assert "'helper' is defined at line 22" in out and "after line 19 where the script builds a recipe" in out, out
    assert 'if __name__ == "__main__":' in out, out
    assert "NameError" not in out, out
