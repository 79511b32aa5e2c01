"""Hook specifications: the extension points of collab.

A plugin is a module (or any object) with functions marked ``@collab_core.hookimpl`` whose names
match the specs below. It is found through the ``collab`` entry-point group of its distribution::

    # pyproject.toml of a plugin distribution
    [project.entry-points.collab]
    my-plugin = "my_plugin.plugin"

Every hook takes one argument, ``register``: a callback the plugin calls once per component it
provides. The registry (:mod:`collab_core.registry`) records which distribution registered each
component and rejects duplicate names, so a plugin never overwrites another one silently.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

PROJECT_NAME = "collab"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

#: ``register(name, factory, *, apis=("collab",), settings=("sim",))``
RegisterBackend = Callable[..., None]
#: ``register(serializer)`` -- a :class:`collab_core.wire.Serializer`
RegisterSerializer = Callable[[Any], None]
#: ``register(name, factory)``
RegisterLauncher = Callable[[str, Callable[..., Any]], None]
#: ``register(name, factory)``
RegisterTracker = Callable[[str, Callable[..., Any]], None]
#: ``register(name, factory)``
RegisterEnvironment = Callable[[str, Callable[..., Any]], None]
#: ``register(name, recipe_class)``
RegisterRecipe = Callable[[str, type], None]
#: ``register(name, factory)``
RegisterFilter = Callable[[str, Callable[..., Any]], None]
#: ``register(command)`` -- a :class:`collab_core.registry.Command`
RegisterCommand = Callable[[Any], None]


@hookspec
def collab_register_backends(register: RegisterBackend) -> None:
    """Register backends: the component that delivers one call to one site.

    Call ``register(name, factory, apis=("collab",), settings=("sim",))``. ``factory`` builds a
    backend for a job; ``apis`` names the programming models it serves (a recipe's
    ``RecipeBase.api``) and ``settings`` the environments it serves ("sim", "poc", "prod").
    Environments look a backend up with ``registry.backend_for(api, setting)``.

    Example::

        @hookimpl
        def collab_register_backends(register):
            register("inproc", InProcessBackend, apis=("collab",), settings=("sim",))
    """


@hookspec
def collab_register_serializers(register: RegisterSerializer) -> None:
    """Register wire serializers for types beyond the msgpack builtins.

    Call ``register(serializer)`` with a :class:`collab_core.wire.Serializer`. Its ``name`` is the
    tag written on the wire; ``type_names`` lists the fully qualified names of the types it
    encodes, so the wire format matches them without importing the library that defines them.

    Example::

        @hookimpl
        def collab_register_serializers(register):
            register(Serializer(name="mylib.Point", type_names=("mylib.Point",),
                                encode=lambda p, ctx: [p.x, p.y],
                                decode=lambda data, ctx: Point(*data)))
    """


@hookspec
def collab_register_launchers(register: RegisterLauncher) -> None:
    """Register launchers: what starts a site's worker subprocess (``torchrun``, ``python``, ...).

    Call ``register(name, factory)``; ``name`` is the first word of a recipe's ``command``.

    Example::

        @hookimpl
        def collab_register_launchers(register):
            register("srun", SrunLauncher)
    """


@hookspec
def collab_register_trackers(register: RegisterTracker) -> None:
    """Register tracking receivers: where the server writes metrics (TensorBoard, MLflow, ...).

    Call ``register(name, factory)``; ``name`` is what a recipe lists in ``tracking=[...]``.

    Example::

        @hookimpl
        def collab_register_trackers(register):
            register("csv", CsvReceiver)
    """


@hookspec
def collab_register_environments(register: RegisterEnvironment) -> None:
    """Register execution environments: where a recipe runs (``sim``, ``poc``, ``prod``).

    Call ``register(name, factory)``; ``factory(**options)`` returns the environment, e.g. the
    ``SimEnv`` class. ``collab run JOB --env NAME`` looks environments up by this name.

    Example::

        @hookimpl
        def collab_register_environments(register):
            register("sim", SimEnv)
    """


@hookspec
def collab_register_recipes(register: RegisterRecipe) -> None:
    """Register named recipes: subclasses of :class:`collab_core.RecipeBase` that end users run
    without knowing the Collab API (``collab recipes`` lists them).

    Call ``register(name, recipe_class)``.

    Example::

        @hookimpl
        def collab_register_recipes(register):
            register("split-learning", SplitLearningRecipe)
    """


@hookspec
def collab_register_filters(register: RegisterFilter) -> None:
    """Register call and result filters that recipes add by name (:mod:`collab_core.filters`).

    Call ``register(name, factory)``; ``factory(**options)`` returns a filter object, one on each
    site that runs it: an object with ``@collab.call_filter`` / ``@collab.result_filter`` methods
    (or their ``in_`` / ``out_`` forms). A recipe adds it with
    ``recipe.add_client_output_filter("name", options={...})``; the options are JSON data, so the
    filter travels in the job folder by name.

    Example::

        @hookimpl
        def collab_register_filters(register):
            register("round-floats", RoundFloats)   # RoundFloats(digits=3)
    """


@hookspec
def collab_register_commands(register: RegisterCommand) -> None:
    """Register subcommands of the ``collab`` command line.

    Call ``register(Command(name, help, add_arguments, run))`` with a
    :class:`collab_core.registry.Command`: ``add_arguments(parser)`` declares the options on an
    ``argparse`` sub-parser and ``run(args) -> int`` executes the command and returns its exit code.

    Example::

        @hookimpl
        def collab_register_commands(register):
            register(Command("hello", "say hello", lambda p: None, lambda args: print("hi") or 0))
    """
