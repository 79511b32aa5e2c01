"""The ``collab`` facade: decorators and the context-local view of the running job."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from .app import mark
from .calls import Group, Proxy
from .context import current

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
        """Every client site of the job, as a group."""
        ctx = current()
        return Group(ctx.job.client_names)

    @property
    def other_clients(self) -> Group:
        """Every client site except this one."""
        ctx = current()
        return Group([c for c in ctx.job.client_names if c != ctx.site_name])

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

    def __repr__(self) -> str:
        ctx = current(required=False)
        return f"<collab facade: {'no active job' if ctx is None else ctx.site_name}>"


collab = _Collab()
