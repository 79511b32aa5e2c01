"""Proxies and groups: how user code calls sites. Written once; every backend shares it.

``collab.clients.train(w)`` is a group call; ``collab.clients["site-2"].train(w)`` and
``collab.server.report(x)`` are single calls. Calling a proxy or group with options returns a
configured copy: ``collab.clients(timeout=30, min_responses=3).train(w)``.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any

import attrs

from . import events, executor, progress
from . import filters as _filters
from .app import call_with_context
from .context import CallContext, SiteContext, active, current
from .errors import CallValidationError, CollabCallError, GroupCallError
from .runtime import Call


def _check_timeout(_: Any, __: Any, value: float | None) -> None:
    if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0):
        raise ValueError(f"timeout must be a positive number of seconds or None, got {value!r}")


def _check_positive_int(name: str, minimum: int) -> Callable:
    def check(_: Any, __: Any, value: int | None) -> None:
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < minimum):
            raise ValueError(f"{name} must be an integer >= {minimum} or None, got {value!r}")

    return check


def _targets(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return (value,)
    if isinstance(value, Group):  # targets=collab.clients[1:3]
        return tuple(value.names)
    return tuple(v.name if isinstance(v, Proxy) else v for v in value)


def _check_bool(_: Any, attribute: Any, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"call option {attribute.name} must be True or False, got {value!r}")


@attrs.frozen
class CallOptions:
    """Options of a call; see the user guide for each."""

    timeout: float | None = attrs.field(default=None, validator=_check_timeout)
    min_responses: int | None = attrs.field(default=None, validator=_check_positive_int("min_responses", 0))
    blocking: bool = True
    expect_result: bool = True
    #: at most this many calls in flight at once; None or 0 (NVFlare's default): no limit
    parallel: int | None = attrs.field(default=None, converter=lambda v: None if v == 0 and v is not False else v,
                                       validator=_check_positive_int("parallel", 1))
    targets: tuple[str, ...] | None = attrs.field(default=None, converter=_targets)
    process_resp_cb: Callable[[str, Any], Any] | None = None
    #: calling a method the target does not publish is not an error (see the user guide)
    optional: bool = attrs.field(default=False, validator=_check_bool)
    #: end-to-end protection of a site-to-site call's payload (collab-tcp; a no-op in SimEnv)
    secure: bool = attrs.field(default=False, validator=_check_bool)
    #: the named object (server_objects / client_objects) whose method is called
    target: str | None = attrs.field(default=None, validator=attrs.validators.optional(
        attrs.validators.instance_of(str)))

    #: extra keyword arguments of process_resp_cb: ``collab.clients(process_resp_cb=cb, acc=acc)``
    cb_kwargs: dict[str, Any] = attrs.field(factory=dict, eq=False)

    def evolve(self, **changes: Any) -> CallOptions:
        valid = [name for name in attrs.fields_dict(CallOptions) if name != "cb_kwargs"]
        unknown = [name for name in changes if name not in valid]
        if unknown:
            if changes.get("process_resp_cb") is None and self.process_resp_cb is None:
                raise TypeError(
                    f"unknown call option(s) {', '.join(sorted(unknown))}; valid options: "
                    f"{', '.join(valid)} (other keyword arguments are passed to process_resp_cb, "
                    f"so they need process_resp_cb=...)"
                )
            extra = {name: changes.pop(name) for name in unknown}
            changes["cb_kwargs"] = {**self.cb_kwargs, **extra}
        if changes.get("process_resp_cb") is not None and not callable(changes["process_resp_cb"]):
            raise TypeError("process_resp_cb must be callable as cb(site, result, **cb_kwargs)")
        return attrs.evolve(self, **changes)


def _deadline(ctx: SiteContext, options: CallOptions) -> float | None:
    timeout = options.timeout if options.timeout is not None else ctx.job.default_timeout
    return None if timeout is None else time.monotonic() + timeout


def _new_call(ctx: SiteContext, target: str, method: str, args: tuple, kwargs: dict,
              options: CallOptions, deadline: float | None) -> Call:
    return Call(
        caller=ctx.site_name, target=target, method=method, args=args, kwargs=kwargs,
        expect_result=options.expect_result, deadline=deadline, secure=options.secure,
    )


def _timeout_error(call: Call, timeout: float | None) -> CollabCallError:
    return CollabCallError(
        call.target, call.method,
        TimeoutError(f"no result within the call's timeout of {timeout} s; the call was cancelled at the site"),
    )


class _Method:
    __slots__ = ("_owner", "_name")

    def __init__(self, owner: Proxy | Group, name: str):
        self._owner = owner
        self._name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._owner._invoke(self._name, args, kwargs)

    def __repr__(self) -> str:
        return f"<remote method {self._name} of {self._owner!r}>"


class Proxy:
    """One remote site. ``proxy.method(*args)`` calls it and returns the result (or raises
    CollabCallError); with ``blocking=False`` it returns a Future; with ``expect_result=False``, None."""

    def __init__(self, target: str, options: CallOptions | None = None, ctx: SiteContext | None = None):
        self._target = target
        self._options = options or CallOptions()
        self._ctx = ctx

    @property
    def name(self) -> str:
        return self._target

    def __call__(self, **options: Any) -> Proxy:
        return Proxy(self._target, self._options.evolve(**options), self._ctx)

    def __getattr__(self, name: str) -> Proxy | _Method:
        if name.startswith("__"):
            raise AttributeError(name)
        if self._options.target is None and name in _objects_of(self._ctx, self._target):
            return self(target=name)  # collab.server.metric_receiver: the named object's proxy
        return _Method(self, name)

    def __repr__(self) -> str:
        target = "" if self._options.target is None else f", target={self._options.target!r}"
        return f"Proxy({self._target!r}{target})"

    def _invoke(self, method: str, args: tuple, kwargs: dict) -> Any:
        ctx = self._ctx or current()
        job = ctx.job
        if self._target != job.server_name and self._target not in job.client_names:
            raise CallValidationError(
                f"no site named {self._target!r} in this job; sites are: {', '.join(job.client_names)}"
            )
        opts = self._options
        interface = job.interface_of(self._target)
        checked = _checked_method(interface, method, args, kwargs, opts)
        if checked is None:  # optional=True, and the target does not publish it: nothing is called
            _log_skipped(self._target, method)
            if opts.expect_result and not opts.blocking:
                done: Future = Future()
                done.set_result(None)
                return done
            return None
        method = checked
        deadline = _deadline(ctx, opts)
        call = _new_call(ctx, self._target, method, args, kwargs, opts, deadline)
        call.optional = opts.optional
        fut = _filters.submit(ctx, call)  # the caller's output call filters, then the backend
        if not opts.expect_result:
            fut.add_done_callback(_log_fire_and_forget(call))
            return None
        if not opts.blocking:
            return _filters.received_future(ctx, call, fut)
        remaining = call.remaining()
        helper = getattr(job.backend, "help", None)
        if remaining is None and helper is not None:
            helper(fut)  # no deadline: do the work here rather than wait for a thread
        try:
            with executor.blocking():
                value = fut.result(timeout=None if remaining is None else max(remaining, 0))
        except TimeoutError:
            job.backend.cancel(call)
            raise _timeout_error(call, opts.timeout or job.default_timeout) from None
        value = _filters.received(ctx, call, value)  # the caller's input result filters
        if opts.process_resp_cb is not None:
            value = _process_response(ctx, opts, self._target, method, value)
        return value


def _checked_method(interface: Any, method: str, args: tuple, kwargs: dict, opts: CallOptions) -> str | None:
    """The published name a call of ``method`` reaches on a site of ``interface``, its arguments
    checked; None for an ``optional=True`` call of a method the site does not publish."""
    if method == events.FIRE_METHOD and opts.target is None:  # the system method every site answers
        events.check_call(interface.methods, interface.owner, args, kwargs)
        return method
    method = interface.resolve(method, opts.target)
    if opts.optional and method not in interface.methods:
        return None
    interface.bind(method, args, kwargs)
    return method


def _log_skipped(site: str, method: str) -> None:
    import logging

    logging.getLogger("collab.calls").info(
        "optional call %s() on %s: %s does not publish it; nothing was called, the result is None",
        method, site, site,
    )


def _process_response(ctx: SiteContext, opts: CallOptions, site: str, method: str, value: Any) -> Any:
    """Run ``process_resp_cb(site, value, **cb_kwargs)`` on the caller's thread, in a call context
    whose caller is the site that answered (``collab.caller``; a ``context`` parameter gets it)."""
    outer = ctx.get_call_context()
    cc = CallContext(ctx.site_name, site, ctx.site_name, ctx.job, method=method, props=outer.props,
                     cancelled=outer.cancelled)
    inner = SiteContext(ctx.site_name, ctx.job, ctx.workspace, ctx.call_cancelled, app_props=ctx.app_props,
                        call_context=cc)
    assert opts.process_resp_cb is not None
    with active(inner):
        return call_with_context(opts.process_resp_cb, cc, (Responder(site, method, opts), value),
                                 dict(opts.cb_kwargs))


class Responder(str):
    """The first argument of ``process_resp_cb``: the name of the site that answered (a ``str``),
    which also carries what NVFlare's group call context offers a callback: ``target_name``
    (``"site"``, or ``"site.object"`` for a named object's method), ``func_name`` and ``call_opt``."""

    def __new__(cls, site: str, method: str, options: CallOptions) -> Responder:
        made = super().__new__(cls, site)
        obj, _, func = method.rpartition(".")
        made.func_name = func
        made.target_name = f"{site}.{obj}" if obj else site
        made.call_opt = options
        return made


def _objects_of(ctx: SiteContext | None, site: str) -> tuple[str, ...]:
    """The named objects ``site`` has (none outside a job)."""
    ctx = ctx or current(required=False)
    if ctx is None:
        return ()
    try:
        return ctx.job.interface_of(site).objects
    except (KeyError, AttributeError):
        return ()


def _log_fire_and_forget(call: Call) -> Callable[[Future], None]:
    def done(fut: Future) -> None:
        exc = fut.exception()
        if exc is not None:
            import logging

            logging.getLogger("collab.calls").warning(
                "fire-and-forget call %s() on %s failed: %s", call.method, call.target, exc
            )

    return done


class GroupResult(Sequence):
    """The successes of a group call as ``(site, value)`` pairs, in the group's target order
    (whatever order they arrived in, so the same inputs aggregate to the same floats), plus
    ``failures``. Arrival order is what iterating a ``blocking=False`` call gives.

    ``for site, value in results``, ``len(results)``, ``dict(results)``, ``results.failures``.
    """

    def __init__(self, pairs: list[tuple[str, Any]], failures: dict[str, CollabCallError]):
        self._pairs = pairs
        self.failures = failures

    def __getitem__(self, index):  # type: ignore[override]
        return self._pairs[index]

    def __len__(self) -> int:
        return len(self._pairs)

    @property
    def sites(self) -> list[str]:
        return [site for site, _ in self._pairs]

    @property
    def values(self) -> list[Any]:
        return [value for _, value in self._pairs]

    def __repr__(self) -> str:
        return f"GroupResult({len(self._pairs)} ok: {self.sites}, failures: {sorted(self.failures)})"


class Group:
    """Several sites. ``group.method(*args)`` calls every target in parallel and returns a
    :class:`GroupResult`; with ``blocking=False`` it returns an iterator of ``(site, value)`` as
    results arrive; with ``expect_result=False``, None."""

    def __init__(self, targets: Sequence[str], options: CallOptions | None = None, ctx: SiteContext | None = None):
        self._targets = tuple(targets)
        self._options = options or CallOptions()
        self._ctx = ctx

    @property
    def names(self) -> list[str]:
        return list(self._options.targets or self._targets)

    def __call__(self, **options: Any) -> Group:
        return Group(self._targets, self._options.evolve(**options), self._ctx)

    def __getitem__(self, site: str | int | slice) -> Proxy | Group:
        """``group["site-2"]`` and ``group[0]`` / ``group[-1]``: one site's Proxy (with the group's
        call options); ``group[1:3]``: a Group of those sites. Positions follow :attr:`names`."""
        if isinstance(site, slice):
            return Group(self.names[site], attrs.evolve(self._options, targets=None), self._ctx)
        if isinstance(site, int) and not isinstance(site, bool):
            names = self.names
            if not -len(names) <= site < len(names):
                raise IndexError(f"site index {site} is out of range for a group of {len(names)} site(s): {names}")
            site = names[site]
        if not isinstance(site, str):
            raise TypeError(f"index a group by site name, position or slice, e.g. collab.clients['site-1'], "
                            f"collab.clients[0] or collab.clients[1:3]; not {site!r}")
        if site not in self._targets:
            raise KeyError(f"no site {site!r} in this group; sites are: {', '.join(self._targets)}")
        single = attrs.evolve(self._options, targets=None, min_responses=None, parallel=None)
        return Proxy(site, single, self._ctx)

    def __setitem__(self, index: int, site: Proxy | str) -> None:
        """``group[i] = proxy``: reorder the group's sites, so ``random.shuffle(group)`` works
        (``collab.clients`` is a new group on every access; shuffle one you keep)."""
        if not isinstance(index, int) or isinstance(index, bool):
            raise TypeError(f"assign a group's site by position, e.g. group[0] = proxy; not {index!r}")
        name = site.name if isinstance(site, Proxy) else site
        members = self.__dict__.setdefault("_members", frozenset(self.names))  # while being reordered
        if not isinstance(name, str) or name not in members:
            raise ValueError(f"{site!r} is not a site of this group; sites are: {', '.join(sorted(members))}")
        names = self.names
        names[index] = name
        if self._options.targets is not None:
            self._options = attrs.evolve(self._options, targets=tuple(names))
        else:
            self._targets = tuple(names)

    @property
    def size(self) -> int:
        """The number of sites a call of this group goes to (NVFlare's ``group.size``)."""
        return len(self.names)

    @property
    def members(self) -> list[Proxy]:
        """The sites as Proxy objects, in order (NVFlare's ``group.members``)."""
        return list(self)

    def __contains__(self, site: object) -> bool:
        """``"site-2" in collab.clients`` (a site name or a Proxy)."""
        return (site.name if isinstance(site, Proxy) else site) in self.names

    def __iter__(self) -> Iterator[Proxy]:
        return (self[s] for s in self.names)

    def __len__(self) -> int:
        return len(self.names)

    def __getattr__(self, name: str) -> Group | _Method:
        if name.startswith("__"):
            raise AttributeError(name)
        if self._options.target is None and self._targets and name in _objects_of(self._ctx, self._targets[0]):
            return self(target=name)  # collab.clients.<object>: the group of that named object
        return _Method(self, name)

    def __repr__(self) -> str:
        return f"Group({self.names})"

    def _invoke(self, method: str, args: tuple, kwargs: dict) -> Any:
        ctx = self._ctx or current()
        job = ctx.job
        opts = self._options
        targets = self.names
        unknown = [t for t in targets if t not in self._targets]
        if unknown:
            raise CallValidationError(
                f"targets {unknown} are not in this group; choose from: {', '.join(self._targets)}"
            )
        interfaces = list(dict.fromkeys(job.interface_of(t) for t in targets))
        checked = {i: _checked_method(i, method, args, kwargs, opts) for i in interfaces}
        # optional=True: a site that does not publish the method answers None, nothing is sent to it
        skipped = {t for t in targets if checked[job.interface_of(t)] is None}
        method = next((m for m in checked.values() if m is not None), method)
        for site in sorted(skipped, key=targets.index):
            _log_skipped(site, method)
        needed = len(targets) if opts.min_responses is None else opts.min_responses
        if needed > len(targets):
            raise CallValidationError(
                f"min_responses={needed} but the call has only {len(targets)} target(s): {targets}"
            )
        deadline = _deadline(ctx, opts)
        if not opts.expect_result:
            group = _filters.CallGroup()  # one group call, as its filters see it
            for site in targets:
                if site in skipped:
                    continue
                call = _new_call(ctx, site, method, args, kwargs, opts, deadline)
                call.optional = opts.optional
                _filters.submit(ctx, call, targets, group).add_done_callback(_log_fire_and_forget(call))
            return None
        run = _GroupRun(ctx, method, args, kwargs, targets, opts, deadline, needed, skipped)
        if opts.blocking:
            for _ in run:
                pass
            return run.result()
        return run


class _GroupRun:
    """One group call in flight. Iterating yields (site, value) as results arrive, on the caller's
    thread; at the end, too few successes raise GroupCallError."""

    def __init__(self, ctx: SiteContext, method: str, args: tuple, kwargs: dict,
                 targets: list[str], opts: CallOptions, deadline: float | None, needed: int,
                 skipped: set[str] | frozenset[str] = frozenset()):
        self.ctx = ctx
        self.skipped = skipped
        self.method = method
        self.args = args
        self.kwargs = kwargs
        self.targets = targets
        self.opts = opts
        self.deadline = deadline
        self.needed = needed
        self.pairs: list[tuple[str, Any]] = []
        self.failures: dict[str, CollabCallError] = {}
        self._began = time.monotonic()
        self._start()
        self._iter = self._run()

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        return self

    def __next__(self) -> tuple[str, Any]:
        return next(self._iter)

    def __len__(self) -> int:
        """The number of successful results received so far, as NVFlare's live result queue counts
        them (once iterated to the end: ``len(call.result())``); ``targets`` lists the sites called."""
        return len(self.pairs)

    def result(self) -> GroupResult:
        return GroupResult(self._in_target_order(), self.failures)

    def _in_target_order(self) -> list[tuple[str, Any]]:
        order = {site: i for i, site in enumerate(self.targets)}
        return sorted(self.pairs, key=lambda pair: order[pair[0]])

    def _launch(self) -> None:
        site = self._pending.popleft()
        deadline = self.deadline
        if self._per_call is not None:  # parallel=: each call's timeout starts when it is sent
            deadline = time.monotonic() + self._per_call
        call = _new_call(self.ctx, site, self.method, self.args, self.kwargs, self.opts, deadline)
        call.optional = self.opts.optional
        self._in_flight[call.id] = call
        if site in self.skipped:  # an optional call of a method the site does not publish: None
            fut = Future()
            fut.set_result(None)
        else:
            try:
                fut = _filters.submit(self.ctx, call, self.targets, self)
            except CollabCallError as exc:
                fut = Future()
                fut.set_exception(exc)
        self._launched.append(call)
        fut.add_done_callback(lambda f, c=call: self._arrived(c, f))
        self._unstarted.append(fut)

    def _arrived(self, call: Call, fut: Future) -> None:
        """A call ended (on whichever thread ended it). When its failure makes the quorum
        impossible and the caller's thread may itself be running one of the others (see ``_help_one``),
        they are cancelled here and now, since the caller cannot do it."""
        if self._helper is not None and not fut.cancelled() and fut.exception() is not None:
            with self._fail_lock:
                self._failed += 1
                hopeless = self._failed > len(self.targets) - self.needed
            if hopeless:
                for other in list(self._launched):
                    if other is not call:
                        self.ctx.job.backend.cancel(other)
        self._done.put((call, fut))

    def _start(self) -> None:
        """Send the first calls at once, so a non-blocking call is in flight before iteration."""
        self._pending = deque(self.targets)
        self._in_flight: dict[int, Call] = {}
        self._done: queue.SimpleQueue[tuple[Call, Future]] = queue.SimpleQueue()
        self._unstarted: deque[Future] = deque()
        self._launched: list[Call] = []
        self._fail_lock = threading.Lock()
        self._failed = 0
        helper = getattr(self.ctx.job.backend, "help", None)
        self._helper = helper if self.deadline is None else None
        #: with parallel= and a timeout, the timeout of each call (as NVFlare: queued sites do not
        #: use up their time waiting for a slot); None: one deadline for the whole group call
        timeout = self.opts.timeout if self.opts.timeout is not None else self.ctx.job.default_timeout
        self._per_call = timeout if self.opts.parallel and self.deadline is not None else None
        limit = self.opts.parallel or len(self.targets)
        while self._pending and len(self._in_flight) < limit:
            self._launch()

    def _help_one(self) -> bool:
        """With no deadline, run one of our calls that no worker has started on this thread."""
        if self._helper is None:
            return False
        while self._unstarted:
            if self._helper(self._unstarted.popleft()):
                return True
        return False

    def _run(self) -> Iterator[tuple[str, Any]]:
        backend = self.ctx.job.backend
        pending, in_flight, done, launch = self._pending, self._in_flight, self._done, self._launch
        total = len(self.targets)

        def give_up(reason: Callable[[Call], CollabCallError]) -> None:
            for call in in_flight.values():
                backend.cancel(call)
                self.failures[call.target] = reason(call)
            in_flight.clear()
            while pending:
                site = pending.popleft()
                self.failures[site] = CollabCallError(
                    site, self.method, TimeoutError("not started: the group call ended first")
                )

        try:
            while in_flight:
                if self._per_call is not None:
                    first = min(c.deadline for c in in_flight.values())  # type: ignore[type-var]
                    remaining = max(first - time.monotonic(), 0)
                else:
                    remaining = None if self.deadline is None else max(self.deadline - time.monotonic(), 0)
                try:
                    call, fut = done.get_nowait()
                except queue.Empty:
                    if self._help_one():
                        continue
                    try:
                        with executor.blocking():
                            call, fut = done.get(timeout=remaining)
                    except queue.Empty:
                        timeout = self.opts.timeout or self.ctx.job.default_timeout
                        if self._per_call is None:
                            give_up(lambda c, t=timeout: _timeout_error(c, t))
                            break
                        now = time.monotonic()
                        expired = [c for c in in_flight.values() if c.deadline <= now]  # type: ignore[operator]
                        for c in expired:  # these calls timed out; the others keep their time
                            backend.cancel(c)
                            in_flight.pop(c.id, None)
                            self.failures[c.target] = _timeout_error(c, timeout)
                        if len(self.failures) > total - self.needed:
                            give_up(lambda c: CollabCallError(
                                c.target, c.method, RuntimeError("cancelled: the group call already failed")))
                            break
                        for _ in expired:
                            if pending:
                                launch()
                        continue
                if in_flight.pop(call.id, None) is None:
                    continue
                exc = fut.exception()
                if exc is None and call.target in self.skipped:
                    value = None  # nothing was called (optional=True): no filters, no callback
                elif exc is None:
                    try:  # the caller's input result filters
                        value = _filters.received(self.ctx, call, fut.result())
                    except CollabCallError as filter_exc:
                        exc = filter_exc
                if exc is not None:
                    if not isinstance(exc, CollabCallError):
                        exc = CollabCallError(call.target, call.method, exc)
                    self.failures[call.target] = exc
                    if len(self.failures) > total - self.needed:
                        # the quorum can no longer be met: stop now instead of waiting on the rest
                        give_up(lambda c: CollabCallError(
                            c.target, c.method, RuntimeError("cancelled: the group call already failed")))
                        break
                else:
                    if self.opts.process_resp_cb is not None and call.target not in self.skipped:
                        value = _process_response(self.ctx, self.opts, call.target, self.method, value)
                    self.pairs.append((call.target, value))
                    yield call.target, value
                if pending:
                    launch()
        finally:
            if in_flight:  # the caller stopped iterating early, or a callback raised
                for call in in_flight.values():
                    backend.cancel(call)
            self._report()
        if len(self.pairs) < self.needed:
            raise GroupCallError(self.method, dict(self.failures), self._in_target_order(), self.needed, total)

    def _report(self) -> None:
        """Main's group calls show on the console (see :mod:`collab_core.progress`)."""
        ctx = self.ctx
        if not ctx.is_server:
            return
        reporter = progress.of_job(ctx.job)
        if reporter is not None:
            reporter.group_call(self.method, len(self.pairs), len(self.failures),
                                time.monotonic() - self._began, self.failures)


Sequence.register(Group)  # random.sample(collab.clients, 2) and friends, as with a list of proxies
