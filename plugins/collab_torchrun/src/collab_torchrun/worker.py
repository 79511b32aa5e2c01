"""The worker: what every rank of a site's worker group runs (``python -m collab_torchrun.worker``).

It connects back to its site process on 127.0.0.1 (address and one-time token from the
environment), then either runs a Client API training script (``flare.*`` talks to the site) or
serves the ``@collab.publish`` methods of a client module: every rank receives every call and runs
it on its main thread, so ``dist.init_process_group``, ``dist.broadcast`` and DDP inside a method
work; the site returns rank 0's value and fails the call if any rank raised.
"""

from __future__ import annotations

import builtins
import json
import logging
import os
import queue
import signal
import socket
import sys
import threading
import time
import traceback
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from collab_core.lifeline import die_with_parent
from collab_torchrun.protocol import ENV_ADDR, ENV_SPEC, ENV_TOKEN

log = logging.getLogger("collab.worker")

_records: list[dict] = []
_records_lock = threading.Lock()


def _collect(record: dict) -> None:
    with _records_lock:
        _records.append(record)


def flush_records(conn: Any) -> None:
    """Send this worker's tracking records to the site (before a result, so they arrive first)."""
    with _records_lock:
        batch = list(_records)
        _records.clear()
    if batch:
        conn.send({"t": "tracking", "records": batch})


class _Prefixed:
    """A text stream that prefixes every line (``[site-1 rank 1] ...``)."""

    def __init__(self, stream: Any, prefix: str):
        self._stream = stream
        self._prefix = prefix
        self._at_start = True
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            out = []
            for piece in text.splitlines(keepends=True):
                if self._at_start:
                    out.append(self._prefix)
                out.append(piece)
                self._at_start = piece.endswith("\n")
            self._stream.write("".join(out))
            if text.endswith("\n"):
                self._stream.flush()
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _NoCalls:
    """The worker's backend: calls to other sites are made by the site process, not the worker."""

    def submit(self, call: Any) -> Future:
        from collab_core.errors import CollabCallError

        raise CollabCallError(call.target, call.method, RuntimeError(
            "calls to other sites are not available inside a worker subprocess; return what you need "
            "to the site process, or make the call from the server"))

    def cancel(self, call: Any) -> None:
        pass

    def close(self) -> None:
        pass


class WorkerBridge:
    """``flare.*`` inside a worker: tasks come from the site process. Every rank receives every
    task (ranks other than 0 without params: they get weights from rank 0, e.g. dist.broadcast);
    only rank 0's send() goes back."""

    def __init__(self, conn: Any, rank: int, site_name: str):
        self.conn = conn
        self.rank = rank
        self.site_name = site_name
        self.inbox: queue.Queue[dict] = queue.Queue()
        self.current: dict | None = None
        self.stopped = False
        self.abort_reason: str | None = None
        self.tracking = False

    def init(self, rank: Any) -> None:
        if rank is not None and str(rank) != str(self.rank):
            log.warning("flare.init(rank=%r) but this worker is rank %d (from the launcher)", rank, self.rank)

    def receive(self, timeout: float | None) -> Any:
        from collab_core.bridge import ScriptError

        if self.current is not None and self.rank == 0:
            raise ScriptError("flare.receive() was called again before flare.send() answered the previous task")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self.abort_reason is not None:
                raise ScriptError(f"the server aborted the job: {self.abort_reason}")
            if self.stopped:
                return None
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"no task from the server within {timeout} s")
            try:
                msg = self.inbox.get(timeout=min(remaining, 1.0) if remaining is not None else 1.0)
            except queue.Empty:
                continue
            if msg["t"] == "task":
                self.current = msg if self.rank == 0 else None
                return msg["model"]
            if msg["t"] == "stop":
                self.stopped = True
                if msg.get("reason"):
                    self.abort_reason = msg["reason"]

    def send(self, model: Any) -> None:
        from collab_core.bridge import ScriptError

        if self.rank != 0:
            return  # only rank 0 reports; other ranks' results are not needed
        if self.current is None:
            raise ScriptError("flare.send() without a task: call flare.receive() first")
        task, self.current = self.current, None
        flush_records(self.conn)
        self.conn.send({"t": "result", "id": task["id"], "ok": True, "value": model})

    def is_running(self) -> bool:
        if not self.stopped:
            try:  # a stop that arrived while the script was busy
                while True:
                    msg = self.inbox.get_nowait()
                    if msg["t"] == "stop":
                        self.stopped = True
                        self.abort_reason = msg.get("reason")
                    else:
                        self.inbox.put(msg)
                        break
            except queue.Empty:
                pass
        return not self.stopped

    def log_metric(self, key: str, value: Any, step: int | None) -> None:
        if self.rank != 0:
            return
        if self.tracking:
            from collab_core import tracking

            tracking.emit({"tool": "flare", "op": "scalar", "tag": key, "value": value, "step": step})
        else:
            log.info("metric %s=%s%s", key, value, "" if step is None else f" step={step}")


def _connect(spec: dict, rank: int, world: int) -> tuple[Any, queue.Queue]:
    from collab_core.connection import Connection

    host, _, port = os.environ[ENV_ADDR].rpartition(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.settimeout(None)
    inbox: queue.Queue[dict | None] = queue.Queue()

    def on_close(conn: Any, reason: str) -> None:
        inbox.put(None)

    conn = Connection(sock, "site", "parent", lambda c, m: inbox.put(m), on_close,
                      heartbeat=1.0, dead_after=float(spec.get("dead_after", 30.0)), name=f"worker-{rank}").start()
    conn.send({"t": "hello", "token": os.environ[ENV_TOKEN], "rank": rank, "world": world, "pid": os.getpid()})
    return conn, inbox


def _site_context(spec: dict) -> None:
    from collab_core import context
    from collab_core.runtime import JobRuntime
    from collab_core.site_workspace import SiteWorkspace

    # the site's own folder (its collab.workspace, with the job's files) lies in the run's folder
    site_ws = Path(spec.get("workspace", ".")).absolute()
    job = JobRuntime(spec.get("job", "job"), [spec["site"]], _NoCalls(), {}, site_ws.parent)
    job.backend_type = str(spec.get("backend_type") or "sim")
    app_props = dict(spec.get("app_props") or {})  # the site's own, already merged: its SiteRuntime starts with them
    job.props = {"server_props": {}, "client_props": app_props, "per_site_config": {}}
    context.set_process_default(context.SiteContext(spec["site"], job, SiteWorkspace(site_ws, run_dir=site_ws.parent),
                                                    app_props=dict(app_props)))


def _watch_parent(conn: Any) -> None:
    """Leave when the site process goes away: no orphans."""
    conn.closed.wait()
    time.sleep(0.5)
    os._exit(17)


def run_script(spec: dict, conn: Any, inbox: queue.Queue, rank: int) -> int:
    from collab_core import client as flare

    bridge = WorkerBridge(conn, rank, spec["site"])
    bridge.tracking = bool(spec.get("tracking"))
    flare.set_process_bridge(bridge)

    def pump() -> None:
        while True:
            msg = inbox.get()
            if msg is None:
                bridge.stopped = True
                return
            bridge.inbox.put(msg)

    threading.Thread(target=pump, name="worker-inbox", daemon=True).start()
    script = Path(spec["script"])
    sys.argv = [str(script), *spec.get("script_args", [])]
    sys.path.insert(0, str(script.parent))
    error = None
    try:
        namespace = {"__name__": "__main__", "__file__": str(script), "__builtins__": builtins,
                     "__package__": None, "__spec__": None}
        exec(compile(script.read_bytes(), str(script), "exec"), namespace)
    except SystemExit as exc:
        if exc.code not in (0, None):
            error = f"the script exited with sys.exit({exc.code!r})"
    except BaseException as exc:
        error = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        print(error, file=sys.stderr, flush=True)
    flush_records(conn)
    conn.send({"t": "exit", "error": error})
    time.sleep(0.2)
    return 1 if error else 0


def serve_module(spec: dict, conn: Any, inbox: queue.Queue, rank: int) -> int:
    from collab_core import context
    from collab_core.app import App, make_client_object
    from collab_core.loading import build_object
    from collab_core.runtime import Call, SiteRuntime

    try:
        obj = make_client_object(build_object(spec["client"], "client"), spec["site"])
        app = App(obj, role="client")
        ctx = context.current()
        site = SiteRuntime(ctx.job, spec["site"], app)
        site.start()
        if site.init_error is not None:
            raise site.init_error
    except BaseException as exc:
        conn.send({"t": "ready", "error": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))})
        time.sleep(0.2)
        return 1
    conn.send({"t": "ready"})
    running: dict[int, Call] = {}
    pending: queue.Queue[dict | None] = queue.Queue()

    def pump() -> None:  # cancels act at once; calls run in order on the main thread
        while True:
            msg = inbox.get()
            if msg is not None and msg["t"] == "cancel":
                call = running.get(msg.get("id"))
                if call is not None:
                    call.cancelled.set()
                continue
            pending.put(msg)
            if msg is None:
                return

    threading.Thread(target=pump, name="worker-inbox", daemon=True).start()
    while True:
        msg = pending.get()
        if msg is None or msg["t"] == "stop":
            site.stop()
            if msg is not None:
                flush_records(conn)
            return 0
        if msg["t"] != "call":
            continue
        call = Call(caller=str(msg.get("caller") or spec["site"]), target=spec["site"], method=msg["method"], args=tuple(msg["args"]),
                    kwargs=msg["kwargs"])
        running[msg["id"]] = call
        try:
            value = site.invoke(call)
            out = {"t": "result", "id": msg["id"], "ok": True, "value": value if rank == 0 else None}
        except BaseException as exc:
            out = {"t": "result", "id": msg["id"], "ok": False, "error": exc}
        finally:
            running.pop(msg["id"], None)
        try:
            flush_records(conn)
            conn.send(out)
        except Exception as exc:  # the value cannot cross the wire
            conn.send({"t": "result", "id": msg["id"], "ok": False, "error": exc})


def main() -> int:
    if ENV_ADDR not in os.environ or ENV_TOKEN not in os.environ:
        print("collab_torchrun.worker is started by a collab site (launch_external_process=True), "
              "not by hand.", file=sys.stderr)
        return 2
    # a rank whose launcher (or site) dies goes with it, even before it has dialled its site
    parent = os.getppid()
    die_with_parent(signal.SIGKILL)
    if os.getppid() != parent:
        return 17
    spec = json.loads(os.environ[ENV_SPEC])
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    for p in reversed(spec.get("sys_path", [])):
        if p not in sys.path:
            sys.path.insert(0, p)
    prefix = f"[{spec['site']} rank {rank}] "
    sys.stdout = _Prefixed(sys.stdout, prefix)
    sys.stderr = _Prefixed(sys.stderr, prefix)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    conn, inbox = _connect(spec, rank, world)
    threading.Thread(target=_watch_parent, args=(conn,), name="worker-parent-watch", daemon=True).start()
    welcome = inbox.get(timeout=60)
    if welcome is None or welcome.get("t") != "welcome":
        print("the site refused this worker", file=sys.stderr)
        return 3
    _site_context(spec)
    from collab_core import tracking

    tracking.set_process_sink(_collect)
    if spec["mode"] == "script":
        return run_script(spec, conn, inbox, rank)
    return serve_module(spec, conn, inbox, rank)


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
