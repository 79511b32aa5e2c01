"""examples/per_site_config runs as a user runs it: each site reads the file its per-site config
names, in SimEnv, in PocEnv processes, and from an exported job folder."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("collab_sim")

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "per_site_config" / "per_site_config.py"


def run(args, tmp_path, timeout=240):
    env = dict(os.environ, COLLAB_WORKSPACE_ROOT=str(tmp_path / "ws"), PYTHONUNBUFFERED="1")
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout,
                         cwd=tmp_path, env=env)
    assert out.returncode == 0, f"stdout:\n{out.stdout}\nstderr:\n{out.stderr}"
    return out.stdout


def check_sites_read_their_own_files(out, data_dir):
    for i in (1, 2, 3):
        lr = 0.05 if i == 3 else 0.1
        rows = re.search(rf"site-{i} read (\d+) rows from (\S+) \(lr ([0-9.]+)\)", out)
        assert rows, out
        assert Path(rows.group(2)) == (data_dir / f"site-{i}.csv").resolve()
        assert int(rows.group(1)) == len((data_dir / f"site-{i}.csv").read_text().splitlines())
        assert float(rows.group(3)) == lr
    assert "status: finished" in out
    err = [float(x) for x in re.findall(r"\|w - true_w\| = ([0-9.]+)", out)]
    assert len(err) == 5 and err[-1] < err[0]


@pytest.mark.parametrize("env", ["sim", "poc"])
def test_per_site_config_example(tmp_path, env):
    if env == "poc":
        pytest.importorskip("collab_tcp")
    data_dir = tmp_path / "data"
    out = run([str(EXAMPLE), "--env", env, "--data-dir", str(data_dir)], tmp_path)
    assert "configured sites: site-1, site-2, site-3" in out
    check_sites_read_their_own_files(out, data_dir)


def test_per_site_config_example_exported(tmp_path):
    data_dir = tmp_path / "data"
    out = run([str(EXAMPLE), "--data-dir", str(data_dir), "--export", str(tmp_path / "job")], tmp_path)
    assert "job folder written to" in out
    out = run(["-m", "collab_core.cli", "run", str(tmp_path / "job")], tmp_path)
    check_sites_read_their_own_files(out, data_dir)
