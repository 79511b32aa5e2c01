"""App properties and per-site configuration: the values a recipe gives each site's code.

``recipe.set_server_prop(name, value)`` and ``recipe.set_client_prop(name, value)`` set a property
of the server app or of every client app; ``recipe.set_per_site_config({"site-1": {...}})`` sets
values for one site only, which override the client properties on that site. Code reads them with
``collab.get_app_prop(name, default)``. Everything here is JSON data: it travels in ``job.json``
and in the server's deploy message to each site.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from .errors import RecipeError

#: the keys of a job config (and of :attr:`JobRuntime.props`) that hold properties
PROP_KEYS = ("server_props", "client_props", "per_site_config")
#: how deep a property value may nest (job.json is hostile input)
MAX_DEPTH = 32

log = logging.getLogger("collab.props")


def empty_props() -> dict[str, dict[str, Any]]:
    return {key: {} for key in PROP_KEYS}


def check_prop_name(name: object, where: str = "property") -> str:
    if not isinstance(name, str) or not name:
        raise RecipeError(f"{where} names are non-empty strings, got {name!r}")
    return name


def check_json_value(value: object, where: str) -> Any:
    """Raise RecipeError unless ``value`` is JSON data (None, bool, int, finite float, str, and
    lists and str-keyed dicts of those), so it can go into job.json and over the wire as it is."""
    stack: list[tuple[object, str, int]] = [(value, where, 0)]
    while stack:
        item, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise RecipeError(f"{path} nests deeper than {MAX_DEPTH} levels")
        if item is None or isinstance(item, (bool, int, str)):
            continue
        if isinstance(item, float):
            if not math.isfinite(item):
                raise RecipeError(f"{path} is {item!r}; JSON has no NaN or infinity")
            continue
        if isinstance(item, (list, tuple)):
            stack.extend((v, f"{path}[{i}]", depth + 1) for i, v in enumerate(item))
            continue
        if isinstance(item, dict):
            for k, v in item.items():
                if not isinstance(k, str):
                    raise RecipeError(f"{path} has the key {k!r}; JSON object keys are strings")
                stack.append((v, f"{path}[{k!r}]", depth + 1))
            continue
        raise RecipeError(
            f"{path} is a {type(item).__module__}.{type(item).__qualname__}; properties and per-site "
            f"config are JSON data (None, bool, int, float, str, list, dict with str keys). Pass a "
            f"path or a name and build the object in the site's code"
        )
    return value


def check_per_site_config(config: object, where: str = "per-site config") -> dict[str, dict[str, Any]]:
    """A dict of dicts keyed by site name, with JSON values; a RecipeError names what is wrong."""
    if not isinstance(config, dict):
        raise RecipeError(f"{where} must be a dict of dicts keyed by site name, e.g. "
                          f"{{'site-1': {{'data_path': '/data/1'}}}}; got a {type(config).__name__}")
    out: dict[str, dict[str, Any]] = {}
    for site, values in config.items():
        if not isinstance(site, str) or not site:
            raise RecipeError(f"{where}: site names are non-empty strings, got {site!r}")
        if site == "server":
            raise RecipeError(f"{where} names 'server'; per-site config is for client sites. Use "
                              f"set_server_prop(name, value) for the server")
        if not isinstance(values, dict):
            raise RecipeError(f"{where} for {site!r} must be a dict of name: value, got a {type(values).__name__}")
        for name, value in values.items():
            check_prop_name(name, f"{where} for {site!r}: property")
            check_json_value(value, f"{where}[{site!r}][{name!r}]")
        out[site] = dict(values)
    return out


def validate_props_config(config: dict[str, Any], file: str) -> dict[str, dict[str, Any]]:
    """The properties of a job config (``job.json``), checked; missing keys (jobs exported before
    properties existed) are empty."""
    props = empty_props()
    for key in ("server_props", "client_props"):
        value = config.get(key)
        if value is None:
            continue
        if not isinstance(value, dict):
            raise RecipeError(f"{file}: {key} must be an object of name: value")
        for name, v in value.items():
            check_prop_name(name, f"{file}: {key}")
            check_json_value(v, f"{file}: {key}[{name!r}]")
        props[key] = dict(value)
    if config.get("per_site_config") is not None:
        props["per_site_config"] = check_per_site_config(config["per_site_config"], f"{file}: per_site_config")
    return props


def site_props(props: dict[str, Any], site: str, is_server: bool) -> dict[str, Any]:
    """The app properties one site starts with: the server's, or the clients' overridden by the
    site's own per-site config."""
    if is_server:
        return dict(props.get("server_props") or {})
    return {**(props.get("client_props") or {}), **((props.get("per_site_config") or {}).get(site) or {})}


def unknown_sites(props: dict[str, Any], sites: list[str]) -> list[str]:
    return sorted(set(props.get("per_site_config") or {}) - set(sites))


def warn_unknown_sites(props: dict[str, Any], sites: list[str], job_name: str,
                       logger: logging.Logger | None = None) -> list[str]:
    """Log a warning naming per-site config entries for sites that are not in this run (a run may
    use fewer sites than the config describes, so this is not an error; a typo shows here)."""
    unknown = unknown_sites(props, sites)
    if unknown:
        (logger or log).warning(
            "job %s: the per-site config names %s, not in this run (its sites: %s); those entries are "
            "not used. Check the site names, or run with those sites",
            job_name, ", ".join(unknown), ", ".join(sites),
        )
    return unknown
