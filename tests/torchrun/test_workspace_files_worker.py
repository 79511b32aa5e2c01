"""A site's worker group (launch_external_process=True, python workers) sees the site's own
workspace: the same folder as the site, with the job's client files and resource dirs in it."""

from __future__ import annotations

import importlib.util
import os
import sys
import textwrap

import pytest

from collab_core import CollabRecipe, collab
from collab_sim import SimEnv

pytest.importorskip("collab_torchrun")

MODULE = """
    import os
    from pathlib import Path
    from collab_core import collab

    @collab.publish
    def info():
        ws = collab.workspace
        return {"pid": os.getpid(), "work": ws.get_work_dir(), "run": ws.get_run_dir(), "fspath": os.fspath(ws),
                "vocab": (ws / "vocab.txt").read_text(),
                "data": (Path(ws.get_resource_dir("data")) / "x.txt").read_text(),
                "wrote": (ws / "from_worker.txt").write_text(collab.site_name)}
"""


class Server:
    @collab.main
    def run(self):
        return {"pid": os.getpid(), **dict(collab.clients.info())}


def test_workers_see_the_site_workspace_and_its_files(tmp_path):
    (tmp_path / "vocab.txt").write_text("worker vocab")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.txt").write_text("worker data")
    path = tmp_path / "ws_worker_mod.py"
    path.write_text(textwrap.dedent(MODULE))
    spec = importlib.util.spec_from_file_location("ws_worker_mod", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["ws_worker_mod"] = module
    sys.path.insert(0, str(tmp_path))
    try:
        spec.loader.exec_module(module)
        recipe = CollabRecipe(job_name="trws", server=Server(), client=module, min_clients=2,
                              launch_external_process=True, command="python", subprocess_timeout=60)
        recipe.add_client_file(tmp_path / "vocab.txt").set_client_resource_dirs({"data": tmp_path / "data"})
        run = recipe.execute(SimEnv(num_clients=2, workspace=tmp_path / "ws", progress="off"))
    finally:
        sys.modules.pop("ws_worker_mod", None)
        sys.path.remove(str(tmp_path))
    assert run.status == "finished", run.error
    pids = {run.result["pid"]}
    for site in ("site-1", "site-2"):
        got = run.result[site]
        pids.add(got["pid"])
        assert got["work"] == got["fspath"] == str(tmp_path / "ws" / site)
        assert got["run"] == str(tmp_path / "ws")
        assert (got["vocab"], got["data"]) == ("worker vocab", "worker data")
        assert (tmp_path / "ws" / site / "from_worker.txt").read_text() == site  # the site's folder, not a copy
    assert len(pids) == 3, "each site's calls ran in its own worker process"
