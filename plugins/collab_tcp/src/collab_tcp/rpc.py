"""Calls over connections, for both ends: the backend that sends calls and matches results, and
the server-of-calls that runs incoming ones on worker threads (never on the I/O threads)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from collab_core import wire
from collab_core.errors import CollabCallError
from collab_core.executor import ElasticExecutor
from collab_core.runtime import Call, SiteRuntime

from .connection import Connection, ConnectionClosed

log = logging.getLogger("collab.tcp")


def call_message(job: str, call: Call) -> dict:
    return {
        "t": "call", "job": job, "id": call.id, "caller": call.caller, "target": call.target,
        "method": call.method, "args": list(call.args), "kwargs": call.kwargs, "expect": call.expect_result,
    }


def error_from_result(target: str, method: str, msg: dict) -> CollabCallError:
    err = msg.get("error")
    if isinstance(err, BaseException):
        tb = getattr(err, "traceback", None) or None
        return CollabCallError(target, method, err, tb)
    return CollabCallError(target, method, RuntimeError(str(err)))


class TcpBackend:
    """The core Backend over connections. ``route(target)`` gives the connection that reaches a
    site (a site sends everything to the server, which runs or relays it)."""

    def __init__(self, job: str, route: Callable[[str], Connection | None]):
        self.job = job
        self.route = route
        self._lock = threading.Lock()
        self._pending: dict[int, tuple[Call, Future, Connection]] = {}
        self.closed = False

    def submit(self, call: Call) -> Future:
        fut: Future = Future()
        conn = self.route(call.target)
        if conn is None or conn.closed.is_set():
            why = conn.close_reason if conn is not None else "it is not connected"
            fut.set_exception(CollabCallError(call.target, call.method, ConnectionError(f"{call.target} is unreachable: {why}")))
            return fut
        msg = call_message(self.job, call)
        if call.expect_result:
            with self._lock:
                self._pending[call.id] = (call, fut, conn)
        try:
            conn.send(msg)
        except wire.WireError as exc:
            self._pop(call.id)
            raise CollabCallError(call.target, call.method, exc,
                                  message=f"cannot send the arguments of {call.method}() to {call.target}: {exc}") from None
        except ConnectionClosed as exc:
            self._pop(call.id)
            fut = Future()
            fut.set_exception(CollabCallError(call.target, call.method, exc))
            return fut
        if not call.expect_result:
            fut.set_result(None)
        return fut

    def _pop(self, call_id: int) -> tuple[Call, Future, Connection] | None:
        with self._lock:
            return self._pending.pop(call_id, None)

    def on_result(self, msg: dict) -> bool:
        """Resolve the call a ``result`` message answers; False if no call of ours waits for it."""
        entry = self._pop(msg.get("id", -1))
        if entry is None:
            return False
        call, fut, _ = entry
        if msg.get("ok"):
            fut.set_result(msg.get("value"))
        else:
            fut.set_exception(error_from_result(call.target, call.method, msg))
        return True

    def on_connection_lost(self, conn: Connection, reason: str) -> None:
        """Fail at once every call that was waiting on ``conn``."""
        with self._lock:
            lost = [(cid, e) for cid, e in self._pending.items() if e[2] is conn]
            for cid, _ in lost:
                del self._pending[cid]
        for _, (call, fut, _) in lost:
            fut.set_exception(CollabCallError(
                call.target, call.method, ConnectionError(f"lost the connection to {conn.peer}: {reason}")))

    def cancel(self, call: Call) -> None:
        entry = self._pop(call.id)
        if entry is None:
            return
        _, fut, conn = entry
        try:
            conn.send({"t": "cancel", "job": self.job, "id": call.id})
        except (ConnectionClosed, wire.WireError):
            pass

    def close(self) -> None:
        self.closed = True
        with self._lock:
            pending = list(self._pending.values())
            self._pending.clear()
        for call, fut, _ in pending:
            if not fut.done():
                fut.set_exception(CollabCallError(call.target, call.method, ConnectionError("the job ended")))


class CallServer:
    """Runs incoming calls for one local site on an elastic pool and answers on the connection
    they came from. Tracks them so a ``cancel`` or a lost connection flags them cancelled."""

    def __init__(self, job: str, site: SiteRuntime, executor: ElasticExecutor):
        self.job = job
        self.site = site
        self.executor = executor
        self._lock = threading.Lock()
        self._running: dict[tuple[int, int], Call] = {}

    def handle(self, conn: Connection, msg: dict, caller: str) -> None:
        args = msg.get("args", [])
        kwargs = msg.get("kwargs", {})
        if not isinstance(args, (list, tuple)) or not isinstance(kwargs, dict) or not isinstance(msg.get("method"), str):
            self._reply(conn, msg, False, error=ValueError("malformed call message"))
            return
        call = Call(caller=caller, target=self.site.site_name, method=msg["method"], args=tuple(args),
                    kwargs=kwargs, expect_result=bool(msg.get("expect", True)))
        key = (id(conn), msg["id"])
        with self._lock:
            self._running[key] = call
        self.executor.submit(self._run, conn, msg, call, key)

    def _run(self, conn: Connection, msg: dict, call: Call, key: tuple[int, int]) -> None:
        try:
            if call.cancelled.is_set():
                raise ConnectionAbortedError("cancelled before it started")
            value = self.site.invoke(call)
        except BaseException as exc:
            self._reply(conn, msg, False, error=exc, expect=call.expect_result)
        else:
            self._reply(conn, msg, True, value=value, expect=call.expect_result)
        finally:
            with self._lock:
                self._running.pop(key, None)

    def _reply(self, conn: Connection, msg: dict, ok: bool, value: Any = None, error: BaseException | None = None,
               expect: bool = True) -> None:
        if not ok:
            log.info("call %s() from %s failed on %s: %r", msg.get("method"), msg.get("caller"),
                     self.site.site_name, error)
        if not expect:
            return
        out = {"t": "result", "job": self.job, "id": msg["id"], "ok": ok}
        if ok:
            out["value"] = value
        else:
            out["error"] = error
        try:
            conn.send(out)
        except wire.WireError as exc:
            conn.send({"t": "result", "job": self.job, "id": msg["id"], "ok": False,
                       "error": wire.RemoteError("WireError", f"{msg.get('method')}() returned a value that cannot be sent: {exc}", "")})
        except ConnectionClosed:
            log.warning("could not return the result of %s() to %s: connection closed", msg.get("method"), conn.peer)

    def cancel(self, conn: Connection, call_id: int) -> None:
        with self._lock:
            call = self._running.get((id(conn), call_id))
        if call is not None:
            call.cancelled.set()

    def cancel_from(self, conn: Connection) -> None:
        with self._lock:
            calls = [c for (cid, _), c in self._running.items() if cid == id(conn)]
        for call in calls:
            call.cancelled.set()

    def cancel_all(self) -> int:
        with self._lock:
            calls = list(self._running.values())
        for call in calls:
            call.cancelled.set()
        return len(calls)
