"""collab-tracking's plugin: the ``tensorboard``, ``mlflow`` and ``wandb`` receivers."""

from collab_core import hookimpl


@hookimpl
def collab_register_trackers(register):
    from .receivers import RECEIVERS

    for name, receiver in RECEIVERS.items():
        register(name, receiver)
