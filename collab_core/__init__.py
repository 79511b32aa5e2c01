"""collab: federated learning as plain Python.

    from collab_core import collab, CollabRecipe

The server's algorithm is a ``@collab.main`` function that calls ``collab.clients.<method>(...)``;
each client site publishes methods with ``@collab.publish``. The same recipe runs in an in-process
simulation (collab-sim), as processes over TCP (collab-tcp), and in production.
"""

import logging as _logging
import sys as _sys

from .api import collab
from .calls import CallOptions, Group, GroupResult, Proxy
from .errors import (
    CallValidationError,
    CollabCallError,
    CollabError,
    DuplicateComponentError,
    ExportError,
    GroupCallError,
    MissingPluginsError,
    PluginError,
    RecipeError,
    UnknownComponentError,
)
from .events import EventHandlerError
from .filters import FilterContext, FilterError
from .fl_model import FLModel
from .hookspecs import hookimpl
from .progress import report_round
from .recipe import CollabRecipe, JobSpec, RecipeBase
from .recipes import CyclicRecipe, FedAvgRecipe, SplitLearningRecipe, SwarmRecipe
from .registry import check_required_plugins, get_registry
from .run import Run, RunFailedError

__version__ = "0.1.0"


def simple_logging(level: int | str = _logging.INFO) -> _logging.Handler:
    """Show log records at ``level`` and above on stderr, in one call (as NVFlare's
    ``collab.simple_logging``): ``simple_logging()`` at the top of a script. Each line carries the
    time, level, site (``[site-1]``, ``[server]``; ``[-]`` outside a job) and logger name. Calling it
    again changes the level instead of adding a second handler. Returns the handler."""
    from .logs import FORMAT, SiteFilter

    if isinstance(level, str):
        named = _logging.getLevelName(level.upper())
        if not isinstance(named, int):
            raise ValueError(f"simple_logging: unknown level {level!r}; use e.g. 'INFO', 'DEBUG' or logging.INFO")
        level = named
    if not isinstance(level, int) or isinstance(level, bool):
        raise TypeError(f"simple_logging: level must be a logging level such as logging.INFO, got {level!r}")
    root = _logging.getLogger()
    handler = next((h for h in root.handlers if getattr(h, "_collab_simple", False)), None)
    if handler is None:
        handler = _logging.StreamHandler(_sys.stderr)
        handler._collab_simple = True  # type: ignore[attr-defined]
        handler.addFilter(SiteFilter())
        handler.setFormatter(_logging.Formatter(FORMAT))
        root.addHandler(handler)
    handler.setLevel(level)
    root.setLevel(level)
    return handler

__all__ = [
    "CallOptions",
    "CallValidationError",
    "CollabCallError",
    "CollabError",
    "CollabRecipe",
    "CyclicRecipe",
    "EventHandlerError",
    "FedAvgRecipe",
    "SplitLearningRecipe",
    "SwarmRecipe",
    "DuplicateComponentError",
    "ExportError",
    "FLModel",
    "FilterContext",
    "FilterError",
    "Group",
    "GroupCallError",
    "GroupResult",
    "JobSpec",
    "MissingPluginsError",
    "PluginError",
    "Proxy",
    "RecipeBase",
    "RecipeError",
    "Run",
    "RunFailedError",
    "UnknownComponentError",
    "check_required_plugins",
    "collab",
    "get_registry",
    "report_round",
    "simple_logging",
    "hookimpl",
]
