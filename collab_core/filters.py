"""Call and result filters: code that sees (and may replace) every call's arguments and every
result on one site, in one direction, before the bytes are made or after they are read.

A filter is an object with decorated methods::

    class Clip:
        def __init__(self, max_norm=1.0):
            self.max_norm = max_norm

        @collab.result_filter
        def clip(self, result, context):       # context: a FilterContext
            return clip_to(result, self.max_norm)

    recipe.add_client_output_filter(Clip(1.0), tasks=["train"])

``@collab.call_filter`` methods take the call's arguments as a dict ``{parameter name: value}``
and return the dict to use instead; ``@collab.result_filter`` methods take a result and return
the result to use instead (any type). The directional forms ``in_call_filter``,
``out_call_filter``, ``in_result_filter`` and ``out_result_filter`` are preferred over the plain
ones when the filter is added for that direction, so one object can do both halves of a
transformation (encode on the way out, decode on the way in).

Where filters run, per site and direction (``add_<side>_<direction>_filter``):

- output filters of a site run on every call it makes (call filters, before the arguments are
  encoded) and on every result it returns (result filters, before the result is encoded);
- input filters of a site run on every call it serves (call filters, after the arguments are
  decoded, before the method runs) and on every result it receives (result filters, after
  decoding, before the caller sees it).

Filters of one site and direction run in the order they were added; ``tasks=`` limits a filter to
some methods (shell patterns; a pattern with a ``.`` is matched against ``<object>.<method>``,
where the object is ``server``/``client`` or a named object). Each site gets its own filter
instances (a filter object added twice on one side is one instance per site). A filter that
raises fails that call with a :class:`CollabCallError` whose cause is a :class:`FilterError`
naming the filter.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import inspect
import itertools
import re
import sys
import threading
import types
import weakref
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import attrs

from .app import call_with_context, describe, make_client_object, takes_context
from .context import CallContext, SiteContext, active
from .errors import CollabCallError, CollabError, RecipeError

if TYPE_CHECKING:
    from .runtime import Call, JobRuntime

FILTER_ATTR = "__collab_filter__"
#: the decorator names, as ``@collab.<name>``
FILTER_KINDS = ("call_filter", "in_call_filter", "out_call_filter",
                "result_filter", "in_result_filter", "out_result_filter")
SIDES = ("server", "client")
DIRECTIONS = ("in", "out")
#: direction -> the word the recipe methods use
_DIRECTION_WORD = {"in": "input", "out": "output"}
#: where filter chains are kept in a JobRuntime's extras: {site name: SiteFilters}
EXTRAS_KEY = "filters"
#: calls collab makes for itself (tracking records, ...) are never filtered
_SYSTEM_PREFIXES = ("collab:", "__")
#: collab_core.events.FIRE_METHOD: events are answered by every site's handlers, not filtered
_SYSTEM_METHODS = frozenset({"fire_event"})
#: the key of positional arguments in the dict of a call whose signature is unknown here
UNNAMED_ARGS = "*args"


class FilterError(CollabError):
    """A filter failed (it raised, or returned something a filter may not return). The message
    names the filter, the site and the call."""


# -- decorators -------------------------------------------------------------------------------------


def mark(kind: str) -> Callable[[Callable], Callable]:
    if kind not in FILTER_KINDS:
        raise ValueError(kind)

    def decorator(fn: Callable) -> Callable:
        target = fn.__func__ if isinstance(fn, (staticmethod, classmethod)) else fn
        if not callable(target):
            raise TypeError(f"@collab.{kind} decorates a method, not {fn!r}")
        kinds = tuple(getattr(target, FILTER_ATTR, ()))
        if kind not in kinds:
            setattr(target, FILTER_ATTR, kinds + (kind,))
        return fn

    return decorator


def _kinds_of(value: Any) -> tuple[str, ...]:
    target = value.__func__ if isinstance(value, (staticmethod, classmethod)) else value
    try:
        kinds = getattr(target, FILTER_ATTR, ())
    except Exception:  # objects with exotic __getattr__
        return ()
    return tuple(kinds) if isinstance(kinds, tuple) else ()


def filter_methods(obj: Any) -> dict[str, list[str]]:
    """{kind: [method name, ...]} of an object's (or module's) decorated filter methods."""
    found: dict[str, list[str]] = {k: [] for k in FILTER_KINDS}
    if isinstance(obj, types.ModuleType):
        items: Iterable[tuple[str, Any]] = vars(obj).items()
    else:
        merged: dict[str, Any] = {}
        for klass in reversed(type(obj).__mro__):
            merged.update(vars(klass))
        items = merged.items()
    for name, value in items:
        for kind in _kinds_of(value):
            found[kind].append(name)
    return found


def _label(obj: Any, method: str | None = None) -> str:
    base = obj.__name__ if isinstance(obj, types.ModuleType) else type(obj).__qualname__
    return f"{base}.{method}" if method else base


def pick(obj: Any, kind: str, direction: str) -> str | None:
    """The method of ``obj`` that filters ``kind`` ("call" or "result") in ``direction`` ("in" or
    "out"): the ``<direction>_<kind>_filter`` method if it has one, else its ``<kind>_filter``."""
    methods = filter_methods(obj)
    for name in (f"{direction}_{kind}_filter", f"{kind}_filter"):
        found = methods[name]
        if len(found) > 1:
            raise RecipeError(
                f"filter {_label(obj)} has {len(found)} @collab.{name} methods ({', '.join(found)}); "
                f"a filter has at most one of each kind"
            )
        if found:
            return found[0]
    return None


def check_filter_object(obj: Any, direction: str, where: str, kinds: tuple[str, ...] = ("call", "result")) -> None:
    """A filter added for ``direction`` needs a call or result filter method for it (of ``kinds``)."""
    if isinstance(obj, type):
        raise RecipeError(f"{where}: {obj.__qualname__} is a class; pass an instance, e.g. {obj.__qualname__}()")
    if isinstance(obj, types.ModuleType):
        raise RecipeError(f"{where}: {obj.__name__} is a module; a filter is an object, an instance of a class "
                          f"with @collab.call_filter / @collab.result_filter methods")
    if all(pick(obj, kind, direction) is None for kind in kinds):
        names = [f"@collab.{k}_filter or @collab.{direction}_{k}_filter" for k in kinds]
        raise RecipeError(
            f"{where}: {describe(obj)} has no {'/'.join(kinds)} filter method for the "
            f"{_DIRECTION_WORD[direction]} direction; decorate one with {', or '.join(names)}"
        )


# -- what a recipe records --------------------------------------------------------------------------


def check_patterns(value: Any, what: str = "tasks") -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(t, str) and t for t in value):
        raise RecipeError(
            f"{what} must be None (every method) or a non-empty list of method names or patterns, "
            f"e.g. ['train'] or ['*.train']; got {value!r}"
        )
    return tuple(value)


def check_clients(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value:
        raise RecipeError(f"clients must be None (every client) or a non-empty list of client site names, "
                          f"got {value!r}")
    for name in value:
        if not isinstance(name, str) or not name or name == "server":
            raise RecipeError(f"clients names client sites (e.g. 'site-1'), got {name!r}")
    return tuple(value)


@attrs.frozen(eq=False)
class FilterSpec:
    """One filter a recipe added: where it runs and what it is.

    ``obj`` is the filter object (a live one, or ``None`` for a registered filter, named by
    ``name`` and built with ``options`` on each site). Specs with the same ``instance`` are one
    object on each site."""

    side: str
    direction: str
    obj: Any = None
    name: str | None = None
    options: dict[str, Any] = attrs.field(factory=dict)
    tasks: tuple[str, ...] | None = None
    clients: tuple[str, ...] | None = None
    instance: int = 0
    #: which of the object's methods run: its call filter, its result filter, or both
    kinds: tuple[str, ...] = ("call", "result")

    @property
    def where(self) -> str:
        return f"the {self.side} {_DIRECTION_WORD[self.direction]} filter"

    def label(self) -> str:
        return f"{self.name!r}" if self.obj is None else _label(self.obj)

    def runs_on(self, site: str, is_server: bool) -> bool:
        if is_server:
            return self.side == "server"
        return self.side == "client" and (self.clients is None or site in self.clients)


_instances = itertools.count(1)


def new_instance_id() -> int:
    return next(_instances)


def build_registered(name: str, options: dict[str, Any]) -> Any:
    """A registered filter (``collab_register_filters``), built with ``options``."""
    from .registry import get_registry

    factory = get_registry().filter(name)
    try:
        obj = factory(**options)
    except TypeError as exc:
        raise RecipeError(f"the registered filter {name!r} does not take the options {options!r}: {exc}") from None
    return obj


# -- job.json --------------------------------------------------------------------------------------

#: the keys of one entry of job.json's "filters" list
_ENTRY_KEYS = {"side", "direction", "object", "name", "options", "tasks", "clients", "instance", "kinds"}


def validate_config(entries: Any, file: str, check_descriptor: Callable[[Any, str, str], None]) -> list[dict]:
    """Check job.json's optional "filters" list (hostile input): each entry names its side,
    direction, and either an object ({module, class, args}) or a registered filter name."""
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise RecipeError(f"{file}: filters must be a list of filter entries")
    for i, entry in enumerate(entries):
        where = f"{file}: filters[{i}]"
        if not isinstance(entry, dict):
            raise RecipeError(f"{where} must be an object")
        unknown = set(entry) - _ENTRY_KEYS
        if unknown:
            raise RecipeError(f"{where} has unknown key(s) {sorted(unknown)}; valid keys: {sorted(_ENTRY_KEYS)}")
        if entry.get("side") not in SIDES:
            raise RecipeError(f"{where}: side must be 'server' or 'client', got {entry.get('side')!r}")
        if entry.get("direction") not in DIRECTIONS:
            raise RecipeError(f"{where}: direction must be 'in' or 'out', got {entry.get('direction')!r}")
        has_obj, has_name = "object" in entry, "name" in entry
        if has_obj == has_name:
            raise RecipeError(f"{where} must have exactly one of 'object' ({{module, class, args}}) or 'name'")
        if has_obj:
            check_descriptor(entry["object"], f"filters[{i}]", file)
            if "class" not in entry["object"]:
                raise RecipeError(f"{where}: a filter object names a class, not only a module")
        else:
            name = entry["name"]
            if not isinstance(name, str) or not name or len(name) > 128 or not name.isprintable():
                raise RecipeError(f"{where}: name must be a registered filter's name, got {name!r}")
        options = entry.get("options", {})
        if not isinstance(options, dict) or not all(isinstance(k, str) and k.isidentifier() for k in options):
            raise RecipeError(f"{where}: options must be an object of keyword arguments")
        if has_obj and options:
            raise RecipeError(f"{where}: options are for registered filters; an object has its args")
        from .props import check_json_value

        check_json_value(options, f"{where}: options")
        try:
            check_patterns(entry.get("tasks"), f"{where}: tasks")
            check_clients(entry.get("clients"))
        except RecipeError as exc:
            raise RecipeError(f"{where}: {exc}") from None
        if entry["side"] == "server" and entry.get("clients") is not None:
            raise RecipeError(f"{where}: clients is for client filters")
        inst = entry.get("instance", i)
        if not isinstance(inst, int) or isinstance(inst, bool) or inst < 0:
            raise RecipeError(f"{where}: instance must be an integer >= 0, got {inst!r}")
        kinds = entry.get("kinds", ["call", "result"])
        if not isinstance(kinds, list) or not kinds or not set(kinds) <= {"call", "result"} \
                or len(set(kinds)) != len(kinds):
            raise RecipeError(f"{where}: kinds must be a list of 'call' and/or 'result', got {kinds!r}")
    return entries


def to_config(specs: Iterable[FilterSpec], describe_object: Callable[[Any, str], dict]) -> list[dict]:
    """The job.json entries of a recipe's filters (objects by import path and constructor args)."""
    numbers: dict[int, int] = {}
    out = []
    for spec in specs:
        entry: dict[str, Any] = {"side": spec.side, "direction": spec.direction}
        if spec.obj is not None:
            entry["object"] = describe_object(spec.obj, spec.where.removeprefix("the "))
        else:
            entry["name"] = spec.name
            entry["options"] = dict(spec.options)
        if spec.tasks is not None:
            entry["tasks"] = list(spec.tasks)
        if spec.clients is not None:
            entry["clients"] = list(spec.clients)
        entry["instance"] = numbers.setdefault(spec.instance, len(numbers))
        if tuple(spec.kinds) != ("call", "result"):
            entry["kinds"] = list(spec.kinds)
        out.append(entry)
    return out


def from_config(entries: list[dict] | None, build: Callable[[dict, str], Any]) -> list[FilterSpec]:
    """FilterSpecs from validated job.json entries; ``build(desc, role)`` builds an object (once
    per instance number: entries sharing one are one object)."""
    built: dict[int, Any] = {}
    specs = []
    for i, entry in enumerate(entries or []):
        inst = entry.get("instance", i)
        obj = None
        if "object" in entry:
            if inst not in built:
                built[inst] = build(entry["object"], f"filters[{i}]")
            obj = built[inst]
        kinds = tuple(entry.get("kinds") or ("call", "result"))
        if obj is not None:
            check_filter_object(obj, entry["direction"], f"job filters[{i}]", kinds)
        specs.append(FilterSpec(
            side=entry["side"], direction=entry["direction"], obj=obj, name=entry.get("name"),
            options=dict(entry.get("options") or {}), tasks=check_patterns(entry.get("tasks")),
            clients=check_clients(entry.get("clients")), instance=-1 - inst, kinds=kinds,
        ))
    return specs


# -- one site's filters -----------------------------------------------------------------------------


@attrs.define(eq=False)
class FilterContext(CallContext):
    """What a filter method that declares ``context`` receives (also ``collab.context`` while it
    runs): the call's ``caller``, ``callee``, ``method`` and ``site`` (where the filter runs), plus

    - ``direction``: ``"out"`` (the site sends) or ``"in"`` (the site receives);
    - ``kind``: ``"call"`` (arguments) or ``"result"``;
    - ``peer``: the other end of the call;
    - ``qualified_method``: ``"<object>.<method>"`` (``client.train``, ``server.report``, or a named
      object's ``metric_receiver.accept``);
    - ``targets``: on the caller, every target of the call it belongs to (a group call's sites);
      on the callee, ``(site,)``;
    - ``parent``: on the caller, the context of the code making the call (main's, with the props
      it set: a round number, say); on the callee, None;
    - ``group``: on the caller, a number shared by the calls of one group call;
    - ``props``: one dict per call on this site, shared by the call's filters on this site (an
      output call filter and the input result filter of the same call; an input call filter, the
      method itself -- ``collab.get_prop`` -- and the output result filter).
    """

    direction: str = "out"
    kind: str = "call"
    peer: str = ""
    qualified_method: str = ""
    targets: tuple[str, ...] = ()
    parent: CallContext | None = None
    filter_name: str = ""
    #: on the caller: the same number for every target's call of one group call (a filter that
    #: transforms a group call's argument once, e.g. central noise, keys on it); unique otherwise
    group: int = 0

    @property
    def target_group_size(self) -> int:
        """How many sites the call went to (Fox's name)."""
        return len(self.targets)


@attrs.define(eq=False)
class _Active:
    spec: FilterSpec
    obj: Any
    method: str
    fn: Callable

    @property
    def label(self) -> str:
        return _label(self.obj, self.method)

    def matches(self, method: str, role: str) -> bool:
        tasks = self.spec.tasks
        if tasks is None:
            return True
        qualified = method if "." in method else f"{role}.{method}"
        bare = method.rpartition(".")[2]
        return any(fnmatch.fnmatchcase(qualified if "." in p else bare, p) for p in tasks)


def _is_system(method: str) -> bool:
    return method.startswith(_SYSTEM_PREFIXES) or method in _SYSTEM_METHODS


class SiteFilters:
    """The filter chains of one site: (kind, direction) -> filters in the order added."""

    def __init__(self, site: str, chains: dict[tuple[str, str], list[_Active]]):
        self.site = site
        self.chains = chains
        #: per call this site makes: (props, targets, parent context), shared by its filters here
        self._caller_props: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def remember(self, call: Call, entry: tuple) -> None:
        with self._lock:
            self._caller_props[call] = entry

    def recall(self, call: Call) -> tuple | None:
        with self._lock:
            return self._caller_props.get(call)

    def __bool__(self) -> bool:
        return any(self.chains.values())

    def chain(self, kind: str, direction: str, method: str, role: str) -> list[_Active]:
        if _is_system(method):
            return []
        return [a for a in self.chains.get((kind, direction), ()) if a.matches(method, role)]

    def __repr__(self) -> str:
        parts = [f"{d} {k}: {[a.label for a in c]}" for (k, d), c in self.chains.items() if c]
        return f"SiteFilters({self.site!r}, {'; '.join(parts) or 'none'})"


def build_site_filters(specs: Iterable[FilterSpec], site: str, is_server: bool, copy: bool) -> SiteFilters | None:
    """The filters of one site, with this site's own instances: a client gets
    ``make_client_object(obj, site)`` of each filter object when ``copy`` (SimEnv: one process,
    many sites), registered filters are built on each site. None: the site has no filters."""
    objects: dict[int, Any] = {}
    chains: dict[tuple[str, str], list[_Active]] = {(k, d): [] for k in ("call", "result") for d in DIRECTIONS}
    for spec in specs:
        if not spec.runs_on(site, is_server):
            continue
        obj = objects.get(spec.instance)
        if obj is None:
            if spec.obj is None:
                obj = build_registered(spec.name or "", spec.options)
            elif copy and not is_server:
                obj = make_client_object(spec.obj, site)
            else:
                obj = spec.obj
            objects[spec.instance] = obj
        check_filter_object(obj, spec.direction, f"{spec.where} {spec.label()}", spec.kinds)
        for kind in spec.kinds:
            method = pick(obj, kind, spec.direction)
            if method is not None:
                chains[(kind, spec.direction)].append(_Active(spec, obj, method, getattr(obj, method)))
    found = SiteFilters(site, chains)
    return found if found else None


def install(job: JobRuntime, site: str, filters: SiteFilters | None) -> None:
    """Give ``site`` of ``job`` its filters (SiteRuntime and the calls it makes find them here)."""
    table = job.extras.setdefault(EXTRAS_KEY, {})
    if filters is None:
        table.pop(site, None)
    else:
        table[site] = filters


def install_all(job: JobRuntime, specs: Iterable[FilterSpec], sites: Iterable[str], copy: bool) -> None:
    specs = list(specs)
    if not specs:
        return
    for site in sites:
        install(job, site, build_site_filters(specs, site, site == job.server_name, copy))


def of(job: JobRuntime, site: str) -> SiteFilters | None:
    table = job.extras.get(EXTRAS_KEY)
    return None if not table else table.get(site)


# -- arguments as a dict ----------------------------------------------------------------------------


def args_to_dict(sig: inspect.Signature | None, args: tuple, kwargs: dict) -> dict[str, Any]:
    """``{parameter name: value}`` of a call: positional arguments named by the signature (extra
    ones under the ``*args`` parameter's name), keyword arguments as they are."""
    out: dict[str, Any] = {}
    if args and sig is None:  # a method this side knows no signature of: its positional arguments as one
        out[UNNAMED_ARGS] = tuple(args)
    elif args and sig is not None:
        params = list(sig.parameters.values())
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        var = next((p for p in params if p.kind is p.VAR_POSITIONAL), None)
        for p, value in zip(positional, args, strict=False):
            out[p.name] = value
        extra = args[len(positional):]
        if extra:
            if var is None:
                raise FilterError(f"{len(args)} positional arguments for the signature {sig}")
            out[var.name] = tuple(extra)
    for name, value in kwargs.items():
        if name in out:
            raise FilterError(f"argument {name!r} given twice")
        out[name] = value
    return out


def dict_to_args(sig: inspect.Signature | None, values: Mapping[str, Any]) -> tuple[tuple, dict]:
    """The inverse of :func:`args_to_dict`: positional-only parameters (and, with ``*args``, those
    before it) go by position, everything else by keyword -- names the method does not have too
    (a filter may add a value an input filter on the other side takes out again)."""
    rest = dict(values)
    args: list[Any] = list(rest.pop(UNNAMED_ARGS, ()) if sig is None else ())
    if sig is not None:
        params = list(sig.parameters.values())
        var = next((p for p in params if p.kind is p.VAR_POSITIONAL), None)
        by_position = var is not None and var.name in rest
        for p in params:
            if p.kind is p.POSITIONAL_ONLY or (by_position and p.kind is p.POSITIONAL_OR_KEYWORD):
                if p.name not in rest:
                    break
                args.append(rest.pop(p.name))
            elif p.kind is p.VAR_POSITIONAL:
                if p.name in rest:
                    args.extend(rest.pop(p.name))
                break
    return tuple(args), rest


# -- running filters --------------------------------------------------------------------------------


def _run_chain(chain: list[_Active], data: Any, fctx: FilterContext, site_ctx: SiteContext) -> Any:
    ctx = SiteContext(site_ctx.site_name, site_ctx.job, site_ctx.workspace, site_ctx.call_cancelled,
                      app_props=site_ctx.app_props, call_context=fctx)
    for active_filter in chain:
        fctx.filter_name = active_filter.label
        where = (f"the {active_filter.spec.side} {_DIRECTION_WORD[fctx.direction]} {fctx.kind} filter "
                 f"{active_filter.label} on {fctx.site} ({fctx.method}() {fctx.caller}=>{fctx.callee})")
        try:
            with active(ctx):
                if takes_context(active_filter.fn):
                    data = call_with_context(active_filter.fn, fctx, (data,), {})
                else:
                    data = active_filter.fn(data)
        except FilterError:
            raise
        except Exception as exc:
            raise FilterError(f"{where} raised {type(exc).__name__}: {exc}") from exc
        if fctx.kind == "call" and not isinstance(data, Mapping):
            raise FilterError(
                f"{where} returned {type(data).__name__}, not the call's arguments; a call filter "
                f"returns the (changed) dict of arguments it was given"
            )
    return data


def _role(job: JobRuntime, site: str) -> str:
    return "server" if site == job.server_name else "client"


def _qualified(job: JobRuntime, site: str, method: str) -> str:
    return method if "." in method else f"{_role(job, site)}.{method}"


def _failed(call: Call, exc: FilterError) -> CollabCallError:
    return CollabCallError(call.target, call.method, exc)


class CallGroup:
    """Stands for one group call whose calls have no other shared object (fire-and-forget)."""


_group_numbers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_group_lock = threading.Lock()
_group_counter = itertools.count(1)


def _group_number(group: Any, call: Call) -> int:
    """The number FilterContext.group shows: the same for every call of one group call."""
    if group is None:
        return -call.id  # a single call: a group of its own
    with _group_lock:
        number = _group_numbers.get(group)
        if number is None:
            number = _group_numbers[group] = next(_group_counter)
    return number


def submit(ctx: SiteContext, call: Call, targets: Iterable[str] | None = None, group: Any = None) -> Future:
    """Send ``call`` from the site of ``ctx``: its output call filters first (their output is what
    the backend encodes). A failing filter fails the call (a failed future). ``group`` is the group
    call it belongs to (any object, the same for all its calls)."""
    job = ctx.job
    site_filters = of(job, ctx.site_name)
    if site_filters is not None:
        chain = site_filters.chain("call", "out", call.method, _role(job, call.target))
        needs_result = call.expect_result and site_filters.chain("result", "in", call.method, _role(job, call.target))
        if chain or needs_result:
            props: dict[str, Any] = {}
            site_filters.remember(call, (props, tuple(targets or (call.target,)), ctx.get_call_context(),
                                         _group_number(group, call)))
        if chain:
            fctx = _caller_context(ctx, call, "call", site_filters)
            try:
                sig = job.interface_of(call.target).methods.get(call.method)
                values = _run_chain(chain, args_to_dict(sig, call.args, call.kwargs), fctx, ctx)
                call.args, call.kwargs = dict_to_args(sig, values)
            except FilterError as exc:
                fut: Future = Future()
                fut.set_exception(_failed(call, exc))
                return fut
    return job.backend.submit(call)


def _caller_context(ctx: SiteContext, call: Call, kind: str, site_filters: SiteFilters) -> FilterContext:
    props, targets, parent, group = site_filters.recall(call) or ({}, (call.target,), None, -call.id)
    direction = "out" if kind == "call" else "in"
    return FilterContext(ctx.site_name, call.caller, call.target, ctx.job, method=call.method, props=props,
                         cancelled=call.cancelled, direction=direction, kind=kind, peer=call.target,
                         qualified_method=_qualified(ctx.job, call.target, call.method), targets=targets,
                         parent=parent, group=group)


def received(ctx: SiteContext, call: Call, value: Any) -> Any:
    """A result of ``call`` arrived at its caller: run the caller's input result filters on it.
    Raises CollabCallError (cause FilterError) if one fails."""
    site_filters = of(ctx.job, ctx.site_name)
    if site_filters is None:
        return value
    chain = site_filters.chain("result", "in", call.method, _role(ctx.job, call.target))
    if not chain:
        return value
    fctx = _caller_context(ctx, call, "result", site_filters)
    try:
        return _run_chain(chain, value, fctx, ctx)
    except FilterError as exc:
        raise _failed(call, exc) from None


def received_future(ctx: SiteContext, call: Call, fut: Future) -> Future:
    """``fut`` for a ``blocking=False`` call, its result passed through the input result filters."""
    site_filters = of(ctx.job, ctx.site_name)
    if site_filters is None or not site_filters.chain("result", "in", call.method, _role(ctx.job, call.target)):
        return fut
    out: Future = Future()

    def done(f: Future) -> None:
        if f.cancelled():
            out.cancel()
            return
        exc = f.exception()
        if exc is not None:
            out.set_exception(exc)
            return
        try:
            out.set_result(received(ctx, call, f.result()))
        except CollabCallError as err:
            out.set_exception(err)

    fut.add_done_callback(done)
    return out


def serve(site_filters: SiteFilters, site_ctx: SiteContext, call: Call, sig: inspect.Signature | None,
          cc: CallContext, run: Callable[[tuple, dict], Any]) -> Any:
    """Serve ``call`` on the callee: input call filters, the method (``run(args, kwargs)``), then
    output result filters (their output is what the backend encodes)."""
    job = site_ctx.job
    role = _role(job, site_filters.site)
    args, kwargs = call.args, call.kwargs
    chain = site_filters.chain("call", "in", call.method, role)

    def context(kind: str, direction: str) -> FilterContext:
        return FilterContext(site_filters.site, call.caller, site_filters.site, job, method=call.method,
                             props=cc.props, cancelled=call.cancelled, direction=direction, kind=kind,
                             peer=call.caller, qualified_method=_qualified(job, site_filters.site, call.method),
                             targets=(site_filters.site,))

    if chain:
        values = _run_chain(chain, args_to_dict(sig, args, kwargs), context("call", "in"), site_ctx)
        args, kwargs = dict_to_args(sig, values)
    result = run(args, kwargs)
    if call.expect_result:
        chain = site_filters.chain("result", "out", call.method, role)
        if chain:
            result = _run_chain(chain, result, context("result", "out"), site_ctx)
    return result


# -- wire serializers of a job (recipe.add_decomposers) ---------------------------------------------

_PATH_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+")


def _is_serializable_class(obj: Any) -> bool:
    return isinstance(obj, type) and (attrs.has(obj) or dataclasses.is_dataclass(obj))


def check_decomposer(item: Any) -> Any:
    """What ``recipe.add_decomposers`` keeps of one item: an import path (checked now, by
    resolving it), or the object itself (an attrs class or dataclass, or a function returning
    Serializers); a Serializer value is named by its import path."""
    from . import wire

    if isinstance(item, str):
        resolve_decomposer(item)
        return item
    if isinstance(item, wire.Serializer):
        raise RecipeError(
            f"add_decomposers: pass the Serializer {item.name!r} by its import path, e.g. "
            f"'mypkg.wire_types.POINT_SERIALIZER' (a module-level name), so each site can find it"
        )
    if not (_is_serializable_class(item) or isinstance(item, types.FunctionType)):
        raise RecipeError(
            f"add_decomposers takes import paths, attrs classes or dataclasses, or functions returning "
            f"collab_core.wire.Serializer objects; got {item!r}"
        )
    if "<locals>" in item.__qualname__:
        raise RecipeError(f"add_decomposers: {item.__qualname__} is defined inside a function; define it at "
                          f"module level so each site can import it")
    return item


def decomposer_path(item: Any, module_name: Callable[[types.ModuleType], str]) -> str:
    """The import path job.json records for an add_decomposers item."""
    if isinstance(item, str):
        return item
    return f"{module_name(sys.modules[item.__module__])}.{item.__qualname__}"


def resolve_decomposer(path: str) -> list[Any]:
    """The classes and Serializers an import path names (an attrs class or dataclass, a
    Serializer, a list of them, or a function returning one or a list). In a deployed process the
    module must be allowed by the site's policy, checked before it is imported."""
    from . import wire
    from .loading import import_job_module, job_policy

    if not isinstance(path, str) or len(path) > 512 or not _PATH_RE.fullmatch(path.replace(":", ".")):
        raise RecipeError(f"decomposer {path!r} is not an import path like 'mypkg.types.Point'")
    path = path.replace(":", ".")
    parts = path.split(".")
    if any(p.startswith("__") for p in parts):
        raise RecipeError(f"decomposer {path!r}: no dunder names in an import path")
    policy = job_policy()
    obj: Any = None
    for cut in range(len(parts) - 1, 0, -1):  # the longest importable module prefix
        module = ".".join(parts[:cut])
        if policy is not None and not policy.allows(module):
            continue
        try:
            obj = import_job_module(module, "decomposer")
        except RecipeError:
            continue
        for part in parts[cut:]:
            obj = vars(obj).get(part) if hasattr(obj, "__dict__") else None
            if obj is None:
                break
        if obj is not None:
            break
    if obj is None:
        where = "" if policy is None or policy.allowed_modules is None else (
            f" (this site builds only {', '.join(policy.allowed_modules) or 'nothing'})")
        raise RecipeError(f"decomposer {path!r} cannot be found: no importable module defines it{where}")
    if isinstance(obj, types.FunctionType):
        try:
            obj = obj()
        except Exception as exc:
            raise RecipeError(f"decomposer {path!r}() raised {type(exc).__name__}: {exc}") from exc
    items = list(obj) if isinstance(obj, (list, tuple)) else [obj]
    for item in items:
        if not (isinstance(item, wire.Serializer) or _is_serializable_class(item)):
            raise RecipeError(
                f"decomposer {path!r} is a {type(item).__name__}; it must name an attrs class or "
                f"dataclass, a collab_core.wire.Serializer, or a function returning Serializers"
            )
    return items


def activate_decomposers(items: Iterable[Any]) -> Callable[[], None]:
    """Register a job's serializers in this process; the returned function unregisters those this
    call added (a SimEnv run leaves the process as it found it)."""
    from . import wire

    added: list[Any] = []
    try:
        for item in items:
            resolved = resolve_decomposer(item) if isinstance(item, str) else (
                [item] if _is_serializable_class(item) else resolve_decomposer_function(item))
            for one in resolved:
                if isinstance(one, wire.Serializer):
                    if wire.registered_types().get(one.name) is None and one not in _user_serializers():
                        wire.register_serializer(one)
                        added.append(one.name)
                elif one not in wire.registered_types().values():
                    wire.register_type(one)
                    added.append(one)
    except wire.WireError as exc:
        for thing in added:
            _undo(thing)
        raise RecipeError(f"add_decomposers: {exc}") from None

    def undo() -> None:
        for thing in added:
            _undo(thing)

    return undo


def resolve_decomposer_function(fn: Callable) -> list[Any]:
    from . import wire

    made = fn()
    items = list(made) if isinstance(made, (list, tuple)) else [made]
    if not all(isinstance(i, wire.Serializer) for i in items):
        raise RecipeError(f"decomposer function {fn.__qualname__}() must return Serializer objects")
    return items


def _user_serializers() -> list[Any]:
    from .wire import _codec

    with _codec._lock:
        return list(_codec._user_serializers.values())


def _undo(thing: Any) -> None:
    from . import wire

    if isinstance(thing, str):
        wire.unregister_serializer(thing)
    else:
        wire.unregister_type(thing)


# -- built-in filters (registered by collab-core: "exclude_vars", "include_vars") --------------------


class _VarsFilter:
    """Drops (or keeps only) the variables of a model whose names match ``names`` (shell
    patterns): in a dict of name -> value (a state dict), in an FLModel's ``params``, and in those
    found directly inside a tuple or list (``(weights, n)``). Call filters apply it to every
    argument (or to those named in ``args``); result filters to the result."""

    _keep_matching = False

    def __init__(self, names: list[str] | str, args: list[str] | None = None):
        patterns = check_patterns(names, "names")
        if patterns is None:
            raise RecipeError(f"{type(self).__name__} needs names=[...] (variable names or patterns)")
        self.names = list(patterns)
        self.args = None if args is None else list(check_patterns(args, "args") or ())

    def _drop(self, key: Any) -> bool:
        hit = isinstance(key, str) and any(fnmatch.fnmatchcase(key, p) for p in self.names)
        return hit != self._keep_matching

    def _apply(self, value: Any, depth: int = 0) -> Any:
        from .fl_model import FLModel

        if isinstance(value, Mapping):
            return {k: v for k, v in value.items() if not self._drop(k)}
        if isinstance(value, FLModel) and isinstance(value.params, Mapping):
            return attrs.evolve(value, params=self._apply(value.params))
        if depth == 0 and isinstance(value, (tuple, list)):
            return type(value)(self._apply(v, 1) for v in value)
        return value

    @mark("call_filter")
    def filter_call(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        return {k: (self._apply(v) if self.args is None or k in self.args else v) for k, v in kwargs.items()}

    @mark("result_filter")
    def filter_result(self, result: Any) -> Any:
        return self._apply(result)


class ExcludeVars(_VarsFilter):
    """``exclude_vars``: remove the variables named by ``names`` (e.g. ``["*.running_mean"]``)."""


class IncludeVars(_VarsFilter):
    """``include_vars``: keep only the variables named by ``names``."""

    _keep_matching = True


# -- deployed processes (collab-tcp's server and sites) --------------------------------------------


def setup_deployed(job: JobRuntime, code: Any, site: str) -> Callable[[], None]:
    """In a process a job was deployed to: build this site's filters from the job config (under
    the site's build policy, like its server or client object) and register the job's
    decomposers. Returns the function that unregisters them when the job ends."""
    from .loading import build_object, set_build_policy

    with set_build_policy(code.policy):
        specs = from_config(code.config.get("filters"), build_object)
        install(job, site, build_site_filters(specs, site, site == job.server_name, copy=True))
        return activate_decomposers(code.config.get("decomposers") or [])


# -- Fox's filter base classes ----------------------------------------------------------------------


class CallFilter:
    """The Fox API's base class of call filters: override ``filter_call(func_kwargs, context)``
    and return the keyword arguments to use. (collab's own spelling is a ``@collab.call_filter``
    method on any object.)"""

    def __init__(self, impl: Any = None, incoming: bool = True):
        if impl is not None:
            raise TypeError(f"{type(self).__name__}(impl=...) is not supported: add the filter "
                            f"object itself, or an object with a @collab.call_filter method")
        self.impl = impl  # kept, so an exported job can rebuild the filter (constructor arguments)
        self.incoming = incoming

    def filter_call(self, func_kwargs: dict, context: Any) -> dict:
        return func_kwargs

    @mark("call_filter")
    def _collab_call_filter(self, func_kwargs: dict, context: Any) -> dict:
        return self.filter_call(func_kwargs, context)


class ResultFilter:
    """The Fox API's base class of result filters: override ``filter_result(result, context)``
    and return the result to use."""

    def __init__(self, impl: Any = None, incoming: bool = True):
        if impl is not None:
            raise TypeError(f"{type(self).__name__}(impl=...) is not supported: add the filter "
                            f"object itself, or an object with a @collab.result_filter method")
        self.impl = impl  # kept, so an exported job can rebuild the filter (constructor arguments)
        self.incoming = incoming

    def filter_result(self, result: Any, context: Any) -> Any:
        return result

    @mark("result_filter")
    def _collab_result_filter(self, result: Any, context: Any) -> Any:
        return self.filter_result(result, context)
