"""examples/filters runs as a user runs it: each site's update is clipped (and noised) and
quantized by client output filters, the server's input filters see uint8 codes and turn them back
into floats; in SimEnv, in PocEnv processes, and from an exported job folder."""

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
EXAMPLE = ROOT / "examples" / "filters" / "fedavg_filters.py"


def run(args, tmp_path, timeout=240):
    env = dict(os.environ, COLLAB_WORKSPACE_ROOT=str(tmp_path / "ws"), PYTHONUNBUFFERED="1")
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout,
                         cwd=tmp_path, env=env)
    assert out.returncode == 0, f"stdout:\n{out.stdout}\nstderr:\n{out.stderr}"
    return out.stdout


def check(out, clip, rounds=8, sites=3):
    norms = [(float(a), float(b)) for a, b in re.findall(r"update norm ([0-9.]+) -> ([0-9.]+)", out)]
    assert len(norms) == rounds * sites, out
    assert all(after <= clip + 1e-3 for _, after in norms)  # no noise: clipping bounds every update
    assert any(before > clip for before, _ in norms)  # and it did clip some
    received = re.findall(r"server received from (site-\d): (\d+) bytes of (\w+) codes", out)
    assert len(received) == rounds * sites
    assert {dtype for _, _, dtype in received} == {"uint8"} and {int(b) for _, b, _ in received} == {16}
    err = [float(x) for x in re.findall(r"round \d+: \|w - true_w\| = ([0-9.]+)", out)]
    assert len(err) == rounds and err[-1] < err[0]  # it still learns from the clipped, quantized updates
    assert "status: finished" in out


@pytest.mark.parametrize("env", ["sim", "poc"])
def test_filters_example(tmp_path, env):
    if env == "poc":
        pytest.importorskip("collab_tcp")
    out = run([str(EXAMPLE), "--env", env, "--noise", "0", "--clip", "0.3"], tmp_path)
    check(out, 0.3)


def test_filters_example_with_noise_changes_the_updates(tmp_path):
    clean = run([str(EXAMPLE), "--noise", "0", "--clip", "10"], tmp_path)
    noisy = run([str(EXAMPLE), "--noise", "0.2", "--clip", "10"], tmp_path)
    pairs = re.findall(r"update norm ([0-9.]+) -> ([0-9.]+)", clean)
    assert all(a == b for a, b in pairs)  # a large bound: nothing clipped, no noise
    noisy_pairs = re.findall(r"update norm ([0-9.]+) -> ([0-9.]+)", noisy)
    assert sum(a != b for a, b in noisy_pairs) == len(noisy_pairs)


def test_filters_example_exported(tmp_path):
    out = run([str(EXAMPLE), "--noise", "0", "--clip", "0.3", "--export", str(tmp_path / "job")], tmp_path)
    assert "job folder written to" in out
    config = json.loads((tmp_path / "job" / "job.json").read_text())
    assert [(f["side"], f["direction"], f["object"]["class"]) for f in config["filters"]] == [
        ("client", "in", "ClipAndNoise"), ("client", "out", "ClipAndNoise"), ("client", "out", "Quantize"),
        ("server", "in", "Inspect"), ("server", "in", "Quantize")]
    assert (tmp_path / "job" / "code" / "update_filters.py").is_file()
    out = run(["-m", "collab_core.cli", "run", str(tmp_path / "job")], tmp_path)
    check(out, 0.3)
