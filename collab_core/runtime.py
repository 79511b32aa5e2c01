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

from . import events, tracking
from . import filters as _filters
from . import props as _props
from .app import App, Interface, call_with_context
from .context import RESULT_PROP, CallContext, SiteContext, active
from .errors import CollabCallError, CollabError
from .site_workspace import JobFiles, SiteWorkspace
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
    #: CallOptions.optional: a site that does not publish the method answers None
    optional: bool = False
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
        #: the files and resource dirs that travel with the job, put into each site's work dir
        self.files = JobFiles()

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
        #: collab.workspace: the site's folder (a path, with get_work_dir/get_run_dir/get_resource_dir)
        self.workspace = SiteWorkspace(job.workspace / site_name, run_dir=job.workspace)
        self.workspace.mkdir(parents=True, exist_ok=True)
        app_props = _props.site_props(job.props, site_name, site_name == job.server_name)
        #: init, main and final share this call context (and so its props: collab.get_result())
        self.lifecycle = CallContext(site_name, site_name, site_name, job)
        self.context = SiteContext(site_name=site_name, job=job, workspace=self.workspace, app_props=app_props,
                                   call_context=self.lifecycle)
        self.init_error: BaseException | None = None
        self.log = logging.getLogger("collab.site")

    def _run_in_context(self, fn: Callable, args: tuple = (), kwargs: dict | None = None,
                        call: Call | None = None, cc: CallContext | None = None) -> Any:
        c = self.context
        if call is None:
            ctx, cc = c, self.lifecycle
        else:
            if cc is None:
                cc = CallContext(self.site_name, call.caller, self.site_name, self.job, method=call.method,
                                 cancelled=call.cancelled, secure=call.secure)
            ctx = SiteContext(c.site_name, c.job, c.workspace, call.cancelled, app_props=c.app_props, call_context=cc)
        with active(ctx):
            return call_with_context(fn, cc, args, kwargs or {})

    def start(self) -> None:
        """Put the job's files into the site's work dir, then run the @init callables in definition
        order; a failure marks the site failed."""
        try:
            self.job.files.stage(self.workspace, "server" if self.site_name == self.job.server_name else "client")
        except BaseException as exc:
            self.init_error = exc
            with active(self.context):
                self.log.error("the job's files could not be put into %s's workspace: %s", self.site_name, exc)
            return
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
        """Run a published method for ``call`` in this site's context (on the current thread),
        once one of the site's call slots is free (``max_call_threads_for_server`` / ``_client``)."""
        with _call_slot(self, call):
            return self._serve_call(call)

    def _serve_call(self, call: Call) -> Any:
        if self.init_error is not None:
            raise CollabError(
                f"{self.site_name} is not serving calls: its @collab.init failed with "
                f"{type(self.init_error).__name__}: {self.init_error}"
            )
        if call.method == tracking.SYSTEM_METHOD and self.site_name == self.job.server_name:
            (records,) = call.args
            tracking.deliver(self.job, records)
            return None
        if call.method == events.FIRE_METHOD:  # events: a system method every site answers
            return self._run_in_context(events.fire_event, call.args, call.kwargs, call=call)
        if call.optional and not _publishes(self.app, call.method):
            log.info("%s: optional call %s() from %s: not published here; answering None",
                     self.site_name, call.method, call.caller)
            return None
        fn = self.app.method(call.method)
        site_filters = _filters.of(self.job, self.site_name)
        try:
            if site_filters is None:
                return self._run_in_context(fn, call.args, call.kwargs, call=call)
            # input call filters, the method, output result filters (collab_core.filters)
            cc = CallContext(self.site_name, call.caller, self.site_name, self.job, method=call.method,
                             cancelled=call.cancelled, secure=call.secure)
            c = self.context
            filter_ctx = SiteContext(c.site_name, c.job, c.workspace, call.cancelled, app_props=c.app_props)
            return _filters.serve(site_filters, filter_ctx, call, self.app.interface.methods.get(call.method), cc,
                                  lambda args, kwargs: self._run_in_context(fn, args, kwargs, call=call, cc=cc))
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


def _publishes(app: App, method: str) -> bool:
    try:
        app.method(method)
    except (KeyError, CollabError):
        return False
    return True


#: JobRuntime.extras key: {"server": n, "client": m}, the calls a site serves at once
CALL_THREADS = "max_call_threads"
_slots_lock = threading.Lock()


class _CallSlots:
    """At most ``limit`` calls of one site run at once; the others wait (as blocked threads, so the
    pool can run other sites' calls meanwhile), giving up when their call is cancelled or the
    job aborts."""

    def __init__(self, limit: int):
        self.limit = limit
        self._sem = threading.BoundedSemaphore(limit)

    def acquire(self, site: SiteRuntime, call: Call) -> None:
        from .executor import blocking

        if self._sem.acquire(blocking=False):
            return
        with blocking():
            while not self._sem.acquire(timeout=0.2):
                if call.cancelled.is_set() or site.job.aborted.is_set():
                    raise CollabCallError(call.target, call.method, ConnectionAbortedError(
                        f"cancelled while waiting for one of {site.site_name}'s {self.limit} call threads"))

    def release(self) -> None:
        self._sem.release()


class _call_slot:
    def __init__(self, site: SiteRuntime, call: Call):
        self.slots: _CallSlots | None = None
        limits = site.job.extras.get(CALL_THREADS)
        if not limits or call.method == tracking.SYSTEM_METHOD:  # collab's own records: never held up
            return
        limit = limits.get("server" if site.site_name == site.job.server_name else "client")
        if limit is None:
            return
        with _slots_lock:
            slots = site.__dict__.get("_call_slots")
            if slots is None:
                slots = site.__dict__["_call_slots"] = _CallSlots(limit)
        self.slots = slots
        self.site, self.call = site, call

    def __enter__(self) -> None:
        if self.slots is not None:
            self.slots.acquire(self.site, self.call)

    def __exit__(self, *exc: Any) -> None:
        if self.slots is not None:
            self.slots.release()
