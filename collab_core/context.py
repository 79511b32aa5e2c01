"""Which site the running code belongs to: a context variable, so every thread and every simulated
site sees its own ``collab.site_name``, proxies and workspace."""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from .errors import CollabError

if TYPE_CHECKING:
    from .runtime import CancelFlag, JobRuntime


@attrs.define(eq=False)
class SiteContext:
    """What user code on one site needs: its name, its job, its workspace folder."""

    site_name: str
    job: JobRuntime
    workspace: Path
    #: set when the current call is cancelled or timed out at its caller
    call_cancelled: CancelFlag | None = None

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
