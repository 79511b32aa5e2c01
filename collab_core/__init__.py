"""collab: federated learning as plain Python.

    from collab_core import collab, CollabRecipe

The server's algorithm is a ``@collab.main`` function that calls ``collab.clients.<method>(...)``;
each client site publishes methods with ``@collab.publish``. The same recipe runs in an in-process
simulation (collab-sim), as processes over TCP (collab-tcp), and in production.
"""

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
from .fl_model import FLModel
from .hookspecs import hookimpl
from .progress import report_round
from .recipe import CollabRecipe, JobSpec, RecipeBase
from .recipes import CyclicRecipe, FedAvgRecipe, SplitLearningRecipe, SwarmRecipe
from .registry import check_required_plugins, get_registry
from .run import Run, RunFailedError

__version__ = "0.1.0"

__all__ = [
    "CallOptions",
    "CallValidationError",
    "CollabCallError",
    "CollabError",
    "CollabRecipe",
    "CyclicRecipe",
    "FedAvgRecipe",
    "SplitLearningRecipe",
    "SwarmRecipe",
    "DuplicateComponentError",
    "ExportError",
    "FLModel",
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
    "hookimpl",
]
