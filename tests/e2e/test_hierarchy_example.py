"""examples/hierarchy runs as a user runs it: SimEnv, PocEnv processes, and an exported job folder run
with `collab run --clients 3x2`; its final model is the weighted FedAvg of the leaves, computed here
without collab from the example's own data and training functions."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("collab_sim")

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "hierarchy" / "hierarchy.py"


def example_module():
    spec = importlib.util.spec_from_file_location("hierarchy_example_under_test", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def flat_fedavg(leaves, rounds):
    """FedAvg over the leaves directly: what the hierarchy must compute."""
    ex = example_module()
    data = {s: ex.site_data(s) for s in leaves}
    w = np.zeros_like(ex.TRUE_W)
    for _ in range(rounds):
        total = sum(len(y) for _, y in data.values())
        w = sum(ex.local_train(w, x, y) * (len(y) / total) for x, y in data.values())
    return w, total


def run(args, tmp_path, timeout=300):
    env = dict(os.environ, COLLAB_WORKSPACE_ROOT=str(tmp_path / "ws"), PYTHONUNBUFFERED="1")
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout,
                         cwd=tmp_path, env=env)
    assert out.returncode == 0, f"stdout:\n{out.stdout}\nstderr:\n{out.stderr}"
    return out


def check(out, top, children, rounds):
    leaves = [c for t in top for c in children[t]]
    text = out.stdout
    assert f"server's children: {', '.join(top)}; leaves: {', '.join(leaves)}" in text
    expected, n = flat_fedavg(leaves, rounds)
    for t in top:  # every parent aggregated its own children, once a round
        pattern = rf"{t} aggregated {len(children[t])} children \[{', '.join(repr(c) for c in children[t])}\]"
        assert len(re.findall(pattern, text)) == rounds, text
    assert len(re.findall(rf"round \d+: n={n} ", text)) == rounds
    final = re.search(r"final model: \[([^\]]+)\]", text)
    assert final, text
    np.testing.assert_allclose([float(v) for v in final.group(1).split(",")], expected, rtol=1e-10)
    mse = [float(m) for m in re.findall(r"mean leaf mse ([0-9.]+)", text)]
    assert len(mse) == rounds and mse[-1] < mse[0]
    total = len(top) + len(leaves)
    assert f"with {total} client(s) in a hierarchy ({len(top)} top-level, 2 levels)" in out.stderr


TOP3 = ["site-1", "site-2", "site-3"]
KIDS2 = {t: [f"{t}-1", f"{t}-2"] for t in TOP3}


@pytest.mark.parametrize("env", ["sim", "poc"])
def test_hierarchy_example(tmp_path, env):
    if env == "poc":
        pytest.importorskip("collab_tcp")
    out = run([str(EXAMPLE), "--env", env, "--rounds", "3"], tmp_path)
    assert "status: finished" in out.stdout
    check(out, TOP3, KIDS2, 3)


def test_hierarchy_example_other_shape(tmp_path):
    out = run([str(EXAMPLE), "--shape", "2x3", "--rounds", "2"], tmp_path)
    top = ["site-1", "site-2"]
    check(out, top, {t: [f"{t}-{k}" for k in (1, 2, 3)] for t in top}, 2)


def test_hierarchy_example_exported_and_run_with_a_shape(tmp_path):
    out = run([str(EXAMPLE), "--rounds", "2", "--export", str(tmp_path / "job")], tmp_path)
    assert "job folder written to" in out.stdout
    out = run(["-m", "collab_core.cli", "run", str(tmp_path / "job"), "--clients", "3x2"], tmp_path)
    check(out, TOP3, KIDS2, 2)
    bad = subprocess.run([sys.executable, "-m", "collab_core.cli", "run", str(tmp_path / "job"), "--clients", "3x0"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert bad.returncode != 0
    assert "--clients 3x0: every number must be >= 1; e.g. --clients 3, or --clients 3x2" in bad.stderr
