"""The server keeps accepting, and jobs survive their processes restarting, proved with real
server and site processes (`collab server start`, `collab site start`) on 127.0.0.1:

- a server whose open-file limit is 256 under 300 idle attacker connections accepts again as soon
  as the attacker goes away, and runs a job;
- a site SIGKILLed mid-job and started again with the same kit is given the job again (its
  ``@collab.init`` runs again) and takes part in the later calls; while it is away, its calls fail
  with "site-3 is not connected";
- a server SIGKILLed mid-job and started again on the same workspace reports that job as failed
  ("the server restarted"), to ``collab status`` and to a waiting admin, never as running.
"""

from __future__ import annotations

import json
import resource
import shutil
import signal
import socket
import sys
import time
import uuid

import pytest

from collab_tcp.admin import AdminClient

from .helpers import (
    TIMEOUT,
    ServerProcess,
    export_job,
    kill_group,
    read_port_file,
    run_cli,
    set_kit_server,
    start_server_process,
    start_site_process,
    tail,
    terminate,
    wait_for,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def procs():
    """Processes a test started; each is stopped (by pid, then its process group) at the end."""
    started: list = []
    yield started
    try:
        terminate([p for p in started if p.poll() is None], 10)
    finally:
        for p in started:
            if p.poll() is None:
                kill_group(p)


def sites_of(kits, address) -> list[str]:
    try:
        with AdminClient(kits.admin, address=address, timeout=5) as admin:
            return sorted(admin.status()["sites"])
    except Exception:
        return []


# -- out of file descriptors ----------------------------------------------------------------------


def _limit_open_files() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_NOFILE semantics")
@pytest.mark.parametrize("attacker", ["tcp", "tls-site-kit"])
def test_a_server_out_of_file_descriptors_accepts_again_when_the_attacker_goes_away(kits, tmp_path, attacker):
    """``tcp``: unauthenticated idle connections (at most 128 are kept in their handshake, the
    rest closed at once). ``tls-site-kit``: connections that complete the TLS handshake with a
    site's kit and then say nothing, so the server really runs out of descriptors (EMFILE)."""
    server = ServerProcess(kits, tmp_path / "srv", preexec_fn=_limit_open_files)
    attackers: list[socket.socket] = []
    try:
        limit = open(f"/proc/{server.pid}/limits").read()
        assert any(line.startswith("Max open files") and " 256 " in line for line in limit.splitlines()), limit
        failures = 0
        for _ in range(300):
            try:
                if attacker == "tcp":
                    attackers.append(socket.create_connection(server.address, timeout=5))
                else:
                    attackers.append(server.attacker_with_timeout(2.0))
                failures = 0
            except OSError:  # refused, reset or not accepted: the server is full; keep going
                failures += 1
                if failures >= 3:
                    break
        time.sleep(1.0)  # the server's accept loop meets its limit (or its handshake cap)
        assert server.proc.poll() is None, tail(server.log)
        held = len(attackers)
        gone_at = time.monotonic()
        for sock in attackers:
            sock.close()
        attackers.clear()
        wait_for(lambda: _admin_ok(kits, server.address),
                 TIMEOUT, interval=0.05, what="the server to accept an admin again")
        accepted_after = time.monotonic() - gone_at
        print(f"\nEMFILE: the server accepted an authenticated connection again {accepted_after:.2f} s "
              f"after {held} idle attacker connections ({attacker}) closed")
        log = server.log.read_text(errors="replace")
        print(f"EMFILE ({attacker}): the server logged",
              "'cannot accept connections'" if "cannot accept connections" in log else "only its handshake cap")
        if attacker == "tcp":
            assert "cannot accept connections" in log or "too many pending handshakes" in log, tail(server.log)
        else:
            assert "cannot accept connections" in log, tail(server.log)
            assert "accepting connections again" in log, tail(server.log)
        server.still_serves(tmp_path)
    finally:
        for sock in attackers:
            sock.close()
        server.stop()


def _admin_ok(kits, address) -> bool:
    try:
        with AdminClient(kits.admin, address=address, timeout=5) as admin:
            admin.status()
        return True
    except Exception:
        return False


# -- a site restarted mid-job ---------------------------------------------------------------------

REJOIN = """
import time
from pathlib import Path
from collab_core import collab
from collab_core.errors import CollabCallError

class Server:
    @collab.main
    def run(self):
        errors, first = [], None
        t0 = time.monotonic()
        while time.monotonic() - t0 < 120:
            try:
                got = collab.clients["site-3"].inits()
            except CollabCallError as e:
                errors.append(str(e))
            else:
                if first is None:
                    first = got
                elif errors:
                    everyone = sorted(collab.clients.inits())
                    return {"first": first, "errors": errors, "after": got, "everyone": everyone}
            time.sleep(0.1)
        return {"first": first, "errors": errors, "after": None}

class Client:
    def __init__(self, marker_dir):
        self.marker_dir = marker_dir

    @collab.init
    def setup(self):
        f = Path(self.marker_dir, collab.site_name + ".inits")
        n = int(f.read_text()) + 1 if f.exists() else 1
        f.write_text(str(n))
        self.n = n

    @collab.publish
    def inits(self):
        return [collab.site_name, self.n]
"""


def test_a_site_killed_mid_job_and_restarted_is_given_the_job_again(kits, tmp_path, procs):
    srv = tmp_path / "srv"
    port_file, log = srv / "server.port", srv / "processes" / "server.log"
    server = start_server_process(kits.server.path, port_file, srv / "server", log, dead_after=10.0)
    procs.append(server)
    address = read_port_file(port_file, server, log_path=log)
    markers = tmp_path / "markers"
    markers.mkdir()

    def site(name):
        p = start_site_process(kits.sites[name].path, port_file, srv / "sites" / name,
                               srv / "processes" / f"{name}.log", dead_after=10.0)
        procs.append(p)
        return p

    site("site-2")
    site3 = site("site-3")
    wait_for(lambda: sites_of(kits, address) == ["site-2", "site-3"], TIMEOUT, interval=0.1,
             what="both sites to connect")
    job_dir = export_job(tmp_path, REJOIN, client=f"Client(marker_dir={str(markers)!r})", job_name="rejoin")
    with AdminClient(kits.admin, address=address, timeout=TIMEOUT) as admin:
        job = admin.submit(job_dir, sites=["site-2", "site-3"], wait_timeout=30)
        wait_for(lambda: (markers / "site-3.inits").exists(), 60, what="site-3's @collab.init")
        time.sleep(0.5)  # main has had answers from site-3
        site3.send_signal(signal.SIGKILL)
        site3.wait(10)
        time.sleep(1.0)  # calls fail while it is away
        site("site-3")  # the same kit and workspace
        done = admin.follow(job, timeout=120)
    assert done["status"] == "finished", (done, tail(log))
    r = done["result"]
    assert list(r["first"]) == ["site-3", 1]
    assert r["errors"], "no call failed while site-3 was away"
    assert any("site-3 is not connected" in e for e in r["errors"]), r["errors"]
    assert all("site-3" in e for e in r["errors"]), r["errors"]
    assert list(r["after"]) == ["site-3", 2], r  # its @collab.init ran again
    assert [tuple(x) for x in r["everyone"]] == [("site-2", ["site-2", 1]), ("site-3", ["site-3", 2])]
    assert (markers / "site-3.inits").read_text() == "2" and (markers / "site-2.inits").read_text() == "1"


# -- a server killed mid-job ----------------------------------------------------------------------

HANG = """
import time
from collab_core import collab

class Server:
    @collab.main
    def run(self):
        collab.clients.hello()
        t0 = time.monotonic()
        while not collab.is_aborted and time.monotonic() - t0 < 120:
            time.sleep(0.05)
        return "should not finish"

class Client:
    @collab.publish
    def hello(self):
        return collab.site_name
"""


def test_a_server_killed_mid_job_reports_it_failed_after_restarting(kits, tmp_path, procs):
    srv = tmp_path / "srv"
    ws = srv / "server"
    port_file, log = srv / "server.port", srv / "processes" / "server-1.log"
    server = start_server_process(kits.server.path, port_file, ws, log, dead_after=10.0)
    procs.append(server)
    address = read_port_file(port_file, server, log_path=log)
    procs.append(start_site_process(kits.sites["site-1"].path, port_file, srv / "sites" / "site-1",
                                    srv / "processes" / "site-1.log", dead_after=10.0))
    wait_for(lambda: sites_of(kits, address) == ["site-1"], TIMEOUT, interval=0.1, what="site-1 to connect")
    job_dir = export_job(tmp_path, HANG, job_name="killed")
    with AdminClient(kits.admin, address=address, timeout=TIMEOUT) as admin:
        job = admin.submit(job_dir, sites=["site-1"], wait_timeout=30)

        def running():
            jobs = {j["id"]: j for j in admin.status()["jobs"]}
            return jobs.get(job, {}).get("status") == "running"

        wait_for(running, 60, interval=0.1, what="the job to run")
    server.send_signal(signal.SIGKILL)
    server.wait(10)
    port_file.unlink()
    log2 = srv / "processes" / "server-2.log"
    server2 = start_server_process(kits.server.path, port_file, ws, log2, port=address[1], dead_after=10.0)
    procs.append(server2)
    assert read_port_file(port_file, server2, log_path=log2) == address
    with AdminClient(kits.admin, address=address, timeout=TIMEOUT) as admin:
        summary = {j["id"]: j for j in admin.status()["jobs"]}[job]
        done = admin.follow(job, timeout=30, subscribe=True)
    assert summary["status"] == "failed" and "the server restarted" in summary["error"], summary
    assert done["status"] == "failed" and "the server restarted while the job was running" in done["error"], done
    # `collab status` says the same
    admin_kit = tmp_path / "admin-kit"
    shutil.copytree(kits.admin.path, admin_kit)
    set_kit_server(admin_kit, address)
    got = run_cli(["status", "--kit", str(admin_kit), "--json"], timeout=60)
    assert got.returncode == 0, got.stderr
    status = {j["id"]: j for j in json.loads(got.stdout)["jobs"]}
    assert status[job]["status"] == "failed" and "the server restarted" in status[job]["error"]
    # and the restarted server runs the next job (site-1 reconnected to it)
    wait_for(lambda: sites_of(kits, address) == ["site-1"], TIMEOUT, interval=0.1, what="site-1 to reconnect")
    with AdminClient(kits.admin, address=address, timeout=TIMEOUT) as admin:
        again = export_job(tmp_path, HANG.replace("collab.clients.hello()\n", "return sorted(collab.clients.hello())\n"),
                           job_name=f"after-{uuid.uuid4().hex[:4]}")
        done = admin.follow(admin.submit(again, sites=["site-1"], wait_timeout=30), timeout=60)
    assert done["status"] == "finished", done
