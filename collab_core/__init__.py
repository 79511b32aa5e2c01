"""collab: federated learning as plain Python."""

from .errors import (
    CollabError,
    DuplicateComponentError,
    MissingPluginsError,
    PluginError,
    UnknownComponentError,
)
from .hookspecs import hookimpl
from .registry import check_required_plugins, get_registry

__version__ = "0.1.0"

__all__ = [
    "CollabError",
    "DuplicateComponentError",
    "MissingPluginsError",
    "PluginError",
    "UnknownComponentError",
    "check_required_plugins",
    "get_registry",
    "hookimpl",
]
