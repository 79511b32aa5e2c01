"""The command line as a new user meets it: collab new, collab run --recipe / --kit / --quiet, CLI-speaking
errors, a closed pipe, workspace retention and collab clean, exporting from stdin."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from collab_core import workspaces

COLLAB = [sys.executable, "-m", "collab_core.cli"]


def run(args, tmp_path, timeout=180, **kwargs):
    env = dict(os.environ, COLLAB_WORKSPACE_ROOT=str(tmp_path / "ws"), PYTHONUNBUFFERED="1")
    env.update(kwargs.pop("env", {}))
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=kwargs.pop("cwd", tmp_path), **kwargs)


def test_collab_new_scaffolds_a_project_that_runs(tmp_path):
    out = run([*COLLAB, "new", "my-study"], tmp_path)
    assert out.returncode == 0, out.stderr
    project = tmp_path / "my-study"
    for rel in ("pyproject.toml", "README.md", "job.py", "my_study/client.py", "my_study/server.py"):
        assert (project / rel).is_file(), rel
    assert 'name = "my-study"' in (project / "pyproject.toml").read_text()
    job = run([sys.executable, "job.py", "--rounds", "4"], tmp_path, cwd=project)
    assert job.returncode == 0, job.stderr
    assert "status: finished" in job.stdout
    assert "collab | round 4/4: 3 site(s), loss=" in job.stderr
    err = float(job.stdout.split("max |w - true_w| = ")[1].split()[0])
    assert err < 0.5
    # the same project as a job folder, through collab run
    assert run([sys.executable, "job.py", "--export", "job"], tmp_path, cwd=project).returncode == 0
    ran = run([*COLLAB, "run", "job", "--quiet"], tmp_path, cwd=project)
    assert ran.returncode == 0, ran.stderr
    assert "status: finished" in ran.stdout and "collab |" not in ran.stderr
    again = run([*COLLAB, "new", "my-study"], tmp_path)
    assert again.returncode == 1 and "is not empty" in again.stderr


def test_cli_errors_speak_cli(tmp_path):
    assert run([*COLLAB, "new", "p"], tmp_path).returncode == 0
    assert run([sys.executable, "job.py", "--export", "job"], tmp_path, cwd=tmp_path / "p").returncode == 0
    job = str(tmp_path / "p" / "job")
    few = run([*COLLAB, "run", job, "--clients", "2"], tmp_path)
    assert few.returncode == 1
    assert "needs at least 3 clients (its min_clients); run it with --clients 3 or more" in few.stderr
    assert "SimEnv(" not in few.stderr
    prod = run([*COLLAB, "run", job, "--env", "prod"], tmp_path)
    assert prod.returncode == 1 and "Traceback" not in prod.stderr
    assert "--env prod needs --kit" in prod.stderr
    neither = run([*COLLAB, "run"], tmp_path)
    assert neither.returncode == 1 and "a job folder or --recipe NAME" in neither.stderr


def test_collab_run_a_named_recipe(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent("""
        import numpy as np
        import collab_core.client as flare
        from collab_core import FLModel

        flare.init()
        while flare.is_running():
            task = flare.receive()
            if task is None:
                break
            w = (task.params or {"w": np.zeros(2)})["w"]
            flare.send(FLModel(params={"w": w + 1}, metrics={"loss": 0.5}, meta={"num_samples": 1}))
    """))
    out = run([*COLLAB, "run", "--recipe", "fedavg", "--arg", "train_script=train.py", "--arg", "num_rounds=3",
               "--clients", "2", "--json"], tmp_path)
    assert out.returncode == 0, out.stderr
    assert '"status": "finished"' in out.stdout
    assert "collab | round 3/3: 2 site(s), loss=0.5" in out.stderr
    bad = run([*COLLAB, "run", "--recipe", "fedavg", "--arg", "nonsense"], tmp_path)
    assert bad.returncode == 1 and "--arg takes KEY=VALUE" in bad.stderr
    unknown = run([*COLLAB, "run", "--recipe", "fedavg", "--arg", "train_script=train.py", "--arg", "bogus=1"],
                  tmp_path)
    assert unknown.returncode == 1 and "bogus" in unknown.stderr and "Traceback" not in unknown.stderr


def test_a_closed_pipe_ends_quietly(tmp_path):
    proc = subprocess.Popen([*COLLAB, "plugins", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before collab writes a byte (like `| head` that exited)
    _, err = proc.communicate(timeout=120)
    assert b"Traceback" not in err and b"BrokenPipeError" not in err, err.decode()
    assert proc.returncode == 141


def test_exporting_from_stdin_fails_at_export(tmp_path):
    code = textwrap.dedent("""
        from collab_core import CollabRecipe, collab

        class S:
            @collab.main
            def run(self):
                return 1

        class C:
            @collab.publish
            def f(self):
                return 1

        CollabRecipe(job_name="x", server=S(), client=C()).export("job")
    """)
    out = run([sys.executable, "-"], tmp_path, input=code)
    assert out.returncode == 1
    assert "ExportError" in out.stderr and "<stdin>" in out.stderr and "save the" in out.stderr
    assert not (tmp_path / "job" / "job.json").exists()


def make_run(kind: str, name: str, age: float, pid: int | None = None) -> Path:
    path = workspaces.root() / kind / name
    path.mkdir(parents=True)
    if pid is not None:
        (path / workspaces.MARKER).write_text(f"{pid}\n")
    t = time.time() - age
    os.utime(path, (t, t))
    return path


def test_workspace_retention_keeps_the_newest_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("COLLAB_WORKSPACE_ROOT", str(tmp_path / "root"))
    monkeypatch.setenv("COLLAB_KEEP_RUNS", "3")
    old = [make_run("sim", f"old-{i}", age=1000 + i) for i in range(5)]
    busy = make_run("sim", "still-running", age=5000, pid=os.getpid())
    dead = make_run("sim", "crashed", age=6000, pid=2**22 + 12345)  # no such process
    store = workspaces.root() / "mlflow"
    store.mkdir()
    new = workspaces.new_run_folder("sim", "job")
    left = sorted(p.name for p in (workspaces.root() / "sim").iterdir())
    assert left == sorted([new.name, "old-0", "old-1", "still-running"])
    assert not dead.exists() and busy.exists() and store.exists() and old[0].exists()
    workspaces.release(new)
    assert not workspaces.in_use(new)
    monkeypatch.setenv("COLLAB_KEEP_RUNS", "many")
    with pytest.raises(Exception, match="COLLAB_KEEP_RUNS must be a whole number"):
        workspaces.new_run_folder("sim", "job")


def test_simenv_runs_prune_old_workspaces(tmp_path, monkeypatch):
    from collab_core import CollabRecipe, collab
    from collab_sim import SimEnv

    class S:
        @collab.main
        def run(self):
            return 1

    class C:
        @collab.publish
        def f(self):
            return 1

    monkeypatch.setenv("COLLAB_WORKSPACE_ROOT", str(tmp_path / "root"))
    monkeypatch.setenv("COLLAB_KEEP_RUNS", "2")
    runs = []
    for _ in range(4):
        runs.append(CollabRecipe(job_name="keep", server=S(), client=C()).execute(SimEnv(1, progress=False)))
        time.sleep(0.02)
    assert sorted(p.name for p in (tmp_path / "root" / "sim").iterdir()) == sorted(
        r.workspace.name for r in runs[-2:])


def test_collab_clean(tmp_path, monkeypatch):
    monkeypatch.setenv("COLLAB_WORKSPACE_ROOT", str(tmp_path / "ws"))
    for i in range(3):
        make_run("sim", f"s{i}", age=100 + i)
        make_run("poc", f"p{i}", age=100 + i)
    busy = make_run("poc", "busy", age=1, pid=os.getpid())
    dry = run([*COLLAB, "clean", "--dry-run"], tmp_path)
    assert dry.returncode == 0 and "would remove 6 run folder(s)" in dry.stdout
    assert len(list((tmp_path / "ws" / "sim").iterdir())) == 3
    kept = run([*COLLAB, "clean", "--keep", "1", "--kind", "sim"], tmp_path)
    assert kept.returncode == 0 and "removed 2 run folder(s)" in kept.stdout
    assert [p.name for p in (tmp_path / "ws" / "sim").iterdir()] == ["s0"]
    everything = run([*COLLAB, "clean"], tmp_path)
    assert "removed 4 run folder(s)" in everything.stdout
    assert [p.name for p in (tmp_path / "ws" / "poc").iterdir()] == [busy.name]
