"""`collab --version`: collab-core's version, then every installed plugin distribution with its
version; each package's ``__version__`` agrees with its installed metadata."""

from __future__ import annotations

import importlib
import importlib.metadata as md
import os
import subprocess
import sys

import pytest

import collab_core
from collab_core.cli import main
from collab_core.registry import ENTRY_POINT_GROUP

CORE_ONLY = os.environ.get("COLLAB_EXPECT_CORE_ONLY") == "1"
PLUGIN_DISTRIBUTIONS = ("collab-sim", "collab-tcp", "collab-torchrun", "collab-tracking")


def version_lines(capsys, argv=("--version",)) -> list[str]:
    with pytest.raises(SystemExit) as exit_:
        main(list(argv))
    assert exit_.value.code in (0, None)
    return capsys.readouterr().out.splitlines()


def collab_plugin_distributions() -> dict[str, md.Distribution]:
    return {d.metadata["Name"]: d for d in md.distributions()
            if any(ep.group == ENTRY_POINT_GROUP for ep in d.entry_points)}


def test_core_version_agrees_with_metadata():
    assert collab_core.__version__ == md.version("collab-core")


def test_version_lists_core_first_then_every_installed_plugin(capsys):
    lines = version_lines(capsys)
    assert lines[0] == f"collab-core {collab_core.__version__}"
    installed = collab_plugin_distributions()
    assert sorted(lines[1:]) == sorted(f"{name} {d.version}" for name, d in installed.items())
    if CORE_ONLY:
        assert lines == [f"collab-core {collab_core.__version__}"]
    else:
        for name in PLUGIN_DISTRIBUTIONS:
            assert f"{name} {md.version(name)}" in lines


def test_short_option_and_subprocess(capsys):
    assert version_lines(capsys, ["-V"]) == version_lines(capsys)
    out = subprocess.run([sys.executable, "-m", "collab_core.cli", "--version"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == f"collab-core {collab_core.__version__}"


def test_every_plugin_package_version_agrees_with_its_metadata():
    ours = {n: d for n, d in collab_plugin_distributions().items() if n.startswith("collab-")}
    assert CORE_ONLY or set(PLUGIN_DISTRIBUTIONS) <= set(ours)
    for name, dist in ours.items():
        for ep in dist.entry_points:
            if ep.group != ENTRY_POINT_GROUP:
                continue
            package = importlib.import_module(ep.value.split(":")[0].split(".")[0])
            assert getattr(package, "__version__", None) == dist.version, (name, package.__name__)


def test_a_newly_installed_plugin_shows_up(installed_distribution, capsys):
    installed_distribution("collab-csv", "", version="2.3")
    lines = version_lines(capsys)
    assert lines[0].startswith("collab-core ")
    assert "collab-csv 2.3" in lines
