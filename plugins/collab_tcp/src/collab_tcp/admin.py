"""The admin side: submit a job folder to a server, follow it, ask for status."""

from __future__ import annotations

import itertools
import logging
import queue
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from collab_core.errors import CollabError
from collab_core.job import pack_job

from .connection import Connection, ConnectionClosed, dial_server
from .kit import AuthError, Kit

log = logging.getLogger("collab.tcp.admin")


class AdminError(CollabError):
    """The server refused an admin request, or could not be reached."""


class AdminClient:
    """An authenticated admin connection to a server (``with AdminClient(kit) as admin: ...``)."""

    def __init__(self, kit: Kit, *, address: tuple[str, int] | None = None, timeout: float = 30.0,
                 heartbeat: float = 1.0):
        if kit.role != "admin":
            raise AuthError(f"{kit.path} is a {kit.role} kit; admin commands need an admin kit")
        self.kit = kit
        self.address = address or (kit.server_host, kit.server_port)
        self.timeout = timeout
        self.heartbeat = heartbeat  # well inside any server's dead_after (>= 2 s)
        self._inbox: queue.Queue[dict | None] = queue.Queue()
        self._rids = itertools.count(1)
        self.conn: Connection | None = None
        self._backlog: list[dict] = []  # messages that arrived while waiting for a reply

    def connect(self) -> AdminClient:
        try:
            tls, name = dial_server(self.kit, *self.address, timeout=self.timeout)
        except OSError as exc:
            raise AdminError(f"cannot reach the server at {self.address[0]}:{self.address[1]}: {exc}") from exc
        self.conn = Connection(tls, name, "server", lambda c, m: self._inbox.put(m),
                               lambda c, r: self._inbox.put(None), heartbeat=self.heartbeat, name="admin").start()
        return self

    def __enter__(self) -> AdminClient:
        return self.connect() if self.conn is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close("admin done")

    def _request(self, msg: dict, reply: str, timeout: float | None = None) -> dict:
        if self.conn is None:
            self.connect()
        rid = next(self._rids)
        try:
            self.conn.send(dict(msg, rid=rid))
        except ConnectionClosed as exc:
            raise AdminError(f"the connection to the server is closed: {exc}") from exc
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AdminError(f"the server did not answer {msg['t']!r} within {timeout or self.timeout:.0f} s")
            try:
                got = self._inbox.get(timeout=remaining)
            except queue.Empty:
                continue
            if got is None:
                raise AdminError(f"the server closed the connection: {self.conn.close_reason}")
            if got.get("rid") != rid:
                self._backlog.append(got)
                continue
            if got["t"] == "error":
                raise AdminError(str(got.get("error")))
            if got["t"] != reply:
                raise AdminError(f"unexpected answer {got['t']!r} to {msg['t']!r}")
            return got

    def submit(self, job_folder: str | Path, *, sites: list[str] | None = None, wait_timeout: float = 60.0,
               deploy_timeout: float = 300.0, follow: bool = True, parents: dict[str, str] | None = None) -> str:
        """Send a job folder (``recipe.export(path)``); return the job id. ``parents``
        (``{child: parent}``, with ``sites``) makes the job hierarchical (``collab.child_clients``)."""
        files = pack_job(job_folder)
        request = {"t": "submit", "files": files, "sites": sites, "wait_timeout": wait_timeout,
                   "deploy_timeout": deploy_timeout, "follow": follow}
        if parents:
            request["parents"] = dict(parents)
        reply = self._request(request, "submitted")
        return reply["job"]

    def follow(self, job: str, on_log: Callable[[str, list[str]], None] | None = None,
               timeout: float | None = None, subscribe: bool = False,
               on_progress: Callable[[str], None] | None = None,
               on_print: Callable[[str, str], None] | None = None) -> dict:
        """Wait for ``job`` to end, calling ``on_log(site, lines)`` as log lines arrive and
        ``on_progress(line)`` for the job's progress lines (group calls, rounds; see
        :mod:`collab_core.progress`) and ``on_print(site, line)`` for its server code's print()
        lines; return the ``job_done`` message (status, error, result,
        participants, logs)."""
        if self.conn is None:
            self.connect()
        if subscribe:
            self.conn.send({"t": "follow", "job": job})
        deadline = None if timeout is None else time.monotonic() + timeout
        pending, self._backlog = self._backlog, []
        while True:
            if pending:
                msg = pending.pop(0)
            else:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise AdminError(f"job {job} did not end within {timeout:.0f} s")
                try:
                    msg = self._inbox.get(timeout=remaining if remaining is not None else 1.0)
                except queue.Empty:
                    continue
            if msg is None:
                raise AdminError(f"lost the connection to the server while following job {job}: "
                                 f"{self.conn.close_reason}")
            if msg.get("job") != job:
                continue
            if msg["t"] == "log" and on_log is not None:
                on_log(str(msg.get("site")), list(msg.get("lines", [])))
            elif msg["t"] == "progress" and on_progress is not None:
                on_progress(str(msg.get("line", "")))
            elif msg["t"] == "print" and on_print is not None:
                on_print(str(msg.get("site")), str(msg.get("line", "")))
            elif msg["t"] == "job_done":
                return msg

    def status(self) -> dict[str, Any]:
        reply = self._request({"t": "status"}, "status")
        return {k: reply[k] for k in ("project", "sites", "jobs", "current")}

    def shutdown(self, sites: bool = True) -> None:
        try:
            self._request({"t": "shutdown", "sites": sites}, "bye", timeout=10)
        except AdminError:
            pass
