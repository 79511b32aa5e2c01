"""The TCP transport end to end: real sockets on 127.0.0.1, an in-process Server and SiteAgents on
threads. Messages both ways, a 1 GiB state dict through a real job while heartbeats and small
calls keep flowing, garbage from authenticated and unauthenticated peers, TLS identity rules."""

from __future__ import annotations

import gc
import logging
import random
import socket
import ssl
import struct
import threading
import time

import pytest

from collab_core import wire
from collab_tcp.connection import MAX_CHUNK, Connection, ConnectionClosed
from collab_tcp.site import SiteAgent

from .helpers import (
    END,
    LOCAL,
    START,
    TIMEOUT,
    chunk,
    export_job,
    forged_context,
    message_bytes,
    recv_message,
    tls_connect,
    wait_closed_by_peer,
    wait_for,
)

ECHO = """
import os, time, zlib
import numpy as np
from collab_core import collab

class Server:
    def __init__(self, payload="hi"):
        self.payload = payload

    @collab.main
    def run(self):
        res = collab.clients.echo(self.payload)
        return {"echo": sorted(res), "name": collab.clients["site-1"].whoami()}

class Client:
    @collab.publish
    def echo(self, x):
        return [collab.site_name, x]

    @collab.publish
    def whoami(self):
        return collab.site_name

    @collab.publish
    def ping(self):
        return os.getpid()
"""


# -- connection: messages both ways ---------------------------------------------------------------


def _pair(heartbeat=0.2, dead_after=5.0):
    """Two Connections over a real TCP socket pair on 127.0.0.1 (no TLS: the framing alone)."""
    listener = socket.create_server((LOCAL, 0))
    listener.settimeout(TIMEOUT)
    client = socket.create_connection(listener.getsockname(), timeout=TIMEOUT)
    server, _ = listener.accept()
    listener.close()
    for s in (client, server):
        s.settimeout(None)
    inboxes = {"a": [], "b": []}
    closed = {}
    got = threading.Condition()

    def on_message(name):
        def handler(conn, msg):
            with got:
                inboxes[name].append(msg)
                got.notify_all()
        return handler

    def on_close(name):
        def handler(conn, reason):
            closed[name] = reason
        return handler

    a = Connection(client, "b", "test", on_message("a"), on_close("a"), heartbeat, dead_after, name="a").start()
    b = Connection(server, "a", "test", on_message("b"), on_close("b"), heartbeat, dead_after, name="b").start()
    return a, b, inboxes, closed, got


def test_connection_carries_messages_both_ways_small_and_chunked_interleaved():
    np = pytest.importorskip("numpy")
    a, b, inbox, closed, got = _pair()
    try:
        big = np.arange(3 * (1 << 20) + 17, dtype=np.uint16)  # 6 MiB: several chunks, odd tail
        a.send({"t": "big", "x": big})
        for i in range(50):  # small messages go ahead of the bulk transfer's chunks
            a.send({"t": "small", "i": i})
            b.send({"t": "reply", "i": i, "s": "é" * i})
        with got:
            assert got.wait_for(lambda: len(inbox["b"]) == 51 and len(inbox["a"]) == 50, TIMEOUT)
        small = [m["i"] for m in inbox["b"] if m["t"] == "small"]
        assert small == list(range(50)), "small messages of one sender arrive in order"
        (bulk,) = [m for m in inbox["b"] if m["t"] == "big"]
        assert bulk["x"].dtype == np.uint16 and np.array_equal(bulk["x"], big)
        assert [m["i"] for m in inbox["a"]] == list(range(50))
        assert inbox["a"][7]["s"] == "é" * 7
        assert inbox["b"].index(bulk) > 0, "the small messages overtook the 6 MiB one"
        # only user messages reach on_message (pings are swallowed), and pings keep flowing
        time.sleep(0.5)
        assert {m["t"] for m in inbox["b"]} == {"big", "small"}
        assert a.check_alive() and b.check_alive()
        a.close("test done")
        wait_for(lambda: "b" in closed, 5, what="the peer to see the close")
        assert closed["a"] == "test done"
        assert "closed" in closed["b"]
        with pytest.raises(ConnectionClosed):
            a.send({"t": "late"})
    finally:
        a.close("test done")
        b.close("test done")


def test_connection_with_a_silent_peer_is_declared_dead_after_dead_after():
    listener = socket.create_server((LOCAL, 0))
    raw = socket.create_connection(listener.getsockname(), timeout=TIMEOUT)
    server, _ = listener.accept()
    listener.close()
    closed = {}
    conn = Connection(server, "silent", "test", lambda c, m: None, lambda c, r: closed.setdefault("r", r),
                      heartbeat=0.1, dead_after=0.5).start()
    try:
        t0 = time.monotonic()
        assert conn.check_alive()
        wait_for(lambda: not conn.check_alive(), 5, interval=0.05, what="the silent peer to be declared dead")
        assert time.monotonic() - t0 > 0.4  # not before dead_after (the wait above bounds it)
        assert "no heartbeat from silent" in closed["r"]
    finally:
        conn.close("done")
        raw.close()


# -- 1 GiB through a real job ---------------------------------------------------------------------

BIG = """
import time, zlib
import numpy as np
from collab_core import collab

def digest(sd):
    out = {}
    for k, v in sd.items():
        mid = v.size // 2
        out[k] = [int(v.size), str(v.dtype), int(v[:4096].sum()), int(v[-4096:].sum()),
                  zlib.crc32(v[mid:mid + 262144].tobytes()), zlib.crc32(v[::4099].tobytes())]
    return out

class Server:
    def __init__(self, mib):
        self.mib = mib

    @collab.main
    def run(self):
        n = self.mib * (1 << 20) // 4 // 4
        sd = {f"layer{i}.weight": np.arange(i * n, (i + 1) * n, dtype=np.uint32) for i in range(4)}
        sd["layer1.weight"][::7] ^= 0xA5A5A5A5  # not just a ramp
        before = digest(sd)
        t0 = time.monotonic()
        fut = collab.clients["site-1"](blocking=False).echo(sd)
        pings = {"site-1": [], "site-2": []}
        while not fut.done() and time.monotonic() - t0 < 120:
            for site in pings:  # the same connection as the transfer, and another one
                t = time.monotonic()
                collab.clients[site](timeout=30).ping()
                pings[site].append(time.monotonic() - t)
            time.sleep(0.05)
        back, seen_at_site = fut.result(timeout=60)
        seconds = time.monotonic() - t0
        equal = all(np.array_equal(sd[k], back[k]) for k in sd) and list(back) == list(sd)
        after = digest(back)
        del sd, back
        return {"seconds": seconds, "equal": equal, "digest_ok": before == after == seen_at_site,
                "pings": {s: len(p) for s, p in pings.items()},
                "max_ping": {s: max(p) if p else None for s, p in pings.items()}}

class Client:
    @collab.publish
    def echo(self, sd):
        return sd, digest(sd)

    @collab.publish
    def ping(self):
        return collab.site_name
"""


@pytest.mark.slow
def test_one_gib_state_dict_round_trip_while_heartbeats_and_small_calls_flow(make_cluster, tmp_path):
    """server -> site-1 -> server with 1 GiB; the peers' liveness limit is far below the transfer
    time, so the connections survive only if pings keep arriving during the bulk transfer; small
    calls on the same and on another connection complete meanwhile."""
    gc.collect()
    cluster = make_cluster(heartbeat=0.25, dead_after=2.0, server_dead_after=2.5)
    # (the server's limit is 2.5 s, not 2: AdminClient always pings every 2 s, whatever the server's
    # dead_after, so a server with dead_after <= 2 s drops the admin that follows the job)
    agents = {s: cluster.start_site(s) for s in ("site-1", "site-2")}
    conns_before = {s: cluster.server.sites[s] for s in agents}
    agent_conns_before = {s: a.conn for s, a in agents.items()}
    job = export_job(tmp_path, BIG, server="Server(mib=1024)", job_name="big")
    done = cluster.run_job(job, timeout=150)
    assert done["status"] == "finished", done["error"]
    r = done["result"]
    assert r["equal"] and r["digest_ok"], r
    assert r["seconds"] > 2.5, f"the transfer took {r['seconds']:.1f} s: too fast to prove liveness; use more data"
    for site in agents:  # control messages overtake the bulk chunks: calls stay fast
        assert r["pings"][site] >= 5, r
        assert r["max_ping"][site] < 2.0, r
    # nobody was declared dead or replaced during the transfer
    for site in agents:
        assert cluster.server.sites[site] is conns_before[site]
        assert not conns_before[site].closed.is_set()
        assert agents[site].conn is agent_conns_before[site]
    assert conns_before["site-1"].bytes_received > 1 << 30 and conns_before["site-1"].bytes_sent > 1 << 30
    del done, r
    gc.collect()


# -- garbage from authenticated peers ---------------------------------------------------------------


def _valid_frame(msg) -> bytes:
    return b"".join(bytes(p) for p in wire.frame_parts(msg))


def _prefix(nbuf: int, hlen: int) -> bytes:
    return wire.MAGIC + bytes([wire.FORMAT_VERSION, 0, 0, 0]) + struct.pack("<IQ", nbuf, hlen)


GARBAGE = {
    "random bytes": (lambda: random.Random(1234).randbytes(4096), "malformed data"),
    "a chunk header declaring 4 GiB": (lambda: struct.pack("<IBI", 1, START | END, 0xFFFFFFFF) + b"x" * 64,
                                       f"exceeds the maximum of {MAX_CHUNK}"),
    "unknown chunk flags": (lambda: struct.pack("<IBI", 1, 0x80, 4) + b"abcd", "unknown chunk flags"),
    "a chunk of a stream never started": (lambda: chunk(9, END, _valid_frame({"t": "hello"})), "never started"),
    "a stream started twice": (lambda: chunk(3, START, _valid_frame({"t": "hello"})[:10]) + chunk(3, START, b"x"),
                               "started twice"),
    "a valid chunk with a bad magic": (lambda: chunk(1, START | END, b"NOPE" + bytes(60)), "not a collab wire frame"),
    "a valid chunk with a broken msgpack header": (lambda: chunk(1, START | END, _prefix(0, 8) + b"\xc1" * 8),
                                                   "malformed data"),
    "a frame that ends before its END chunk": (lambda: chunk(1, START, _valid_frame({"t": "hello"})) + chunk(1, END, b"z"),
                                               "malformed data"),
    "END inside a frame": (lambda: chunk(1, START | END, _valid_frame({"t": "hello"})[:-3]), "ended inside a frame"),
    "a message that is not a dict": (lambda: message_bytes([1, 2, 3]), "must be a dict"),
    "a dict without a string 't'": (lambda: message_bytes({"t": 5}), "must be a dict"),
    "an unknown message type": (lambda: message_bytes({"t": "rm -rf"}), "unknown message type"),
    "a frame declaring a 2**40-byte buffer, then close": (lambda: chunk(1, START, _prefix(1, 4) + struct.pack("<Q", 1 << 40) + b"\x80" * 4 + b"x" * 1000),
                                                          ("closed", "EOF")),
    "a truncated frame, then close": (lambda: struct.pack("<IBI", 1, START | END, 1000) + _valid_frame({"t": "hello"})[:20],
                                      ("closed", "EOF")),
}


def _server_side(server, peer):
    """The server's live connection from ``peer``: registered (after its hello) or still greeting."""
    with server._lock:
        conns = [*server.sites.values(), *server.admins, *server._greeting]
    return next((c for c in conns if c.peer == peer and not c.closed.is_set()), None)


def _server_conn_of(cluster, site, old=None):
    return wait_for(lambda: (c := _server_side(cluster.server, site)) is not None and c is not old and c,
                    10, what=f"the server to admit {site}")


@pytest.mark.parametrize("send_hello", [False, True], ids=["fresh", "after-hello"])
def test_garbage_from_a_valid_site_certificate_closes_only_that_connection(make_cluster, tmp_path, kits, caplog,
                                                                           send_hello):
    cluster = make_cluster()
    cluster.start_site("site-1")
    ctx = kits.sites["site-3"].client_context()
    caplog.set_level(logging.INFO, logger="collab.tcp")
    old = None
    for name, (make, reason) in GARBAGE.items():
        caplog.clear()
        sock = tls_connect(ctx, cluster.address)
        try:
            conn = old = _server_conn_of(cluster, "site-3", old)
            if send_hello:
                sock.sendall(message_bytes({"t": "hello", "job": None}))
                assert recv_message(sock)["t"] == "welcome"
            sock.sendall(make())
            if "then close" in name:
                sock.close()
            else:
                # the server closes its end; we see EOF (or a reset) within a bound
                wait_closed_by_peer(sock, 10)
        finally:
            sock.close()
        assert conn.closed.wait(10), f"{name}: the server kept the connection open"
        reasons = reason if isinstance(reason, tuple) else (reason,)
        assert any(r in conn.close_reason for r in reasons), f"{name}: closed for {conn.close_reason!r}, expected {reason!r}"
        # the reason is logged (the log call follows the close by a moment)
        wait_for(lambda c=conn: any(r.name == "collab.tcp" and "site-3" in r.getMessage() and c.close_reason in r.getMessage()
                                    for r in caplog.records), 5, what=f"{name}: a log record with the reason")
        wait_for(lambda: "site-3" not in cluster.connected(), 5, what="site-3 to leave the server's site table")
        assert "site-1" in cluster.connected(), f"{name}: another site's connection was affected"
    # the server keeps serving: a real site completes a job
    job = export_job(tmp_path, ECHO, server="Server(payload='after garbage')")
    done = cluster.run_job(job, sites=["site-1"], timeout=60)
    assert done["status"] == "finished", done["error"]
    assert done["result"] == {"echo": [("site-1", ["site-1", "after garbage"])], "name": "site-1"}


def test_plain_tcp_garbage_and_idle_sockets_are_rejected_and_the_server_keeps_serving(make_cluster, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="collab.tcp.server")
    cluster = make_cluster()
    idle = socket.create_connection(cluster.address, timeout=TIMEOUT)  # never says anything
    http = socket.create_connection(cluster.address, timeout=TIMEOUT)
    junk = socket.create_connection(cluster.address, timeout=TIMEOUT)
    chunked = socket.create_connection(cluster.address, timeout=TIMEOUT)
    try:
        http.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        junk.sendall(random.Random(7).randbytes(8192))
        chunked.sendall(message_bytes({"t": "submit", "files": {}}))  # our framing, but no TLS
        for s in (http, junk, chunked):
            assert wait_closed_by_peer(s, 10)
        wait_for(lambda: sum("rejected connection" in r.getMessage() for r in caplog.records) >= 3, 10,
                 what="three logged rejections")
        # an idle plain-TCP socket holds no one up: a site connects and a job runs meanwhile
        cluster.start_site("site-1")
        job = export_job(tmp_path, ECHO, server="Server(payload=1)")
        done = cluster.run_job(job, sites=["site-1"], timeout=60)
        assert done["status"] == "finished", done["error"]
        assert cluster.server.jobs and all(j.submitted_by == "admin@example.org" for j in cluster.server.jobs.values())
    finally:
        for s in (idle, http, junk, chunked):
            s.close()


# -- TLS identity ---------------------------------------------------------------------------------


def _ctx(ca=None, cert=None, key=None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = True
    ctx.load_verify_locations(cafile=str(ca))
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


def _assert_rejected(ctx, address):
    """The server refuses this client: the handshake fails, or (TLS 1.3: the client finishes first)
    the first read fails or sees EOF; and nothing is admitted."""
    try:
        sock = tls_connect(ctx, address)
    except (ssl.SSLError, ConnectionError):
        return
    try:
        with pytest.raises((ssl.SSLError, ConnectionError, EOFError)):
            sock.sendall(message_bytes({"t": "hello", "job": None}))
            recv_message(sock, timeout=10)
    finally:
        sock.close()


def test_tls_rejects_other_projects_missing_certificates_and_wrong_roles(make_cluster, kits, caplog, tmp_path):
    caplog.set_level(logging.WARNING, logger="collab.tcp.server")
    cluster = make_cluster()
    demo_ca = kits.server.ca_cert
    ca_dir = kits.root / kits.project / "ca"
    cases = {  # name: (client context, what the server's log says)
        "a site of project other": (_ctx(demo_ca, kits.other_site.cert, kits.other_site.key),
                                    "certificate verify failed"),
        "no client certificate": (_ctx(demo_ca), "certificate"),
        "the server's own certificate": (_ctx(demo_ca, kits.server.cert, kits.server.key),
                                         "unsuitable certificate purpose"),
        "project other, signed by this project's CA": (
            forged_context(ca_dir, demo_ca, tmp_path / "forged", project="other", name="site-1", role="site"),
            "is for project 'other', not 'demo'"),
        "role server with a client certificate": (
            forged_context(ca_dir, demo_ca, tmp_path / "forged", project="demo", name="server", role="server"),
            "role 'server' may not connect"),
        "an unknown role": (forged_context(ca_dir, demo_ca, tmp_path / "forged", project="demo", name="x", role="root"),
                            "unknown role 'root'"),
    }
    for name, (ctx, logged) in cases.items():
        before = len(caplog.records)
        _assert_rejected(ctx, cluster.address)
        wait_for(lambda b=before, text=logged: any(text in r.getMessage() for r in caplog.records[b:]), 10,
                 what=f"the server to log the rejection of {name} ({logged!r})")
        assert cluster.connected() == [], name
    # a real SiteAgent with the other project's kit never gets in (and keeps retrying, bounded)
    agent = SiteAgent(kits.other_site.with_server(*cluster.address), cluster.root / "other-site",
                      heartbeat=0.5, dead_after=5.0, max_backoff=0.2)
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    try:
        assert not agent.connected.wait(2.0)
        assert cluster.connected() == []
    finally:
        agent.stop()
        thread.join(10)
    assert not thread.is_alive()


def test_a_site_cannot_act_as_admin_and_an_admin_cannot_act_as_a_site(make_cluster, tmp_path, kits):
    cluster = make_cluster()
    job = export_job(tmp_path, ECHO)
    files = {p.relative_to(job).as_posix(): p.read_bytes() for p in job.rglob("*") if p.is_file()}
    attempts = [
        (kits.sites["site-3"], {"t": "submit", "rid": 1, "files": files, "sites": None, "follow": True}, "site-3"),
        (kits.sites["site-3"], {"t": "shutdown", "rid": 2, "sites": True}, "site-3"),
        (kits.sites["site-3"], {"t": "status", "rid": 3}, "site-3"),
        (kits.admin, {"t": "hello", "job": None}, "admin@example.org"),
        (kits.admin, {"t": "call", "job": "x", "id": 1, "target": "server", "method": "run", "args": [], "kwargs": {}},
         "admin@example.org"),
    ]
    def server_side(peer):
        return _server_side(cluster.server, peer)

    for kit, msg, peer in attempts:
        sock = tls_connect(kit.client_context(), cluster.address)
        try:
            conn = wait_for(lambda p=peer: server_side(p), 10, what=f"the server to admit {peer}")
            sock.sendall(message_bytes(msg))
            assert wait_closed_by_peer(sock, 10)
        finally:
            sock.close()
        assert conn.closed.wait(10)
        assert conn.close_reason == f"protocol error: unknown message type {msg['t']!r}", conn.close_reason
    assert cluster.server.jobs == {}, "a site submitted a job"
    assert not cluster.server._stop.is_set(), "a site shut the server down"
    # and the server is fine: an admin sees no jobs, a site connects and runs one
    with cluster.admin() as admin:
        assert admin.status()["jobs"] == []
    cluster.start_site("site-1")
    done = cluster.run_job(job, sites=["site-1"])
    assert done["status"] == "finished", done["error"]


def test_a_second_connection_with_the_same_site_certificate_replaces_the_first(make_cluster, kits):
    cluster = make_cluster()
    ctx = kits.sites["site-2"].client_context()
    first = tls_connect(ctx, cluster.address)
    second = None
    try:
        first.sendall(message_bytes({"t": "hello", "job": None}))
        assert recv_message(first)["t"] == "welcome"
        conn1 = cluster.server.sites["site-2"]
        second = tls_connect(ctx, cluster.address)
        second.sendall(message_bytes({"t": "hello", "job": None}))
        assert recv_message(second)["t"] == "welcome"
        assert wait_closed_by_peer(first, 10)
        assert conn1.closed.is_set()
        assert conn1.close_reason == "replaced by a new connection from the same site"
        conn2 = cluster.server.sites["site-2"]
        assert conn2 is not conn1 and not conn2.closed.is_set()
        # the newer one keeps working (the old one's close did not remove it from the table)
        second.sendall(message_bytes({"t": "hello", "job": None}))
        assert recv_message(second)["t"] == "welcome"
        assert cluster.connected() == ["site-2"]
    finally:
        first.close()
        if second is not None:
            second.close()
    wait_for(lambda: cluster.connected() == [], 10, what="site-2 to be gone after both closed")
