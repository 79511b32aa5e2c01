"""Jobs over TCP: an in-process Server (so the tests can look inside) with three real site
processes that find it through a port file. Client->server calls, relayed site->site calls, logs
per site, remote errors and quorum, failing mains, timeouts that cancel at the site, missing sites,
and several jobs one after another on the same server."""

from __future__ import annotations

import re
import time

import pytest

from .helpers import ProcCluster, export_job

SITES = ["site-1", "site-2", "site-3"]


@pytest.fixture(scope="module")
def cluster(kits, tmp_path_factory):
    c = ProcCluster(kits, tmp_path_factory.mktemp("jobs-cluster"), heartbeat=0.5, dead_after=5.0)
    try:
        for site in SITES:
            c.start_site(site, wait=False)
        c.wait_sites(SITES)
        yield c
    finally:
        c.close()


@pytest.fixture
def healthy(cluster):
    """Every test starts (and must end) with all three sites connected and no job running."""
    cluster.wait_sites(SITES, timeout=15)
    yield cluster
    assert cluster.server.current is None, "a job is still running after the test"
    assert all(p.poll() is None for p in cluster.procs.values()), "a site process died"


ECHO = """
from collab_core import collab

class Server:
    def __init__(self, tag="x"):
        self.tag = tag

    @collab.main
    def run(self):
        return sorted(collab.clients.echo(self.tag))

class Client:
    @collab.publish
    def echo(self, tag):
        return f"{collab.site_name}:{tag}"
"""


def _echo_ok(done, tag, sites=SITES):
    assert done["status"] == "finished", done["error"]
    assert done["result"] == [(s, f"{s}:{tag}") for s in sites]


# -- calls in every direction, logs per site ------------------------------------------------------

CALLS = """
import logging
import threading
from collab_core import collab

log = logging.getLogger("user.code")

class Server:
    def __init__(self):
        self.reports = []
        self.lock = threading.Lock()

    @collab.main
    def run(self):
        log.info("USERLINE server main starts")
        res = collab.clients.round(3)
        with self.lock:
            reports = sorted(self.reports)
        return {"rounds": dict(res), "failures": sorted(res.failures), "reports": reports}

    @collab.publish
    def report(self, site, value):
        log.info("USERLINE server got a report from %s", site)
        with self.lock:
            self.reports.append((collab.site_name, site, value))
        return f"ack {site}"

class Client:
    @collab.publish
    def round(self, x):
        me = collab.site_name
        log.info("USERLINE %s round x=%s", me, x)
        ack = collab.server.report(me, x * 10)
        peers = collab.other_clients.add(x, int(me[-1]))
        direct = collab.clients["site-2"].whoami()
        return {"ack": ack, "peers": sorted(peers), "peer_failures": sorted(peers.failures), "direct": direct}

    @collab.publish
    def add(self, x, y):
        log.info("USERLINE %s adds for a peer", collab.site_name)
        return [collab.site_name, x + y]

    @collab.publish
    def whoami(self):
        return collab.site_name
"""


def test_client_to_server_and_relayed_site_to_site_calls_with_logs_per_site(healthy, tmp_path):
    job = export_job(tmp_path, CALLS, job_name="calls", min_clients=3)
    live = {}
    done = healthy.run_job(job, timeout=60, on_log=lambda site, lines: live.setdefault(site, []).extend(lines))
    assert done["status"] == "finished", done["error"]
    r = done["result"]
    assert sorted(r["rounds"]) == SITES and r["failures"] == []
    for site in SITES:
        k = int(site[-1])
        got = r["rounds"][site]
        assert got["ack"] == f"ack {site}"
        assert got["direct"] == "site-2"
        assert got["peer_failures"] == []
        # site -> peers through the server's relay: every other site answered with 3 + k
        assert got["peers"] == [(p, [p, 3 + k]) for p in SITES if p != site]
    assert r["reports"] == [("server", s, 30) for s in SITES]
    # per-site logs in the job's workspace, each line tagged with its site, no one else's lines
    record = healthy.server.jobs[[j for j in healthy.server.jobs if j.startswith("calls-")][-1]]
    for site in SITES:
        text = (record.workspace / site / "log.txt").read_text()
        assert re.search(rf"\[{site}\] user\.code: USERLINE {site} round x=3", text), text
        assert len(re.findall(rf"\[{site}\] user\.code: USERLINE {site} adds for a peer", text)) == 2, text
        others = [s for s in SITES if s != site]
        assert not any(f"USERLINE {o} " in text for o in others), f"{site}'s log holds another site's lines:\n{text}"
        assert text == done["logs"][site]
        assert any(f"USERLINE {site} round" in line for line in live[site]), "lines also arrive while the job runs"
    server_log = (record.workspace / "server" / "log.txt").read_text()
    assert "[server] user.code: USERLINE server main starts" in server_log
    assert len(re.findall(r"\[server\] user\.code: USERLINE server got a report from site-\d", server_log)) == 3


# -- errors ---------------------------------------------------------------------------------------

ERRORS = """
import time
from collab_core import collab
from collab_core.errors import CollabCallError, GroupCallError

def boom_inner(what):
    raise ValueError(f"boom: {what} on {collab.site_name}")

def describe(e):
    return {"site": e.site, "method": e.method, "cause": type(e.cause).__name__,
            "type_name": getattr(e.cause, "type_name", None), "message": str(e.cause),
            "tb": e.remote_traceback or ""}

class Server:
    @collab.main
    def run(self):
        out = {}
        t0 = time.monotonic()
        try:
            collab.clients["site-2"].boom("single")
            out["single"] = "no error"
        except CollabCallError as e:
            out["single"] = describe(e)
        res = collab.clients(min_responses=2).maybe_boom()
        out["quorum_ok"] = sorted(res.sites)
        out["quorum_failures"] = {s: describe(e) for s, e in res.failures.items()}
        try:
            collab.clients(min_responses=3).maybe_boom()
            out["group"] = "no error"
        except GroupCallError as e:
            out["group"] = {"failures": {s: describe(f) for s, f in e.failures.items()}, "needed": e.needed,
                            "ok": sorted(e.sites_ok), "text": str(e)}
        try:
            collab.clients.maybe_boom()  # default min_responses: all
            out["default"] = "no error"
        except GroupCallError as e:
            out["default"] = sorted(e.failures)
        out["relayed"] = collab.clients["site-1"].call_peer_boom()
        out["to_server"] = collab.clients["site-3"].call_server_boom()
        out["seconds"] = time.monotonic() - t0
        return out

    @collab.publish
    def server_boom(self):
        boom_inner("server side")

class Client:
    @collab.publish
    def boom(self, what):
        boom_inner(what)

    @collab.publish
    def maybe_boom(self):
        if collab.site_name == "site-2":
            boom_inner("quorum")
        return collab.site_name

    @collab.publish
    def call_peer_boom(self):
        try:
            collab.clients["site-2"].boom("relayed")
        except CollabCallError as e:
            return describe(e)
        return "no error"

    @collab.publish
    def call_server_boom(self):
        try:
            collab.server.server_boom()
        except CollabCallError as e:
            return describe(e)
        return "no error"
"""


def test_remote_exceptions_reach_the_caller_with_the_remote_traceback_and_min_responses_decides(healthy, tmp_path):
    job = export_job(tmp_path, ERRORS, job_name="errors")
    done = healthy.run_job(job, timeout=60)
    assert done["status"] == "finished", done["error"]
    r = done["result"]
    single = r["single"]
    assert single["site"] == "site-2" and single["method"] == "boom"
    assert single["type_name"] == "ValueError" and single["message"] == "ValueError: boom: single on site-2"
    assert "Traceback (most recent call last)" in single["tb"]
    assert "in boom_inner" in single["tb"] and 'raise ValueError(f"boom: {what}' in single["tb"]
    # min_responses=2 of 3: the group call succeeds with the failure reported
    assert r["quorum_ok"] == ["site-1", "site-3"]
    assert list(r["quorum_failures"]) == ["site-2"]
    assert "in boom_inner" in r["quorum_failures"]["site-2"]["tb"]
    # min_responses=3 (and the default, all): GroupCallError names the failed site, traceback included
    group = r["group"]
    assert group["needed"] == 3 and "site-2" in group["failures"]
    assert group["failures"]["site-2"]["type_name"] == "ValueError" and "in boom_inner" in group["failures"]["site-2"]["tb"]
    assert sorted([*group["failures"], *group["ok"]]) == SITES
    for site in set(group["failures"]) - {"site-2"}:  # once the quorum is lost, the rest are cancelled
        assert "cancelled: the group call already failed" in group["failures"][site]["message"], group
    assert "boom: quorum on site-2" in group["text"] and "in boom_inner" in group["text"]
    assert "site-2" in r["default"]
    # the same through the relay (site-1 -> site-2) and from a site to the server
    relayed = r["relayed"]
    assert (relayed["site"], relayed["method"], relayed["type_name"]) == ("site-2", "boom", "ValueError")
    assert "boom: relayed on site-2" in relayed["message"] and "in boom_inner" in relayed["tb"]
    to_server = r["to_server"]
    assert (to_server["site"], to_server["method"], to_server["type_name"]) == ("server", "server_boom", "ValueError")
    assert "boom: server side on server" in to_server["message"] and "in boom_inner" in to_server["tb"]
    assert r["seconds"] < 20


FAILING_MAIN = """
from collab_core import collab

def deep_failure(n):
    raise RuntimeError(f"main exploded after {n} calls")

class Server:
    @collab.main
    def run(self):
        res = collab.clients.ping()
        deep_failure(len(res))

class Client:
    @collab.publish
    def ping(self):
        return 1

    @collab.final
    def bye(self):
        import logging
        logging.getLogger("user.code").info("USERLINE final ran on %s", collab.site_name)
"""

BAD_INIT = """
from collab_core import collab

class Server:
    @collab.main
    def run(self):
        return "should not run"

class Client:
    @collab.init
    def setup(self):
        if collab.site_name == "site-2":
            raise OSError("no data on this site")

    @collab.publish
    def ping(self):
        return 1
"""


def test_failed_jobs_report_the_traceback_and_the_server_runs_later_jobs(healthy, tmp_path):
    failing = export_job(tmp_path, FAILING_MAIN, job_name="failing", min_clients=3)
    echo = export_job(tmp_path, ECHO, server="Server(tag='after')", job_name="echo")
    bad_init = export_job(tmp_path, BAD_INIT, job_name="badinit", min_clients=3)
    done = healthy.run_job(failing, timeout=60)
    assert done["status"] == "failed"
    assert "@collab.main failed" in done["error"]
    assert "RuntimeError: main exploded after 3 calls" in done["error"]
    assert "in deep_failure" in done["error"] and "Traceback (most recent call last)" in done["error"]
    assert done["result"] is None
    for site in SITES:  # the sites ended the job properly: @collab.final ran everywhere
        assert f"USERLINE final ran on {site}" in done["logs"][site]
    _echo_ok(healthy.run_job(echo, timeout=60), "after")
    # a site whose @collab.init fails: the job fails naming it, the next job runs again
    done = healthy.run_job(bad_init, timeout=60)
    assert done["status"] == "failed"
    assert "site-2" in done["error"] and "no data on this site" in done["error"], done["error"]
    _echo_ok(healthy.run_job(echo, timeout=60), "after")


def test_several_jobs_queue_and_run_one_after_another(healthy, tmp_path):
    jobs = [export_job(tmp_path, ECHO, server=f"Server(tag='j{i}')", job_name=f"seq{i}") for i in range(4)]
    failing = export_job(tmp_path, FAILING_MAIN, job_name="seqfail", min_clients=3)
    admin = healthy.admin()
    ids = [admin.submit(jobs[0]), admin.submit(failing), *(admin.submit(j) for j in jobs[1:])]
    assert len(set(ids)) == len(ids)
    results = [admin.follow(i, timeout=60) for i in ids]
    assert results[1]["status"] == "failed"
    for i, done in enumerate([results[0], *results[2:]]):
        _echo_ok(done, f"j{i}")
    records = [healthy.server.jobs[i] for i in ids]
    for earlier, later in zip(records, records[1:], strict=False):  # one at a time, in submission order
        assert earlier.finished <= later.started
    status = admin.status()
    assert status["current"] is None and sorted(status["sites"]) == SITES
    assert {j["id"]: j["status"] for j in status["jobs"] if j["id"] in ids} == {
        i: ("failed" if i == ids[1] else "finished") for i in ids}


# -- timeouts cancel at the site ------------------------------------------------------------------

SLOW = """
import time
from collab_core import collab
from collab_core.errors import CollabCallError, GroupCallError

def spin(limit):
    t0 = time.monotonic()
    while not collab.is_aborted and time.monotonic() - t0 < limit:
        time.sleep(0.01)
    return collab.is_aborted, time.monotonic() - t0

class Server:
    def __init__(self):
        self.server_slow = []

    @collab.main
    def run(self):
        out = {}
        t0 = time.monotonic()
        try:
            collab.clients(timeout=0.5).slow(30.0)
            out["group"] = "no error"
        except GroupCallError as e:
            out["group"] = {s: [type(f.cause).__name__, str(f.cause)] for s, f in e.failures.items()}
        out["group_seconds"] = time.monotonic() - t0
        out["seen"] = self.wait_reports(collab.clients, 1)
        # a relayed call that times out is cancelled at the callee too
        out["relayed"] = collab.clients["site-1"].relay_slow()
        out["seen_after_relay"] = self.wait_reports(collab.clients(targets=["site-2"]), 2)
        # and a client's call to the server
        out["to_server"] = collab.clients["site-3"].server_slow_call()
        deadline = time.monotonic() + 10
        while not self.server_slow and time.monotonic() < deadline:
            time.sleep(0.02)
        out["server_seen"] = self.server_slow
        return out

    def wait_reports(self, group, n):
        deadline = time.monotonic() + 10
        while True:
            seen = dict(group.reports())
            if all(len(v) >= n for v in seen.values()) or time.monotonic() > deadline:
                return seen
            time.sleep(0.05)

    @collab.publish
    def slow_on_server(self, limit):
        self.server_slow.append(spin(limit))
        return "done"

class Client:
    def __init__(self):
        self.seen = []

    @collab.publish
    def slow(self, limit):
        aborted, seconds = spin(limit)
        self.seen.append([aborted, seconds])
        (collab.workspace / "slow.txt").write_text(f"aborted={aborted} after {seconds:.3f} s")
        return "finished"

    @collab.publish
    def reports(self):
        return self.seen

    @collab.publish
    def relay_slow(self):
        t0 = time.monotonic()
        try:
            collab.clients["site-2"](timeout=0.5).slow(30.0)
            return ["no error", time.monotonic() - t0]
        except CollabCallError as e:
            return [type(e.cause).__name__, time.monotonic() - t0]

    @collab.publish
    def server_slow_call(self):
        t0 = time.monotonic()
        try:
            collab.server(timeout=0.5).slow_on_server(30.0)
            return ["no error", time.monotonic() - t0]
        except CollabCallError as e:
            return [type(e.cause).__name__, time.monotonic() - t0]
"""


def test_a_timeout_fails_the_call_fast_and_cancels_it_at_the_site(healthy, tmp_path):
    job = export_job(tmp_path, SLOW, job_name="slow")
    t0 = time.monotonic()
    done = healthy.run_job(job, timeout=60)
    assert done["status"] == "finished", done["error"]
    assert time.monotonic() - t0 < 20, "the methods would have run 30 s each"
    r = done["result"]
    assert sorted(r["group"]) == SITES
    for site, (cause, text) in r["group"].items():
        assert cause == "TimeoutError" and "0.5 s" in text, (site, cause, text)
    assert 0.4 < r["group_seconds"] < 3.0, r["group_seconds"]
    for site in SITES:  # each site saw collab.is_aborted soon after the deadline, not after 30 s
        ((aborted, seconds),) = r["seen"][site]
        assert aborted is True and seconds < 3.0, (site, aborted, seconds)
    cause, seconds = r["relayed"]
    assert cause == "TimeoutError" and seconds < 3.0, r["relayed"]
    aborted, seconds = r["seen_after_relay"]["site-2"][1]
    assert aborted is True and seconds < 3.0, r["seen_after_relay"]
    cause, seconds = r["to_server"]
    assert cause == "TimeoutError" and seconds < 3.0, r["to_server"]
    ((aborted, seconds),) = r["server_seen"]
    assert aborted is True and seconds < 3.0, r["server_seen"]
    # the sites also left a trace in their own workspace folders
    traces = list((healthy.root / "sites").glob("*/jobs/slow-*/workspace/*/slow.txt"))
    assert len(traces) == 3 and all(t.read_text().startswith("aborted=True") for t in traces)


# -- missing sites --------------------------------------------------------------------------------


def test_a_job_naming_a_site_that_never_connects_fails_within_wait_timeout(healthy, tmp_path):
    job = export_job(tmp_path, ECHO, job_name="missing")
    admin = healthy.admin()
    t0 = time.monotonic()
    job_id = admin.submit(job, sites=["site-1", "site-4"], wait_timeout=1.5)
    done = admin.follow(job_id, timeout=30)
    elapsed = time.monotonic() - t0
    assert done["status"] == "failed"
    assert "site-4" in done["error"] and "did not connect" in done["error"], done["error"]
    assert "'site-1'" not in done["error"].split("connected:")[0], "only the missing site is blamed"
    assert 1.4 < elapsed < 10, elapsed
    # min_clients above what is connected: fails within wait_timeout and says so
    big = export_job(tmp_path, ECHO, job_name="toomany", min_clients=5)
    t0 = time.monotonic()
    done = admin.follow(admin.submit(big, wait_timeout=1.0), timeout=30)
    assert done["status"] == "failed"
    assert "min_clients=5" in done["error"] and "3 site(s) connected" in done["error"], done["error"]
    assert time.monotonic() - t0 < 10
    # the server is fine
    _echo_ok(healthy.run_job(export_job(tmp_path, ECHO, server="Server(tag='ok')"), timeout=60), "ok")


def test_a_result_that_cannot_be_sent_still_ends_the_follow_and_the_server_goes_on(healthy, tmp_path):
    """A job's end whose result cannot be encoded (e.g. its type's serializer is gone by then)
    reaches the follower with the reason instead of the value; the job loop survives it."""
    echo = export_job(tmp_path, ECHO, server="Server(tag='enc')", job_name="unsendable")
    server = healthy.server
    real = server._done_message
    server._done_message = lambda job: {**real(job), "result": object()}  # cannot be encoded
    try:
        with healthy.admin() as admin:
            job = admin.submit(echo)
            done = admin.follow(job, timeout=60)  # followed while it runs: the job loop's send
            again = admin.follow(job, timeout=60, subscribe=True)  # after it ended: the follow handler
    finally:
        server._done_message = real
    for d in (done, again):
        assert d["status"] == "finished" and d["result"] is None
        assert "its result cannot be sent" in d["error"], d["error"]
    _echo_ok(healthy.run_job(echo, timeout=60), "enc")  # the server still runs jobs
