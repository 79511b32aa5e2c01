"""A participant cannot forge results: a result is accepted only from the connection its call was
sent on, a relayed result only from the relay's target. A forgery is dropped, logged with the
sender's certificate name, and the sender's connection is closed; the honest sites' results all
arrive. Call and relay ids are random (defence in depth, not the fix)."""

from __future__ import annotations

import logging

from collab_tcp.rpc import new_wire_id

from .helpers import export_job, wait_for

FORGERY = """
import time
from pathlib import Path
from collab_core import collab

GATES = Path({gate!r})

def _wait_gate(name):
    deadline = time.monotonic() + 60
    while not (GATES / name).exists() and time.monotonic() < deadline:
        time.sleep(0.02)

class Server:
    @collab.main
    def run(self):
        direct = collab.clients(min_responses=2).work()
        relayed = collab.clients["site-1"].ask_peer("site-2")
        return {{"direct": sorted(direct), "failures": sorted(direct.failures), "relayed": relayed}}

class Client:
    @collab.publish
    def work(self):
        _wait_gate("direct")
        return "honest-" + collab.site_name

    @collab.publish
    def ask_peer(self, peer):
        return collab.clients[peer].slow_answer()

    @collab.publish
    def slow_answer(self):
        _wait_gate("relay")
        return "honest-relay-" + collab.site_name
"""


def test_a_result_is_accepted_only_from_the_connection_its_call_went_to(make_cluster, tmp_path, caplog):
    gate = tmp_path / "gates"
    gate.mkdir()
    cluster = make_cluster()
    for site in ("site-1", "site-2", "site-3"):
        cluster.start_site(site)
    attacker = cluster.agents["site-3"]
    job_dir = export_job(tmp_path, FORGERY.format(gate=str(gate)), job_name="forge", min_clients=3)
    caplog.set_level(logging.WARNING, logger="collab.tcp")
    admin = cluster.admin()
    job_id = admin.submit(job_dir, sites=["site-1", "site-2", "site-3"], wait_timeout=20)

    def pending_direct():
        job = cluster.server.current
        if job is None or job.backend is None:
            return None
        with job.backend._lock:
            ids = {wid: entry[0].target for wid, entry in job.backend._pending.items()}
        return ids if {"site-1", "site-2"} <= set(ids.values()) else None

    direct_ids = wait_for(pending_direct, what="the calls to site-1 and site-2 in flight")
    conn = attacker.conn
    sent = 0
    for wid, target in direct_ids.items():
        if target == "site-3":
            continue
        # the exact ids of the calls to the other sites, and their neighbours
        for forged in (wid, wid + 1, wid - 1):
            conn.send({"t": "result", "job": job_id, "id": forged, "ok": True, "value": "FORGED"})
            sent += 1
    wait_for(lambda: conn.closed.is_set(), what="the server to close the forger's connection")
    # the attacker reconnects by itself; now forge a relayed result
    wait_for(lambda: attacker.conn is not None and attacker.conn is not conn and not attacker.conn.closed.is_set(),
             what="the forger to reconnect")

    def pending_relay():
        job = cluster.server.current
        if job is None:
            return None
        with job.changed:
            return [rid for rid, r in job.relays.items() if r.target == "site-2"] or None

    (gate / "direct").write_text("open")  # let the direct round finish; main then starts the relayed call
    relay_ids = wait_for(pending_relay, what="the relayed call site-1 -> site-2 in flight")
    conn2 = attacker.conn
    for rid in relay_ids:
        for forged in (rid, rid + 1, 1 << 62):
            conn2.send({"t": "result", "job": job_id, "id": forged, "ok": True, "value": "FORGED"})
    wait_for(lambda: conn2.closed.is_set(), what="the server to close the relay forger's connection")
    # an id that is not even an integer (unhashable): refused the same way, the job goes on
    wait_for(lambda: attacker.conn is not None and attacker.conn is not conn2 and not attacker.conn.closed.is_set(),
             what="the forger to reconnect again")
    conn3 = attacker.conn
    conn3.send({"t": "result", "job": job_id, "id": [relay_ids[0]], "ok": True, "value": "FORGED"})
    wait_for(lambda: conn3.closed.is_set(), what="the server to close the connection that sent a malformed id")
    assert any("call id is list, not an integer" in r.getMessage() and "site-3" in r.getMessage()
               for r in caplog.records)
    (gate / "relay").write_text("open")

    done = admin.follow(job_id, timeout=60)
    assert done["status"] == "finished", done["error"]
    result = done["result"]
    assert result["direct"] == [("site-1", "honest-site-1"), ("site-2", "honest-site-2")]
    assert result["failures"] == ["site-3"]  # the forger's own call failed with its connection
    assert result["relayed"] == "honest-relay-site-2"
    assert "FORGED" not in repr(result)
    forgeries = [r for r in caplog.records if "protocol violation" in r.getMessage() or "closing site site-3" in r.getMessage()]
    assert forgeries and all("site-3" in r.getMessage() for r in forgeries)
    assert sent >= 6


LATE = """
import time
from collab_core import collab

class Server:
    @collab.main
    def run(self):
        try:
            collab.clients["site-1"](timeout=0.3).slow()
            timed_out = False
        except Exception:
            timed_out = True
        time.sleep(1.5)  # the late result of slow() arrives meanwhile
        return {"timed_out": timed_out, "after": collab.clients["site-1"].quick()}

class Client:
    @collab.publish
    def slow(self):
        time.sleep(1.0)  # ignores the cancellation and answers late
        return "late"

    @collab.publish
    def quick(self):
        return "quick"
"""


def test_the_late_result_of_a_cancelled_call_is_dropped_without_closing_the_connection(make_cluster, tmp_path):
    cluster = make_cluster()
    cluster.start_site("site-1")
    conn = cluster.agents["site-1"].conn
    done = cluster.run_job(export_job(tmp_path, LATE, job_name="late"), sites=["site-1"])
    assert done["status"] == "finished", done["error"]
    assert done["result"] == {"timed_out": True, "after": "quick"}
    assert not conn.closed.is_set(), f"the honest site was disconnected: {conn.close_reason}"


def test_call_and_relay_ids_are_random_not_sequential():
    ids = [new_wire_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    assert all(0 < i < (1 << 63) for i in ids)
    steps = {b - a for a, b in zip(ids, ids[1:], strict=False)}
    assert len(steps) > 1900  # no counter: the next id cannot be guessed from the last
