"""The in-process backend: a call is a function call on a worker thread of the job's pool."""

from __future__ import annotations

from concurrent.futures import CancelledError, Future
from typing import Any

from collab_core import wire
from collab_core.errors import CollabCallError
from collab_core.executor import ElasticExecutor
from collab_core.runtime import Call, SiteRuntime, remote_error

ISOLATION_MODES = ("wire", "none")


def wire_copy(obj: Any) -> Any:
    """A deep copy made the way the network makes one: encode, copy the bytes, decode."""
    header, buffers = wire.dumps(obj)
    return wire.loads(header, [bytearray(b) for b in buffers])


class InProcessBackend:
    """Delivers calls to the site runtimes of this process.

    With ``isolation="wire"`` (the default) arguments and results cross through the wire format, as
    copies: a site that mutates its input changes nobody else's data, and a type the network could
    not carry fails here too. ``isolation="none"`` passes references (fastest; no protection).
    """

    def __init__(self, executor: ElasticExecutor, isolation: str = "wire"):
        if isolation not in ISOLATION_MODES:
            raise ValueError(f"isolation must be one of {ISOLATION_MODES}, got {isolation!r}")
        self.executor = executor
        self.isolation = isolation
        self.sites: dict[str, SiteRuntime] = {}
        self._in_flight: dict[int, Call] = {}

    def attach(self, sites: dict[str, SiteRuntime]) -> None:
        self.sites = sites

    def submit(self, call: Call) -> Future:
        site = self.sites.get(call.target)
        if site is None:
            fut: Future = Future()
            fut.set_exception(CollabCallError(call.target, call.method, ConnectionError(f"no site {call.target!r} in this job")))
            return fut
        if self.isolation == "wire":
            try:
                call.args, call.kwargs = wire_copy((call.args, call.kwargs))
            except wire.WireError as exc:
                raise CollabCallError(call.target, call.method, exc,
                                      message=f"cannot send the arguments of {call.method}() to {call.target}: {exc}") from None
        self._in_flight[call.id] = call
        return self.executor.submit(self._run, site, call)

    def _run(self, site: SiteRuntime, call: Call) -> Any:
        try:
            return self._serve(site, call)
        finally:
            self._in_flight.pop(call.id, None)

    def _serve(self, site: SiteRuntime, call: Call) -> Any:
        if call.cancelled.is_set():
            raise CollabCallError(call.target, call.method, CancelledError("cancelled before it started"))
        try:
            result = site.invoke(call)
        except BaseException as exc:
            raise remote_error(call, exc) from exc
        finally:
            call.args, call.kwargs = (), {}  # the site's copies are garbage now: free them early
        if self.isolation == "wire" and call.expect_result:
            try:
                result = wire_copy(result)
            except wire.WireError as exc:
                raise CollabCallError(call.target, call.method, exc,
                                      message=f"{call.method}() on {call.target} returned a value that cannot be sent: {exc}") from None
        return result

    def help(self, fut: Future) -> bool:
        """Run a submitted call on the calling thread if no worker has started it yet."""
        return self.executor.help(fut)

    def cancel(self, call: Call) -> None:
        call.cancelled.set()

    def cancel_all(self) -> list[Call]:
        """Cancel every call still queued or running (the job is ending); return them."""
        calls = list(self._in_flight.values())
        for call in calls:
            call.cancelled.set()
        return calls

    def close(self, grace: float = 10.0) -> list[str]:
        """Cancel what is still running, wait up to ``grace`` seconds for it to return, and say
        which threads ignored the cancellation (they are daemon threads: they do not block exit)."""
        self.cancel_all()
        self.executor.shutdown(wait=True, timeout=grace)
        return [f"{c.method}() on {c.target}" for c in self._in_flight.values()]
