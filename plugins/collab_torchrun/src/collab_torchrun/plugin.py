"""collab-torchrun's plugin: the ``torchrun`` and ``python`` launchers."""

from collab_core import hookimpl


@hookimpl
def collab_register_launchers(register):
    from .launchers import PythonLauncher, TorchrunLauncher

    register("torchrun", TorchrunLauncher)
    register("python", PythonLauncher)
