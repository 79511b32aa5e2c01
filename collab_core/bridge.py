"""The bridge between the server's push (``collab.clients.execute(fl_model=...)``) and a training
script's pull (``flare.receive()`` / ``flare.send()``): the client app of a ``train_script`` recipe.

In-process mode (the default): on its site's first call the script starts on a thread of its own,
as ``__main__`` in a fresh namespace, with ``sys.argv = [script, *script_args]``. ``execute`` hands
the task to ``receive()`` and waits for ``send()``; a script that raises, exits, or never sends
fails that call with its traceback instead of hanging it.

What in-process mode cannot separate between simulated sites: the working directory, ``sys.argv``
(process-wide, the same for every site), modules the script imports (``import model`` is shared),
environment variables and other process-global state. Use ``launch_external_process=True``
(collab-torchrun) for a process per site.
"""

from __future__ import annotations

import builtins
import contextvars
import logging
import shlex
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from . import client as flare_module
from .api import collab
from .context import SiteContext, current
from .context import _current as _site_var
from .errors import CollabError, RecipeError
from .fl_model import FLModel
from .loading import job_script

log = logging.getLogger("collab.client")


class ScriptError(CollabError):
    """The training script failed, exited, or broke the receive/send protocol."""


def resolve_script(train_script: str | Path, near: Path | None = None) -> Path:
    """Find ``train_script``: as given (absolute or relative to the working directory), next to
    ``near`` (the module that builds the recipe), or on ``sys.path`` (a job's code folder)."""
    path = Path(train_script)
    candidates = [path]
    if not path.is_absolute():
        if near is not None:
            candidates.append(near / path)
        candidates += [Path(p) / path for p in sys.path if p]
    for c in candidates:
        if c.is_file():
            return c.resolve()
    raise RecipeError(
        f"train_script {str(train_script)!r} not found (looked in the working directory"
        f"{', next to ' + str(near) if near else ''} and on sys.path); pass the script's path"
    )


def script_argv(train_script: str | Path, script_args: str | list[str] | tuple[str, ...]) -> list[str]:
    args = shlex.split(script_args) if isinstance(script_args, str) else [str(a) for a in script_args]
    return [str(train_script), *args]


def log_metric(key: str, value: Any, step: int | None) -> None:
    """``flare.log``: a tracking record when the job has a tracker, else a line in the site log."""
    from . import tracking

    ctx = current(required=False)
    if ctx is not None and ctx.job.tracking:
        tracking.emit({"tool": "flare", "op": "scalar", "tag": key, "value": value, "step": step})
    else:
        log.info("metric %s=%s%s", key, value, "" if step is None else f" step={step}")


class _InProcessBridge:
    """One site's end of the handshake between ``execute`` and the script's receive/send."""

    def __init__(self, site_name: str, script: Path, argv: list[str]):
        self.site_name = site_name
        self.script = script
        self.argv = argv
        self.cond = threading.Condition()
        self.task: FLModel | None = None
        self.task_taken = False
        self.result: FLModel | None = None
        self.stopped = False
        self.abort_reason: str | None = None
        self.finished = False
        self.error: str | None = None
        self.thread: threading.Thread | None = None
        self.rank: Any = None

    # -- the script's side (flare.*) --------------------------------------------------------------

    def init(self, rank: Any) -> None:
        self.rank = rank

    def receive(self, timeout: float | None) -> FLModel | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.cond:
            if self.task_taken and self.result is None:
                raise ScriptError("flare.receive() was called again before flare.send() answered the "
                                  "previous task; send a result for every task you receive")
            while self.task is None or self.task_taken:
                if self.abort_reason is not None:
                    raise ScriptError(f"the server aborted the job: {self.abort_reason}")
                if self.stopped:
                    return None
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"no task from the server within {timeout} s")
                self.cond.wait(remaining if remaining is not None else 1.0)
            self.task_taken = True
            return self.task

    def send(self, model: FLModel) -> None:
        with self.cond:
            if self.task is None or not self.task_taken:
                raise ScriptError("flare.send() without a task: call flare.receive() first")
            if self.result is not None:
                raise ScriptError("flare.send() was called twice for one task")
            self.result = model
            self.cond.notify_all()
        if model.metrics:
            log.info("%s sent a result with metrics %s", self.site_name, model.metrics)

    def is_running(self) -> bool:
        return not self.stopped and self.abort_reason is None

    def log_metric(self, key: str, value: Any, step: int | None) -> None:
        log_metric(key, value, step)

    # -- the script's thread ----------------------------------------------------------------------

    def start(self, site_ctx: SiteContext) -> None:
        ctx = contextvars.copy_context()
        ctx.run(flare_module._bridge.set, self)
        ctx.run(_site_var.set, site_ctx)
        script_dir = str(self.script.parent)
        if script_dir not in sys.path:
            sys.path.insert(0, script_dir)
        sys.argv = list(self.argv)  # process-wide: the same for every in-process site
        self.thread = threading.Thread(target=ctx.run, args=(self._main,), name=f"script-{self.site_name}",
                                       daemon=True)
        self.thread.start()

    def _main(self) -> None:
        try:
            source = self.script.read_bytes()
            code = compile(source, str(self.script), "exec")
            namespace = {"__name__": "__main__", "__file__": str(self.script), "__builtins__": builtins,
                         "__package__": None, "__spec__": None}
            exec(code, namespace)
        except SystemExit as exc:
            if exc.code not in (0, None):
                self.error = f"the script exited with sys.exit({exc.code!r})"
        except BaseException as exc:
            self.error = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            log.error("training script %s failed on %s:\n%s", self.script.name, self.site_name, self.error)
        finally:
            with self.cond:
                self.finished = True
                self.cond.notify_all()

    # -- the server's side ------------------------------------------------------------------------

    def execute(self, model: FLModel) -> FLModel:
        with self.cond:
            if self.abort_reason is not None:
                raise ScriptError(f"the job was aborted: {self.abort_reason}")
            if self.stopped:
                raise ScriptError("execute() after stop(): the script has been told to finish")
            if self.finished:
                raise ScriptError(self._ended_message())
            self.task, self.task_taken, self.result = model, False, None
            self.cond.notify_all()
            try:
                while self.result is None:
                    if self.finished:
                        raise ScriptError(self._ended_message(during_task=True))
                    if collab.is_aborted:
                        raise ScriptError("the call was cancelled (timeout or abort) before the script sent a result")
                    self.cond.wait(0.1)
                return self.result
            finally:
                self.task, self.task_taken, self.result = None, False, None

    def _ended_message(self, during_task: bool = False) -> str:
        if self.error:
            return f"the training script {self.script.name} failed:\n{self.error}"
        if during_task:
            return (f"the training script {self.script.name} ended without sending a result for the "
                    f"current task (flare.send() was never called)")
        return f"the training script {self.script.name} has already ended; it runs while flare.is_running()"

    def stop(self, abort_reason: str | None = None) -> None:
        with self.cond:
            self.stopped = True
            if abort_reason is not None:
                self.abort_reason = abort_reason
            self.cond.notify_all()

    def join(self, timeout: float) -> bool:
        if self.thread is None:
            return True
        self.thread.join(timeout)
        return not self.thread.is_alive()


class ScriptClient:
    """The client app of a Client API recipe: ``CollabRecipe(..., train_script="client.py")``.

    Publishes ``execute(fl_model)``, ``stop()`` and ``abort(reason)`` for the server.
    """

    def __init__(self, train_script: str | Path, script_args: str | list[str] = "", stop_timeout: float = 30.0):
        self.train_script = job_script(train_script)  # built from a deployed job: its code folder only
        self.script_args = script_args
        self.stop_timeout = stop_timeout
        self._bridge: _InProcessBridge | None = None
        self._lock = threading.Lock()

    def make_client_app(self, site_name: str) -> ScriptClient:
        return ScriptClient(self.train_script, self.script_args, self.stop_timeout)

    def __deepcopy__(self, memo: dict) -> ScriptClient:
        return ScriptClient(self.train_script, self.script_args, self.stop_timeout)

    def collab_export_args(self) -> dict[str, Any]:
        return {"train_script": Path(self.train_script).name, "script_args": self.script_args,
                "stop_timeout": self.stop_timeout}

    def collab_export_files(self) -> dict[str, Path]:
        """The script and its neighbours: every .py file in its folder and its packages."""
        script = resolve_script(self.train_script)
        root = script.parent
        files = {script.name: script}
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root)
            if "__pycache__" in rel.parts:
                continue
            if len(rel.parts) > 1 and not all((root / Path(*rel.parts[:i]) / "__init__.py").exists()
                                               for i in range(1, len(rel.parts))):
                continue  # not inside a package next to the script
            files[rel.as_posix()] = path
        return files

    def _ensure_started(self) -> _InProcessBridge:
        with self._lock:
            if self._bridge is None:
                ctx = current()
                script = resolve_script(self.train_script)
                self._bridge = _InProcessBridge(ctx.site_name, script, script_argv(script, self.script_args))
                self._bridge.start(SiteContext(ctx.site_name, ctx.job, ctx.workspace, None, app_props=ctx.app_props))
            return self._bridge

    @collab.publish
    def execute(self, fl_model: FLModel | None = None) -> FLModel:
        """Hand ``fl_model`` to the script's ``flare.receive()``; return what it ``flare.send()``s."""
        if fl_model is None:
            fl_model = FLModel()
        if not isinstance(fl_model, FLModel):
            raise TypeError(f"execute(fl_model=...) takes an FLModel, got {type(fl_model).__name__}")
        return self._ensure_started().execute(fl_model)

    @collab.publish
    def stop(self) -> None:
        """Make ``flare.is_running()`` false and ``flare.receive()`` return None."""
        if self._bridge is not None:
            self._bridge.stop()

    @collab.publish
    def abort(self, reason: str = "aborted by the server") -> None:
        """Stop the script with an error: ``flare.receive()`` raises, naming ``reason``."""
        if self._bridge is not None:
            self._bridge.stop(abort_reason=reason)

    @collab.final
    def _finish(self) -> None:
        bridge = self._bridge
        if bridge is None:
            return
        bridge.stop()
        if not bridge.join(self.stop_timeout):
            log.warning("training script %s on %s did not finish within %g s after stop(); it keeps "
                        "running as a daemon thread and is no longer waited for. Make the script's loop "
                        "check flare.is_running().", bridge.script.name, bridge.site_name, self.stop_timeout)
        elif bridge.error:
            log.error("training script %s on %s failed after the last task:\n%s", bridge.script.name,
                      bridge.site_name, bridge.error)
