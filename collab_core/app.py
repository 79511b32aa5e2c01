"""Apps: the server object or module and the client object or module, with their decorated methods.

An app wraps an object (an instance of a user class) or a module with module-level functions. It
finds the ``@collab.main``, ``@collab.publish``, ``@collab.init`` and ``@collab.final`` callables,
in definition order, and validates call arguments against the published signatures.
"""

from __future__ import annotations

import inspect
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

    def to_wire(self) -> dict[str, Any]:
        """A plain-data form, so a process without the code can still validate calls."""
        return {
            "owner": self.owner,
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
            return cls(owner=str(data["owner"]), methods=methods)
        except (KeyError, TypeError, ValueError) as exc:
            raise RecipeError(f"malformed interface description: {exc!r}") from None

    def bind(self, method: str, args: tuple, kwargs: dict) -> None:
        """Check that ``method(*args, **kwargs)`` would bind, raising CallValidationError if not."""
        sig = self.methods.get(method)
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


class App:
    """One side of a job: the object or module, and its decorated callables bound to it."""

    def __init__(self, obj: Any, *, role: str):
        if role not in ("server", "client"):
            raise ValueError(role)
        self.obj = obj
        self.role = role
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
        self.interface = Interface(
            owner=f"the {role} ({describe(obj)})",
            methods={name: public_signature(fn) for name, fn in self.publish.items()},
        )

    def method(self, name: str) -> Callable:
        try:
            return self.publish[name]
        except KeyError:
            self.interface.bind(name, (), {})  # raises with the list of published methods
            raise


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
