"""collab-sim's plugin: the ``sim`` environment and the in-process ``inproc`` backend."""

from collab_core import hookimpl


@hookimpl
def collab_register_environments(register):
    from .env import SimEnv

    register("sim", SimEnv)


@hookimpl
def collab_register_backends(register):
    from .backend import InProcessBackend

    register("inproc", InProcessBackend, apis=("collab",), settings=("sim",))
