"""Events: ``collab.register_event_handler(event_type, handler)`` and ``collab.fire_event(event_type,
data)`` on a site, as in NVFlare's Fox API; ``collab.server.fire_event(...)`` and
``collab.clients.fire_event(...)`` deliver an event to the handlers registered on other sites.

A handler is called as ``handler(event_type, data, **handler_kwargs)`` (the keyword arguments given
at registration); one that declares a parameter named ``context`` also receives the call context,
where ``context.caller`` is the site that fired the event. Handlers run in registration order on
the thread that fires (for a remote fire: the thread serving that call on the receiving site).

``fire_event`` returns ``{handler qualname: return value}`` (a second handler with the same
qualified name gets ``"<qualname>#2"``, and so on). When handlers raise, every other handler still
runs, each failure is logged with the event type and the handler's name, and then fire_event raises
:class:`EventHandlerError` naming them: locally to the caller of ``collab.fire_event``, remotely as
that site's call failure (a :class:`~collab_core.errors.CollabCallError`).

Remote delivery is a system method every site answers: ``fire_event`` is reserved, a site cannot
publish a method of that name.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Callable
from typing import Any

from .app import call_with_context
from .context import current
from .errors import CallValidationError, CollabError

log = logging.getLogger("collab.events")

#: the name of the system method that delivers an event to a site
FIRE_METHOD = "fire_event"
#: how callers validate a remote fire_event(...) (the published signature of the system method)
SIGNATURE = inspect.Signature([
    inspect.Parameter("event_type", inspect.Parameter.POSITIONAL_OR_KEYWORD),
    inspect.Parameter("data", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None),
])
_EXTRAS_KEY = "event_handlers"
_lock = threading.Lock()


class EventHandlerError(CollabError):
    """One or more handlers of an event raised. ``failures`` maps each failed handler's name to its
    exception; the other handlers ran, their results are in ``results``."""

    def __init__(self, event_type: str, site: str, failures: dict[str, BaseException], results: dict[str, Any]):
        self.event_type = event_type
        self.site = site
        self.failures = failures
        self.results = results
        detail = "; ".join(f"{name}: {type(exc).__name__}: {exc}" for name, exc in failures.items())
        super().__init__(
            f"{len(failures)} handler(s) of event {event_type!r} failed on {site}: {detail} "
            f"(the site's log has the tracebacks)"
        )

    def __reduce__(self):  # keep it copyable (deepcopy, logging handlers)
        return (type(self), (self.event_type, self.site, self.failures, self.results))


def _check_event_type(event_type: Any) -> str:
    if not isinstance(event_type, str) or not event_type:
        raise TypeError(f"event_type must be a non-empty string, e.g. 'final_model'; got {event_type!r}")
    return event_type


def _handlers_of(site: str) -> dict[str, list[tuple[Callable, dict[str, Any]]]]:
    job = current().job
    with _lock:
        return job.extras.setdefault(_EXTRAS_KEY, {}).setdefault(site, {})


def register_event_handler(event_type: str, handler: Callable, **handler_kwargs: Any) -> None:
    """Call ``handler(event_type, data, **handler_kwargs)`` whenever this site receives
    ``event_type`` (from ``collab.fire_event`` here or a remote ``fire_event`` call)."""
    _check_event_type(event_type)
    if not callable(handler):
        raise TypeError(f"handler must be callable as handler(event_type, data), got {handler!r}")
    if "context" in handler_kwargs:
        raise TypeError("'context' is given to the handler by collab, not by register_event_handler")
    ctx = current()
    handlers = _handlers_of(ctx.site_name)
    with _lock:
        handlers.setdefault(event_type, []).append((handler, dict(handler_kwargs)))
    log.debug("%s: registered %s for event %r", ctx.site_name, _name(handler), event_type)


def _name(handler: Callable) -> str:
    return getattr(handler, "__qualname__", None) or getattr(handler, "__name__", None) or repr(handler)


def fire_event(event_type: str, data: Any = None) -> dict[str, Any]:
    """Run this site's handlers of ``event_type`` in registration order; return their results as
    ``{handler qualname: value}`` ({} when none is registered)."""
    _check_event_type(event_type)
    ctx = current()
    handlers = _handlers_of(ctx.site_name)
    with _lock:
        chosen = list(handlers.get(event_type, ()))
    context = ctx.get_call_context()
    results: dict[str, Any] = {}
    failures: dict[str, BaseException] = {}
    for handler, kwargs in chosen:
        name = base = _name(handler)
        n = 1
        while name in results or name in failures:
            n += 1
            name = f"{base}#{n}"
        try:
            results[name] = call_with_context(handler, context, (event_type, data), dict(kwargs))
        except Exception as exc:
            failures[name] = exc
            log.error("event %r: handler %s failed on %s (fired by %s)", event_type, name, ctx.site_name,
                      context.caller, exc_info=True)
    if failures:
        raise EventHandlerError(event_type, ctx.site_name, failures, results)
    return results


def check_call(interface_methods: dict[str, Any], owner: str, args: tuple, kwargs: dict) -> None:
    """Validate a remote ``fire_event(event_type, data)`` call before it is sent."""
    if FIRE_METHOD in interface_methods:
        raise CallValidationError(
            f"{owner} publishes its own method {FIRE_METHOD!r}, a name collab reserves for events "
            f"(collab.register_event_handler / fire_event); rename that method"
        )
    try:
        bound = SIGNATURE.bind(*args, **kwargs)
    except TypeError as exc:
        raise CallValidationError(f"bad arguments for {FIRE_METHOD}(event_type, data=None): {exc}") from None
    try:
        _check_event_type(bound.arguments["event_type"])
    except TypeError as exc:
        raise CallValidationError(str(exc)) from None


__all__ = ["EventHandlerError", "FIRE_METHOD", "fire_event", "register_event_handler"]
