"""Groups, call options, events and thread limits in PocEnv: real server and site processes, the
options and settings travel over the wire and in job.json."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from .helpers import TIMEOUT

DRIVER = textwrap.dedent("""
    import json, random, sys, threading, time
    from collab_core import CallValidationError, CollabRecipe, collab
    from collab_tcp import PocEnv

    class Site:
        def __init__(self):
            self.now = self.peak = 0

        def make_client_app(self, site_name):
            site = SiteOne() if site_name == "site-1" else Site()
            site.lock = threading.Lock()
            return site

        @collab.init
        def setup(self):
            collab.register_event_handler("final_model", self.accept, note="n")
            collab.register_event_handler("final_model", self.save)
            collab.register_event_handler("bad", self.explode)

        def accept(self, event_type, data, note, context):
            return [collab.site_name, context.caller, note, data]

        def save(self, event_type, data):
            return "saved"

        def explode(self, event_type, data):
            raise RuntimeError("handler broke on " + collab.site_name)

        @collab.publish
        def echo(self, x):
            return collab.site_name, x

        @collab.publish
        def work(self, want):
            with self.lock:
                self.now += 1
                self.peak = max(self.peak, self.now)
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline and self.now < want:
                time.sleep(0.005)
            time.sleep(0.02)
            with self.lock:
                self.now -= 1
            return self.peak

        @collab.publish
        def notify(self, x):
            collab.server(expect_result=False).fire_event("metrics", {"x": x})
            return collab.server.fire_event("metrics", {"x": -x})

        @collab.publish
        def ask_peer_optional(self):
            # site-to-site through the server: the peer (not site-1) does not publish extra
            return collab.clients["site-2"](optional=True).extra(1)

    class SiteOne(Site):
        @collab.publish
        def extra(self, x):
            return "extra on " + collab.site_name

    class Server:
        def __init__(self):
            self.metrics = []
            self.lock = threading.Lock()

        @collab.init
        def setup(self):
            collab.register_event_handler("metrics", self.on_metrics)

        def on_metrics(self, event_type, data):
            with self.lock:
                self.metrics.append([collab.caller, data["x"]])
            return "ok"

        @collab.main
        def run(self):
            c = collab.clients
            out = {"idx": [c[0].name, c[-1].name, c[1:].names, c[1:].echo(0).sites],
                   "get": collab.get_clients(["site-3", "site-1"]).echo(1).sites}
            try:
                collab.get_clients(["site-7"])
            except CallValidationError as exc:
                out["get_error"] = str(exc)
            proxies = list(c)
            random.shuffle(proxies)
            out["shuffled"] = sorted(p.echo(2)[0] for p in proxies)
            nb = c(blocking=False).echo(3)
            before = len(nb)
            for _ in nb:
                pass
            out["nb_len"] = [before, len(nb)]
            out["optional_single"] = c[1](optional=True).nothing(1)
            out["optional_group"] = dict(c(optional=True).nothing())
            out["optional_mixed"] = dict(c(optional=True).extra(1))  # site-1's interface has it
            out["optional_peer"] = c["site-1"].ask_peer_optional()
            acc = []
            out["cb"] = dict(c(process_resp_cb=lambda site, v, acc: acc.append(collab.caller) or v[1] * 2,
                               acc=acc, secure=False).echo(5))
            out["cb_callers"] = sorted(acc)
            out["events"] = dict(c.fire_event("final_model", [1, 2]))
            out["notify"] = dict(c.notify(4))
            deadline = time.monotonic() + 30
            while len(self.metrics) < 6 and time.monotonic() < deadline:
                time.sleep(0.01)
            out["metrics"] = sorted(self.metrics)
            bad = c(min_responses=0).fire_event("bad", 0)
            out["bad"] = {s: str(e) for s, e in bad.failures.items()}
            futures = [c["site-2"](blocking=False).work(2) for _ in range(6)]
            out["peak"] = max(f.result(timeout=60) for f in futures)
            return out

    if __name__ == "__main__":
        recipe = CollabRecipe(job_name="pocgroups", server=Server(), client=Site(), min_clients=3,
                              max_call_threads_for_client=2, max_call_threads_for_server=4,
                              sync_task_timeout=90)
        run = recipe.execute(PocEnv(num_clients=3, workspace=sys.argv[1], progress="off"))
        assert run.status == "finished", run.error
        logs = {site: path.read_text() for site, path in run.logs.items()}
        with open(sys.argv[2], "w") as f:
            json.dump({"result": run.result, "logs": logs}, f)
""")


def test_groups_options_events_and_limits_reach_site_processes(tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    out = tmp_path / "out.json"
    proc = subprocess.run([sys.executable, str(driver), str(tmp_path / "ws"), str(out)],
                          capture_output=True, text=True, timeout=TIMEOUT * 8, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    data = json.loads(out.read_text())
    r = data["result"]
    assert r["idx"] == ["site-1", "site-3", ["site-2", "site-3"], ["site-2", "site-3"]]
    assert r["get"] == ["site-3", "site-1"]
    assert "no client site named 'site-7'" in r["get_error"] and "site-1, site-2, site-3" in r["get_error"]
    assert r["shuffled"] == ["site-1", "site-2", "site-3"]
    assert r["nb_len"] == [0, 3]
    # optional: the caller skips what the interface lacks; a site answers None for what it lacks
    assert r["optional_single"] is None
    assert r["optional_group"] == {"site-1": None, "site-2": None, "site-3": None}
    assert r["optional_mixed"] == {"site-1": "extra on site-1", "site-2": None, "site-3": None}
    assert r["optional_peer"] is None
    assert r["cb"] == {"site-1": 10, "site-2": 10, "site-3": 10}
    assert r["cb_callers"] == ["site-1", "site-2", "site-3"]
    # events delivered by the system method, in registration order, with the firing site as caller
    assert r["events"] == {s: {"Site.accept": [s, "server", "n", [1, 2]], "Site.save": "saved"}
                           for s in ("site-1", "site-2", "site-3")}
    assert r["notify"] == {s: {"Server.on_metrics": "ok"} for s in ("site-1", "site-2", "site-3")}
    assert r["metrics"] == sorted([s, x] for s in ("site-1", "site-2", "site-3") for x in (4, -4))
    for s in ("site-1", "site-2", "site-3"):
        assert f"handler(s) of event 'bad' failed on {s}: Site.explode: RuntimeError: handler broke on {s}" \
            in r["bad"][s]
        assert f"event 'bad': handler Site.explode failed on {s} (fired by server)" in data["logs"][s]
    # max_call_threads_for_client=2 held in the site process: 6 calls, at most 2 at once
    assert r["peak"] == 2
    job = json.loads((tmp_path / "ws" / "job" / "job.json").read_text())
    assert (job["max_call_threads_for_client"], job["max_call_threads_for_server"], job["sync_task_timeout"]) \
        == (2, 4, 90.0)


SLOW_INIT = textwrap.dedent("""
    import json, sys, time
    from collab_core import CollabRecipe, collab
    from collab_tcp import PocEnv

    class Site:
        @collab.init
        def setup(self):
            if collab.site_name == "site-3":
                time.sleep(25)  # far past the job's sync_task_timeout

        @collab.publish
        def echo(self):
            return collab.site_name

    class Server:
        @collab.main
        def run(self):
            return collab.clients.echo().sites

    if __name__ == "__main__":
        recipe = CollabRecipe(job_name="pocsync", server=Server(), client=Site(), min_clients=2,
                              sync_task_timeout=5)
        run = recipe.execute(PocEnv(num_clients=3, workspace=sys.argv[1], progress="off"))
        with open(sys.argv[2], "w") as f:
            json.dump({"status": run.status, "result": run.result, "error": run.error}, f)
""")


def test_sync_task_timeout_bounds_how_long_the_job_waits_for_its_sites(tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(SLOW_INIT)
    out = tmp_path / "out.json"
    proc = subprocess.run([sys.executable, str(driver), str(tmp_path / "ws"), str(out)],
                          capture_output=True, text=True, timeout=TIMEOUT * 6, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    data = json.loads(out.read_text())
    # the server went on without the site that was not ready within 5 s (min_clients=2 allows it)
    assert data["status"] == "finished", data["error"]
    assert data["result"] == ["site-1", "site-2"]
