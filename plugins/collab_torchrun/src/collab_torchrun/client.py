"""The client app of a ``launch_external_process=True`` recipe: it forwards the site's calls to a
worker group (started at the site's ``@collab.init``, reused across calls and rounds).

Two modes:

- ``train_script``: a Client API script runs in every rank; ``execute(fl_model)`` hands the task
  to every rank's ``flare.receive()`` (ranks other than 0 get it without params) and returns rank
  0's ``flare.send()``; ``stop()``/``abort()`` end the scripts.
- ``client`` (Mode 3): the ``@collab.publish`` methods of a client module or class run in every
  rank; the call returns rank 0's value and fails if any rank raised.
"""

from __future__ import annotations

import inspect
import logging
import threading
from pathlib import Path
from typing import Any

from collab_core.api import collab
from collab_core.app import App
from collab_core.errors import RecipeError
from collab_core.fl_model import FLModel
from collab_core.loading import import_job_module, job_policy, job_script

from .group import WorkerError, WorkerGroup

log = logging.getLogger("collab.torchrun")


def _client_interface(desc: dict[str, Any]) -> dict[str, inspect.Signature]:
    """Signatures of the published methods of the client described by ``desc``, without running
    its constructor (it runs in the workers)."""
    module = import_job_module(desc["module"], "client")
    if "class" not in desc:
        return App(module, role="client").interface.methods
    cls: Any = module
    for part in desc["class"].split("."):
        cls = getattr(cls, part)
    return App(cls.__new__(cls), role="client").interface.methods


class SubprocessClient:
    """Forwards a site's calls to its worker group. Built by ``CollabRecipe(...,
    launch_external_process=True, command=..., subprocess_timeout=...)``."""

    def __init__(self, command: str, subprocess_timeout: float = 600.0, train_script: str | None = None,
                 script_args: str | list[str] = "", client: dict[str, Any] | None = None, stop_grace: float = 10.0):
        if (train_script is None) == (client is None):
            raise ValueError("SubprocessClient needs exactly one of train_script= and client=")
        if train_script is not None:
            train_script = job_script(train_script)  # built from a deployed job: its code folder only
        policy = job_policy()
        if client is not None and policy is not None and not policy.allows(str(client.get("module"))):
            raise RecipeError(
                f"this site does not run custom code and the job's worker client module {client.get('module')!r} "
                f"is not among its allowed_modules; nothing was started")
        self.command = command
        self.subprocess_timeout = subprocess_timeout
        self.train_script = train_script
        self.script_args = script_args
        self.client = client
        self.stop_grace = stop_grace
        self._methods = _client_interface(client) if client is not None else None
        self._group: WorkerGroup | None = None
        self._lock = threading.Lock()

    # -- per-site copies and export ---------------------------------------------------------------

    def _copy(self) -> SubprocessClient:
        return SubprocessClient(self.command, self.subprocess_timeout, self.train_script, self.script_args,
                                self.client, self.stop_grace)

    def make_client_app(self, site_name: str) -> SubprocessClient:
        return self._copy()

    def __deepcopy__(self, memo: dict) -> SubprocessClient:
        return self._copy()

    def collab_export_args(self) -> dict[str, Any]:
        return {"command": self.command, "subprocess_timeout": self.subprocess_timeout,
                "train_script": Path(self.train_script).name if self.train_script else None,
                "script_args": self.script_args, "client": self.client, "stop_grace": self.stop_grace}

    def collab_export_files(self) -> dict[str, Path]:
        from collab_core.bridge import ScriptClient

        if self.train_script:
            return ScriptClient(self.train_script).collab_export_files()
        import importlib

        module = importlib.import_module(self.client["module"])
        return ScriptClient(module.__file__).collab_export_files()

    # -- the app's surface ------------------------------------------------------------------------

    def collab_definitions(self) -> list[tuple[str, str]]:
        if self._methods is None:
            names = [("execute", "publish"), ("stop", "publish"), ("abort", "publish")]
        else:
            names = [(m, "publish") for m in self._methods]
        return [("_start", "init"), *names, ("_finish", "final")]

    def __getattr__(self, name: str) -> Any:
        methods = self.__dict__.get("_methods")
        if methods is None or name not in methods:
            raise AttributeError(name)

        def forward(*args: Any, **kwargs: Any) -> Any:
            return self._call(name, args, kwargs)

        forward.__name__ = name
        forward.__signature__ = methods[name]  # type: ignore[attr-defined]
        return forward

    def _spec(self) -> dict[str, Any]:
        import sys

        ctx_ws = collab.workspace
        from collab_core.context import current

        spec: dict[str, Any] = {"job": collab.job_name, "workspace": str(ctx_ws), "sys_path": [p for p in sys.path if p],
                                "tracking": bool(current().job.tracking),
                                # the site's app properties as the group starts, and its setting
                                "app_props": dict(current().app_props), "backend_type": current().job.backend_type}
        if self.train_script:
            from collab_core.bridge import resolve_script, script_argv

            script = resolve_script(self.train_script)
            spec.update(mode="script", script=str(script), script_args=script_argv(script, self.script_args)[1:])
        else:
            spec.update(mode="module", client=self.client)
        return spec

    def _start(self) -> None:
        with self._lock:
            if self._group is not None and self._group.alive:
                return
            group = WorkerGroup(collab.site_name, self.command, self._spec(), self.subprocess_timeout, self.stop_grace)
            group.start()
            self._group = group

    def _live_group(self) -> WorkerGroup:
        group = self._group
        if group is None or not group.alive:
            log.warning("%s: the worker group is not running%s; starting a new one", collab.site_name,
                        f" ({group.failed})" if group is not None and group.failed else "")
            self._start()
            group = self._group
        assert group is not None
        return group

    def _call(self, method: str, args: tuple, kwargs: dict) -> Any:
        group = self._live_group()
        msg = {"t": "call", "method": method, "args": list(args), "kwargs": kwargs, "caller": collab.caller}
        got = group.request({r: msg for r in group.ranks}, set(group.ranks), lambda: collab.is_aborted)
        for rank in sorted(got):
            if not got[rank].get("ok"):
                err = got[rank].get("error")
                tb = getattr(err, "traceback", "") or str(err)
                raise WorkerError(f"{method}() failed on rank {rank} of {collab.site_name}:\n{tb}")
        return got[0].get("value")

    @collab.publish
    def execute(self, fl_model: FLModel | None = None) -> FLModel:
        """Hand ``fl_model`` to every rank's ``flare.receive()``; return rank 0's ``flare.send()``."""
        if fl_model is None:
            fl_model = FLModel()
        group = self._live_group()
        bare = FLModel(params=None, params_type=fl_model.params_type, metrics=fl_model.metrics, meta=fl_model.meta,
                       current_round=fl_model.current_round, total_rounds=fl_model.total_rounds,
                       start_round=fl_model.start_round)
        messages = {r: {"t": "task", "model": fl_model if r == 0 else bare} for r in group.ranks}
        got = group.request(messages, {0}, lambda: collab.is_aborted)
        result = got[0]
        if not result.get("ok"):
            raise WorkerError(str(result.get("error")))
        return result["value"]

    @collab.publish
    def stop(self) -> None:
        """Make ``flare.is_running()`` false in every rank."""
        if self._group is not None:
            self._group.send_all({"t": "stop"})

    @collab.publish
    def abort(self, reason: str = "aborted by the server") -> None:
        """End the scripts with an error naming ``reason``."""
        if self._group is not None:
            self._group.send_all({"t": "stop", "reason": reason})

    def _finish(self) -> None:
        if self._group is not None:
            self._group.stop()
            self._group = None


__all__ = ["SubprocessClient", "WorkerError"]
