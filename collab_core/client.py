"""The Client API: a training script that knows nothing of the server's algorithm.

    import collab_core.client as flare
    from collab_core import FLModel

    flare.init()
    while flare.is_running():
        model = flare.receive()
        if model is None:
            break
        ...                                   # train
        flare.send(FLModel(params=weights, metrics={"loss": loss}))

Run the script under a recipe: ``CollabRecipe(job_name=..., server=FedAvg(), train_script="client.py")``.
The server drives it with ``collab.clients.execute(fl_model=...)`` and ends it with
``collab.clients.stop()``. Each call here resolves to the bridge of the site the script runs for
(a context variable), so several simulated sites can run their copies in one process.
"""

from __future__ import annotations

import contextvars
from typing import Any, Protocol

from .errors import CollabError
from .fl_model import FLModel

__all__ = ["FLModel", "init", "receive", "send", "is_running", "get_site_name", "log", "system_info",
           "ClientAPIError"]


class ClientAPIError(CollabError):
    """The Client API was used outside a job, or out of order."""


class Bridge(Protocol):
    """What the ``flare`` functions talk to: the in-process bridge or a subprocess worker's link."""

    site_name: str

    def init(self, rank: Any) -> None: ...
    def receive(self, timeout: float | None) -> FLModel | None: ...
    def send(self, model: FLModel) -> None: ...
    def is_running(self) -> bool: ...
    def log_metric(self, key: str, value: Any, step: int | None) -> None: ...


_bridge: contextvars.ContextVar[Bridge | None] = contextvars.ContextVar("collab_client_bridge", default=None)
#: The bridge of a process that runs one script (a subprocess worker): seen from every thread.
_process_bridge: Bridge | None = None

NOT_IN_JOB = (
    "this script uses the collab Client API (flare.init/receive/send) but is not running under a "
    "collab job. Run it through a recipe, e.g.\n"
    "    CollabRecipe(job_name='my-job', server=FedAvg(), train_script='{script}', min_clients=2)"
    ".execute(SimEnv(num_clients=2))\n"
    "(or PocEnv/ProdEnv); the server's collab.clients.execute(fl_model=...) then feeds flare.receive()."
)


def _current() -> Bridge:
    bridge = _bridge.get() or _process_bridge
    if bridge is None:
        import sys

        script = sys.argv[0] if sys.argv and sys.argv[0] else "client.py"
        raise ClientAPIError(NOT_IN_JOB.format(script=script))
    return bridge


def set_process_bridge(bridge: Bridge | None) -> None:
    global _process_bridge
    _process_bridge = bridge


def init(rank: Any = None) -> None:
    """Start the Client API for this script. ``rank`` (for DDP) marks which process talks to the
    server: only rank 0 (or None) receives and sends."""
    _current().init(rank)


def receive(timeout: float | None = None) -> FLModel | None:
    """The next task from the server, or None once the server called ``stop()``. With ``timeout``,
    raises TimeoutError if no task arrives in time."""
    return _current().receive(timeout)


def send(model: FLModel) -> None:
    """Send the result of the current task back to the server."""
    if not isinstance(model, FLModel):
        raise TypeError(f"flare.send() takes an FLModel, got {type(model).__name__}; wrap it: "
                        f"flare.send(FLModel(params=..., metrics={{...}}))")
    _current().send(model)


def is_running() -> bool:
    """False once the server called ``collab.clients.stop()`` (or the job ended)."""
    return _current().is_running()


def get_site_name() -> str:
    """The site this script runs for ("site-1", ...)."""
    return _current().site_name


def log(key: str, value: Any, step: int | None = None) -> None:
    """Record a metric: to the tracking plugin when one is installed and configured, else to the
    site's log."""
    if not isinstance(key, str) or not key:
        raise ValueError(f"flare.log() needs a metric name, got {key!r}")
    _current().log_metric(key, value, step)


def system_info() -> dict[str, Any]:
    """Where this script runs: ``{"site_name": ...}``."""
    return {"site_name": get_site_name()}

