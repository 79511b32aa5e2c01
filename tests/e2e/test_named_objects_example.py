"""examples/named_objects runs as a user runs it: in SimEnv, in PocEnv processes, and from an
exported job folder with `collab run`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("collab_sim")

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "named_objects" / "named_objects.py"


def run(args, cwd, timeout=240):
    env = dict(os.environ, COLLAB_WORKSPACE_ROOT=str(cwd / "ws"), PYTHONUNBUFFERED="1")
    out = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)
    assert out.returncode == 0, f"stdout:\n{out.stdout}\nstderr:\n{out.stderr}"
    return out.stdout + out.stderr


def check(out, rounds=5, clients=3):
    # the server's metric receiver got every client's report of every round
    reports = re.findall(r"metric_receiver: round (\d+): (\d+) report\(s\), mean loss ([0-9.]+)", out)
    assert [(int(r), int(n)) for r, n, _ in reports] == [(r, clients) for r in range(1, rounds + 1)], out
    losses = [float(x) for _, _, x in reports]
    assert losses[-1] < losses[0]
    # every client's evaluator scored every round's model, and the model improves
    mse = [float(x) for x in re.findall(r"evaluator mse ([0-9.]+)", out)]
    assert len(mse) == rounds and mse[-1] < mse[0] / 10, out
    assert "status: finished" in out


@pytest.mark.parametrize("env", ["sim", "poc"])
def test_named_objects_example(tmp_path, env):
    if env == "poc":
        pytest.importorskip("collab_tcp")
    check(run([sys.executable, str(EXAMPLE), "--env", env], tmp_path))


def test_named_objects_example_exported_and_run_with_collab_run(tmp_path):
    run([sys.executable, str(EXAMPLE), "--export", str(tmp_path / "job")], tmp_path)
    config = json.loads((tmp_path / "job" / "job.json").read_text())
    assert config["server_objects"]["metric_receiver"]["class"] == "MetricReceiver"
    assert config["client_objects"]["evaluator"]["class"] == "Evaluator"
    collab = Path(sys.executable).with_name("collab")
    check(run([str(collab), "run", str(tmp_path / "job"), "--clients", "3"], tmp_path))
