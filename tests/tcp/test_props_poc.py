"""App properties, per-site configuration and the call context in PocEnv: the values travel in the
job and the server's deploy message to real site processes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from .helpers import TIMEOUT

DRIVER = textwrap.dedent("""
    import json, sys
    from collab_core import CallValidationError, CollabRecipe, collab
    from collab_tcp import PocEnv

    class Site:
        @collab.init
        def setup(self, context):
            context.set_prop("init_site", collab.site_name)

        @collab.publish
        def describe(self, tag, context):
            collab.set_prop("tag", tag)
            return {"data_path": collab.get_app_prop("data_path"), "lr": collab.get_app_prop("lr"),
                    "server_only": collab.get_app_prop("server_only"), "caller": collab.caller,
                    "callee": collab.callee, "call_info": collab.call_info, "method": context.method,
                    "tag": collab.get_prop("tag"), "init_prop": collab.get_prop("init_site", "absent"),
                    "backend": collab.backend_type, "mine": collab.get_app_prop("mine")}

        @collab.publish
        def keep(self, value):
            collab.set_app_prop("mine", value)

        @collab.publish
        def peer(self, other):
            return collab.clients[other].describe("from-peer")

    class Server:
        @collab.main
        def run(self, context):
            out = {"main": [collab.call_info, collab.backend_type, collab.get_app_prop("server_only"),
                            collab.get_app_prop("lr", "unset"), context is collab.context]}
            collab.clients["site-1"].keep("kept")
            out["sites"] = dict(collab.clients.describe("t1"))
            out["peer"] = collab.clients["site-1"].peer("site-2")
            try:
                collab.clients["site-1"].describe("x", context="forged")
            except CallValidationError as exc:
                out["forged"] = str(exc)
            return out

        @collab.final
        def done(self):
            print("FINAL-SEES-RESULT", collab.get_result() is not None)

    if __name__ == "__main__":
        recipe = CollabRecipe(job_name="pocprops", server=Server(), client=Site(), min_clients=2)
        recipe.set_server_prop("server_only", [1, "two"])
        recipe.set_client_prop("lr", 0.01)
        recipe.set_client_prop("data_path", "/data/shared")
        recipe.set_per_site_config({"site-2": {"data_path": "/data/site-2", "lr": 0.5},
                                    "site-9": {"data_path": "/data/nowhere"}})
        run = recipe.execute(PocEnv(num_clients=2, workspace=sys.argv[1]))
        assert run.status == "finished", run.error
        logs = {site: path.read_text() for site, path in run.logs.items()}
        with open(sys.argv[2], "w") as f:
            json.dump({"result": run.result, "logs": logs}, f)
""")


def test_props_and_context_reach_site_processes(tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    out = tmp_path / "out.json"
    proc = subprocess.run([sys.executable, str(driver), str(tmp_path / "ws"), str(out)],
                          capture_output=True, text=True, timeout=TIMEOUT * 6, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    r = data["result"]
    assert r["main"] == ["server:server=>server", "poc", [1, "two"], "unset", True]
    one, two = r["sites"]["site-1"], r["sites"]["site-2"]
    # client props everywhere, per-site values only on their site
    assert (one["data_path"], one["lr"]) == ("/data/shared", 0.01)
    assert (two["data_path"], two["lr"]) == ("/data/site-2", 0.5)
    assert one["server_only"] is None and two["server_only"] is None
    # set_app_prop stays on its site
    assert one["mine"] == "kept" and two["mine"] is None
    # the call context in a site process
    assert one["caller"] == "server" and one["callee"] == "site-1"
    assert one["call_info"] == "site-1:server=>site-1" and two["call_info"] == "site-2:server=>site-2"
    assert one["method"] == "describe" and one["tag"] == "t1" and one["init_prop"] == "absent"
    assert one["backend"] == "poc" and two["backend"] == "poc"
    # a call relayed from site-1 to site-2 names site-1 as its caller
    assert r["peer"]["caller"] == "site-1" and r["peer"]["call_info"] == "site-2:site-1=>site-2"
    assert r["peer"]["data_path"] == "/data/site-2" and r["peer"]["tag"] == "from-peer"
    # `context` is not a call argument
    assert "context" in r["forged"]
    assert "FINAL-SEES-RESULT True" in proc.stdout
    # a per-site entry for a site not in the run is reported in the server's log
    server_log = data["logs"]["server"]
    assert "per-site config names site-9, not in this run" in server_log, server_log[-3000:]
