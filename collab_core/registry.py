"""The plugin registry: which backends, serializers, launchers, trackers, environments and commands
are installed, and which distribution provides each.

Plugins are found through the ``collab`` entry-point group, loaded once, lazily, on the first
lookup (:func:`get_registry`). Core's own defaults are registered by a built-in plugin
(:mod:`collab_core.builtin`) exactly like a third-party one.

Environment variables:

``COLLAB_DISABLE_PLUGINS=a,b``
    Do not load these plugins (entry-point name or distribution name).
``COLLAB_TRACE_PLUGINS=1``
    Log every hook call and every registered component (logger ``collab.plugins``, to stderr).
"""

from __future__ import annotations

import importlib.metadata as md
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import attrs
import pluggy
from packaging.requirements import InvalidRequirement, Requirement

from . import hookspecs
from .errors import DuplicateComponentError, MissingPluginsError, PluginError, UnknownComponentError

log = logging.getLogger("collab.plugins")

ENTRY_POINT_GROUP = "collab"
CORE_DISTRIBUTION = "collab-core"
BUILTIN_PLUGIN_NAME = "collab-core"

#: The kinds of component, in the order ``collab plugins`` shows them, with their hook.
KINDS: dict[str, str] = {
    "backend": "collab_register_backends",
    "serializer": "collab_register_serializers",
    "launcher": "collab_register_launchers",
    "tracker": "collab_register_trackers",
    "environment": "collab_register_environments",
    "recipe": "collab_register_recipes",
    "filter": "collab_register_filters",
    "command": "collab_register_commands",
}

#: Which distribution provides a component that is not installed, where we know it.
KNOWN_PROVIDERS: dict[tuple[str, str], str] = {
    ("environment", "sim"): "collab-sim",
    ("environment", "poc"): "collab-tcp",
    ("environment", "prod"): "collab-tcp",
    ("backend", "inproc"): "collab-sim",
    ("backend", "tcp"): "collab-tcp",
    ("launcher", "torchrun"): "collab-torchrun",
    ("launcher", "python"): "collab-torchrun",
    ("tracker", "tensorboard"): "collab-tracking[tensorboard]",
    ("tracker", "mlflow"): "collab-tracking[mlflow]",
    ("tracker", "wandb"): "collab-tracking[wandb]",
    ("serializer", "torch.Tensor"): "torch==2.13.0",
    ("command", "provision"): "collab-tcp",
    ("command", "server"): "collab-tcp",
    ("command", "site"): "collab-tcp",
    ("command", "submit"): "collab-tcp",
    ("command", "status"): "collab-tcp",
}
#: Which distribution provides the backend for (api, setting), where we know it.
KNOWN_BACKEND_PROVIDERS: dict[tuple[str, str], str] = {
    ("collab", "sim"): "collab-sim",
    ("collab", "poc"): "collab-tcp",
    ("collab", "prod"): "collab-tcp",
}


@attrs.frozen
class Command:
    """A ``collab`` subcommand, registered through ``collab_register_commands``."""

    name: str
    help: str
    add_arguments: Callable[[Any], None]
    run: Callable[[Any], int]


@attrs.frozen
class Component:
    """One registered component and where it came from."""

    kind: str
    name: str
    obj: Any
    plugin: str
    distribution: str
    version: str
    info: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class PluginInfo:
    """One loaded plugin: its distribution, version, module, hooks and what it registered."""

    name: str
    distribution: str
    version: str
    module: str
    hooks: tuple[str, ...]
    components: dict[str, list[str]]

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self, recurse=True)


def normalize_name(name: str) -> str:
    """Normalize a distribution or plugin name as PEP 503 does (``Collab_Sim`` -> ``collab-sim``)."""
    return re.sub(r"[-_.]+", "-", name).lower().strip()


def install_line(requirement: str) -> str:
    """The pip command that installs ``requirement``, quoted for a POSIX shell when needed."""
    return f"pip install '{requirement}'" if re.search(r"[\[\]<>=!~; ]", requirement) else f"pip install {requirement}"


def disabled_plugins(environ: dict[str, str] | None = None) -> set[str]:
    """The normalized plugin names listed in ``COLLAB_DISABLE_PLUGINS``."""
    raw = (environ if environ is not None else os.environ).get("COLLAB_DISABLE_PLUGINS", "")
    return {normalize_name(n) for n in raw.split(",") if n.strip()}


def new_plugin_manager() -> pluggy.PluginManager:
    """A plugin manager that knows collab's hook specs and nothing else."""
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    return pm


class Registry:
    """Every component the loaded plugins registered, by kind and name.

    Build one with :func:`build_registry`; most code uses the process-wide :func:`get_registry`.
    """

    def __init__(self, pm: pluggy.PluginManager, sources: dict[str, tuple[str, str]]):
        self.pm = pm
        self._sources = sources  # plugin name -> (distribution, version)
        self._components: dict[str, dict[str, Component]] = {kind: {} for kind in KINDS}
        self._trace = os.environ.get("COLLAB_TRACE_PLUGINS", "") not in ("", "0")
        for kind, hook_name in KINDS.items():
            hook = getattr(pm.hook, hook_name)
            for impl in hook.get_hookimpls():
                self._call(kind, hook_name, impl)

    # -- building ---------------------------------------------------------------------------------

    def _call(self, kind: str, hook_name: str, impl: Any) -> None:
        plugin = impl.plugin_name
        dist, version = self._sources.get(plugin, (plugin, "unknown"))
        if self._trace:
            log.warning("collab plugin trace: %s (%s) -> %s", plugin, dist, hook_name)

        def register(*args: Any, **kwargs: Any) -> None:
            name, obj, info = _parse_registration(kind, plugin, args, kwargs)
            self._add(Component(kind, name, obj, plugin, dist, version, info))

        try:
            impl.function(register=register)
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(
                f"plugin {plugin!r} (distribution {dist} {version}) failed in {hook_name}: "
                f"{type(exc).__name__}: {exc}. Fix or upgrade it, or disable it with "
                f"COLLAB_DISABLE_PLUGINS={plugin}."
            ) from exc

    def _add(self, comp: Component) -> None:
        table = self._components[comp.kind]
        if comp.name in table:
            first = table[comp.name]
            raise DuplicateComponentError(
                f"{comp.kind} {comp.name!r} is registered twice: by plugin {first.plugin!r} "
                f"(distribution {first.distribution} {first.version}) and by plugin "
                f"{comp.plugin!r} (distribution {comp.distribution} {comp.version}). Uninstall "
                f"one of them, or disable one with COLLAB_DISABLE_PLUGINS=<plugin name>."
            )
        if self._trace:
            log.warning("collab plugin trace: %s registered %s %r", comp.plugin, comp.kind, comp.name)
        table[comp.name] = comp

    # -- lookups ----------------------------------------------------------------------------------

    def names(self, kind: str) -> list[str]:
        """The names registered for ``kind``, sorted."""
        return sorted(self._table(kind))

    def components(self, kind: str) -> list[Component]:
        return [self._table(kind)[n] for n in self.names(kind)]

    def component(self, kind: str, name: str) -> Component:
        table = self._table(kind)
        try:
            return table[name]
        except KeyError:
            raise self._unknown(kind, name) from None

    def get(self, kind: str, name: str) -> Any:
        return self.component(kind, name).obj

    def backend(self, name: str) -> Any:
        return self.get("backend", name)

    def backend_for(self, api: str, setting: str) -> Component:
        """The backend that serves programming model ``api`` in environment ``setting``."""
        for comp in self.components("backend"):
            if api in comp.info["apis"] and setting in comp.info["settings"]:
                return comp
        served = [
            f"{c.name} (apis={list(c.info['apis'])}, settings={list(c.info['settings'])}, from {c.distribution})"
            for c in self.components("backend")
        ]
        provider = KNOWN_BACKEND_PROVIDERS.get((api, setting))
        hint = f" Install it with: {install_line(provider)}." if provider else ""
        raise UnknownComponentError(
            f"no installed backend serves api {api!r} in setting {setting!r}. Installed backends: "
            f"{', '.join(served) or 'none'}.{hint}",
            kind="backend",
            name=f"{api}/{setting}",
            available=self.names("backend"),
        )

    def serializer(self, name: str) -> Any:
        return self.get("serializer", name)

    def serializers(self) -> list[Any]:
        return [c.obj for c in self.components("serializer")]

    def launcher(self, name: str) -> Any:
        return self.get("launcher", name)

    def tracker(self, name: str) -> Any:
        return self.get("tracker", name)

    def environment(self, name: str) -> Any:
        return self.get("environment", name)

    def recipe(self, name: str) -> Any:
        return self.get("recipe", name)

    def filter(self, name: str) -> Any:
        """The factory of the registered call/result filter ``name`` (see collab_core.filters)."""
        return self.get("filter", name)

    def command(self, name: str) -> Command:
        return self.get("command", name)

    def plugins(self) -> list[PluginInfo]:
        """Every loaded plugin with its distribution, version, hooks and components."""
        out = []
        for name, plugin in self.pm.list_name_plugin():
            if plugin is None:  # blocked
                continue
            dist, version = self._sources.get(name, (name, "unknown"))
            hooks = sorted(h.name for h in self.pm.get_hookcallers(plugin) or [])
            comps = {
                kind: sorted(c.name for c in table.values() if c.plugin == name)
                for kind, table in self._components.items()
            }
            out.append(
                PluginInfo(
                    name=name,
                    distribution=dist,
                    version=version,
                    module=getattr(plugin, "__name__", type(plugin).__name__),
                    hooks=tuple(hooks),
                    components={k: v for k, v in comps.items() if v},
                )
            )
        return sorted(out, key=lambda p: (p.name != BUILTIN_PLUGIN_NAME, p.name))

    def _table(self, kind: str) -> dict[str, Component]:
        try:
            return self._components[kind]
        except KeyError:
            raise ValueError(f"unknown component kind {kind!r}; kinds are {', '.join(KINDS)}") from None

    def _unknown(self, kind: str, name: str) -> UnknownComponentError:
        available = self.names(kind)
        provider = KNOWN_PROVIDERS.get((kind, name))
        msg = f"no {kind} named {name!r} is installed. Available {kind}s: {', '.join(available) or 'none'}."
        if provider:
            msg += f" {name!r} is provided by {provider}: {install_line(provider)}"
            blocked = normalize_name(provider.split("[")[0]) in disabled_plugins()
            if blocked:
                msg += f" (it is disabled by COLLAB_DISABLE_PLUGINS={os.environ.get('COLLAB_DISABLE_PLUGINS')})"
            msg += "."
        else:
            msg += " Check the spelling, or install the plugin that provides it (see `collab plugins`)."
        return UnknownComponentError(msg, kind=kind, name=name, available=available)


def _parse_registration(kind: str, plugin: str, args: tuple, kwargs: dict) -> tuple[str, Any, dict]:
    """Validate what a plugin passed to ``register`` and return (name, object, extra info)."""
    where = f"plugin {plugin!r} registering a {kind}"
    if kind == "serializer":
        if len(args) != 1 or kwargs:
            raise PluginError(f"{where}: call register(serializer) with one Serializer")
        obj = args[0]
        name = getattr(obj, "name", None)
        if not isinstance(name, str) or not name:
            raise PluginError(f"{where}: {obj!r} has no string 'name'; pass a collab_core.wire.Serializer")
        return name, obj, {}
    if kind == "command":
        if len(args) != 1 or kwargs or not isinstance(args[0], Command):
            raise PluginError(f"{where}: call register(Command(name, help, add_arguments, run))")
        return args[0].name, args[0], {}
    if len(args) != 2:
        raise PluginError(f"{where}: call register(name, factory{', apis=..., settings=...' if kind == 'backend' else ''})")
    name, obj = args
    if not isinstance(name, str) or not name:
        raise PluginError(f"{where}: the name must be a non-empty string, got {name!r}")
    if not callable(obj):
        raise PluginError(f"{where} {name!r}: the factory must be callable, got {obj!r}")
    if kind == "recipe":
        from .recipe import RecipeBase

        if not (isinstance(obj, type) and issubclass(obj, RecipeBase)):
            raise PluginError(f"{where} {name!r}: a recipe must be a subclass of collab_core.RecipeBase, got {obj!r}")
    info: dict[str, Any] = {}
    if kind == "backend":
        unknown = set(kwargs) - {"apis", "settings"}
        if unknown:
            raise PluginError(f"{where} {name!r}: unknown keyword(s) {sorted(unknown)}; use apis=, settings=")
        info["apis"] = tuple(kwargs.get("apis", ("collab",)))
        info["settings"] = tuple(kwargs.get("settings", ("sim",)))
    elif kwargs:
        raise PluginError(f"{where} {name!r}: register takes no keywords for a {kind}")
    return name, obj, info


# -- loading ----------------------------------------------------------------------------------------


def _load_entry_points(
    pm: pluggy.PluginManager, sources: dict[str, tuple[str, str]], disabled: set[str]
) -> None:
    matched: set[str] = set()
    seen: dict[str, str] = {}
    for dist in md.distributions():
        dist_name = dist.metadata["Name"] or "unknown"
        for ep in dist.entry_points:
            if ep.group != ENTRY_POINT_GROUP:
                continue
            keys = {normalize_name(ep.name), normalize_name(dist_name)}
            if keys & disabled:
                matched |= keys & disabled
                pm.set_blocked(ep.name)
                log.info("plugin %r from %s is disabled by COLLAB_DISABLE_PLUGINS", ep.name, dist_name)
                continue
            if ep.name in seen:
                if seen[ep.name] == dist_name:
                    continue  # the same distribution found twice on sys.path
                raise DuplicateComponentError(
                    f"two distributions define the collab plugin {ep.name!r}: {seen[ep.name]} and "
                    f"{dist_name}. Uninstall one of them."
                )
            try:
                plugin = ep.load()
            except Exception as exc:
                raise PluginError(
                    f"the collab plugin {ep.name!r} of distribution {dist_name} {dist.version} "
                    f"(entry point {ep.value!r} in group {ENTRY_POINT_GROUP!r}) failed to import: "
                    f"{type(exc).__name__}: {exc}. Reinstall or upgrade it "
                    f"(pip install --force-reinstall {dist_name}), or disable it with "
                    f"COLLAB_DISABLE_PLUGINS={ep.name}."
                ) from exc
            seen[ep.name] = dist_name
            pm.register(plugin, name=ep.name)
            sources[ep.name] = (dist_name, dist.version)
    unmatched = disabled - matched
    if unmatched:
        log.warning(
            "COLLAB_DISABLE_PLUGINS names %s, which no installed distribution provides",
            ", ".join(sorted(unmatched)),
        )


def build_registry(
    plugins: Iterable[Any] = (),
    *,
    entry_points: bool = True,
    builtin: bool = True,
    disabled: Iterable[str] | None = None,
) -> Registry:
    """Build a registry from scratch.

    ``plugins`` are extra plugin objects (modules, classes or instances with hookimpls), registered
    under their ``__name__`` or class name with distribution "local". ``entry_points=False``
    skips installed distributions (useful in tests); ``disabled`` overrides
    ``COLLAB_DISABLE_PLUGINS``.
    """
    pm = new_plugin_manager()
    sources: dict[str, tuple[str, str]] = {}
    disabled_set = disabled_plugins() if disabled is None else {normalize_name(d) for d in disabled}
    if BUILTIN_PLUGIN_NAME in disabled_set:
        raise PluginError(
            f"{BUILTIN_PLUGIN_NAME}'s built-in plugin cannot be disabled; remove it from COLLAB_DISABLE_PLUGINS"
        )
    if builtin:
        from . import builtin as builtin_plugin

        pm.register(builtin_plugin, name=BUILTIN_PLUGIN_NAME)
        sources[BUILTIN_PLUGIN_NAME] = (CORE_DISTRIBUTION, _version(CORE_DISTRIBUTION))
    for plugin in plugins:
        name = getattr(plugin, "__name__", None) or type(plugin).__name__
        if normalize_name(name) in disabled_set:
            continue
        pm.register(plugin, name=name)
        sources[name] = ("local", "-")
    if entry_points:
        _load_entry_points(pm, sources, disabled_set)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        name = pm.get_name(exc.plugin) if exc.plugin is not None else "?"
        dist = sources.get(name or "", ("?", "?"))[0]
        raise PluginError(
            f"plugin {name!r} (distribution {dist}) defines a hook that collab does not know: {exc}. "
            f"Valid hooks are: {', '.join(KINDS.values())}."
        ) from exc
    return Registry(pm, sources)


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "unknown"


_lock = threading.Lock()
_registry: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, built on first use from the installed distributions."""
    global _registry
    reg = _registry
    if reg is None:
        with _lock:
            if _registry is None:
                _registry = build_registry()
            reg = _registry
    return reg


def reset_registry() -> None:
    """Forget the process-wide registry; the next :func:`get_registry` reloads every plugin."""
    global _registry
    with _lock:
        _registry = None


@contextmanager
def use_registry(registry: Registry) -> Iterator[Registry]:
    """Make ``registry`` the process-wide one for the duration of a ``with`` block (tests)."""
    global _registry
    with _lock:
        previous, _registry = _registry, registry
    try:
        yield registry
    finally:
        with _lock:
            _registry = previous


def check_required_plugins(requirements: Iterable[str]) -> None:
    """Check that every requirement (a PEP 508 string such as ``"collab-torchrun>=0.1"``) is met.

    Raises one :class:`MissingPluginsError` listing every missing, too old or disabled
    distribution with the line that installs it.
    """
    problems: list[str] = []
    disabled = disabled_plugins()
    for text in requirements:
        try:
            req = Requirement(text)
        except InvalidRequirement as exc:
            raise PluginError(
                f"required plugin {text!r} is not a valid PEP 508 requirement ({exc}); write it like 'collab-torchrun>=0.1'"
            ) from None
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            installed = md.version(req.name)
        except md.PackageNotFoundError:
            problems.append(f"{req} is not installed: {install_line(str(req))}")
            continue
        if req.specifier and not req.specifier.contains(installed, prereleases=True):
            problems.append(f"{req} is required but {req.name} {installed} is installed: {install_line(str(req))}")
            continue
        if normalize_name(req.name) in disabled:
            problems.append(
                f"{req.name} {installed} is installed but disabled by COLLAB_DISABLE_PLUGINS; remove it from that variable"
            )
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise MissingPluginsError(
            f"this recipe needs plugins that are not available:\n{lines}", problems=problems
        )


__all__ = [
    "Command",
    "Component",
    "PluginInfo",
    "Registry",
    "build_registry",
    "check_required_plugins",
    "get_registry",
    "reset_registry",
    "use_registry",
    "normalize_name",
    "install_line",
    "KINDS",
    "ENTRY_POINT_GROUP",
]
