"""Faults with real processes: a site killed mid-round, a site frozen (no heartbeats), a site whose
connection drops during a job, a server restarted between jobs, and the process table after
PocEnv (finished, failed, timed out). Every wait is bounded; a hang fails the test."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from collab_core import CollabRecipe
from collab_core.app import App
from collab_core.errors import RecipeError
from collab_core.job import pack_job
from collab_tcp import PocEnv
from collab_tcp.admin import AdminClient
from collab_tcp.connection import Connection, handshake
from collab_tcp.site import SiteAgent

from .helpers import (
    LOCAL,
    TIMEOUT,
    export_job,
    job_module,
    kill_group,
    pid_alive,
    read_port_file,
    start_server_process,
    start_site_process,
    tail,
    terminate,
    wait_for,
)


class RecordingPocEnv(PocEnv):
    """PocEnv that remembers every process it started (PocEnv.stop() forgets them)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.spawned: dict[str, subprocess.Popen] = {}

    def _spawn(self, name, args, ws):
        super()._spawn(name, args, ws)
        self.spawned[name] = self.processes[name]


def assert_all_gone(env: RecordingPocEnv, timeout: float = 5.0) -> None:
    """None of the env's processes remains: each was reaped (poll) and its pid no longer exists."""
    assert sorted(env.spawned) == sorted(["server", *env.clients])
    deadline = time.monotonic() + timeout
    for name, proc in env.spawned.items():
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        running = proc.poll() is None
        if running:
            kill_group(proc)
        assert not running, f"PocEnv left its {name} process (pid {proc.pid}) running"
        assert not pid_alive(proc.pid), f"pid {proc.pid} ({name}) still exists"
    assert env.processes == {}


@pytest.fixture
def poc_envs():
    """PocEnvs made by a test; whatever happens, none of their processes outlives the test."""
    made: list[RecordingPocEnv] = []

    def make(**kwargs) -> RecordingPocEnv:
        env = RecordingPocEnv(**kwargs)
        made.append(env)
        return env

    yield make
    for env in made:
        for proc in env.spawned.values():
            if proc.poll() is None:
                kill_group(proc)


def watch_for_file(path: Path, action, timeout: float = 60.0) -> tuple[threading.Thread, dict]:
    """On a thread: wait (bounded) for ``path`` to appear, then run ``action(text)``; the dict
    gets the time it acted ("at") or the error ("error")."""
    out: dict = {}

    def run():
        try:
            wait_for(path.exists, timeout, interval=0.01, what=str(path))
            out["at"] = time.time()
            out["value"] = action(path.read_text())
        except BaseException as exc:  # reported by the test
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


# -- a site killed mid-round ----------------------------------------------------------------------

KILL = """
import os, threading, time
from pathlib import Path
from collab_core import collab
from collab_core.errors import CollabCallError

_lock = threading.Lock()
_arrived = []

def spin():
    t0 = time.monotonic()
    while not collab.is_aborted and time.monotonic() - t0 < 60:
        time.sleep(0.01)

class Server:
    def __init__(self, quorum):
        self.quorum = quorum

    @collab.main
    def run(self):
        group = collab.clients(min_responses=2) if self.quorum else collab.clients
        res = group.work()  # site-2 gets SIGKILLed while it works (and while site-1 waits on it)
        failed_at = time.time()
        failure = res.failures.get("site-2")
        again = collab.clients(min_responses=2).quick()
        return {"ok": sorted(res.sites), "failed_at": failed_at, "relayed": dict(res)["site-1"],
                "failure": [type(failure).__name__, type(failure.cause).__name__, str(failure.cause)],
                "second_round": [sorted(again.sites), sorted(again.failures)]}

class Client:
    def __init__(self, signal_dir):
        self.signal_dir = signal_dir

    def arrived(self, what):
        with _lock:  # site-2 says it is ready to die once both calls are in flight
            _arrived.append(what)
            if len(_arrived) == 2:
                Path(self.signal_dir, "site-2.pid").write_text(str(os.getpid()))

    @collab.publish
    def work(self):
        if collab.site_name == "site-2":
            self.arrived("work")
            spin()
        elif collab.site_name == "site-1":  # a relayed call to site-2 in flight when it dies
            try:
                collab.clients["site-2"].hold()
                return ["no error"]
            except CollabCallError as e:
                return [type(e.cause).__name__, str(e.cause), time.time()]
        return collab.site_name

    @collab.publish
    def hold(self):
        self.arrived("hold")
        spin()

    @collab.publish
    def quick(self):
        return collab.site_name
"""


def _kill_site_2(pidfile_dir: Path):
    def kill(text: str) -> int:
        pid = int(text)
        os.kill(pid, signal.SIGKILL)
        return pid

    return watch_for_file(pidfile_dir / "site-2.pid", kill)


@pytest.mark.slow
@pytest.mark.parametrize("quorum", [True, False], ids=["min_responses=N-1", "default-min_responses"])
def test_a_site_killed_mid_round_fails_its_call_at_once(tmp_path, poc_envs, quorum):
    signals = tmp_path / "signals"
    signals.mkdir()
    env = poc_envs(num_clients=3, workspace=tmp_path / "poc", heartbeat=0.5, dead_after=10.0,
                   start_timeout=30, job_timeout=60)
    watcher, killed = _kill_site_2(signals)
    with job_module(tmp_path, KILL) as mod:
        recipe = CollabRecipe(job_name="killed", server=mod.Server(quorum=quorum),
                              client=mod.Client(signal_dir=str(signals)), min_clients=3)
        t0 = time.monotonic()
        run = recipe.execute(env)
        elapsed = time.monotonic() - t0
    watcher.join(5)
    assert "error" not in killed, killed.get("error")
    assert killed["value"] == env.spawned["site-2"].pid
    assert env.spawned["site-2"].returncode == -signal.SIGKILL
    assert elapsed < 55, f"the run took {elapsed:.0f} s (its job_timeout is 60 s)"
    if quorum:
        assert run.status == "finished", run.error
        r = run.result
        assert r["ok"] == ["site-1", "site-3"]
        kind, cause, text = r["failure"]
        assert kind == "CollabCallError" and cause == "ConnectionError" and "site-2" in text, r["failure"]
        # the socket closed: the call failed long before the 10 s liveness limit
        assert r["failed_at"] - killed["at"] < 3.0, (r["failed_at"], killed["at"])
        assert r["second_round"] == [["site-1", "site-3"], ["site-2"]]
        # site-1's relayed call to site-2 failed at once too (the server fails relays to a lost site)
        cause, text, failed_at = r["relayed"]
        assert cause == "RemoteError" and "ConnectionError" in text and "site-2" in text, r["relayed"]
        assert failed_at - killed["at"] < 3.0
    else:
        assert run.status == "failed"
        assert "@collab.main failed" in run.error and "GroupCallError" in run.error
        assert "site-2" in run.error and "lost the connection to site-2" in run.error, run.error
        assert run.result is None
    assert_all_gone(env)


# -- a frozen site: no heartbeats -----------------------------------------------------------------

FROZEN = """
import os, time
from pathlib import Path
from collab_core import collab

class Server:
    def __init__(self, signal_dir):
        self.signal_dir = signal_dir

    @collab.main
    def run(self):
        res = collab.clients(min_responses=2).work()  # site-2 is SIGSTOPped while it works
        failed_at = time.time()
        failure = res.failures.get("site-2")
        Path(self.signal_dir, "failed").write_text(str(failed_at))
        go = Path(self.signal_dir, "continued")
        deadline = time.monotonic() + 30
        while not go.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        # after SIGCONT site-2 finds its connection closed, reconnects and rejoins the job
        back, tries, t0 = None, 0, time.monotonic()
        while back is None and time.monotonic() - t0 < 20:
            tries += 1
            again = collab.clients(min_responses=0, timeout=5).quick()
            if "site-2" in again.sites:
                back = time.monotonic() - t0
            else:
                time.sleep(0.2)
        return {"ok": sorted(res.sites), "failed_at": failed_at,
                "failure": [type(failure).__name__, str(failure.cause)] if failure else None,
                "rejoined_after": back, "final": sorted(collab.clients.quick().sites)}

class Client:
    def __init__(self, signal_dir):
        self.signal_dir = signal_dir

    @collab.publish
    def work(self):
        if collab.site_name == "site-2":
            Path(self.signal_dir, "site-2.pid").write_text(str(os.getpid()))
            t0 = time.monotonic()
            while not collab.is_aborted and time.monotonic() - t0 < 60:
                time.sleep(0.01)
        return collab.site_name

    @collab.publish
    def quick(self):
        return collab.site_name
"""


@pytest.mark.slow
def test_a_frozen_site_is_declared_dead_after_dead_after_and_sigcont_does_no_harm(tmp_path, poc_envs):
    signals = tmp_path / "signals"
    signals.mkdir()
    dead_after = 2.0
    env = poc_envs(num_clients=3, workspace=tmp_path / "poc", heartbeat=0.25, dead_after=dead_after,
                   start_timeout=30, job_timeout=90)
    stopped: dict = {}

    def freeze(text: str) -> int:
        pid = int(text)
        os.kill(pid, signal.SIGSTOP)
        stopped["pid"] = pid
        return pid

    watcher, frozen = watch_for_file(signals / "site-2.pid", freeze)
    thawer, thawed = watch_for_file(signals / "failed", lambda _: (os.kill(stopped["pid"], signal.SIGCONT),
                                                                  (signals / "continued").write_text("go")))
    try:
        with job_module(tmp_path, FROZEN) as mod:
            recipe = CollabRecipe(job_name="frozen", server=mod.Server(signal_dir=str(signals)),
                                  client=mod.Client(signal_dir=str(signals)), min_clients=3)
            run = recipe.execute(env)
    finally:
        if "pid" in stopped and pid_alive(stopped["pid"]):
            os.kill(stopped["pid"], signal.SIGCONT)  # never leave a stopped process behind
    watcher.join(5)
    thawer.join(5)
    assert "error" not in frozen and "error" not in thawed, (frozen, thawed)
    assert run.status == "finished", run.error
    r = run.result
    assert r["ok"] == ["site-1", "site-3"]
    kind, text = r["failure"]
    assert kind == "CollabCallError" and "no heartbeat from site-2" in text, r["failure"]
    silent = r["failed_at"] - frozen["at"]
    # declared dead once nothing arrived for dead_after (its last ping was at most one heartbeat
    # before the SIGSTOP; the server checks once per heartbeat)
    assert dead_after - 0.5 < silent < dead_after + 3.0, silent
    assert r["rejoined_after"] is not None and r["rejoined_after"] < 15, r
    assert r["final"] == ["site-1", "site-2", "site-3"]
    server_log = tail(env.workspace / "processes" / "server.log", 400)
    assert "site site-2 rejoined job frozen-" in server_log
    assert_all_gone(env)


# -- a connection that drops and comes back during a job -------------------------------------------

RECONNECT = """
import time
from pathlib import Path
from collab_core import collab

class Server:
    def __init__(self, signal_dir):
        self.signal_dir = signal_dir

    @collab.main
    def run(self):
        first = dict(collab.clients.count())
        Path(self.signal_dir, "round1").write_text("done")
        go = Path(self.signal_dir, "go")
        deadline = time.monotonic() + 30
        while not go.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        second = dict(collab.clients.count())
        relayed = collab.clients["site-1"].ask_peer("site-2")
        return {"first": first, "second": second, "relayed": relayed}

class Client:
    def __init__(self):
        self.calls = 0

    @collab.publish
    def count(self):
        self.calls += 1
        return self.calls

    @collab.publish
    def ask_peer(self, peer):
        return collab.clients[peer].count()
"""


def test_a_site_whose_connection_drops_during_a_job_rejoins_it(make_cluster, tmp_path):
    cluster = make_cluster(heartbeat=0.25, dead_after=5.0)
    agents = {s: cluster.start_site(s) for s in ("site-1", "site-2")}
    signals = tmp_path / "signals"
    signals.mkdir()
    job = export_job(tmp_path, RECONNECT, server=f"Server(signal_dir={str(signals)!r})", job_name="reconnect")
    old = {}

    def drop(_):
        old["server_side"] = cluster.server.sites["site-2"]
        old["agent_side"] = agents["site-2"].conn
        old["job"] = agents["site-2"].job
        old["agent_side"].close("test: drop the connection")
        # the agent reconnects, says hello with its job, and the server puts it back in the job
        record = cluster.server.current
        wait_for(lambda: (c := cluster.server.sites.get("site-2")) is not None and c is not old["server_side"]
                 and "site-2" in record.joined, 15, what="site-2 to reconnect and rejoin")
        (signals / "go").write_text("go")

    watcher, dropped = watch_for_file(signals / "round1", drop, timeout=30)
    done = cluster.run_job(job, timeout=60)
    watcher.join(20)
    assert "error" not in dropped, dropped.get("error")
    assert done["status"] == "finished", done["error"]
    r = done["result"]
    assert r["first"] == {"site-1": 1, "site-2": 1}
    # the same client object served round two: the job was kept, not redeployed
    assert r["second"] == {"site-1": 2, "site-2": 2}
    assert r["relayed"] == 3
    assert old["server_side"].closed.is_set() and agents["site-2"].conn is not old["agent_side"]
    assert agents["site-2"].job is None  # ended normally afterwards


# -- the server restarts between jobs -------------------------------------------------------------

ECHO = """
from collab_core import collab

class Server:
    @collab.main
    def run(self):
        return sorted(collab.clients.hello())

class Client:
    @collab.publish
    def hello(self):
        return collab.site_name
"""


@pytest.mark.slow
def test_sites_reconnect_to_a_restarted_server_and_run_the_next_job(tmp_path, kits):
    port_file = tmp_path / "server.port"
    logs = tmp_path / "logs"
    procs: list[subprocess.Popen] = []
    try:
        server = start_server_process(kits.server.path, port_file, tmp_path / "server-ws", logs / "server-1.log")
        procs.append(server)
        host, port = read_port_file(port_file, server, log_path=logs / "server-1.log")
        for site in ("site-1", "site-2"):
            procs.append(start_site_process(kits.sites[site].path, port_file, tmp_path / site, logs / f"{site}.log"))

        def sites_of(address):
            try:
                with AdminClient(kits.admin, address=address, timeout=5) as admin:
                    return sorted(admin.status()["sites"])
            except Exception:
                return []

        wait_for(lambda: sites_of((host, port)) == ["site-1", "site-2"], TIMEOUT, interval=0.1,
                 what="both sites to connect to the first server")
        job = export_job(tmp_path, ECHO, job_name="restart")
        with AdminClient(kits.admin, address=(host, port)) as admin:
            done = admin.follow(admin.submit(job, wait_timeout=10), timeout=60)
        assert done["status"] == "finished", done["error"]
        # stop the server (no job running); start a new one on the same port
        assert terminate([server], 10) == {server.pid: 0}
        server2 = start_server_process(kits.server.path, tmp_path / "server2.port", tmp_path / "server2-ws",
                                       logs / "server-2.log", port=port)
        procs.append(server2)
        assert read_port_file(tmp_path / "server2.port", server2, log_path=logs / "server-2.log") == (LOCAL, port)
        wait_for(lambda: sites_of((host, port)) == ["site-1", "site-2"], TIMEOUT, interval=0.1,
                 what="both sites to reconnect to the restarted server")
        with AdminClient(kits.admin, address=(host, port)) as admin:
            done = admin.follow(admin.submit(job, wait_timeout=10), timeout=60)
        assert done["status"] == "finished", done["error"]
        assert done["result"] == [("site-1", "site-1"), ("site-2", "site-2")]
        for site in ("site-1", "site-2"):
            assert "lost the server connection" in (logs / f"{site}.log").read_text()
        assert all(p.poll() is None for p in procs[1:]), "a site or the new server died"
    finally:
        codes = terminate(procs, 10)
    assert all(code == 0 for code in codes.values()), codes


# -- the process table after PocEnv --------------------------------------------------------------

POC = """
import time
from collab_core import collab

class Server:
    def __init__(self, mode):
        self.mode = mode

    @collab.main
    def run(self):
        if self.mode == "raise":
            raise RuntimeError("main failed on purpose")
        if self.mode == "hang":
            t0 = time.monotonic()
            while time.monotonic() - t0 < 60:
                time.sleep(0.05)
        return sorted(collab.clients.hello())

class Client:
    @collab.publish
    def hello(self):
        return collab.site_name
"""


@pytest.mark.slow
def test_poc_env_leaves_no_process_behind_after_success_failure_and_timeout(tmp_path, poc_envs):
    with job_module(tmp_path, POC) as mod:
        def recipe(mode):
            return CollabRecipe(job_name=f"poc-{mode}", server=mod.Server(mode=mode), client=mod.Client(),
                                min_clients=2)

        env = poc_envs(num_clients=2, workspace=tmp_path / "ok", heartbeat=0.5, dead_after=5.0, job_timeout=60)
        run = recipe("ok").execute(env)
        assert run.status == "finished", run.error
        assert run.result == [("site-1", "site-1"), ("site-2", "site-2")]
        assert_all_gone(env)

        env = poc_envs(num_clients=2, workspace=tmp_path / "raise", heartbeat=0.5, dead_after=5.0, job_timeout=60)
        run = recipe("raise").execute(env)
        assert run.status == "failed" and "main failed on purpose" in run.error
        assert_all_gone(env)

        env = poc_envs(num_clients=2, workspace=tmp_path / "hang", heartbeat=0.5, dead_after=5.0, job_timeout=2)
        t0 = time.monotonic()
        with pytest.raises(RecipeError, match="did not end within 2 s"):
            recipe("hang").execute(env)
        assert time.monotonic() - t0 < 30
        assert_all_gone(env)


# -- a deploy that overtakes the welcome ----------------------------------------------------------


def test_a_job_deployed_before_the_welcome_arrives_is_kept(kits, tmp_path):
    """A server may deploy a job to a site whose hello it has not answered yet (the site is in its
    table from the moment it is admitted); the welcome that follows says "no job" about the hello,
    not about the job deployed since. A fake server sends exactly that order."""
    with job_module(tmp_path, ECHO) as mod:
        recipe = CollabRecipe(job_name="overtake", server=mod.Server(), client=mod.Client())
        job_dir = recipe.export(tmp_path / "job")
        server_interface = App(mod.Server(), role="server").interface.to_wire()
    listener = socket.create_server((LOCAL, 0))
    listener.settimeout(TIMEOUT)
    agent = SiteAgent(kits.sites["site-1"].with_server(*listener.getsockname()), tmp_path / "site",
                      heartbeat=0.5, dead_after=10.0)
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    inbox: queue.Queue = queue.Queue()
    conn = None

    def next_message(kind: str) -> dict:
        deadline = time.monotonic() + TIMEOUT
        while True:
            msg = inbox.get(timeout=max(deadline - time.monotonic(), 0.01))
            assert msg is not None, f"the site closed the connection: {conn.close_reason}"
            if msg["t"] == kind:
                return msg

    try:
        raw, _ = listener.accept()
        conn = Connection(handshake(raw, kits.server.server_context(), server_side=True), "site-1", "site",
                          lambda c, m: inbox.put(m), lambda c, r: inbox.put(None), 0.5, 10.0).start()
        assert next_message("hello")["job"] is None
        conn.send({"t": "deploy", "job": "overtake-1", "name": "overtake", "files": pack_job(job_dir),
                   "participants": ["site-1"], "server_interface": server_interface})
        wait_for(lambda: agent.job is not None, 10, what="the site to take the deployed job")
        conn.send({"t": "welcome", "protocol": 1, "job": None})  # the answer to the hello, late
        ready = next_message("ready")
        assert ready["ok"], ready.get("error")
        conn.send({"t": "call", "job": "overtake-1", "id": 7, "caller": "server", "target": "site-1",
                   "method": "hello", "args": [], "kwargs": {}, "expect": True})
        result = next_message("result")
        assert result["ok"], result.get("error")
        assert (result["id"], result["value"]) == (7, "site-1")
        assert agent.job is not None and agent.job.id == "overtake-1"
    finally:
        agent.stop()
        thread.join(10)
        if conn is not None:
            conn.close("test done")
        listener.close()
    assert not thread.is_alive()
