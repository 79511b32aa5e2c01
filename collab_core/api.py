"""The ``collab`` facade: decorators and the context-local view of the running job."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from .app import mark
from .calls import Group, Proxy
from .context import RESULT_PROP, CallContext, current
from .errors import CollabError

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
    def workspace(self) -> Path:
        """This site's own folder in the run's workspace."""
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

    @property
    def backend_type(self) -> str:
        """Which setting runs this code: ``"sim"``, ``"poc"``, ``"prod"``, or a plugin's name."""
        return current().job.backend_type

    def __repr__(self) -> str:
        ctx = current(required=False)
        return f"<collab facade: {'no active job' if ctx is None else ctx.site_name}>"


collab = _Collab()
