"""The site's side of a worker group: start it, authenticate its ranks, talk to them, tear it down.

The workers dial back to a listener on 127.0.0.1 with a one-time token from their environment
(never a fixed port). The group runs in its own process group, so stopping it -- cleanly, then
SIGTERM, then SIGKILL after a grace period -- leaves no orphan rank behind.
"""

from __future__ import annotations

import contextvars
import hmac
import itertools
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import threading
import time
from collections import deque
from typing import Any

from collab_core import tracking
from collab_core.connection import Connection, ConnectionClosed
from collab_core.context import current
from collab_core.errors import CollabError
from collab_core.lifeline import die_with_parent

from .launchers import make_launcher
from .protocol import ENV_ADDR, ENV_SPEC, ENV_TOKEN

log = logging.getLogger("collab.torchrun")
_ids = itertools.count(1)


class WorkerError(CollabError):
    """The worker group failed to start, crashed, or broke the protocol."""


class WorkerGroup:
    """One site's worker group (``torchrun ...``, ``python`` or a custom launcher)."""

    def __init__(self, site: str, command: str, spec: dict[str, Any], timeout: float, grace: float = 10.0):
        self.site = site
        self.command = command
        self.spec = dict(spec, site=site)
        self.timeout = timeout
        self.grace = grace
        self.proc: subprocess.Popen | None = None
        self.ranks: dict[int, Connection] = {}
        self.pids: dict[int, int] = {}
        self.world: int | None = None
        self.ready: dict[int, str | None] = {}
        self.results: dict[int, dict[int, dict]] = {}
        self.exits: dict[int, str | None] = {}
        self.tail: deque[str] = deque(maxlen=80)
        self.cond = threading.Condition()
        self.failed: str | None = None
        self._listener: socket.socket | None = None
        self._token = secrets.token_hex(32)
        self.site_ctx = current(required=False)  # the site this group works for (tracking records)

    # -- start ------------------------------------------------------------------------------------

    def start(self) -> None:
        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(0.5)
        self._listener = listener
        host, port = listener.getsockname()[:2]
        argv = make_launcher(self.command).argv()
        env = dict(os.environ, **{ENV_ADDR: f"{host}:{port}", ENV_TOKEN: self._token,
                                  ENV_SPEC: json.dumps(self.spec), "PYTHONUNBUFFERED": "1"})
        log.info("%s: starting worker group: %s", self.site, " ".join(argv))
        # the launcher (torchrun agent, python, srun ...) is signalled when this site process dies
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, start_new_session=True, preexec_fn=die_with_parent)
        ctx = contextvars.copy_context()  # the output lands in this site's log
        threading.Thread(target=ctx.run, args=(self._pump_output,), name=f"{self.site}-worker-output",
                         daemon=True).start()
        threading.Thread(target=self._accept, name=f"{self.site}-worker-accept", daemon=True).start()
        deadline = time.monotonic() + self.timeout
        with self.cond:
            while not self._all_ready():
                if self.failed or self.proc.poll() is not None:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self.cond.wait(min(remaining, 0.2))
            problem = self._start_problem()
        if problem:
            self.stop(grace=2.0)
            raise WorkerError(f"{self.site}: the worker group ({self.command}) {problem}\n{self.output_tail()}")
        log.info("%s: worker group ready (%d rank(s))", self.site, self.world)

    def _all_ready(self) -> bool:
        return self.world is not None and len(self.ready) == self.world and all(v is None for v in self.ready.values())

    def _start_problem(self) -> str | None:
        if self._all_ready():
            return None
        errors = {r: e for r, e in self.ready.items() if e}
        if errors:
            rank, err = sorted(errors.items())[0]
            return f"failed to start on rank {rank}:\n{err}"
        if self.failed:
            return self.failed
        code = self.proc.poll() if self.proc else None
        if code is not None:
            return f"exited with code {code} before it was ready"
        return (f"was not ready within subprocess_timeout={self.timeout:g} s "
                f"({len(self.ready)} of {self.world or '?'} rank(s) ready)")

    def _pump_output(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", errors="replace").rstrip()
            self.tail.append(line)
            log.info("%s", line)
        code = self.proc.wait()
        with self.cond:
            if not self.failed and code != 0:
                self.failed = f"exited with code {code}"
            self.cond.notify_all()

    def output_tail(self, lines: int = 30) -> str:
        return "--- last output of the worker group ---\n" + "\n".join(list(self.tail)[-lines:])

    def _accept(self) -> None:
        listener = self._listener
        while listener is not None and self.proc is not None and self.proc.poll() is None:
            try:
                sock, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            sock.settimeout(None)
            holder: dict[str, Connection] = {}
            conn = Connection(sock, "?", "worker", lambda c, m, h=holder: self._on_message(c, m, h),
                              self._on_close, heartbeat=1.0, dead_after=30.0, name=f"{self.site}-worker")
            holder["conn"] = conn
            conn.start()

    # -- messages ---------------------------------------------------------------------------------

    def _on_message(self, conn: Connection, msg: dict, holder: dict) -> None:
        kind = msg["t"]
        if kind == "hello":
            token = msg.get("token")
            if not isinstance(token, str) or not hmac.compare_digest(token, self._token):
                log.warning("%s: a process on 127.0.0.1 presented a wrong worker token; closing it", self.site)
                conn.close("wrong worker token")
                return
            rank = int(msg["rank"])
            conn.peer = f"rank {rank}"
            with self.cond:
                self.ranks[rank] = conn
                self.pids[rank] = int(msg.get("pid", 0))
                self.world = int(msg["world"])
                if self.spec["mode"] == "script":
                    self.ready[rank] = None
                self.cond.notify_all()
            conn.send({"t": "welcome"})
            return
        if conn.peer == "?":
            conn.close("message before hello")
            return
        rank = int(conn.peer.split()[1])
        with self.cond:
            if kind == "ready":
                self.ready[rank] = msg.get("error")
            elif kind == "result":
                self.results.setdefault(msg["id"], {})[rank] = msg
            elif kind == "exit":
                self.exits[rank] = msg.get("error")
            elif kind == "tracking" and self.site_ctx is not None:
                tracking.buffer_for(self.site_ctx.job, self.site).extend(list(msg.get("records") or []))
            self.cond.notify_all()

    def _on_close(self, conn: Connection, reason: str) -> None:
        with self.cond:
            self.cond.notify_all()

    # -- calls ------------------------------------------------------------------------------------

    def _lost_rank(self) -> str | None:
        for rank, conn in self.ranks.items():
            if conn.closed.is_set() and rank not in self.exits:
                return f"rank {rank} died ({conn.close_reason})"
        if self.proc is not None and self.proc.poll() is not None and not self.exits:
            return f"the worker group exited with code {self.proc.returncode}"
        return None

    def request(self, messages: dict[int, dict], want: set[int], cancelled) -> dict[int, dict]:
        """Send ``messages[rank]`` to each rank and wait for the answers of ``want``; a dead rank,
        an exited group or a cancellation ends the wait at once."""
        call_id = next(_ids)
        for rank, msg in messages.items():
            try:
                self.ranks[rank].send(dict(msg, id=call_id))
            except ConnectionClosed:
                pass
        try:
            with self.cond:
                while True:
                    got = self.results.get(call_id, {})
                    if want <= set(got):
                        return got
                    lost = self._lost_rank()
                    if lost:
                        self.failed = lost
                        break
                    if any(e for e in self.exits.values()):
                        rank, err = next((r, e) for r, e in self.exits.items() if e)
                        raise WorkerError(f"the training script failed on rank {rank}:\n{err}")
                    if want & set(self.exits):
                        raise WorkerError("the training script ended without sending a result for the current "
                                          "task (flare.send() was never called)")
                    if cancelled():
                        for conn in self.ranks.values():
                            try:
                                conn.send({"t": "cancel", "id": call_id})
                            except ConnectionClosed:
                                pass
                        raise WorkerError("the call was cancelled (timeout or abort) before the workers answered")
                    self.cond.wait(0.1)
        finally:
            self.results.pop(call_id, None)
        # a rank died: the process group is broken; tear it all down
        problem = self.failed
        self.stop(grace=1.0)
        raise WorkerError(f"{self.site}: {problem}; the worker group was stopped\n{self.output_tail()}")

    def send_all(self, msg: dict) -> None:
        for conn in list(self.ranks.values()):
            try:
                conn.send(msg)
            except ConnectionClosed:
                pass

    # -- stop -------------------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and not self.failed

    def stop(self, grace: float | None = None) -> None:
        """Ask the workers to stop; after ``grace`` seconds SIGTERM the process group, then SIGKILL."""
        grace = self.grace if grace is None else grace
        proc = self.proc
        if proc is not None and proc.poll() is None:
            self.send_all({"t": "stop"})
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                log.warning("%s: worker group did not stop within %g s; terminating it", self.site, grace)
                _kill_group(proc, signal.SIGTERM)
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    log.warning("%s: worker group ignored SIGTERM; killing it", self.site)
                    _kill_group(proc, signal.SIGKILL)
                    proc.wait(5)
        if proc is not None:
            _kill_group(proc, signal.SIGKILL)  # stragglers of the group (ranks outliving the launcher)
        for conn in list(self.ranks.values()):
            conn.close("worker group stopped")
        if self._listener is not None:
            self._listener.close()
            self._listener = None


def _kill_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
