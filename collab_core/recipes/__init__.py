"""The standard recipes, built on :class:`collab_core.RecipeBase` like any third-party one:
``FedAvgRecipe``, ``CyclicRecipe``, ``SwarmRecipe``, ``SplitLearningRecipe``."""

from .common import MODEL_FILE, load_model, save_model, weighted_average
from .cyclic import CyclicRecipe
from .fedavg import FedAvgRecipe
from .split import SplitLearningRecipe
from .swarm import SwarmRecipe

__all__ = ["CyclicRecipe", "FedAvgRecipe", "MODEL_FILE", "SplitLearningRecipe", "SwarmRecipe", "load_model",
           "save_model", "weighted_average"]
