"""The README's first example runs with collab-core, collab-sim and numpy alone, as a user runs it:
a real process, its printed progress and result checked; and its exported job folder runs under
``collab run``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("numpy")
pytest.importorskip("collab_sim")

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart" / "quickstart.py"


def run(args, tmp_path):
    env = dict(os.environ, COLLAB_WORKSPACE_ROOT=str(tmp_path / "ws"), PYTHONUNBUFFERED="1")
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path, env=env)
    assert out.returncode == 0, f"stdout:\n{out.stdout}\nstderr:\n{out.stderr}"
    return out.stdout


def round_losses(stdout):
    return [float(x) for x in re.findall(r"round \d+: mean client loss ([0-9.]+)", stdout)]


def test_quickstart_runs_and_learns(tmp_path):
    out = run([str(QUICKSTART)], tmp_path)
    assert "status: finished" in out
    losses = round_losses(out)
    assert len(losses) == 5
    assert losses[-1] < losses[0] * 0.01
    err = float(re.search(r"max \|w - true_w\| = ([0-9.]+)", out).group(1))
    assert err < 0.05


def test_quickstart_exported_job_runs_with_collab_run(tmp_path):
    out = run([str(QUICKSTART), "--export", str(tmp_path / "job"), "--rounds", "3"], tmp_path)
    assert (tmp_path / "job" / "job.json").is_file()
    out = run(["-m", "collab_core.cli", "run", str(tmp_path / "job"), "--clients", "3"], tmp_path)
    assert "status: finished" in out
    assert len(round_losses(out)) == 3
