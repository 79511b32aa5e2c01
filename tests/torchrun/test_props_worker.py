"""App properties, the caller and the call context reach a site's worker group (python worker)."""

from __future__ import annotations

import importlib.util
import sys
import textwrap

import pytest

from collab_core import CollabRecipe, collab
from collab_sim import SimEnv

pytest.importorskip("collab_torchrun")

MODULE = """
    import os
    from collab_core import collab

    @collab.publish
    def info(tag, context):
        context.set_prop("tag", tag)
        return {"pid": os.getpid(), "data_path": collab.get_app_prop("data_path"),
                "lr": collab.get_app_prop("lr"), "call_info": collab.call_info, "caller": collab.caller,
                "tag": collab.get_prop("tag"), "backend": collab.backend_type}
"""


class Server:
    @collab.main
    def run(self):
        return dict(collab.clients.info("t"))


def test_worker_sees_props_and_context(tmp_path):
    path = tmp_path / "props_worker_mod.py"
    path.write_text(textwrap.dedent(MODULE))
    spec = importlib.util.spec_from_file_location("props_worker_mod", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["props_worker_mod"] = module
    sys.path.insert(0, str(tmp_path))
    try:
        spec.loader.exec_module(module)
        recipe = CollabRecipe(job_name="trprops", server=Server(), client=module, min_clients=2,
                              launch_external_process=True, command="python", subprocess_timeout=60)
        recipe.set_client_prop("lr", 0.1)
        recipe.set_per_site_config({"site-2": {"data_path": "/data/2", "lr": 0.3}})
        run = recipe.execute(SimEnv(num_clients=2, workspace=tmp_path / "ws"))
    finally:
        sys.modules.pop("props_worker_mod", None)
        sys.path.remove(str(tmp_path))
    assert run.status == "finished", run.error
    one, two = run.result["site-1"], run.result["site-2"]
    assert one["pid"] != two["pid"]  # each ran in its own worker process
    assert (one["data_path"], one["lr"]) == (None, 0.1)
    assert (two["data_path"], two["lr"]) == ("/data/2", 0.3)
    assert one["caller"] == "server" and one["call_info"] == "site-1:server=>site-1"
    assert two["tag"] == "t" and two["backend"] == "sim"
