"""Named objects (server_objects= / client_objects=) in PocEnv: the objects travel in the job
folder, are built in each site process (one copy per site), and callers resolve qualified,
unqualified and target= calls against interfaces that came over the wire."""

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

    class Inbox:
        def __init__(self):
            self.got = []

        @collab.init
        def start(self):
            print("INBOX-INIT", collab.site_name)

        @collab.publish
        def post(self, text):
            self.got.append([collab.caller, text])
            return len(self.got)

        @collab.publish
        def read(self):
            return self.got

    class Counter:
        def __init__(self):
            self.n = 0

        @collab.publish
        def bump(self):
            self.n += 1
            return [collab.site_name, self.n]

        @collab.publish
        def hello(self):
            return "counter"

        @collab.final
        def done(self):
            print("COUNTER-FINAL", collab.site_name, self.n)

    class Other:
        @collab.publish
        def hello(self):
            return "other"

    class Site:
        @collab.publish
        def work(self, peer):
            return {"q": collab.server.inbox.post("q"), "u": collab.server.post("u"),
                    "peer": collab.clients[peer].counter.bump()}

    class Server:
        @collab.main
        def run(self):
            out = {"work": collab.clients["site-1"].work("site-2")}
            out["work2"] = collab.clients["site-2"].work("site-1")
            out["bump"] = dict(collab.clients.counter.bump())
            out["target"] = dict(collab.clients(target="counter").bump())
            out["other"] = dict(collab.clients.other.hello())
            try:
                collab.clients.hello()
            except CallValidationError as exc:
                out["ambiguous"] = str(exc)
            return out

    if __name__ == "__main__":
        recipe = CollabRecipe(job_name="pocobjects", server=Server(), client=Site(),
                              server_objects={"inbox": Inbox()},
                              client_objects={"counter": Counter(), "other": Other()}, min_clients=2)
        run = recipe.execute(PocEnv(num_clients=2, workspace=sys.argv[1]))
        assert run.status == "finished", run.error
        logs = {site: path.read_text() for site, path in run.logs.items()}
        with open(sys.argv[2], "w") as f:
            json.dump({"result": run.result, "logs": logs}, f)
""")


def test_named_objects_in_site_processes(tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    out = tmp_path / "out.json"
    proc = subprocess.run([sys.executable, str(driver), str(tmp_path / "ws"), str(out)],
                          capture_output=True, text=True, timeout=TIMEOUT * 6, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    r = data["result"]
    # a client reaches the server's named object qualified and unqualified; the count is shared
    assert r["work"]["q"] == 1 and r["work"]["u"] == 2
    assert r["work2"]["q"] == 3 and r["work2"]["u"] == 4
    # site-to-site (relayed by the server) to the peer's own Counter copy
    assert r["work"]["peer"] == ["site-2", 1] and r["work2"]["peer"] == ["site-1", 1]
    # each site process has its own Counter: the server's bumps continue each site's count
    assert r["bump"] == {"site-1": ["site-1", 2], "site-2": ["site-2", 2]}
    assert r["target"] == {"site-1": ["site-1", 3], "site-2": ["site-2", 3]}
    assert r["other"] == {"site-1": "other", "site-2": "other"}
    assert "ambiguous" in r["ambiguous"] and "collab.clients.counter.hello(...)" in r["ambiguous"]
    # the objects' @collab.init / @collab.final ran in their site processes
    logs = data["logs"]
    assert "INBOX-INIT server" in logs["server"]
    assert "COUNTER-FINAL site-1 3" in logs["site-1"] and "COUNTER-FINAL site-2 3" in logs["site-2"]
