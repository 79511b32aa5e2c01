"""Calls over connections, for both ends: the backend that sends calls and matches results, and
the server-of-calls that runs incoming ones on worker threads (never on the I/O threads)."""

from __future__ import annotations

import logging
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from collab_core import wire
from collab_core.errors import CollabCallError
from collab_core.executor import ElasticExecutor
from collab_core.runtime import SERVER, Call, SiteRuntime

from .connection import Connection, ConnectionClosed
from .secure import SecureCallError, SecureChannel, Session

log = logging.getLogger("collab.tcp")
#: refusals of secure calls: in the job's log (a site forwards it), unlike the transport's own lines
secure_log = logging.getLogger("collab.tcp.secure")


def new_wire_id() -> int:
    """A message id for a call or a relay: random, 63 bits, so a participant cannot guess the id
    of a call it was never sent (defence in depth; the real rule is that a result is accepted only
    from the connection its call went to)."""
    return secrets.randbits(63) | 1


def call_message(job: str, call: Call, wire_id: int) -> dict:
    msg = {
        "t": "call", "job": job, "id": wire_id, "caller": call.caller, "target": call.target,
        "method": call.method, "args": list(call.args), "kwargs": call.kwargs, "expect": call.expect_result,
    }
    if call.optional:  # a site that does not publish the method answers None (CallOptions.optional)
        msg["optional"] = True
    return msg


class RecentIds:
    """Ids of calls that ended on our side (cancelled, timed out) whose result may still arrive
    legitimately from the connection they went to; bounded, oldest forgotten first."""

    def __init__(self, limit: int = 4096):
        self.limit = limit
        self._ids: dict[Connection, OrderedDict[int, None]] = {}
        self._lock = threading.Lock()

    def add(self, conn: Connection, wire_id: int) -> None:
        with self._lock:
            ids = self._ids.setdefault(conn, OrderedDict())
            ids[wire_id] = None
            if len(ids) > self.limit:
                ids.popitem(last=False)

    def take(self, conn: Connection, wire_id: object) -> bool:
        """True (and forget it) if ``wire_id`` is a call of ours that ended early on ``conn``."""
        with self._lock:
            ids = self._ids.get(conn)
            return ids is not None and ids.pop(wire_id, 0) is None  # type: ignore[call-overload]

    def forget(self, conn: Connection) -> None:
        with self._lock:
            self._ids.pop(conn, None)


class ForgedResult(Exception):
    """A ``result`` arrived on a connection that its call was never sent on."""


def reject_forged(conn: Connection, what: str) -> None:
    """Drop a forged result: log it under the sender's certificate name and close its connection."""
    log.warning("closing %s %s: %s", conn.role, conn.peer, what)
    conn.close(f"protocol violation: {what}")


def error_from_result(target: str, method: str, msg: dict) -> CollabCallError:
    err = msg.get("error")
    if isinstance(err, BaseException):
        tb = getattr(err, "traceback", None) or None
        return CollabCallError(target, method, err, tb)
    return CollabCallError(target, method, RuntimeError(str(err)))


class TcpBackend:
    """The core Backend over connections. ``route(target)`` gives the connection that reaches a
    site (a site sends everything to the server, which runs or relays it), or a sentence saying
    why there is none ("site-3 is not connected")."""

    def __init__(self, job: str, route: Callable[[str], Connection | str | None],
                 secure: SecureChannel | None = None):
        self.job = job
        self.route = route
        #: a site's end of secure calls: seals ``secure=True`` calls to other sites (None: the server)
        self.secure = secure
        self._lock = threading.Lock()
        #: wire id -> (call, future, the connection the call was sent on)
        self._pending: dict[int, tuple[Call, Future, Connection]] = {}
        self._sessions: dict[int, Session] = {}  # wire id -> the keys of a sealed call's result
        self._wire_ids: dict[int, int] = {}  # call.id -> wire id, for cancel
        self._ended = RecentIds()
        self.closed = False

    def submit(self, call: Call) -> Future:
        fut: Future = Future()
        conn = self.route(call.target)
        if isinstance(conn, str) or conn is None or conn.closed.is_set():
            if isinstance(conn, str):
                why = conn
            else:
                why = f"{call.target} is not connected" + (f" ({conn.close_reason})" if conn is not None else "")
            fut.set_exception(CollabCallError(call.target, call.method, ConnectionError(why)))
            return fut
        wire_id = new_wire_id()
        msg = call_message(self.job, call, wire_id)
        session = None
        # a call to the server needs no envelope: TLS protects it end to end (see secure.py)
        if call.secure and self.secure is not None and call.target != SERVER:
            try:
                msg["sealed"], session = self.secure.seal_call(call.target, call.method, call.expect_result,
                                                               call.args, call.kwargs)
            except SecureCallError as exc:
                fut.set_exception(CollabCallError(call.target, call.method, exc))
                return fut
            except wire.WireError as exc:
                raise CollabCallError(call.target, call.method, exc,
                                      message=f"cannot send the arguments of {call.method}() to {call.target}: {exc}") from None
            msg["args"], msg["kwargs"] = [], {}
        if call.expect_result:
            with self._lock:
                self._pending[wire_id] = (call, fut, conn)
                self._wire_ids[call.id] = wire_id
                if session is not None:
                    self._sessions[wire_id] = session
        try:
            conn.send(msg)
        except wire.WireError as exc:
            self._pop(wire_id)
            raise CollabCallError(call.target, call.method, exc,
                                  message=f"cannot send the arguments of {call.method}() to {call.target}: {exc}") from None
        except ConnectionClosed as exc:
            self._pop(wire_id)
            fut = Future()
            fut.set_exception(CollabCallError(call.target, call.method, exc))
            return fut
        if not call.expect_result:
            fut.set_result(None)
        return fut

    def _pop(self, wire_id: int) -> tuple[Call, Future, Connection] | None:
        with self._lock:
            entry = self._pending.pop(wire_id, None)
            self._sessions.pop(wire_id, None)
            if entry is not None:
                self._wire_ids.pop(entry[0].id, None)
            return entry

    def owns(self, wire_id: object) -> bool:
        """True if a call of ours waits for a result with this id (on whichever connection)."""
        with self._lock:
            return wire_id in self._pending

    def on_result(self, msg: dict, conn: Connection) -> bool:
        """Resolve the call a ``result`` message answers, if it arrived on the connection that call
        was sent on. Returns False for the late result of a call we cancelled (dropped quietly);
        raises :class:`ForgedResult` for anything else (a result of a call never sent there)."""
        wire_id = msg.get("id")
        if type(wire_id) is not int:
            raise ForgedResult(f"a result whose call id is {type(wire_id).__name__}, not an integer")
        with self._lock:
            entry = self._pending.get(wire_id)
            session = None
            if entry is not None and entry[2] is conn:
                del self._pending[wire_id]
                self._wire_ids.pop(entry[0].id, None)
                session = self._sessions.pop(wire_id, None)
            else:
                entry = None
        if entry is None:
            if self._ended.take(conn, wire_id):
                return False
            raise ForgedResult(f"a result for call id {wire_id!r}, which was never sent to {conn.peer}")
        call, fut, _ = entry
        if session is not None:
            try:
                msg = open_secure_result(session, call, msg)
            except SecureCallError as exc:
                secure_log.error("%s refused a result: %s", call.caller, exc)
                fut.set_exception(CollabCallError(call.target, call.method, exc))
                return True
        if msg.get("ok"):
            fut.set_result(msg.get("value"))
        else:
            fut.set_exception(error_from_result(call.target, call.method, msg))
        return True

    def on_connection_lost(self, conn: Connection, reason: str) -> None:
        """Fail at once every call that was waiting on ``conn``."""
        with self._lock:
            lost = [(cid, e) for cid, e in self._pending.items() if e[2] is conn]
            for cid, e in lost:
                del self._pending[cid]
                self._sessions.pop(cid, None)
                self._wire_ids.pop(e[0].id, None)
        self._ended.forget(conn)
        for _, (call, fut, _) in lost:
            fut.set_exception(CollabCallError(
                call.target, call.method, ConnectionError(f"lost the connection to {conn.peer}: {reason}")))

    def cancel(self, call: Call) -> None:
        with self._lock:
            wire_id = self._wire_ids.pop(call.id, None)
            entry = self._pending.pop(wire_id, None) if wire_id is not None else None
            if wire_id is not None:
                self._sessions.pop(wire_id, None)
        if entry is None:
            return
        _, fut, conn = entry
        self._ended.add(conn, wire_id)  # its result may still be on the way: not a forgery
        try:
            conn.send({"t": "cancel", "job": self.job, "id": wire_id})
        except (ConnectionClosed, wire.WireError):
            pass

    def close(self) -> None:
        self.closed = True
        with self._lock:
            pending = list(self._pending.values())
            self._pending.clear()
            self._sessions.clear()
        for call, fut, _ in pending:
            if not fut.done():
                fut.set_exception(CollabCallError(call.target, call.method, ConnectionError("the job ended")))


def open_secure_result(session: Session, call: Call, msg: dict) -> dict:
    """The result message of a secure call with its sealed result opened. An error the target
    answered outside the envelope (it refused the call) or one the relay made up ("not
    connected") passes through as it came: those are not authenticated. A success that is not
    sealed is refused: the relay stripped or replaced the target's answer."""
    if "sealed" in msg:
        body = session.open_result(msg["sealed"], call.target)
        return {"ok": body["ok"], "value": body.get("value"), "error": body.get("error")}
    if msg.get("ok"):
        raise SecureCallError(
            f"the result of the secure call {call.method}() to {call.target} arrived unsealed: the "
            f"relay stripped or replaced {call.target}'s answer; refused")
    return msg


class CallServer:
    """Runs incoming calls for one local site on an elastic pool and answers on the connection
    they came from. Tracks them so a ``cancel`` or a lost connection flags them cancelled."""

    def __init__(self, job: str, site: SiteRuntime, executor: ElasticExecutor,
                 secure: SecureChannel | None = None):
        self.job = job
        self.site = site
        self.executor = executor
        #: opens sealed calls from other sites and seals their results (None: the server)
        self.secure = secure
        self._lock = threading.Lock()
        self._running: dict[tuple[int, int], Call] = {}

    def handle(self, conn: Connection, msg: dict, caller: str) -> None:
        args = msg.get("args", [])
        kwargs = msg.get("kwargs", {})
        if not isinstance(args, (list, tuple)) or not isinstance(kwargs, dict) or not isinstance(msg.get("method"), str):
            self._reply(conn, msg, False, error=ValueError("malformed call message"))
            return
        call = Call(caller=caller, target=self.site.site_name, method=msg["method"], args=tuple(args),
                    kwargs=kwargs, expect_result=bool(msg.get("expect", True)), secure="sealed" in msg,
                    optional=msg.get("optional") is True)
        key = (id(conn), msg["id"])
        with self._lock:
            self._running[key] = call
        self.executor.submit(self._run, conn, msg, call, key)

    def _run(self, conn: Connection, msg: dict, call: Call, key: tuple[int, int]) -> None:
        session = None
        try:
            if call.cancelled.is_set():
                raise ConnectionAbortedError("cancelled before it started")
            if call.secure:  # opened here, on a worker thread: it may be megabytes of AES-GCM
                try:
                    call.args, call.kwargs, session = self._open(msg, call)
                except SecureCallError as exc:  # refused: answered outside the envelope, as it failed
                    secure_log.error("%s refused a call: %s", self.site.site_name, exc)
                    self._reply(conn, msg, False, error=exc, expect=call.expect_result)
                    return
            value = self.site.invoke(call)
        except BaseException as exc:
            self._reply(conn, msg, False, error=exc, expect=call.expect_result, session=session)
        else:
            self._reply(conn, msg, True, value=value, expect=call.expect_result, session=session)
        finally:
            with self._lock:
                self._running.pop(key, None)

    def _open(self, msg: dict, call: Call) -> tuple[tuple, dict, Session]:
        if self.secure is None:
            raise SecureCallError(
                f"{self.site.site_name} got a sealed call {call.method}() from {call.caller}, but calls "
                f"to the server are not sealed (TLS protects them end to end)")
        return self.secure.open_call(call.caller, call.method, call.expect_result, msg["sealed"])

    def _reply(self, conn: Connection, msg: dict, ok: bool, value: Any = None, error: BaseException | None = None,
               expect: bool = True, session: Session | None = None) -> None:
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
            if session is not None:  # a secure call's result: sealed for its caller
                try:
                    out = {"t": "result", "job": self.job, "id": msg["id"],
                           "sealed": session.seal_result(ok, value, error)}
                except wire.WireError as exc:
                    out = {"t": "result", "job": self.job, "id": msg["id"], "sealed": session.seal_result(
                        False, error=wire.RemoteError(
                            "WireError", f"{msg.get('method')}() returned a value that cannot be sent: {exc}", ""))}
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
