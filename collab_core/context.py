"""Which site the running code belongs to: a context variable, so every thread and every simulated
site sees its own ``collab.site_name``, proxies and workspace."""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import attrs

from .errors import CollabError
from .site_workspace import SiteWorkspace, as_workspace

if TYPE_CHECKING:
    from .runtime import CancelFlag, JobRuntime


#: the per-call property under which the server's @collab.main result is kept (collab.get_result())
RESULT_PROP = "__result__"


@attrs.define(eq=False)
class CallContext:
    """The context of the code running now on a site: the call it serves (``caller`` asked
    ``callee`` to run ``method``) and the properties of that call.

    A published method gets a fresh one per call; a site's @collab.init, @collab.main and
    @collab.final share one (caller and callee are the site itself), so a value set with
    ``collab.set_prop`` in @collab.init is seen by @collab.final, and the server's @collab.final
    sees main's result (``collab.get_result()``). ``str(context)`` is ``"<site>:<caller>=><callee>"``.
    A function declaring a parameter named ``context`` receives it.
    """

    site: str
    caller: str
    callee: str
    job: JobRuntime
    method: str | None = None
    props: dict[str, Any] = attrs.field(factory=dict)
    cancelled: CancelFlag | None = None
    #: the call came sealed end to end by its caller (``secure=True`` through collab-tcp; in
    #: SimEnv, which has no network, the caller's option): a method may refuse calls without it
    secure: bool = False

    @property
    def is_aborted(self) -> bool:
        """True when the job is aborting or this call was cancelled or timed out at its caller."""
        return self.job.aborted.is_set() or (self.cancelled is not None and self.cancelled.is_set())

    @property
    def backend_type(self) -> str:
        return self.job.backend_type

    def get_prop(self, name: str, default: Any = None) -> Any:
        return self.props.get(name, default)

    def set_prop(self, name: str, value: Any) -> None:
        self.props[name] = value

    def __str__(self) -> str:
        return f"{self.site}:{self.caller}=>{self.callee}"


@attrs.define(eq=False)
class SiteContext:
    """What user code on one site needs: its name, its job, its workspace folder."""

    site_name: str
    job: JobRuntime
    #: collab.workspace: the site's folder (os.PathLike, with get_work_dir/get_run_dir/get_resource_dir)
    workspace: SiteWorkspace = attrs.field(converter=as_workspace)
    #: set when the current call is cancelled or timed out at its caller
    call_cancelled: CancelFlag | None = None
    #: this site's app properties (shared by every call on the site; collab.get_app_prop)
    app_props: dict[str, Any] = attrs.field(factory=dict)
    #: the call being served, or the site's lifecycle context (init/main/final)
    call_context: CallContext | None = None

    def get_call_context(self) -> CallContext:
        if self.call_context is None:
            self.call_context = CallContext(self.site_name, self.site_name, self.site_name, self.job,
                                            cancelled=self.call_cancelled)
        return self.call_context

    @property
    def is_server(self) -> bool:
        return self.site_name == self.job.server_name


_current: contextvars.ContextVar[SiteContext | None] = contextvars.ContextVar("collab_site", default=None)
#: The context of a process that hosts one site (a TCP site or a worker): seen from any thread,
#: including threads the user starts, where the context variable is not inherited.
_process_default: SiteContext | None = None


def current(required: bool = True) -> SiteContext | None:
    ctx = _current.get() or _process_default
    if ctx is None and required:
        raise CollabError(
            "this needs a running collab job, but none is active in this thread. collab.site_name, "
            "collab.clients and friends work inside @collab.main, @collab.publish, @collab.init and "
            "@collab.final functions while a recipe runs (recipe.execute(env)). If you start your "
            "own threads there, run them with contextvars.copy_context().run(fn) so they inherit "
            "the site."
        )
    return ctx


@contextmanager
def active(ctx: SiteContext) -> Iterator[SiteContext]:
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(token)


def set_process_default(ctx: SiteContext | None) -> None:
    global _process_default
    _process_default = ctx
