"""collab-sim's plugin: registers the ``sim`` environment."""

from collab_core import hookimpl


@hookimpl
def collab_register_environments(register):
    from .env import SimEnv

    register("sim", SimEnv)
