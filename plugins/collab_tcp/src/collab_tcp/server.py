"""The long-running server: accepts sites and admins over mutual TLS, runs jobs one after another.

Sites dial in; the server never connects out. A site's name and an admin's role come from their
certificates. Jobs arrive from admins as job folders; the server deploys each to its sites, runs
``@collab.main`` on a job thread, relays site-to-site calls, collects every site's log into the
job's workspace, and reports the result to whoever follows the job.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import queue
import shutil
import socket
import ssl
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

from collab_core import filters, progress, props, topology, tracking, wire
from collab_core.app import App, Interface
from collab_core.errors import RecipeError
from collab_core.executor import ElasticExecutor
from collab_core.job import JobCode, pack_job, unpack_job, validate_job_config
from collab_core.loading import JOB_FILE, check_job_name
from collab_core.logs import capture_site_logs, site_prints
from collab_core.runtime import CALL_THREADS, SERVER, JobRuntime, SiteRuntime
from collab_core.site_workspace import JobFiles, is_server_only

from .connection import Connection, ConnectionClosed, Heartbeats, handshake
from .jobs import JobRecord, JobStore, Relay
from .kit import AuthError, Kit, peer_identity
from .rpc import CallServer, ForgedResult, RecentIds, TcpBackend, new_wire_id, reject_forged
from .secure import certificate_pem

log = logging.getLogger("collab.tcp.server")
PROTOCOL = 1
#: accept() errors that mean "out of a resource for now": back off and keep accepting
_TRANSIENT_ACCEPT_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.ECONNABORTED,
                            errno.EPROTO, errno.EPERM, errno.EAGAIN}


class Server:
    """A collab server. ``start()`` listens and returns; ``serve_forever()`` blocks."""

    def __init__(self, kit: Kit, workspace: str | Path, *, host: str | None = None, port: int | None = None,
                 heartbeat: float = 2.0, dead_after: float = 30.0, max_workers: int = 16,
                 max_handshakes: int = 128, handshake_timeout: float = 5.0):
        if kit.role != "server":
            raise AuthError(f"{kit.path} is a {kit.role} kit; start the server with the server's kit")
        self.kit = kit
        self.workspace = Path(workspace)
        self.workspace.mkdir(parents=True, exist_ok=True)
        self.host = host if host is not None else kit.server_host
        self.port = port if port is not None else kit.server_port
        self.heartbeat = heartbeat
        self.dead_after = dead_after
        #: connections still in their TLS handshake at most; more are closed at once
        self.max_handshakes = max_handshakes
        self.handshake_timeout = handshake_timeout
        self._handshakes = 0
        self.rejected: dict[str, int] = {}  # reason -> count of refused connections
        self._rejected_details: dict[str, int] = {}  # for rate-limiting the log
        self.ctx = kit.server_context()
        self.sites: dict[str, Connection] = {}
        self.admins: set[Connection] = set()
        self._greeting: set[Connection] = set()  # site connections before their hello
        self.store = JobStore(self.workspace / "jobs")
        #: every job this server knows, also those of its earlier runs (from the store)
        self.jobs: dict[str, JobRecord] = {j.id: j for j in self.store.load_all()}
        #: relayed calls that ended early on our side, whose results may still arrive
        self._relays_ended = RecentIds()
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
        """Accept until stopped. Running out of descriptors (or buffers) is logged once per burst
        and waited out with a short backoff: the server never stops accepting for good."""
        backoff = 0.0
        failing: str | None = None
        while not self._stop.is_set():
            listener = self._listener
            if listener is None:
                return
            try:
                sock, addr = listener.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if self._stop.is_set() or self._listener is None:
                    return
                if exc.errno not in _TRANSIENT_ACCEPT_ERRORS:
                    log.error("accept failed (%s); retrying", exc)
                if failing is None and exc.errno != errno.ECONNABORTED:
                    failing = str(exc)
                    log.error("cannot accept connections: %s; backing off until resources are free "
                              "(raise the open-file limit, ulimit -n, if this persists)", exc)
                backoff = min(max(backoff * 2, 0.01), 0.25)
                self._stop.wait(backoff)
                continue
            if failing is not None:
                log.warning("accepting connections again (after: %s)", failing)
                failing = None
            backoff = 0.0
            with self._lock:
                full = self._handshakes >= self.max_handshakes
                if not full:
                    self._handshakes += 1
            if full:
                self._count_rejected("too many pending handshakes")
                try:
                    sock.close()
                except OSError:
                    pass
                continue
            try:
                threading.Thread(target=self._admit, args=(sock, addr), name=f"server-admit-{addr[1]}",
                                 daemon=True).start()
            except RuntimeError as exc:  # cannot start a thread now
                with self._lock:
                    self._handshakes -= 1
                sock.close()
                self._count_rejected(f"no thread: {exc}")

    def _count_rejected(self, reason: str, message: str | None = None, detail: str | None = None) -> None:
        """Count a refused connection under ``reason`` (a small fixed set: metrics' labels) and log
        it: the first of each distinct ``detail``, then 2nd, 4th, 8th, ... so a flood does not
        flood the log."""
        key = f"{reason}: {detail}" if detail is not None else reason
        with self._lock:
            self.rejected[reason] = self.rejected.get(reason, 0) + 1
            if key not in self._rejected_details and len(self._rejected_details) >= 256:
                key = reason  # many distinct details: fall back to counting by reason
            n = self._rejected_details[key] = self._rejected_details.get(key, 0) + 1
        if n & (n - 1) == 0:
            suffix = "" if n == 1 else f" ({n} like it so far)"
            log.warning("%s%s", message or f"refused a connection: {reason}", suffix)

    def _admit(self, sock: socket.socket, addr: tuple) -> None:
        tls = None
        try:
            try:
                tls = handshake(sock, self.ctx, server_side=True, timeout=self.handshake_timeout)
                name, role = peer_identity(tls, self.kit.project)
            finally:
                with self._lock:
                    self._handshakes -= 1
        except (ssl.SSLError, OSError, AuthError) as exc:
            self._count_rejected("bad certificate" if isinstance(exc, (ssl.SSLError, AuthError)) else "handshake failed",
                                 f"rejected connection from {addr[0]}:{addr[1]}: {exc}", str(exc))
            try:
                (tls or sock).close()  # after wrap_socket, sock is detached: close the TLS socket
            except OSError:
                pass
            return
        if role not in ("site", "admin"):
            self._count_rejected("role may not connect",
                                 f"rejected {name} from {addr[0]}: role {role!r} may not connect to the server", role)
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
        self._relays_ended.forget(conn)
        log.info("%s %s disconnected: %s", conn.role, conn.peer, reason)
        if job is None:
            return
        with job.changed:
            job.followers.discard(conn)
            if conn.role == "site" and self.sites.get(conn.peer) is None:
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
        member = job is not None and conn.peer in job.participants and job.status in ("deploying", "running")
        has_job = member and msg.get("job") == job.id
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
        elif member and job.deploy_info is not None:
            # a participant came back without the job (its process restarted): give it the job again
            log.info("site %s reconnected without job %s; deploying the job to it again", conn.peer, job.id)
            self.executor.submit(self._deploy_to, job, [conn.peer])

    def _site_ready(self, conn: Connection, msg: dict) -> None:
        job = self._job_of(msg)
        if job is None:
            return
        with job.changed:
            again = conn.peer in job.ready
            job.ready[conn.peer] = {"ok": bool(msg.get("ok")), "error": msg.get("error"),
                                    "interface": msg.get("interface")}
            if msg.get("ok") and (job.status == "deploying" or conn.peer in job.participants):
                job.joined.add(conn.peer)
            job.changed.notify_all()
        if again:
            if msg.get("ok"):
                log.info("site %s rejoined job %s", conn.peer, job.id)
            else:
                log.error("site %s could not load job %s again: %s", conn.peer, job.id, msg.get("error"))

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
                path = job.workspace / site / "log.txt"  # site: a certificate name (NAME_RE), never a path
                path.parent.mkdir(parents=True, exist_ok=True)
                f = job.log_files[site] = open(path, "a", encoding="utf-8")  # noqa: SIM115
            if f is not None:
                f.write("".join(line + "\n" for line in lines))
                f.flush()
        self._to_followers(job, {"t": "log", "job": job.id, "site": site, "lines": lines})

    def _to_followers(self, job: JobRecord, msg: dict) -> None:
        """A message for the admins following ``job``: its sites' log lines, its main's progress and
        print lines."""
        with job.changed:
            followers = list(job.followers)
        for c in followers:
            self._send(c, msg)

    def _route(self, job: JobRecord, target: str) -> Connection | str:
        """The connection that reaches ``target`` in ``job``, or why there is none."""
        if target not in job.participants:
            return f"{target} is not a participant of job {job.id}"
        conn = self.sites.get(target)
        if conn is None or conn.closed.is_set():
            return f"{target} is not connected"
        if target not in job.joined:
            return f"{target} is connected but has not (re)joined job {job.id} yet"
        return conn

    def _site_call(self, conn: Connection, msg: dict) -> None:
        job = self._job_of(msg)
        caller = conn.peer  # from the certificate, never from the message
        call_id = msg.get("id")
        if not isinstance(call_id, int) or isinstance(call_id, bool):
            reject_forged(conn, f"a call without an integer id ({call_id!r})")
            return
        if job is None or caller not in job.participants:
            self._send(conn, {"t": "result", "job": msg.get("job"), "id": call_id, "ok": False,
                              "error": wire.RemoteError("PermissionError", f"{caller} is not in job {msg.get('job')!r}", "")})
            return
        target = msg.get("target")
        if target == SERVER:
            if job.call_server is None:
                self._send(conn, {"t": "result", "job": job.id, "id": call_id, "ok": False,
                                  "error": wire.RemoteError("RuntimeError", "the server app is not running yet", "")})
                return
            job.call_server.handle(conn, msg, caller)
            return
        # a site-to-site call: relay it, if both are participants
        dest = self._route(job, str(target))
        if isinstance(dest, str):
            self._send(conn, {"t": "result", "job": job.id, "id": call_id, "ok": False,
                              "error": wire.RemoteError("ConnectionError", dest, "")})
            return
        relay_id = new_wire_id()
        expect = bool(msg.get("expect", True))
        if expect:
            with job.changed:
                job.relays[relay_id] = Relay(conn, call_id, str(target), dest)
        forwarded = dict(msg, id=relay_id, caller=caller)
        try:
            dest.send(forwarded)
        except ConnectionClosed as exc:
            with job.changed:
                job.relays.pop(relay_id, None)
            self._send(conn, {"t": "result", "job": job.id, "id": call_id, "ok": False,
                              "error": wire.RemoteError("ConnectionError", f"{target} disconnected: {exc}", "")})

    def _site_result(self, conn: Connection, msg: dict) -> None:
        """A result is accepted only from the connection its call (or relayed call) was sent on;
        anything else is a forgery: dropped, logged with the sender's name, connection closed."""
        job = self._job_of(msg)
        if job is None:
            return  # a late result of an earlier job
        rid = msg.get("id")
        if type(rid) is not int:
            reject_forged(conn, f"a result whose call id is {type(rid).__name__}, not an integer")
            return
        with job.changed:
            relay = job.relays.get(rid)
            if relay is not None and relay.dest is conn:
                del job.relays[rid]
        if relay is not None:
            if relay.dest is not conn:
                reject_forged(conn, f"a result for relayed call {rid}, which was sent to {relay.target}, not to {conn.peer}")
                return
            self._send(relay.origin, dict(msg, id=relay.origin_id))
            return
        if self._relays_ended.take(conn, rid):
            return  # the result of a relayed call its caller cancelled: late, not forged
        if job.backend is None:
            reject_forged(conn, f"a result for call id {rid!r} while the server has no call in flight")
            return
        try:
            job.backend.on_result(msg, conn)
        except ForgedResult as exc:
            reject_forged(conn, str(exc))

    def _site_cancel(self, conn: Connection, msg: dict) -> None:
        job = self._job_of(msg)
        if job is None:
            return
        with job.changed:
            found = [(rid, r) for rid, r in job.relays.items() if r.origin is conn and r.origin_id == msg.get("id")]
            for rid, _ in found:
                del job.relays[rid]
        for rid, relay in found:
            self._relays_ended.add(relay.dest, rid)
            self._send(relay.dest, {"t": "cancel", "job": job.id, "id": rid})
        if not found and job.call_server is not None:
            job.call_server.cancel(conn, msg.get("id"))

    def _fail_relays(self, job: JobRecord, conn: Connection, reason: str) -> None:
        with job.changed:
            gone = {rid: r for rid, r in job.relays.items() if r.origin is conn or r.dest is conn}
            for rid in gone:
                del job.relays[rid]
        for rid, relay in gone.items():
            if relay.origin is conn:  # the caller left: cancel at the callee
                self._relays_ended.add(relay.dest, rid)
                self._send(relay.dest, {"t": "cancel", "job": job.id, "id": rid})
            else:  # the callee left: fail the caller's call now
                self._send(relay.origin, {"t": "result", "job": job.id, "id": relay.origin_id, "ok": False,
                                          "error": wire.RemoteError("ConnectionError", f"lost the connection to {relay.target}: {reason}", "")})

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
        # writing the job to disk can take a while: not on this connection's reader thread
        self.executor.submit(self._accept_job, conn, msg)

    def _accept_job(self, conn: Connection, msg: dict) -> None:
        """Check a submitted job and write it to the server's workspace (the only copy the server
        keeps: it is streamed to the sites from disk); refuse it with the reason otherwise."""
        rid = msg.get("rid")
        follow = bool(msg.get("follow"))
        files = msg.pop("files", None)
        folder: Path | None = None
        try:
            if not isinstance(files, dict) or JOB_FILE not in files:
                raise RecipeError(f"submit needs the job folder's files ({JOB_FILE} missing)")
            try:
                config = json.loads(bytes(memoryview(files[JOB_FILE])).decode("utf-8"))
            except (TypeError, ValueError) as exc:
                raise RecipeError(f"{JOB_FILE} is not valid JSON: {exc}") from None
            validate_job_config(config)
            props.validate_props_config(config, JOB_FILE)
            name = check_job_name(config["job_name"])
            sites = msg.get("sites")
            if sites is not None and (not isinstance(sites, list) or not all(isinstance(x, str) for x in sites)):
                raise RecipeError("sites must be a list of site names")
            parents = topology.check_parents(msg.get("parents"), sites, "the job's parents", SERVER)
            if parents and not sites:
                raise RecipeError("a hierarchical job must name its sites (submit with sites=[...]) so that "
                                  "every parent and child is known")
            wait_timeout = _positive_float(msg.get("wait_timeout", 60.0), "wait_timeout")
            deploy_timeout = _positive_float(msg.get("deploy_timeout", 300.0), "deploy_timeout")
            job_id = f"{name}-{uuid.uuid4().hex[:8]}"
            folder = self.store.folder(job_id) / "job"
            unpack_job(files, folder)
            JobFiles.from_job_folder(folder, config)  # its files and resource dirs are there, confined
        except (RecipeError, OSError) as exc:
            if folder is not None:
                shutil.rmtree(folder.parent, ignore_errors=True)
            log.warning("refused a job from admin %s: %s", conn.peer, exc)
            self._send(conn, {"t": "error", "rid": rid, "error": f"job refused: {exc}"})
            return
        finally:
            files = msg = None  # type: ignore[assignment]  # keep no job bytes in memory
        job = JobRecord(id=job_id, name=name, folder=folder, sites=list(sites) if sites else None,
                        wait_timeout=wait_timeout, deploy_timeout=deploy_timeout, submitted_by=conn.peer,
                        workspace=folder.parent / "workspace", parents=parents)
        if follow:
            job.followers.add(conn)
        with self._lock:
            self.jobs[job.id] = job
        self.store.save(job)
        self._queue.put(job)
        log.info("admin %s submitted job %s", conn.peer, job.id)
        self._send(conn, {"t": "submitted", "rid": rid, "job": job.id})

    def _admin_follow(self, conn: Connection, msg: dict) -> None:
        job = self.jobs.get(msg.get("job"))  # type: ignore[arg-type]
        if job is None:
            self._send(conn, {"t": "error", "rid": msg.get("rid"), "error": f"no job {msg.get('job')!r}"})
            return
        with job.changed:
            if job.status in ("finished", "failed", "aborted"):
                done = True
            else:
                job.followers.add(conn)
                done = False
        if done:
            self.executor.submit(lambda: self._send_done(conn, job, self._done_message(job)))

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
                self.store.save(job)
                with job.changed:
                    followers = list(job.followers)
                    job.followers.clear()
                done = self._done_message(job)
                for c in followers:
                    self._send_done(c, job, done)
                job.result = None if job.status == "finished" else job.result  # on disk now
                log.info("job %s %s", job.id, job.status)

    def _send_done(self, conn: Connection, job: JobRecord, done: dict) -> None:
        """Send a job's end to a follower; a result that cannot be encoded (a type whose
        serializer is gone) still ends the follower's wait, with the reason instead of the value."""
        try:
            self._send(conn, done)
        except wire.WireError as exc:
            log.error("job %s: its result cannot be sent to %s: %s", job.id, conn.peer, exc)
            self._send(conn, {**done, "result": None,
                              "error": f"the job {job.status}, but its result cannot be sent: {exc}"})

    def _done_message(self, job: JobRecord) -> dict:
        logs = {}
        if job.workspace is not None and job.workspace.is_dir():
            for path in sorted(job.workspace.glob("*/log.txt")):
                logs[path.parent.name] = path.read_text(encoding="utf-8", errors="replace")
        return {"t": "job_done", "job": job.id, "status": job.status, "error": job.error,
                "result": self.store.result(job), "participants": job.participants, "logs": logs,
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

    def _set_status(self, job: JobRecord, status: str) -> None:
        job.status = status
        self.store.save(job)

    def _run_job(self, job: JobRecord) -> None:
        job.started = time.time()
        self._set_status(job, "deploying")
        code = JobCode(job.folder, custom_code=self.kit.allow_custom_code,
                       allowed_modules=self.kit.allowed_modules)
        config = code.config
        min_clients = int(config["min_clients"])
        sync = config.get("sync_task_timeout")  # CollabRecipe(sync_task_timeout=), validated with job.json
        if sync is not None:  # bounds the wait for the sites to connect, then for them to be ready
            job.wait_timeout = job.deploy_timeout = float(sync)
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
        assert job.workspace is not None
        with capture_site_logs(job.workspace, SERVER) as handler:
            try:
                server_app = App(code.build("server"), role="server", objects=code.build_objects("server"))
            except BaseException as exc:
                raise_failed(job, "the server app could not be loaded:\n" + traceback.format_exc())
                log.error("job %s: server app failed to load: %r", job.id, exc)
                code.unload()
                return
            try:
                self._deploy_and_run(job, code, server_app, min_clients, handler)
            finally:
                code.unload()

    def _certificates(self, sites: list[str]) -> dict[str, str]:
        """The certificates the connected ``sites`` presented (PEM): a site seals a secure call for
        its target's (secure.py), after checking it against the project CA itself."""
        out = {}
        for site in sites:
            conn = self.sites.get(site)
            pem = certificate_pem(conn.sock) if conn is not None else None
            if pem is not None:
                out[site] = pem
        return out

    def _deploy_to(self, job: JobRecord, sites: list[str]) -> None:
        """Send ``job`` to ``sites``: its files stream from the server's disk (memory maps, so the
        server holds no copy of them), and nothing of them is kept once sent."""
        info = job.deploy_info
        if info is None:
            return
        try:
            files = pack_job(job.folder, exclude=is_server_only)  # the server's own files stay here
        except (RecipeError, OSError) as exc:
            log.error("job %s: cannot read the job folder to deploy it: %s", job.id, exc)
            return
        msg = dict(info, files=files)
        for site in sites:
            conn = self.sites.get(site)
            if conn is not None:
                self._send(conn, msg)
        del msg, files

    def _deploy_and_run(self, job: JobRecord, code: JobCode, server_app: App, min_clients: int, handler) -> None:
        job.deploy_info = {"t": "deploy", "job": job.id, "name": job.name, "participants": job.participants,
                           "server_interface": server_app.interface.to_wire(),
                           "tracking": code.config.get("tracking") or [],
                           "props": code.config.get("props") or props.empty_props(),
                           "backend_type": os.environ.get("COLLAB_BACKEND_TYPE") or "prod",
                           # for secure=True calls; each site verifies them against its own CA
                           "certs": self._certificates(job.participants),
                           # which participant is whose child (collab.child_clients); checked again at the site
                           "parents": job.parents}
        self._deploy_to(job, job.participants)
        self._wait(job, lambda: set(job.ready) >= set(job.participants)
                   or not set(job.participants) - set(job.ready) & set(self._connected()), job.deploy_timeout)
        with job.changed:
            ready_msgs = dict(job.ready)
        failed = {s: r.get("error") for s, r in ready_msgs.items() if not r.get("ok")}
        ready = sorted(s for s, r in ready_msgs.items() if r.get("ok") and s in job.participants)
        silent = sorted(set(job.participants) - set(ready_msgs))
        for site, err in failed.items():
            log.error("job %s: site %s could not load the job: %s", job.id, site, err)
        if len(ready) < min_clients:
            raise_failed(job, f"only {len(ready)} of {len(job.participants)} sites loaded the job, min_clients is "
                              f"{min_clients}; failed: {failed or 'none'}; no answer: {silent or 'none'}")
            self._end_sites(job)
            return
        job.participants = ready
        job.deploy_info["participants"] = ready
        # a site whose parent did not load is top-level from now on (a site that rejoins gets this)
        job.deploy_info["parents"] = topology.Topology(ready, job.parents).to_wire()
        try:
            client_interface = Interface.from_wire(ready_msgs[ready[0]]["interface"])
        except RecipeError as exc:
            raise_failed(job, f"site {ready[0]} described its client app badly: {exc}")
            self._end_sites(job)
            return
        backend = TcpBackend(job.id, lambda t: self._route(job, t))
        runtime = JobRuntime(job.name, ready, backend, {"server": server_app.interface, "client": client_interface},
                             job.workspace)
        runtime.extras["job_policy"] = code.policy
        # the server's call/result filters and the job's wire serializers (collab_core.filters); the
        # previous job's serializers were kept until now, while its result could still be sent (jobs
        # run one at a time)
        previous = getattr(self, "_undo_decomposers", None)
        if previous is not None:
            previous()
        self._undo_decomposers = None
        try:
            self._undo_decomposers = filters.setup_deployed(runtime, code, SERVER)
        except Exception as exc:
            raise_failed(job, f"the server could not set up the job's filters or decomposers: {exc}")
            log.error("job %s: filters/decomposers failed on the server: %r", job.id, exc)
            self._end_sites(job)
            backend.close()
            return
        if code.config.get("max_call_threads_for_server") is not None:  # calls the server serves at once
            runtime.extras[CALL_THREADS] = {"server": code.config["max_call_threads_for_server"]}
        runtime.extras["progress"] = progress.Progress(job.name, "normal",
                                                       on_line=lambda text: self._to_followers(
                                                           job, {"t": "progress", "job": job.id, "line": text}))
        runtime.tracking = list(code.config.get("tracking") or [])
        runtime.props = job.deploy_info["props"]
        runtime.backend_type = job.deploy_info["backend_type"]
        # the server's files and resource dirs: hard links into its workspace (the job folder stays whole)
        runtime.files = JobFiles.from_job_folder(job.folder, code.config, roles=("server",), mode="link")
        runtime.topology = topology.Topology(ready, job.parents)
        props.warn_unknown_sites(runtime.props, ready, job.name, log)
        hub = tracking.build_hub(runtime.tracking, job.workspace / SERVER, job.name)
        if hub is not None:
            runtime.extras["tracking_hub"] = hub
        server = SiteRuntime(runtime, SERVER, server_app)
        job.backend = backend
        job.call_server = CallServer(job.id, server, self.executor)
        self._set_status(job, "running")
        log.info("job %s running with sites %s", job.id, ready)
        prints = site_prints(SERVER, prefix_sites=False, on_line=lambda site, line: self._to_followers(
            job, {"t": "print", "job": job.id, "site": site, "line": line}))
        try:
            prints.__enter__()
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
            prints.__exit__(None, None, None)
            job.call_server.cancel_all()
            self._end_sites(job)
            if hub is not None:
                job.tracking_report = hub.close()
            backend.close()
            job.backend = None
            job.call_server = None
            job.deploy_info = None

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


def _positive_float(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1e9:
        raise RecipeError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


__all__ = ["Server", "JobRecord"]
