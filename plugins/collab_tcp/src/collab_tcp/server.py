"""The long-running server: accepts sites and admins over mutual TLS, runs jobs one after another.

Sites dial in; the server never connects out. A site's name and an admin's role come from their
certificates. Jobs arrive from admins as job folders; the server deploys each to its sites, runs
``@collab.main`` on a job thread, relays site-to-site calls, collects every site's log into the
job's workspace, and reports the result to whoever follows the job.
"""

from __future__ import annotations

import itertools
import logging
import queue
import socket
import ssl
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

import attrs

from collab_core import tracking, wire
from collab_core.app import App, Interface
from collab_core.executor import ElasticExecutor
from collab_core.job import JobCode, unpack_job
from collab_core.logs import capture_site_logs
from collab_core.runtime import SERVER, JobRuntime, SiteRuntime

from .connection import Connection, ConnectionClosed, Heartbeats, handshake
from .kit import AuthError, Kit, peer_identity
from .rpc import CallServer, TcpBackend

log = logging.getLogger("collab.tcp.server")
PROTOCOL = 1
_relay_ids = itertools.count(1 << 40)


@attrs.define(eq=False)
class JobRecord:
    id: str
    name: str
    files: dict[str, bytes]
    sites: list[str] | None
    wait_timeout: float
    deploy_timeout: float
    submitted_by: str
    status: str = "queued"
    error: str | None = None
    result: Any = None
    participants: list[str] = attrs.field(factory=list)
    joined: set[str] = attrs.field(factory=set)
    workspace: Path | None = None
    followers: set[Connection] = attrs.field(factory=set)
    ready: dict[str, Any] = attrs.field(factory=dict)
    ended: set[str] = attrs.field(factory=set)
    changed: threading.Condition = attrs.field(factory=threading.Condition)
    backend: TcpBackend | None = None
    call_server: CallServer | None = None
    relays: dict[int, tuple[Connection, int, str]] = attrs.field(factory=dict)
    log_files: dict[str, Any] = attrs.field(factory=dict)
    started: float = 0.0
    finished: float = 0.0
    tracking_report: dict[str, Any] = attrs.field(factory=dict)

    def summary(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "status": self.status, "participants": self.participants,
                "error": self.error, "submitted_by": self.submitted_by,
                "duration_s": round((self.finished or time.time()) - self.started, 3) if self.started else None}


class Server:
    """A collab server. ``start()`` listens and returns; ``serve_forever()`` blocks."""

    def __init__(self, kit: Kit, workspace: str | Path, *, host: str | None = None, port: int | None = None,
                 heartbeat: float = 2.0, dead_after: float = 10.0, max_workers: int = 16):
        if kit.role != "server":
            raise AuthError(f"{kit.path} is a {kit.role} kit; start the server with the server's kit")
        self.kit = kit
        self.workspace = Path(workspace)
        self.workspace.mkdir(parents=True, exist_ok=True)
        self.host = host if host is not None else kit.server_host
        self.port = port if port is not None else kit.server_port
        self.heartbeat = heartbeat
        self.dead_after = dead_after
        self.ctx = kit.server_context()
        self.sites: dict[str, Connection] = {}
        self.admins: set[Connection] = set()
        self._greeting: set[Connection] = set()  # site connections before their hello
        self.jobs: dict[str, JobRecord] = {}
        self.current: JobRecord | None = None
        self._queue: queue.Queue[JobRecord | None] = queue.Queue()
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._heartbeats = Heartbeats(min(1.0, heartbeat))
        self.executor = ElasticExecutor(max_workers, name="server-calls")
        self._listener: socket.socket | None = None
        self.address: tuple[str, int] | None = None

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> tuple[str, int]:
        sock = socket.create_server((self.host, self.port), reuse_port=False)
        sock.settimeout(0.5)
        self._listener = sock
        self.address = sock.getsockname()[:2]
        threading.Thread(target=self._accept_loop, name="server-accept", daemon=True).start()
        threading.Thread(target=self._job_loop, name="server-jobs", daemon=True).start()
        log.info("server of project %s listening on %s:%d", self.kit.project, *self.address)
        return self.address

    def serve_forever(self) -> None:
        if self._listener is None:
            self.start()
        try:
            while not self._stop.wait(0.5):
                pass
        finally:
            self.stop()

    def stop(self) -> None:
        if self._stop.is_set() and self._listener is None:
            return
        self._stop.set()
        self._queue.put(None)
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            conns = list(self.sites.values()) + list(self.admins) + list(self._greeting)
        for c in conns:
            c.close("server stopping")
        self._heartbeats.stop()
        self.executor.shutdown(wait=False)

    # -- connections ------------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            listener = self._listener
            if listener is None:
                return
            try:
                sock, addr = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._admit, args=(sock, addr), name=f"server-admit-{addr[1]}", daemon=True).start()

    def _admit(self, sock: socket.socket, addr: tuple) -> None:
        tls = None
        try:
            tls = handshake(sock, self.ctx, server_side=True, timeout=15.0)
            name, role = peer_identity(tls, self.kit.project)
        except (ssl.SSLError, OSError, AuthError) as exc:
            log.warning("rejected connection from %s:%s: %s", addr[0], addr[1], exc)
            try:
                (tls or sock).close()  # after wrap_socket, sock is detached: close the TLS socket
            except OSError:
                pass
            return
        if role not in ("site", "admin"):
            log.warning("rejected %s from %s: role %r may not connect to the server", name, addr[0], role)
            tls.close()
            return
        conn = Connection(tls, name, role, self._on_message, self._on_close, self.heartbeat, self.dead_after,
                          name=f"server-{role}-{name}")
        with self._lock:  # a site joins self.sites at its hello, once the welcome is on its way
            self.admins.add(conn) if role == "admin" else self._greeting.add(conn)
        self._heartbeats.add(conn)
        conn.start()
        log.info("%s %s connected from %s", role, name, addr[0])

    def _on_close(self, conn: Connection, reason: str) -> None:
        with self._lock:
            if conn.role == "site" and self.sites.get(conn.peer) is conn:
                del self.sites[conn.peer]
            self.admins.discard(conn)
            self._greeting.discard(conn)
            job = self.current
        log.info("%s %s disconnected: %s", conn.role, conn.peer, reason)
        if job is None:
            return
        with job.changed:
            job.followers.discard(conn)
            if conn.role == "site":
                job.joined.discard(conn.peer)
            job.changed.notify_all()
        if job.backend is not None:
            job.backend.on_connection_lost(conn, reason)
        if job.call_server is not None:
            job.call_server.cancel_from(conn)
        self._fail_relays(job, conn, reason)

    def _on_message(self, conn: Connection, msg: dict) -> None:
        handler = (self._site_handlers if conn.role == "site" else self._admin_handlers).get(msg["t"])
        if handler is None:
            log.warning("closing %s %s: unknown message type %r", conn.role, conn.peer, msg["t"])
            conn.close(f"protocol error: unknown message type {msg['t']!r}")
            return
        if conn.role == "site" and msg["t"] != "hello" and self.sites.get(conn.peer) is not conn:
            log.warning("closing site %s: %r before hello", conn.peer, msg["t"])
            conn.close(f"protocol error: {msg['t']!r} before hello")
            return
        handler(self, conn, msg)

    def _send(self, conn: Connection, msg: dict) -> None:
        try:
            conn.send(msg)
        except ConnectionClosed:
            pass

    # -- messages from sites ----------------------------------------------------------------------

    def _job_of(self, msg: dict) -> JobRecord | None:
        job = self.current
        if job is None or msg.get("job") != job.id:
            return None
        return job

    def _site_hello(self, conn: Connection, msg: dict) -> None:
        job = self.current
        has_job = job is not None and msg.get("job") == job.id and conn.peer in job.participants
        # the welcome goes out before the site is registered: nothing (a deploy) can overtake it
        self._send(conn, {"t": "welcome", "protocol": PROTOCOL, "job": job.id if has_job else None})
        with self._lock:
            self._greeting.discard(conn)
            old = self.sites.get(conn.peer)
            self.sites[conn.peer] = conn
        if old is not None and old is not conn:
            old.close("replaced by a new connection from the same site")
        if has_job:
            with job.changed:
                job.joined.add(conn.peer)
                job.changed.notify_all()
            log.info("site %s rejoined job %s", conn.peer, job.id)

    def _site_ready(self, conn: Connection, msg: dict) -> None:
        job = self._job_of(msg)
        if job is None:
            return
        with job.changed:
            job.ready[conn.peer] = msg
            if msg.get("ok"):
                job.joined.add(conn.peer)
            job.changed.notify_all()

    def _site_ended(self, conn: Connection, msg: dict) -> None:
        job = self._job_of(msg)
        if job is None:
            return
        with job.changed:
            job.ended.add(conn.peer)
            job.changed.notify_all()

    def _site_log(self, conn: Connection, msg: dict) -> None:
        job = self._job_of(msg)
        lines = msg.get("lines")
        if job is None or not isinstance(lines, list):
            return
        self._write_log(job, conn.peer, [str(x) for x in lines])

    def _write_log(self, job: JobRecord, site: str, lines: list[str]) -> None:
        with job.changed:
            f = job.log_files.get(site)
            if f is None and job.workspace is not None and job.status in ("deploying", "running"):
                path = job.workspace / site / "log.txt"
                path.parent.mkdir(parents=True, exist_ok=True)
                f = job.log_files[site] = open(path, "a", encoding="utf-8")  # noqa: SIM115
            if f is not None:
                f.write("".join(line + "\n" for line in lines))
                f.flush()
            followers = list(job.followers)
        for c in followers:
            self._send(c, {"t": "log", "job": job.id, "site": site, "lines": lines})

    def _site_call(self, conn: Connection, msg: dict) -> None:
        job = self._job_of(msg)
        caller = conn.peer  # from the certificate, never from the message
        if job is None or caller not in job.participants:
            self._send(conn, {"t": "result", "job": msg.get("job"), "id": msg.get("id"), "ok": False,
                              "error": wire.RemoteError("PermissionError", f"{caller} is not in job {msg.get('job')!r}", "")})
            return
        target = msg.get("target")
        if target == SERVER:
            if job.call_server is None:
                self._send(conn, {"t": "result", "job": job.id, "id": msg.get("id"), "ok": False,
                                  "error": wire.RemoteError("RuntimeError", "the server app is not running yet", "")})
                return
            job.call_server.handle(conn, msg, caller)
            return
        # a site-to-site call: relay it, if both are participants
        dest = self.sites.get(target) if target in job.joined else None
        if target not in job.participants or dest is None:
            why = "is not a participant of this job" if target not in job.participants else "is not connected"
            self._send(conn, {"t": "result", "job": job.id, "id": msg.get("id"), "ok": False,
                              "error": wire.RemoteError("ConnectionError", f"{target} {why}", "")})
            return
        relay_id = next(_relay_ids)
        expect = bool(msg.get("expect", True))
        if expect:
            with job.changed:
                job.relays[relay_id] = (conn, msg["id"], target)
        forwarded = dict(msg, id=relay_id, caller=caller)
        try:
            dest.send(forwarded)
        except ConnectionClosed as exc:
            with job.changed:
                job.relays.pop(relay_id, None)
            self._send(conn, {"t": "result", "job": job.id, "id": msg["id"], "ok": False,
                              "error": wire.RemoteError("ConnectionError", f"{target} disconnected: {exc}", "")})

    def _site_result(self, conn: Connection, msg: dict) -> None:
        job = self._job_of(msg)
        if job is None:
            return
        with job.changed:
            relay = job.relays.pop(msg.get("id"), None)
        if relay is not None:
            origin, orig_id, _ = relay
            self._send(origin, dict(msg, id=orig_id))
        elif job.backend is not None:
            job.backend.on_result(msg)

    def _site_cancel(self, conn: Connection, msg: dict) -> None:
        job = self._job_of(msg)
        if job is None:
            return
        with job.changed:
            found = [(rid, r) for rid, r in job.relays.items() if r[0] is conn and r[1] == msg.get("id")]
            for rid, _ in found:
                del job.relays[rid]
        for rid, (_, _, target) in found:
            dest = self.sites.get(target)
            if dest is not None:
                self._send(dest, {"t": "cancel", "job": job.id, "id": rid})
        if not found and job.call_server is not None:
            job.call_server.cancel(conn, msg.get("id"))

    def _fail_relays(self, job: JobRecord, conn: Connection, reason: str) -> None:
        with job.changed:
            gone = {rid: r for rid, r in job.relays.items() if r[0] is conn or r[2] == conn.peer}
            for rid in gone:
                del job.relays[rid]
        for rid, (origin, orig_id, target) in gone.items():
            if origin is conn:  # the caller left: cancel at the callee
                dest = self.sites.get(target)
                if dest is not None:
                    self._send(dest, {"t": "cancel", "job": job.id, "id": rid})
            else:  # the callee left: fail the caller's call now
                self._send(origin, {"t": "result", "job": job.id, "id": orig_id, "ok": False,
                                    "error": wire.RemoteError("ConnectionError", f"lost the connection to {target}: {reason}", "")})

    _site_handlers = {
        "hello": _site_hello,
        "ready": _site_ready,
        "ended": _site_ended,
        "log": _site_log,
        "call": _site_call,
        "result": _site_result,
        "cancel": _site_cancel,
    }

    # -- messages from admins ---------------------------------------------------------------------

    def _admin_submit(self, conn: Connection, msg: dict) -> None:
        files = msg.get("files")
        if not isinstance(files, dict) or "job.json" not in files:
            self._send(conn, {"t": "error", "rid": msg.get("rid"), "error": "submit needs the job folder's files (job.json missing)"})
            return
        try:
            import json

            name = json.loads(files["job.json"]).get("job_name", "job")
        except (ValueError, AttributeError):
            self._send(conn, {"t": "error", "rid": msg.get("rid"), "error": "job.json is not valid JSON"})
            return
        job = JobRecord(
            id=f"{name}-{uuid.uuid4().hex[:8]}", name=str(name), files=files,
            sites=list(msg["sites"]) if msg.get("sites") else None,
            wait_timeout=float(msg.get("wait_timeout", 60.0)), deploy_timeout=float(msg.get("deploy_timeout", 300.0)),
            submitted_by=conn.peer,
        )
        if msg.get("follow"):
            job.followers.add(conn)
        with self._lock:
            self.jobs[job.id] = job
        self._queue.put(job)
        log.info("admin %s submitted job %s", conn.peer, job.id)
        self._send(conn, {"t": "submitted", "rid": msg.get("rid"), "job": job.id})

    def _admin_follow(self, conn: Connection, msg: dict) -> None:
        job = self.jobs.get(msg.get("job"))
        if job is None:
            self._send(conn, {"t": "error", "rid": msg.get("rid"), "error": f"no job {msg.get('job')!r}"})
            return
        with job.changed:
            if job.status in ("finished", "failed"):
                done = True
            else:
                job.followers.add(conn)
                done = False
        if done:
            self._send(conn, self._done_message(job))

    def _admin_status(self, conn: Connection, msg: dict) -> None:
        with self._lock:
            sites = sorted(self.sites)
            jobs = [j.summary() for j in self.jobs.values()]
        self._send(conn, {"t": "status", "rid": msg.get("rid"), "project": self.kit.project, "sites": sites,
                          "jobs": jobs, "current": self.current.id if self.current else None})

    def _admin_shutdown(self, conn: Connection, msg: dict) -> None:
        log.info("admin %s asked the server to shut down", conn.peer)
        if msg.get("sites"):
            with self._lock:
                sites = list(self.sites.values())
            for c in sites:
                self._send(c, {"t": "exit"})
        self._send(conn, {"t": "bye", "rid": msg.get("rid")})
        threading.Timer(0.2, self.stop).start()

    _admin_handlers = {
        "submit": _admin_submit,
        "follow": _admin_follow,
        "status": _admin_status,
        "shutdown": _admin_shutdown,
    }

    # -- jobs -------------------------------------------------------------------------------------

    def _job_loop(self) -> None:
        while not self._stop.is_set():
            job = self._queue.get()
            if job is None:
                return
            self.current = job
            try:
                self._run_job(job)
            except BaseException as exc:  # never let one job take the server down
                job.status = "failed"
                job.error = f"server error while running the job: {exc!r}\n{traceback.format_exc()}"
                log.exception("job %s crashed the job runner", job.id)
            finally:
                job.finished = time.time()
                with job.changed:  # _write_log holds it too: no line lands in a closed file
                    for f in job.log_files.values():
                        f.close()
                    job.log_files.clear()
                self.current = None
                with job.changed:
                    followers = list(job.followers)
                    job.followers.clear()
                done = self._done_message(job)
                for c in followers:
                    self._send(c, done)
                log.info("job %s %s", job.id, job.status)

    def _done_message(self, job: JobRecord) -> dict:
        logs = {}
        if job.workspace is not None:
            for path in sorted(job.workspace.glob("*/log.txt")):
                logs[path.parent.name] = path.read_text(encoding="utf-8", errors="replace")
        return {"t": "job_done", "job": job.id, "status": job.status, "error": job.error,
                "result": job.result, "participants": job.participants, "logs": logs,
                "tracking": job.tracking_report,
                "workspace": str(job.workspace) if job.workspace else None}

    def _wait(self, job: JobRecord, predicate, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with job.changed:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stop.is_set():
                    return predicate()
                job.changed.wait(min(remaining, 0.5))
        return True

    def _connected(self) -> list[str]:
        with self._lock:
            return sorted(n for n, c in self.sites.items() if not c.closed.is_set())

    def _run_job(self, job: JobRecord) -> None:
        job.started = time.time()
        job.status = "deploying"
        job.workspace = self.workspace / "jobs" / job.id
        folder = unpack_job(job.files, job.workspace / "job")
        code = JobCode(folder)
        config = code.config
        min_clients = int(config["min_clients"])
        # 1. the sites
        if job.sites and len(job.sites) < min_clients:
            raise_failed(job, f"the job names {len(job.sites)} site(s) ({job.sites}) but needs min_clients="
                              f"{min_clients}; name more sites or lower min_clients")
            return
        if job.sites:
            want = list(job.sites)
            ok = self._wait(job, lambda: set(want) <= set(self._connected()), job.wait_timeout)
            if not ok:
                missing = sorted(set(want) - set(self._connected()))
                raise_failed(job, f"sites {missing} did not connect within {job.wait_timeout:.0f} s "
                                  f"(connected: {self._connected()}). Start them with `collab site start --kit ...`")
                return
        else:
            ok = self._wait(job, lambda: len(self._connected()) >= min_clients, job.wait_timeout)
            if not ok:
                raise_failed(job, f"only {len(self._connected())} site(s) connected within {job.wait_timeout:.0f} s "
                                  f"but the job needs min_clients={min_clients} (connected: {self._connected()})")
                return
            want = self._connected()
        job.participants = sorted(want)
        # 2. the server app (its interface goes to the sites)
        with capture_site_logs(job.workspace, SERVER) as handler:
            try:
                server_app = App(code.build("server"), role="server")
            except BaseException as exc:
                raise_failed(job, "the server app could not be loaded:\n" + traceback.format_exc())
                log.error("job %s: server app failed to load: %r", job.id, exc)
                code.unload()
                return
            try:
                self._deploy_and_run(job, code, server_app, min_clients, handler)
            finally:
                code.unload()

    def _deploy_and_run(self, job: JobRecord, code: JobCode, server_app: App, min_clients: int, handler) -> None:
        deploy = {"t": "deploy", "job": job.id, "name": job.name, "files": job.files,
                  "participants": job.participants, "server_interface": server_app.interface.to_wire(),
                  "tracking": code.config.get("tracking") or []}
        for site in job.participants:
            conn = self.sites.get(site)
            if conn is not None:
                self._send(conn, deploy)
        self._wait(job, lambda: set(job.ready) >= set(job.participants)
                   or not set(job.participants) - set(job.ready) & set(self._connected()), job.deploy_timeout)
        failed = {s: r.get("error") for s, r in job.ready.items() if not r.get("ok")}
        ready = sorted(s for s, r in job.ready.items() if r.get("ok"))
        silent = sorted(set(job.participants) - set(job.ready))
        for site, err in failed.items():
            log.error("job %s: site %s could not load the job: %s", job.id, site, err)
        if len(ready) < min_clients:
            raise_failed(job, f"only {len(ready)} of {len(job.participants)} sites loaded the job, min_clients is "
                              f"{min_clients}; failed: {failed or 'none'}; no answer: {silent or 'none'}")
            self._end_sites(job)
            return
        job.participants = ready
        client_interface = Interface.from_wire(job.ready[ready[0]]["interface"])
        backend = TcpBackend(job.id, lambda t: self.sites.get(t) if t in job.joined else None)
        runtime = JobRuntime(job.name, ready, backend, {"server": server_app.interface, "client": client_interface},
                             job.workspace)
        runtime.tracking = list(code.config.get("tracking") or [])
        hub = tracking.build_hub(runtime.tracking, job.workspace / SERVER, job.name)
        if hub is not None:
            runtime.extras["tracking_hub"] = hub
        server = SiteRuntime(runtime, SERVER, server_app)
        job.backend = backend
        job.call_server = CallServer(job.id, server, self.executor)
        job.status = "running"
        log.info("job %s running with sites %s", job.id, ready)
        try:
            server.start()
            if server.init_error is not None:
                raise_failed(job, f"the server's @collab.init failed: {server.init_error!r}")
            else:
                try:
                    result = server.run_main()
                    wire.dumps(result)  # the result must be able to reach the admin
                    job.result = result
                    job.status = "finished"
                except BaseException as exc:
                    runtime.abort(f"main failed: {exc!r}")
                    raise_failed(job, "@collab.main failed:\n" + "".join(
                        traceback.format_exception(type(exc), exc, exc.__traceback__)))
                    log.error("job %s: @collab.main failed: %r", job.id, exc)
            server.stop()
        finally:
            job.call_server.cancel_all()
            self._end_sites(job)
            if hub is not None:
                job.tracking_report = hub.close()
            backend.close()
            job.backend = None
            job.call_server = None

    def _end_sites(self, job: JobRecord) -> None:
        for site in job.participants:
            conn = self.sites.get(site)
            if conn is not None:
                self._send(conn, {"t": "end", "job": job.id, "status": job.status})
        ok = self._wait(job, lambda: set(job.ended) >= set(job.participants) & set(self._connected()), 60.0)
        if not ok:
            log.warning("job %s: sites %s did not confirm the end of the job within 60 s", job.id,
                        sorted(set(job.participants) - job.ended))


def raise_failed(job: JobRecord, error: str) -> None:
    job.status = "failed"
    job.error = error


__all__ = ["Server", "JobRecord"]
