"""Apps: the server object or module and the client object or module, with their decorated methods.

An app wraps an object (an instance of a user class) or a module with module-level functions. It
finds the ``@collab.main``, ``@collab.publish``, ``@collab.init`` and ``@collab.final`` callables,
in definition order, and validates call arguments against the published signatures.
"""

from __future__ import annotations

import inspect
import re
import types
import weakref
from collections.abc import Callable
from typing import Any

import attrs

from .errors import CallValidationError, RecipeError

ROLE_ATTR = "__collab_role__"
ROLES = ("main", "publish", "init", "final")
#: a decorated function that declares a parameter of this name receives the call context there
CONTEXT_PARAM = "context"


class _Default:
    """Stands for a default value known only by name on this side."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return "..."


class _TextSignature(inspect.Signature):
    """A signature rebuilt from :meth:`Interface.to_wire`; prints as the original text."""

    __slots__ = ("_text",)

    def __init__(self, parameters: list[inspect.Parameter], text: str):
        super().__init__(parameters)
        self._text = text

    def __str__(self) -> str:
        return self._text


def mark(role: str) -> Callable[[Callable], Callable]:
    def decorator(fn: Callable) -> Callable:
        target = fn.__func__ if isinstance(fn, (staticmethod, classmethod)) else fn
        if not callable(target):
            raise TypeError(f"@collab.{role} decorates a function or method, not {fn!r}")
        existing = getattr(target, ROLE_ATTR, None)
        if existing is not None and existing != role:
            raise RecipeError(
                f"{target.__qualname__} is decorated with both @collab.{existing} and @collab.{role}; "
                f"use one"
            )
        setattr(target, ROLE_ATTR, role)
        return fn

    return decorator


def role_of(obj: Any) -> str | None:
    target = obj.__func__ if isinstance(obj, (staticmethod, classmethod)) else obj
    try:
        return getattr(target, ROLE_ATTR, None)
    except Exception:  # objects with exotic __getattr__
        return None


def _definitions(obj: Any) -> list[tuple[str, str]]:
    """(name, role) of every decorated callable of obj, in definition order.

    An object may instead describe itself with ``collab_definitions() -> [(name, role)]`` (a
    proxy whose methods run elsewhere, e.g. in a torchrun worker group)."""
    custom = getattr(type(obj), "collab_definitions", None)
    if custom is not None and not isinstance(obj, types.ModuleType):
        return list(custom(obj))
    found: dict[str, str] = {}
    if isinstance(obj, types.ModuleType):
        for name, value in vars(obj).items():
            role = role_of(value)
            if role and callable(value):
                found[name] = role
        return list(found.items())
    # A class hierarchy: base classes first, then each class's own definitions in order;
    # an override keeps its first position but takes the subclass's role.
    for klass in reversed(type(obj).__mro__):
        for name, value in vars(klass).items():
            role = role_of(value)
            if role:
                found[name] = role
            elif name in found:
                del found[name]  # overridden without the decorator: no longer published
    return list(found.items())


def _signature(fn: Callable) -> inspect.Signature:
    return inspect.signature(fn)


_takes_context: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def takes_context(fn: Callable) -> bool:
    """Whether ``fn`` declares a (non-variadic) parameter named ``context``."""
    key = getattr(fn, "__func__", fn)
    try:
        return _takes_context[key]
    except (KeyError, TypeError):
        pass
    try:
        p = _signature(fn).parameters.get(CONTEXT_PARAM)
    except (TypeError, ValueError):
        p = None
    found = p is not None and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    try:
        _takes_context[key] = found
    except TypeError:  # not weak-referenceable: look it up each time
        pass
    return found


def public_signature(fn: Callable) -> inspect.Signature:
    """``fn``'s signature as callers see it: without the injected ``context`` parameter."""
    sig = _signature(fn)
    if not takes_context(fn):
        return sig
    return sig.replace(parameters=[p for p in sig.parameters.values() if p.name != CONTEXT_PARAM])


def call_with_context(fn: Callable, context: Any, args: tuple, kwargs: dict) -> Any:
    """Call ``fn(*args, **kwargs)``, passing ``context`` as its ``context`` parameter if it declares
    one (wherever it stands in the parameter list)."""
    if not takes_context(fn):
        return fn(*args, **kwargs)
    if CONTEXT_PARAM in kwargs:
        raise CallValidationError(f"{fn.__qualname__}: 'context' is given by collab, not by the caller")
    full = _signature(fn)
    bound = public_signature(fn).bind(*args, **kwargs)
    arguments = {}
    for name in full.parameters:
        if name == CONTEXT_PARAM:
            arguments[name] = context
        elif name in bound.arguments:
            arguments[name] = bound.arguments[name]
    call = inspect.BoundArguments(full, arguments)  # type: ignore[arg-type]
    return fn(*call.args, **call.kwargs)


def describe(obj: Any) -> str:
    if isinstance(obj, types.ModuleType):
        return f"module {obj.__name__}"
    return f"{type(obj).__module__}.{type(obj).__qualname__} instance"


@attrs.frozen(eq=False)
class Interface:
    """The published methods of an app and their signatures: what callers validate against."""

    owner: str
    methods: dict[str, inspect.Signature]
    #: how a call names the main object with ``target=`` ("server" or "client")
    main_name: str = ""
    #: the names of the side's named objects (in the order they were given)
    objects: tuple[str, ...] = attrs.field(init=False, default=attrs.Factory(
        lambda self: tuple(dict.fromkeys(n.partition(".")[0] for n in self.methods if "." in n)),
        takes_self=True,
    ))

    def resolve(self, method: str, target: str | None) -> str:
        """The published name a call of ``method`` reaches: ``target`` names an object (or the main
        object by its role name); without one, the main object's method, else the one named object
        that publishes ``method`` (two of them: an ambiguity error asking for a qualified call).
        An unknown method comes back as given (:meth:`bind` then says what is published)."""
        if target is not None and target != self.main_name:
            if target not in self.objects:
                known = ", ".join(self.objects) or "none"
                raise CallValidationError(
                    f"{self.owner} has no object named {target!r} (target=); its objects: {known}"
                )
            return f"{target}.{method}"
        if method in self.methods or target is not None or "." in method:
            return method
        owners = [name for name in self.methods if name.partition(".")[2] == method]
        if len(owners) > 1:
            via = {"server": "collab.server", "client": "collab.clients"}.get(self.main_name, "<proxy>")
            choices = " or ".join(f"{via}.{o.partition('.')[0]}.{method}(...)" for o in owners)
            raise CallValidationError(
                f"{method!r} is ambiguous on {self.owner}: the objects "
                f"{', '.join(repr(o.partition('.')[0]) for o in owners)} all publish it; use a "
                f"qualified call, {choices}, or target=<object name>"
            )
        return owners[0] if owners else method

    def to_wire(self) -> dict[str, Any]:
        """A plain-data form, so a process without the code can still validate calls."""
        return {
            "owner": self.owner,
            "main_name": self.main_name,
            "methods": {
                name: {
                    "text": str(sig),
                    "params": [[p.name, int(p.kind), p.default is not p.empty] for p in sig.parameters.values()],
                }
                for name, sig in self.methods.items()
            },
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Interface:
        try:
            methods = {}
            for name, desc in data["methods"].items():
                params = [
                    inspect.Parameter(str(pname), inspect._ParameterKind(int(kind)),
                                      default=_Default(desc["text"]) if has_default else inspect.Parameter.empty)
                    for pname, kind, has_default in desc["params"]
                ]
                methods[str(name)] = _TextSignature(params, text=str(desc["text"]))
            return cls(owner=str(data["owner"]), methods=methods, main_name=str(data.get("main_name", "")))
        except (KeyError, TypeError, ValueError) as exc:
            raise RecipeError(f"malformed interface description: {exc!r}") from None

    def bind(self, method: str, args: tuple, kwargs: dict) -> None:
        """Check that ``method(*args, **kwargs)`` would bind, raising CallValidationError if not."""
        sig = self.methods.get(method)
        if sig is None and "." in method and method.partition(".")[0] in self.objects:
            obj, _, name = method.partition(".")
            published = ", ".join(f"{m.partition('.')[2]}{s}" for m, s in self.methods.items()
                                  if m.startswith(obj + ".")) or "none"
            raise CallValidationError(
                f"the object {obj!r} of {self.owner} publishes no method {name!r}. Its published "
                f"methods: {published}. Decorate the method with @collab.publish, or fix the name."
            )
        if sig is None:
            published = ", ".join(f"{m}{s}" for m, s in self.methods.items()) or "none"
            raise CallValidationError(
                f"{self.owner} publishes no method {method!r}. Published methods: {published}. "
                f"Decorate the method with @collab.publish, or fix the name."
            )
        try:
            sig.bind(*args, **kwargs)
        except TypeError as exc:
            raise CallValidationError(
                f"bad arguments for {method}{sig} on {self.owner}: {exc}"
            ) from None


#: a named object's name: a letter, then letters, digits and underscores (as NVFlare's)
_OBJECT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")
#: names a named object cannot take: attributes of proxies and groups, and the role names
_RESERVED_NAMES = frozenset({"server", "client", "name", "names", "sites", "values", "failures"})


def check_object_names(objects: Any, role: str) -> dict[str, Any]:
    """Validate ``server_objects=`` / ``client_objects=``: a dict of name -> object (or module)."""
    if objects is None:
        return {}
    if not isinstance(objects, dict):
        raise RecipeError(
            f"{role}_objects must be a dict of name -> object, e.g. "
            f"{role}_objects={{'metric_receiver': MetricReceiver()}}; got {type(objects).__name__}"
        )
    for name, obj in objects.items():
        if not isinstance(name, str) or not _OBJECT_NAME.match(name):
            raise RecipeError(
                f"{role}_objects: {name!r} is not a valid object name; use a letter followed by "
                f"letters, digits or underscores (it is how callers name it: "
                f"collab.{'server' if role == 'server' else 'clients'}.<name>.<method>(...))"
            )
        if name in _RESERVED_NAMES:
            raise RecipeError(f"{role}_objects: {name!r} is a reserved name; choose another")
        if isinstance(obj, type):
            raise RecipeError(
                f"{role}_objects[{name!r}] is the class {obj.__qualname__}; pass an instance, e.g. "
                f"{obj.__qualname__}()"
            )
        if obj is None:
            raise RecipeError(f"{role}_objects[{name!r}] is None; pass the object")
    return dict(objects)


class App:
    """One side of a job: the object or module, and its decorated callables bound to it.

    ``objects`` are the side's named objects (``server_objects`` / ``client_objects``): their
    published methods are known by qualified names ``"<name>.<method>"`` (see
    :meth:`Interface.resolve`), their ``@collab.init`` / ``@collab.final`` run after the main
    object's, in the order the objects were given."""

    def __init__(self, obj: Any, *, role: str, objects: dict[str, Any] | None = None):
        if role not in ("server", "client"):
            raise ValueError(role)
        self.obj = obj
        self.role = role
        self.objects = check_object_names(objects, role)
        self.is_module = isinstance(obj, types.ModuleType)
        self.publish: dict[str, Callable] = {}
        self.init: list[Callable] = []
        self.final: list[Callable] = []
        mains: list[Callable] = []
        for name, kind in _definitions(obj):
            fn = getattr(obj, name)
            if kind == "publish":
                self.publish[name] = fn
            elif kind == "init":
                self.init.append(fn)
            elif kind == "final":
                self.final.append(fn)
            else:
                mains.append(fn)
        self.main: Callable | None = None
        if role == "server":
            if not mains:
                raise RecipeError(
                    f"the server ({describe(obj)}) has no @collab.main function; decorate the function "
                    f"that runs the algorithm with @collab.main"
                )
            if len(mains) > 1:
                names = ", ".join(m.__name__ for m in mains)
                raise RecipeError(
                    f"the server ({describe(obj)}) has {len(mains)} @collab.main functions ({names}); "
                    f"a server app has exactly one"
                )
            self.main = mains[0]
            if public_signature(self.main).parameters:
                raise RecipeError(
                    f"@collab.main {self.main.__qualname__}{inspect.signature(self.main)} must take no "
                    f"arguments (besides self, and `context` if it wants the call context); pass "
                    f"settings to the server's constructor instead"
                )
        elif mains and not self.is_module:  # one module may hold both sides (module-level pattern)
            raise RecipeError(
                f"the client ({describe(obj)}) has a @collab.main function ({mains[0].__name__}); "
                f"@collab.main belongs to the server"
            )
        for name, member in self.objects.items():
            self._add_object(name, member)
        self.interface = Interface(
            owner=f"the {role} ({describe(obj)})",
            methods={name: public_signature(fn) for name, fn in self.publish.items()},
            main_name=role,
        )

    def _add_object(self, name: str, obj: Any) -> None:
        if name in self.publish:
            raise RecipeError(
                f"{self.role}_objects: {name!r} is also the name of a method the {self.role} "
                f"({describe(self.obj)}) publishes; name the object differently"
            )
        for method, kind in _definitions(obj):
            fn = getattr(obj, method)
            if kind == "publish":
                self.publish[f"{name}.{method}"] = fn
            elif kind == "init":
                self.init.append(fn)
            elif kind == "final":
                self.final.append(fn)
            else:
                raise RecipeError(
                    f"{self.role}_objects[{name!r}] ({describe(obj)}) has a @collab.main function "
                    f"({method}); only the server's main object has one"
                )

    def method(self, name: str) -> Callable:
        """The published callable for a call of ``name`` (plain, or qualified ``object.method``)."""
        fn = self.publish.get(name)
        if fn is not None:
            return fn
        resolved = self.interface.resolve(name, None)
        if resolved not in self.publish:
            self.interface.bind(name, (), {})  # raises with the list of published methods
        return self.publish[resolved]


def make_client_object(obj: Any, site_name: str) -> Any:
    """The client object for one site: ``obj.make_client_app(site_name)`` if defined, else a deep copy.

    Modules are shared as they are (module state is process state): documented in the user guide.
    """
    import copy

    if isinstance(obj, types.ModuleType):
        return obj
    factory = getattr(obj, "make_client_app", None)
    if callable(factory):
        made = factory(site_name)
        if made is None:
            raise RecipeError(f"{describe(obj)}.make_client_app({site_name!r}) returned None; return the client object")
        return made
    try:
        return copy.deepcopy(obj)
    except Exception as exc:
        raise RecipeError(
            f"cannot give each site its own copy of the client ({describe(obj)}): deepcopy failed with "
            f"{type(exc).__name__}: {exc}. Define make_client_app(self, site_name) on the class to "
            f"build each site's client yourself."
        ) from exc
