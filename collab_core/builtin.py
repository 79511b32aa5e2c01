"""Core's own defaults, registered as a plugin like any other (plugin name ``collab-core``)."""

from __future__ import annotations

from .hookspecs import hookimpl


@hookimpl
def collab_register_serializers(register):
    from .wire.builtin import builtin_serializers

    for serializer in builtin_serializers():
        register(serializer)


@hookimpl
def collab_register_recipes(register):
    from .recipes import CyclicRecipe, FedAvgRecipe, SplitLearningRecipe, SwarmRecipe

    register("fedavg", FedAvgRecipe)
    register("cyclic", CyclicRecipe)
    register("swarm", SwarmRecipe)
    register("split-learning", SplitLearningRecipe)


@hookimpl
def collab_register_filters(register):
    from .filters import ExcludeVars, IncludeVars

    register("exclude_vars", ExcludeVars)
    register("include_vars", IncludeVars)


@hookimpl
def collab_register_commands(register):
    from .cli import core_commands

    for command in core_commands():
        register(command)
