"""The ``collab`` facade: decorators and the context-local view of the running job."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from . import events
from . import filters as _filters
from .app import mark
from .calls import Group, Proxy
from .constants import ContextKey  # noqa: F401 (NVFlare's name in this module)
from .context import RESULT_PROP, CallContext, current
from .errors import CallValidationError, CollabError
from .site_workspace import SiteWorkspace

F = TypeVar("F", bound=Callable)


class _Collab:
    """``from collab_core import collab``. Every property reads the site the calling code runs on."""

    def main(self, fn: F) -> F:
        """Mark the server's algorithm: called once per job, its return value becomes ``run.result``."""
        return mark("main")(fn)

    def publish(self, fn: F) -> F:
        """Mark a method other sites may call (``collab.clients.<name>(...)``)."""
        return mark("publish")(fn)

    def init(self, fn: F) -> F:
        """Mark a method run once on its site before any call (in definition order)."""
        return mark("init")(fn)

    def final(self, fn: F) -> F:
        """Mark a method run once on its site at the end of the job, also when main failed."""
        return mark("final")(fn)

    # -- filters (collab_core.filters; added with recipe.add_<side>_<input|output>_filter) ---------

    def call_filter(self, fn: F) -> F:
        """Mark a filter method for call arguments: ``fn(self, kwargs[, context]) -> kwargs``."""
        return _filters.mark("call_filter")(fn)

    def in_call_filter(self, fn: F) -> F:
        """Like :meth:`call_filter`, used instead of it when the filter is added as an input filter."""
        return _filters.mark("in_call_filter")(fn)

    def out_call_filter(self, fn: F) -> F:
        """Like :meth:`call_filter`, used instead of it when the filter is added as an output filter."""
        return _filters.mark("out_call_filter")(fn)

    def result_filter(self, fn: F) -> F:
        """Mark a filter method for results: ``fn(self, result[, context]) -> result``."""
        return _filters.mark("result_filter")(fn)

    def in_result_filter(self, fn: F) -> F:
        """Like :meth:`result_filter`, used instead of it when the filter is added as an input filter."""
        return _filters.mark("in_result_filter")(fn)

    def out_result_filter(self, fn: F) -> F:
        """Like :meth:`result_filter`, used instead of it when the filter is added as an output filter."""
        return _filters.mark("out_result_filter")(fn)

    # the names of NVFlare's earlier "Fox" API (`@fox.algo`, `@fox.collab`), so its programs run
    # with `from collab_core import collab as fox`
    algo = main
    collab = publish

    @property
    def site_name(self) -> str:
        """This site's name: ``"server"`` or ``"site-1"``..."""
        return current().site_name

    @property
    def clients(self) -> Group:
        """Every client site of the job, as a group (in a hierarchy: the sites of every level;
        see :attr:`child_clients` and :attr:`leaf_clients`)."""
        ctx = current()
        return Group(ctx.job.client_names)

    @property
    def other_clients(self) -> Group:
        """Every client site except this one."""
        ctx = current()
        return Group([c for c in ctx.job.client_names if c != ctx.site_name])

    @property
    def child_clients(self) -> Group:
        """This site's children in a hierarchical federation, as a group: on the server the
        top-level clients (every client when there is no hierarchy), on a client its own children.
        A site without children raises CollabError (check :attr:`has_children` first)."""
        ctx = current()
        children = ctx.job.topology.children_of(ctx.site_name, ctx.job.server_name)
        if not children:
            raise CollabError(
                f"{ctx.site_name} has no child clients (it is a leaf of the hierarchy); check "
                f"collab.has_children before calling collab.child_clients, or call collab.server "
                f"or collab.clients instead"
            )
        return Group(children)

    @property
    def has_children(self) -> bool:
        """Whether this site has child clients (always True on the server)."""
        ctx = current()
        return bool(ctx.job.topology.children_of(ctx.site_name, ctx.job.server_name))

    @property
    def leaf_clients(self) -> Group:
        """Every client without children, at any depth of the hierarchy (every client when there
        is no hierarchy), as a group; the same on every site."""
        return Group(current().job.topology.leaves)

    def get_clients(self, names: list[str] | str) -> Group:
        """The named client sites as a group, in the order given
        (``collab.get_clients(["site-1", "site-3"]).train(w)``)."""
        ctx = current()
        wanted = [names] if isinstance(names, str) else list(names)
        if not wanted or not all(isinstance(n, str) for n in wanted):
            raise CallValidationError(
                f"get_clients takes a non-empty list of site names, e.g. ['site-1', 'site-3']; got {names!r}"
            )
        unknown = [n for n in wanted if n not in ctx.job.client_names]
        if unknown:
            raise CallValidationError(
                f"get_clients: no client site named {', '.join(map(repr, unknown))} in this job; the "
                f"client sites are: {', '.join(ctx.job.client_names)}"
            )
        twice = sorted({n for n in wanted if wanted.count(n) > 1})
        if twice:
            raise CallValidationError(f"get_clients: {', '.join(map(repr, twice))} listed more than once")
        return Group(wanted)

    # -- events (collab_core.events) -----------------------------------------------------------------

    def register_event_handler(self, event_type: str, handler: Callable, **handler_kwargs: Any) -> None:
        """On this site, call ``handler(event_type, data, **handler_kwargs)`` for each ``event_type``
        event fired here or sent here (``collab.server.fire_event(...)``); handlers run in
        registration order, one declaring ``context`` receives the call context."""
        events.register_event_handler(event_type, handler, **handler_kwargs)

    def fire_event(self, event_type: str, data: Any = None) -> dict[str, Any]:
        """Run this site's handlers of ``event_type``; returns ``{handler qualname: result}``. A
        failing handler does not stop the others; afterwards EventHandlerError names the failures."""
        return events.fire_event(event_type, data)

    @property
    def server(self) -> Proxy:
        """The server, for calls from a client (``collab.server.report(...)``)."""
        ctx = current()
        return Proxy(ctx.job.server_name)

    @property
    def is_aborted(self) -> bool:
        """True when the job is being aborted or the current call was cancelled or timed out:
        long-running code should check it and return early."""
        ctx = current()
        return ctx.job.aborted.is_set() or (ctx.call_cancelled is not None and ctx.call_cancelled.is_set())

    @property
    def workspace(self) -> SiteWorkspace:
        """This site's own folder in the run's workspace: a path (``collab.workspace / "x"``,
        ``open``, ``os.fspath``, ``.mkdir()``...) with ``get_work_dir()``, ``get_run_dir()`` and
        ``get_resource_dir(name)``; the job's files and resource dirs are in it
        (see :mod:`collab_core.site_workspace`)."""
        return current().workspace

    @property
    def job_name(self) -> str:
        return current().job.job_name

    # -- app properties (the recipe's set_server_prop / set_client_prop / set_per_site_config) -----

    def get_app_prop(self, name: str, default: Any = None) -> Any:
        """This site's app property ``name``: set by the recipe (the server's props on the server;
        on a client the client props, overridden by that site's per-site config), or by
        :meth:`set_app_prop` on this site."""
        return current().app_props.get(name, default)

    def set_app_prop(self, name: str, value: Any) -> None:
        """Set an app property on this site only (other sites do not see it); every later call on
        this site reads it."""
        current().app_props[name] = value

    # -- the call context ---------------------------------------------------------------------------

    @property
    def context(self) -> CallContext:
        """The context of the running code: ``caller``, ``callee``, ``site``, ``method``,
        ``is_aborted``, ``props``. A decorated function can also declare a parameter ``context``."""
        return current().get_call_context()

    @property
    def caller(self) -> str:
        """The site that made the call being served (the site itself in init, main and final)."""
        return self.context.caller

    @property
    def callee(self) -> str:
        """The site serving the call: this site."""
        return self.context.callee

    @property
    def call_info(self) -> str:
        """``"<site>:<caller>=><callee>"``, e.g. ``"site-1:server=>site-1"`` (for log lines)."""
        return str(self.context)

    def get_prop(self, name: str, default: Any = None) -> Any:
        """A property of the current call context (see :meth:`set_prop`)."""
        return self.context.get_prop(name, default)

    def set_prop(self, name: str, value: Any) -> None:
        """Set a property of the current call context: seen by the rest of this call's code on this
        site, not by other calls or sites. In @collab.init, @collab.main and @collab.final the
        context is the site's own, shared by the three."""
        self.context.set_prop(name, value)

    def get_result(self, default: Any = None) -> Any:
        """On the server, after @collab.main returned (in @collab.final): main's result."""
        return self.context.get_prop(RESULT_PROP, default)

    # -- NVFlare / Fox names for filters and the job --------------------------------------------

    @property
    def filter_direction(self) -> str | None:
        """Inside a filter: ``"incoming"`` or ``"outgoing"`` (:class:`collab_core.constants.FilterDirection`);
        None elsewhere. (``collab.context.direction`` says ``"in"`` / ``"out"``.)"""
        direction = getattr(self.context, "direction", None)
        return {"in": "incoming", "out": "outgoing"}.get(direction) if direction else None

    @property
    def qual_func_name(self) -> str | None:
        """Inside a filter: the filtered call's ``"<object>.<method>"``; None elsewhere."""
        return getattr(self.context, "qualified_method", None) or None

    @property
    def fl_ctx(self) -> _JobContext:
        """What NVFlare programs use of its FLContext here: ``collab.fl_ctx.get_job_id()``."""
        return _JobContext(current().job)

    @property
    def backend_type(self) -> str:
        """Which setting runs this code: ``"sim"``, ``"poc"``, ``"prod"``, or a plugin's name."""
        return current().job.backend_type

    def __repr__(self) -> str:
        ctx = current(required=False)
        return f"<collab facade: {'no active job' if ctx is None else ctx.site_name}>"


class _JobContext:
    """The job's identity, for NVFlare programs that read it from ``collab.fl_ctx``."""

    def __init__(self, job: Any):
        self._job = job

    def get_job_id(self) -> str:
        """The run's id: its run folder's name (``<job name>-<date>-<time>-<random>``), as
        :attr:`collab_core.Run.job_id` reports it; the job's name where the folder is not named so."""
        name = self._job.job_name
        for folder in (Path(self._job.workspace), Path(self._job.workspace).parent):
            if folder.name.startswith(f"{name}-"):
                return folder.name
        return name

    def get_job_name(self) -> str:
        return self._job.job_name


collab = _Collab()


# NVFlare's names in its api module (``from nvflare.collab.api import ContextKey, Context``)
Context = CallContext
