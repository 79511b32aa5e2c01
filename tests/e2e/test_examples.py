"""Every example runs as a user runs it: a real process, real torch training, checked output."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("collab_sim")

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def run_example(args, tmp_path, cwd=None, timeout=180):
    env = dict(os.environ, COLLAB_WORKSPACE_ROOT=str(tmp_path / "ws"), PYTHONUNBUFFERED="1")
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout,
                         cwd=cwd or tmp_path, env=env)
    assert out.returncode == 0, f"stdout:\n{out.stdout}\nstderr:\n{out.stderr}"
    return out.stdout


def losses(stdout, label):
    return [float(x) for x in re.findall(rf"round \d+: {label} ([0-9.]+)", stdout)]


def test_fedavg_classes(tmp_path):
    out = run_example([str(EXAMPLES / "fedavg" / "fedavg_train.py")], tmp_path)
    assert "status: finished" in out
    curve = losses(out, "global loss")
    assert len(curve) == 5
    assert curve[-1] < curve[0] * 0.5
    err = float(re.search(r"max \|w - true_w\| = ([0-9.]+)", out).group(1))
    assert err < 0.5
    ws = Path(re.search(r"workspace \(logs per site\): (.+)", out).group(1).strip())
    assert ws.is_relative_to(tmp_path)
    assert "site-3: loss" in (ws / "site-3" / "log.txt").read_text()


def test_fedavg_no_class_as_main_module(tmp_path):
    out = run_example([str(EXAMPLES / "fedavg_no_class" / "fedavg_no_class.py")], tmp_path)
    assert "status: finished" in out
    curve = losses(out, "mean client loss")
    assert len(curve) == 5 and curve[-1] < curve[0]


def test_fedavg_separate_modules(tmp_path):
    out = run_example([str(EXAMPLES / "fedavg_split" / "job.py")], tmp_path)
    assert "status: finished" in out
    assert out.count("aggregated 5 client models") == 5
    assert len(re.findall(r"\[site-\d\] Loss:", out)) == 25


@pytest.mark.parametrize(
    "example, args",
    [
        ("fedavg/fedavg_train.py", ["--export"]),
        ("fedavg_split/job.py", ["--export"]),
    ],
)
def test_export_then_collab_run(tmp_path, example, args):
    job = tmp_path / "job"
    run_example([str(EXAMPLES / example), *args, str(job)], tmp_path)
    config = (job / "job.json").read_text()
    assert '"schema": "collab.job"' in config
    code = sorted(p.name for p in (job / "code").iterdir())
    if "split" in example:
        assert code == ["client.py", "model.py", "server.py"]
    else:
        assert code == ["fedavg_train.py"]
    collab = Path(sys.executable).with_name("collab")
    out = subprocess.run([str(collab), "run", str(job), "--clients", "5", "--json"], capture_output=True,
                         text=True, timeout=180, cwd=tmp_path,
                         env=dict(os.environ, COLLAB_WORKSPACE_ROOT=str(tmp_path / "ws")))
    assert out.returncode == 0, out.stderr
    assert '"status": "finished"' in out.stdout


# -- the same examples, unchanged, as real processes over TLS (PocEnv) -------------------------------


def test_fedavg_classes_under_poc(tmp_path):
    out = run_example([str(EXAMPLES / "fedavg" / "fedavg_train.py"), "--env", "poc", "--clients", "3",
                       "--rounds", "3"], tmp_path, timeout=300)
    assert "status: finished" in out
    curve = losses(out, "global loss")
    assert len(curve) == 3 and curve[-1] < curve[0] * 0.5
    ws = Path(re.search(r"workspace \(logs per site\): (.+)", out).group(1).strip())
    assert "site-2: loss" in (ws / "logs" / "site-2" / "log.txt").read_text()
    assert "collab.progress: round 3/3: global_loss=" in (ws / "logs" / "server" / "log.txt").read_text()


def test_fedavg_no_class_under_poc(tmp_path):
    out = run_example([str(EXAMPLES / "fedavg_no_class" / "fedavg_no_class.py"), "poc"], tmp_path, timeout=300)
    assert "status: finished" in out
    curve = losses(out, "mean client loss")
    assert len(curve) == 5 and curve[-1] < curve[0]


def test_fedavg_separate_modules_under_poc(tmp_path):
    out = run_example([str(EXAMPLES / "fedavg_split" / "job.py"), "poc"], tmp_path, timeout=300)
    assert "status: finished" in out
    weights = re.search(r"'fc.weight': \[([^\]]+)\]", out).group(1)
    learned = [float(x) for x in weights.split(",")]
    assert max(abs(a - b) for a, b in zip(learned, [0.5, 1.0, -1.0, 2.0, -2.0, 0.0, 1.5, -0.5, 0.25, 3.0], strict=True)) < 0.05


# -- Client API ---------------------------------------------------------------------------------------


def test_client_api_example_sim_poc_and_export(tmp_path):
    job_py = str(EXAMPLES / "client_api" / "job.py")
    sim = run_example([job_py], tmp_path)
    assert "status: finished" in sim
    sim_curve = losses(sim, "mean client loss")
    assert len(sim_curve) == 3 and sim_curve[-1] < sim_curve[0] * 0.1
    poc = run_example([job_py, "poc"], tmp_path, timeout=300)
    assert "status: finished" in poc
    assert losses(poc, "mean client loss") == pytest.approx(sim_curve, rel=1e-4)
    job = tmp_path / "job"
    run_example([job_py, "export", str(job)], tmp_path)
    assert {p.name for p in (job / "code").iterdir()} >= {"client.py", "model.py", "server.py"}
    collab = Path(sys.executable).with_name("collab")
    out = subprocess.run([str(collab), "run", str(job), "--clients", "2", "--json"], capture_output=True, text=True,
                         timeout=180, cwd=tmp_path, env=dict(os.environ, COLLAB_WORKSPACE_ROOT=str(tmp_path / "ws")))
    assert out.returncode == 0, out.stderr
    assert '"status": "finished"' in out.stdout


def test_migration_steps_give_the_same_losses(tmp_path):
    one = run_example([str(EXAMPLES / "migration" / "step1_collab.py")], tmp_path)
    two = run_example([str(EXAMPLES / "migration" / "step2_client_api.py")], tmp_path)
    line = re.compile(r"losses: (.+)")
    first = [float(x) for x in line.search(one).group(1).split()]
    second = [float(x) for x in line.search(two).group(1).split()]
    assert len(first) == 4 and first[-1] < first[0] * 0.1
    assert first == second


# -- multi-process clients: torchrun with 2 ranks per site (CPU, gloo) --------------------------------


def _ddp_losses(out):
    assert "status: finished" in out, out
    return losses(out, "mean loss")


def test_ddp_client_api_example_sim_and_poc(tmp_path, monkeypatch):
    monkeypatch.setenv("COLLAB_DDP_BACKEND", "gloo")
    sim = _ddp_losses(run_example([str(EXAMPLES / "ddp" / "job.py")], tmp_path, timeout=300))
    assert len(sim) == 3 and sim[-1] < sim[0] * 0.01
    poc = _ddp_losses(run_example([str(EXAMPLES / "ddp" / "job.py"), "poc"], tmp_path, timeout=300))
    assert poc == pytest.approx(sim, rel=1e-3)


def test_ddp_mode3_example_matches_the_client_api_one(tmp_path):
    out = run_example([str(EXAMPLES / "ddp" / "mode3_job.py")], tmp_path, timeout=300)
    mode3 = _ddp_losses(out)
    assert len(mode3) == 3 and mode3[-1] < mode3[0] * 0.01
    workers = re.search(r"workers \(site, rank-0 pid, world size\): (.+)", out).group(1)
    assert workers.count(", 2)") == 2  # one 2-rank group per site, kept for all rounds


def test_tracking_example_writes_all_three(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    out = run_example([str(EXAMPLES / "tracking" / "fedavg_tracking.py")], tmp_path, timeout=300)
    assert "status: finished" in out
    assert len(losses(out, "mean client loss")) == 4
    written = dict(re.findall(r"^(\w+): (\d+) records written", out, re.M))
    assert written == {"tensorboard": "150", "mlflow": "150", "wandb": "150"}
    tb = Path(re.search(r"tensorboard --logdir (.+)", out).group(1))
    assert sorted(p.name for p in tb.iterdir()) == ["server", "site-1", "site-2", "site-3"]
    assert Path(re.search(r"sqlite:///(.+)", out).group(1)).is_file()


# -- recipes and the progression path ------------------------------------------------------------------


def test_progression_every_step_gives_the_same_model(tmp_path):
    prog = EXAMPLES / "progression"
    final = re.compile(r"final loss ([0-9.]+)")
    outs = [run_example([str(prog / f)], tmp_path) for f in ("step1_prototype.py", "step2_client_api.py",
                                                             "step3_recipe.py")]
    outs.append(run_example([str(prog / "step3_recipe.py"), "poc"], tmp_path, timeout=300))
    values = [float(final.search(o).group(1)) for o in outs]
    assert values[0] < 0.01
    assert values == pytest.approx([values[0]] * 4, rel=1e-4)
    job = tmp_path / "job"
    run_example([str(prog / "step3_recipe.py"), "export", str(job)], tmp_path)
    assert {"train.py", "common.py", "initial_model.collab"} <= {p.name for p in (job / "code").iterdir()}
    collab = Path(sys.executable).with_name("collab")
    out = subprocess.run([str(collab), "run", str(job), "--clients", "3", "--json"], capture_output=True, text=True,
                         timeout=180, cwd=tmp_path, env=dict(os.environ, COLLAB_WORKSPACE_ROOT=str(tmp_path / "ws")))
    assert out.returncode == 0, out.stderr
    assert '"status": "finished"' in out.stdout


@pytest.mark.parametrize("recipe", ["fedavg", "cyclic", "swarm"])
def test_standard_recipe_examples(tmp_path, recipe):
    out = run_example([str(EXAMPLES / "recipes" / "run_recipes.py"), recipe], tmp_path)
    assert "status: finished" in out
    assert float(re.search(r"final loss: ([0-9.]+)", out).group(1)) < 0.05


def test_split_learning_example_learns(tmp_path):
    out = run_example([str(EXAMPLES / "split_learning" / "job.py")], tmp_path)
    curve = losses(out, "mean loss")
    assert len(curve) == 5 and curve[-1] < curve[0] * 0.8
