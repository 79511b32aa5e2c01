"""A site: dials out to the server, keeps the connection (reconnecting with backoff), loads the
jobs the server deploys and serves their calls on worker threads."""

from __future__ import annotations

import logging
import random
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path

from collab_core import filters
from collab_core.app import App, Interface, make_client_object
from collab_core.executor import ElasticExecutor
from collab_core.job import JobCode, unpack_job
from collab_core.loading import JOB_ID_RE, check_job_name
from collab_core.logs import FORMAT, SiteFilter, site_prints
from collab_core.props import validate_props_config
from collab_core.runtime import CALL_THREADS, JobRuntime, SiteRuntime
from collab_core.site_workspace import JobFiles, is_server_only
from collab_core.topology import Topology, check_parents

from .connection import Connection, ConnectionClosed, dial_server
from .kit import AuthError, Kit
from .rpc import CallServer, ForgedResult, TcpBackend
from .secure import SecureChannel

log = logging.getLogger("collab.tcp.site")
# errors of the log forwarder itself, which it never forwards (no feedback loop)
_quiet = logging.getLogger("collab.tcp.forwarder")


class _Forwarder(logging.Handler):
    """Sends the job's log records to the server in small batches, and keeps a local copy."""

    def __init__(self, agent: SiteAgent, job: str, path: Path):
        super().__init__(logging.INFO)
        self.agent = agent
        self.job = job
        self.addFilter(SiteFilter())
        self.setFormatter(logging.Formatter(FORMAT))
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115
        self._buf: list[str] = []
        self._stop = threading.Event()
        self._flushing = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="site-log-forward", daemon=True)
        self._thread.start()

    def emit(self, record: logging.LogRecord) -> None:
        if record.name in ("collab.connection", "collab.tcp", _quiet.name):  # our own: not the job's
            return
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        with self.lock:  # type: ignore[union-attr]
            self._buf.append(line)
            if not self._file.closed:
                self._file.write(line + "\n")

    def flush(self) -> None:
        # one flush at a time: the loop thread and close() must not interleave their batches
        with self._flushing:
            self._flush()

    def _flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            lines, self._buf = self._buf, []
            if not self._file.closed:
                self._file.flush()
        # small batches travel as control messages, in order with the job's other messages
        batch: list[str] = []
        size = 0
        for i, line in enumerate(lines):
            batch.append(line)
            size += len(line)
            if size > 16_000 or i == len(lines) - 1:
                conn = self.agent.conn
                try:
                    if conn is None:
                        raise ConnectionClosed("not connected")
                    conn.send({"t": "log", "job": self.job, "lines": batch})
                except (ConnectionClosed, OSError, ValueError, RuntimeError):
                    with self.lock:  # type: ignore[union-attr]
                        self._buf[:0] = lines[i + 1 - len(batch):]  # keep them for the next connection
                    return
                batch, size = [], 0

    def _loop(self) -> None:
        while not self._stop.wait(0.25):
            try:
                self.flush()
            except Exception:  # never let the forwarder die: the local file still has every line
                _quiet.exception("forwarding the job's log lines failed; will retry")

    def close(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)
        try:
            self.flush()
        except Exception:
            _quiet.exception("last forward of the job's log lines failed")
        with self.lock:  # type: ignore[union-attr]
            if not self._file.closed:
                self._file.close()
        super().close()


class _SiteJob:
    def __init__(self, agent: SiteAgent, msg: dict):
        self.id: str = msg["job"]
        self.name: str = msg.get("name", self.id)
        self.agent = agent
        self.folder = agent.workspace / "jobs" / self.id
        self.code: JobCode | None = None
        self.runtime: JobRuntime | None = None
        self.site: SiteRuntime | None = None
        self.backend: TcpBackend | None = None
        self.calls: CallServer | None = None
        self.secure: SecureChannel | None = None
        self.logs: _Forwarder | None = None
        self.prints: site_prints | None = None
        self.undo_decomposers: Callable[[], None] | None = None


class SiteAgent:
    """One site process. ``run()`` blocks until ``stop()`` (or an ``exit`` from the server)."""

    def __init__(self, kit: Kit, workspace: str | Path, *, heartbeat: float = 2.0, dead_after: float = 30.0,
                 max_workers: int = 8, port_file: str | Path | None = None, max_backoff: float = 10.0):
        if kit.role != "site":
            raise AuthError(f"{kit.path} is a {kit.role} kit; start a site with that site's kit")
        self.kit = kit
        self.name = kit.name
        self.workspace = Path(workspace)
        self.workspace.mkdir(parents=True, exist_ok=True)
        self.heartbeat = heartbeat
        self.dead_after = dead_after
        self.port_file = Path(port_file) if port_file else None
        self.max_backoff = max_backoff
        self.ctx = kit.client_context()
        self.executor = ElasticExecutor(max_workers, name=f"{kit.name}-calls")
        self.conn: Connection | None = None
        self.job: _SiteJob | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.connected = threading.Event()

    # -- connection -------------------------------------------------------------------------------

    def _server_address(self) -> tuple[str, int]:
        host, port = self.kit.server_host, self.kit.server_port
        if self.port_file is not None:
            deadline = time.monotonic() + 60
            while not self.port_file.exists():
                if time.monotonic() > deadline or self._stop.is_set():
                    raise OSError(f"the server did not write its port to {self.port_file} within 60 s")
                time.sleep(0.02)
            text = self.port_file.read_text().strip()
            host, _, port_text = text.rpartition(":")
            port = int(port_text)
        return host, port

    def _connect(self) -> Connection:
        tls, name = dial_server(self.kit, *self._server_address(), timeout=10)
        conn = Connection(tls, name, "server", self._on_message, self._on_close, self.heartbeat, self.dead_after,
                          name=f"{self.name}-server")
        conn.hello_job = self.job.id if self.job else None  # what the server's welcome will answer
        conn.start()
        conn.send({"t": "hello", "job": conn.hello_job})
        return conn

    def run(self) -> None:
        """Stay connected until stopped: reconnect with exponential backoff (with jitter)."""
        backoff = 0.1
        while not self._stop.is_set():
            try:
                conn = self._connect()
            except (OSError, ssl.SSLError, AuthError) as exc:
                log.warning("site %s: cannot reach the server (%s); retrying in %.1f s", self.name, exc, backoff)
                self._stop.wait(backoff * (0.75 + random.random() / 2))
                backoff = min(backoff * 2, self.max_backoff)
                continue
            backoff = 0.1
            self.conn = conn
            self.connected.set()
            log.info("site %s connected to the server", self.name)
            while not conn.closed.wait(0.5):
                if self._stop.is_set():
                    conn.close("site stopping")
                conn.check_alive()
            self.connected.clear()
            if not self._stop.is_set():
                log.warning("site %s lost the server connection (%s); reconnecting", self.name, conn.close_reason)
        self._shutdown()

    def stop(self) -> None:
        self._stop.set()
        conn = self.conn
        if conn is not None:
            conn.close("site stopping")

    def _shutdown(self) -> None:
        job = self.job
        if job is not None:
            self._unload(job)
        self.executor.shutdown(wait=False)

    def _on_close(self, conn: Connection, reason: str) -> None:
        job = self.job
        if job is not None and job.backend is not None:
            job.backend.on_connection_lost(conn, reason)
        if job is not None and job.calls is not None:
            job.calls.cancel_from(conn)

    # -- messages ---------------------------------------------------------------------------------

    def _on_message(self, conn: Connection, msg: dict) -> None:
        kind = msg["t"]
        job = self.job
        if kind == "welcome":
            # The answer to our hello speaks only of the job the hello announced: a job deployed
            # on this connection since (its deploy can overtake the welcome) is newer than it.
            if job is not None and job.id == getattr(conn, "hello_job", None) and msg.get("job") != job.id:
                log.warning("site %s: the server no longer runs job %s; dropping it", self.name, job.id)
                self.executor.submit(self._unload, job)
        elif kind == "deploy":
            self.executor.submit(self._deploy, conn, msg)
        elif kind == "call":
            if job is None or job.calls is None or msg.get("job") != job.id:
                conn.send({"t": "result", "job": msg.get("job"), "id": msg.get("id"), "ok": False,
                           "error": ConnectionError(f"{self.name} is not running job {msg.get('job')!r}")})
            else:
                job.calls.handle(conn, msg, str(msg.get("caller")))
        elif kind == "result":
            if job is not None and job.backend is not None and msg.get("job") == job.id:
                try:
                    job.backend.on_result(msg, conn)
                except ForgedResult as exc:  # from the server: a bug there, not an attack
                    log.warning("site %s: dropped a result from the server: %s", self.name, exc)
        elif kind == "cancel":
            if job is not None and job.calls is not None:
                job.calls.cancel(conn, msg.get("id"))
        elif kind == "end":
            if job is not None and msg.get("job") == job.id:
                self.executor.submit(self._end, conn, job)
            else:  # not (or no longer) running it, e.g. it failed to load: nothing to end, say so now
                try:
                    conn.send({"t": "ended", "job": msg.get("job")})
                except ConnectionClosed:
                    pass
        elif kind == "exit":
            log.info("site %s: the server asked this site to exit", self.name)
            self.stop()
        else:
            conn.close(f"protocol error: unknown message type {kind!r}")

    def _deploy(self, conn: Connection, msg: dict) -> None:
        job_id, name = msg.get("job"), msg.get("name")
        if not isinstance(job_id, str) or not JOB_ID_RE.fullmatch(job_id):
            log.error("site %s: refusing a deploy with the invalid job id %r", self.name, job_id)
            conn.send({"t": "ready", "job": job_id if isinstance(job_id, str) else None, "ok": False,
                       "error": f"invalid job id {job_id!r}"})
            return
        try:
            check_job_name(name)
        except Exception as exc:
            conn.send({"t": "ready", "job": job_id, "ok": False, "error": str(exc)})
            return
        if self.job is not None:
            self._unload(self.job)
        job = _SiteJob(self, msg)
        self.job = job
        root = logging.getLogger()
        job.logs = _Forwarder(self, job.id, job.folder / "site" / "log.txt")
        root.addHandler(job.logs)
        if root.level > logging.INFO:
            root.setLevel(logging.INFO)
        job.prints = site_prints(None, prefix_sites=False).__enter__()  # print() lines reach the log
        try:
            files = msg["files"]
            if not self.kit.allow_custom_code:
                files = {k: v for k, v in files.items() if not k.startswith("code/")}
            files = {k: v for k, v in files.items() if not is_server_only(k)}  # never the server's files
            unpack_job(files, job.folder / "job")
            del files
            msg.pop("files", None)  # the job's bytes are on disk now: keep no copy in memory
            job.code = JobCode(job.folder / "job", custom_code=self.kit.allow_custom_code,
                               allowed_modules=self.kit.allowed_modules)
            client = make_client_object(job.code.build("client"), self.name)
            objects = {name: make_client_object(obj, self.name)
                       for name, obj in job.code.build_objects("client").items()}
            app = App(client, role="client", objects=objects)
            # secure=True calls: the participants' certificates came with the deploy (verified on use)
            job.secure = SecureChannel(self.kit, job.id, msg.get("certs"))
            job.backend = TcpBackend(job.id, lambda target: self.conn or "the server is not connected",
                                     secure=job.secure)
            server_interface = Interface.from_wire(msg["server_interface"])
            participants = msg.get("participants")
            if not isinstance(participants, list) or not all(isinstance(p, str) for p in participants):
                raise ValueError("malformed deploy: participants must be a list of site names")
            job.runtime = JobRuntime(job.name, participants, job.backend,
                                     {"server": server_interface, "client": app.interface}, job.folder / "workspace")
            job.runtime.extras["job_policy"] = job.code.policy
            # this site's call/result filters and the job's wire serializers (collab_core.filters)
            job.undo_decomposers = filters.setup_deployed(job.runtime, job.code, self.name)
            if job.code.config.get("max_call_threads_for_client") is not None:  # calls this site serves at once
                job.runtime.extras[CALL_THREADS] = {"client": job.code.config["max_call_threads_for_client"]}
            job.runtime.tracking = list(msg.get("tracking") or [])
            job.runtime.props = validate_props_config(msg.get("props") or {}, "the deploy message")
            backend_type = msg.get("backend_type") or "prod"
            if not isinstance(backend_type, str):
                raise ValueError("malformed deploy: backend_type must be a string")
            job.runtime.backend_type = backend_type
            # the job's client files and resource dirs move from the job folder into the site's workspace
            job.runtime.files = JobFiles.from_job_folder(job.folder / "job", job.code.config, roles=("client",),
                                                         mode="move")
            # a hierarchy: who is whose child among the participants (hostile input: checked here)
            parents = check_parents(msg.get("parents"), participants, "the deploy message's parents")
            job.runtime.topology = Topology(participants, parents)
            job.site = SiteRuntime(job.runtime, self.name, app)
            job.site.start()
            if job.site.init_error is not None:
                raise job.site.init_error
            job.calls = CallServer(job.id, job.site, self.executor, secure=job.secure)
        except BaseException as exc:
            import traceback

            log.error("site %s could not load job %s: %r", self.name, job.id, exc)
            job.logs.flush()
            conn.send({"t": "ready", "job": job.id, "ok": False,
                       "error": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))})
            self._unload(job)
            return
        log.info("site %s loaded job %s", self.name, job.id)
        job.logs.flush()
        conn.send({"t": "ready", "job": job.id, "ok": True, "interface": app.interface.to_wire()})

    def _end(self, conn: Connection, job: _SiteJob) -> None:
        if job.calls is not None:
            job.calls.cancel_all()
        if job.site is not None:
            job.site.stop()
        log.info("site %s finished job %s", self.name, job.id)
        self._unload(job)
        try:
            conn.send({"t": "ended", "job": job.id})
        except ConnectionClosed:
            pass

    def _unload(self, job: _SiteJob) -> None:
        with self._lock:
            if self.job is job:
                self.job = None
        if job.backend is not None:
            job.backend.close()
        if job.undo_decomposers is not None:
            job.undo_decomposers()
            job.undo_decomposers = None
        if job.code is not None:
            job.code.unload()
            job.code = None
        if job.prints is not None:
            job.prints.__exit__(None, None, None)
            job.prints = None
        if job.logs is not None:
            logging.getLogger().removeHandler(job.logs)
            job.logs.close()
            job.logs = None


__all__ = ["SiteAgent"]

