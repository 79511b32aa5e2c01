"""The backend-independent runtime: calls, the backend contract, sites and their lifecycle.

A backend only moves one call to one site and hands back a future. Everything else -- groups,
quorum, deadlines, in-time callbacks, throttling, errors -- lives in :mod:`collab_core.calls`,
written once for every backend.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import attrs

from . import props as _props
from . import tracking
from .app import App, Interface, call_with_context
from .context import RESULT_PROP, CallContext, SiteContext, active
from .errors import CollabCallError, CollabError
from .topology import Topology

log = logging.getLogger("collab.runtime")

SERVER = "server"
_ids = itertools.count(1)


class CancelFlag:
    """A one-way flag, cheaper than threading.Event (no condition): nobody waits on it, code polls
    it through ``collab.is_aborted``."""

    __slots__ = ("_set",)

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set


@attrs.define(eq=False)
class Call:
    """One call of one method on one site."""

    caller: str
    target: str
    method: str
    args: tuple
    kwargs: dict
    expect_result: bool = True
    deadline: float | None = None  # time.monotonic() value
    #: the caller asked for end-to-end protection of the payload (a transport may honour it)
    secure: bool = False
    id: int = attrs.field(factory=lambda: next(_ids))
    cancelled: CancelFlag = attrs.field(factory=CancelFlag)

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()


@runtime_checkable
class Backend(Protocol):
    """What an environment's transport implements. ``submit`` must not block on the call itself."""

    def submit(self, call: Call) -> Future:
        """Deliver ``call``; the future resolves to the result or fails with CollabCallError."""

    def cancel(self, call: Call) -> None:
        """Cancel ``call`` at its site (it will not start, or sees ``collab.is_aborted``)."""

    def close(self) -> None:
        """Release threads, sockets and processes."""

    # Optional: ``help(future) -> bool`` runs a submitted call on the calling thread if it has not
    # started; core calls it when the caller has no deadline and would otherwise just wait.


def remote_error(call: Call, exc: BaseException) -> CollabCallError:
    """The CollabCallError for an exception raised by the method a call ran on its site."""
    from .wire import RemoteError

    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    cause = RemoteError(f"{type(exc).__module__}.{type(exc).__qualname__}".removeprefix("builtins."), str(exc), tb)
    err = CollabCallError(call.target, call.method, cause, tb)
    err.__cause__ = exc
    return err


class JobRuntime:
    """A running job as one process sees it: the sites, the backend, the interfaces to validate
    calls against, the abort flag and the workspace."""

    def __init__(
        self,
        job_name: str,
        client_names: list[str],
        backend: Backend,
        interfaces: dict[str, Interface],
        workspace: Path,
        default_timeout: float | None = None,
        server_name: str = SERVER,
    ):
        self.job_name = job_name
        self.client_names = list(client_names)
        self.server_name = server_name
        self.backend = backend
        self.interfaces = interfaces  # "server" / "client" -> Interface
        self.workspace = workspace
        self.default_timeout = default_timeout
        self.aborted = threading.Event()
        self.abort_reason: str | None = None
        #: the recipe's tracking configuration ([{"name", "options"}]); empty: no tracker
        self.tracking: list[dict[str, Any]] = []
        #: per-job state of plugins and services (tracking buffers, the tracking hub, ...)
        self.extras: dict[str, Any] = {}
        #: the recipe's properties: {"server_props", "client_props", "per_site_config"}
        self.props: dict[str, dict[str, Any]] = _props.empty_props()
        #: which setting runs the job (collab.backend_type): "sim", "poc", "prod" or a plugin's name
        self.backend_type = "sim"
        #: which client is whose child (collab.child_clients / has_children / leaf_clients)
        self.topology = Topology(self.client_names)

    def interface_of(self, site: str) -> Interface:
        return self.interfaces["server" if site == self.server_name else "client"]

    def abort(self, reason: str) -> None:
        if not self.aborted.is_set():
            self.abort_reason = reason
            self.aborted.set()


class SiteRuntime:
    """One site's app in one job: runs its @init, serves calls to its @publish methods, runs its @final."""

    def __init__(self, job: JobRuntime, site_name: str, app: App):
        self.job = job
        self.site_name = site_name
        self.app = app
        self.workspace = job.workspace / site_name
        self.workspace.mkdir(parents=True, exist_ok=True)
        app_props = _props.site_props(job.props, site_name, site_name == job.server_name)
        #: init, main and final share this call context (and so its props: collab.get_result())
        self.lifecycle = CallContext(site_name, site_name, site_name, job)
        self.context = SiteContext(site_name=site_name, job=job, workspace=self.workspace, app_props=app_props,
                                   call_context=self.lifecycle)
        self.init_error: BaseException | None = None
        self.log = logging.getLogger("collab.site")

    def _run_in_context(self, fn: Callable, args: tuple = (), kwargs: dict | None = None,
                        call: Call | None = None) -> Any:
        c = self.context
        if call is None:
            ctx, cc = c, self.lifecycle
        else:
            cc = CallContext(self.site_name, call.caller, self.site_name, self.job, method=call.method,
                             cancelled=call.cancelled)
            ctx = SiteContext(c.site_name, c.job, c.workspace, call.cancelled, app_props=c.app_props, call_context=cc)
        with active(ctx):
            return call_with_context(fn, cc, args, kwargs or {})

    def start(self) -> None:
        """Run the @init callables in definition order; a failure marks the site failed."""
        for fn in self.app.init:
            try:
                self._run_in_context(fn)
            except BaseException as exc:
                self.init_error = exc
                with active(self.context):
                    self.log.error("@collab.init %s failed on %s", fn.__qualname__, self.site_name, exc_info=True)
                return

    def stop(self) -> list[BaseException]:
        """Run the @final callables; every one runs even if an earlier one fails. Then flush the
        site's tracking records."""
        errors = []
        for fn in self.app.final:
            try:
                self._run_in_context(fn)
            except BaseException as exc:
                errors.append(exc)
                with active(self.context):
                    self.log.error("@collab.final %s failed on %s", fn.__qualname__, self.site_name, exc_info=True)
        with active(self.context):
            tracking.flush_site(self.job, self.site_name)
        return errors

    def invoke(self, call: Call) -> Any:
        """Run a published method for ``call`` in this site's context (on the current thread)."""
        if self.init_error is not None:
            raise CollabError(
                f"{self.site_name} is not serving calls: its @collab.init failed with "
                f"{type(self.init_error).__name__}: {self.init_error}"
            )
        if call.method == tracking.SYSTEM_METHOD and self.site_name == self.job.server_name:
            (records,) = call.args
            tracking.deliver(self.job, records)
            return None
        fn = self.app.method(call.method)
        try:
            return self._run_in_context(fn, call.args, call.kwargs, call=call)
        finally:
            # the call's records reach the server before its result reaches the caller
            if "tracking_buffers" in self.job.extras:
                with active(self.context):
                    tracking.flush_site(self.job, self.site_name)

    def run_main(self) -> Any:
        assert self.app.main is not None
        result = self._run_in_context(self.app.main)
        self.lifecycle.set_prop(RESULT_PROP, result)  # the server's @collab.final: collab.get_result()
        return result
