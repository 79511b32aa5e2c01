"""recipe.export() and `collab run`: what is written, what is refused, and the same result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from collab_core import CollabRecipe, ExportError, RecipeError, collab, wire
from collab_core.job import load_job, read_job_config

PROJECT = {
    "algo.py": """
        from collab_core import collab
        from helpers import scale

        class Server:
            def __init__(self, rounds, start=0.0):
                self.rounds = rounds
                self.start = start

            @collab.main
            def run(self):
                w = self.start
                for _ in range(self.rounds):
                    res = collab.clients.step(w)
                    w = sum(v for _, v in res) / len(res)
                return {"w": w, "sites": sorted(res.sites)}

        class Client:
            def __init__(self, lr=0.5):
                self.lr = lr

            @collab.publish
            def step(self, w):
                target = int(collab.site_name.split("-")[1])
                return w + self.lr * scale(target - w)
    """,
    "helpers.py": """
        def scale(x):
            return 1.0 * x
    """,
    "make_job.py": """
        import sys
        from algo import Client, Server
        from collab_core import CollabRecipe
        recipe = CollabRecipe(job_name="toy", server=Server(rounds=4, start=1.0), client=Client(lr=0.25), min_clients=3)
        if sys.argv[1] == "export":
            recipe.export(sys.argv[2])
        else:
            from collab_sim import SimEnv
            from collab_core import wire
            run = recipe.execute(SimEnv(num_clients=3))
            with open(sys.argv[2], "wb") as f:
                wire.write_frame(f, run.result)
    """,
}


def write_project(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in PROJECT.items():
        (root / name).write_text(textwrap.dedent(text))
    return root


def py(args, cwd, tmp_path):
    env = dict(os.environ, COLLAB_WORKSPACE_ROOT=str(tmp_path / "ws"))
    out = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    return out


def test_export_writes_config_and_sources_and_collab_run_gives_the_same_result(tmp_path):
    project = write_project(tmp_path / "project")
    job = tmp_path / "job"
    py(["make_job.py", "export", str(job)], project, tmp_path)
    config = read_job_config(job)
    assert config["version"] == 1 and config["job_name"] == "toy" and config["min_clients"] == 3
    assert config["server"] == {"module": "algo", "class": "Server", "args": {"rounds": 4, "start": 1.0}}
    assert config["client"] == {"module": "algo", "class": "Client", "args": {"lr": 0.25}}
    assert config["recipe"] == "collab_core.recipe:CollabRecipe" and config["api"] == "collab"
    assert sorted(p.name for p in (job / "code").iterdir()) == ["algo.py", "helpers.py"]

    py(["make_job.py", "run", str(tmp_path / "direct.bin")], project, tmp_path)
    out = py(["-m", "collab_core.cli", "run", str(job), "--clients", "3", "--result", str(tmp_path / "exported.bin")],
             tmp_path, tmp_path)
    assert "status: finished" in out.stdout
    with open(tmp_path / "direct.bin", "rb") as a, open(tmp_path / "exported.bin", "rb") as b:
        direct, exported = wire.read_frame(a), wire.read_frame(b)
    assert direct == exported
    assert exported["sites"] == ["site-1", "site-2", "site-3"]


def test_collab_run_errors(tmp_path):
    out = subprocess.run([sys.executable, "-m", "collab_core.cli", "run", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "job.json is missing" in out.stderr
    (tmp_path / "job.json").write_text(json.dumps({"schema": "collab.job", "version": 99}))
    out = subprocess.run([sys.executable, "-m", "collab_core.cli", "run", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "version 99" in out.stderr and "Re-export" in out.stderr
    (tmp_path / "job.json").write_text(json.dumps({
        "schema": "collab.job", "version": 1, "job_name": "x", "api": "collab", "min_clients": 1,
        "server": {"module": "m"}, "client": {"module": "m"}}))
    out = subprocess.run([sys.executable, "-m", "collab_core.cli", "run", str(tmp_path), "--env", "moon"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "no environment named 'moon'" in out.stderr


class Srv:
    def __init__(self, rounds):
        self.rounds = rounds

    @collab.main
    def run(self):
        return self.rounds


class Cli:
    @collab.publish
    def f(self):
        return 1


class Hidden:
    def __init__(self, rounds):
        self._r = rounds

    @collab.main
    def run(self):
        return 1


class VarArgs(Srv):
    def __init__(self, *rounds):
        self.rounds = rounds


class Custom(Hidden):
    def collab_export_args(self):
        return {"rounds": self._r}


def test_export_refuses_what_cannot_be_rebuilt(tmp_path):
    def local_class():
        class Local(Srv):
            pass

        return Local(1)

    cases = [
        (local_class(), "defined inside a function"),
        (Hidden(3), "parameter 'rounds' is not stored as self.rounds"),
        (VarArgs(1, 2), "takes \\*rounds"),
        (Srv(object()), r"argument\(s\) \['rounds'\] are not JSON"),
    ]
    for server, message in cases:
        with pytest.raises(ExportError, match=message):
            CollabRecipe(job_name="x", server=server, client=Cli()).export(tmp_path / "job")


def test_collab_export_args_is_used(tmp_path):
    path = CollabRecipe(job_name="x", server=Custom(7), client=Cli()).export(tmp_path / "job")
    assert read_job_config(path)["server"]["args"] == {"rounds": 7}


def test_export_will_not_overwrite_a_folder_that_is_not_a_job(tmp_path):
    (tmp_path / "precious.txt").write_text("keep")
    with pytest.raises(ExportError, match="not a job folder"):
        CollabRecipe(job_name="x", server=Srv(1), client=Cli()).export(tmp_path)
    assert (tmp_path / "precious.txt").read_text() == "keep"


def test_load_job_rebuilds_objects(tmp_path):
    project = write_project(tmp_path / "project")
    py(["make_job.py", "export", str(tmp_path / "job")], project, tmp_path)
    recipe = load_job(tmp_path / "job")
    try:
        assert recipe.job_name == "toy" and recipe.min_clients == 3
        assert recipe.server.rounds == 4 and recipe.client.lr == 0.25
    finally:
        sys.path.remove(str((tmp_path / "job" / "code").resolve()))
        for m in ("algo", "helpers"):
            sys.modules.pop(m, None)


def test_read_job_config_rejects_other_json(tmp_path):
    (tmp_path / "job.json").write_text("{not json")
    with pytest.raises(RecipeError, match="not valid JSON"):
        read_job_config(tmp_path)
