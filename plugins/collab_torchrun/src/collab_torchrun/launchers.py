"""Launchers: how a site starts its worker group. ``command`` is split like a shell would; its
first word picks a registered launcher (``torchrun``, ``python``); any other command is used as a
prefix (``srun -n 2`` -> ``srun -n 2 python -m collab_torchrun.worker``)."""

from __future__ import annotations

import shlex
import sys

WORKER_MODULE = "collab_torchrun.worker"


class Launcher:
    """Builds the argv that starts the worker group."""

    def __init__(self, words: list[str]):
        self.words = words

    def argv(self) -> list[str]:
        raise NotImplementedError


class PythonLauncher(Launcher):
    """``python [options]``: one worker process (rank 0), this interpreter."""

    def argv(self) -> list[str]:
        return [sys.executable, *self.words[1:], "-m", WORKER_MODULE]


class TorchrunLauncher(Launcher):
    """``torchrun --nproc_per_node=N ...``: one worker per rank, through torch.distributed.run.

    Unless the command sets a rendezvous or master address itself, ``--standalone`` is added: the
    rendezvous then takes a free port, so two sites or two jobs on one host never collide."""

    def argv(self) -> list[str]:
        args = self.words[1:]
        chosen = " ".join(args)
        if not any(k in chosen for k in ("--standalone", "--rdzv", "--master-port", "--master_port",
                                           "--master-addr", "--master_addr", "--nnodes")):
            args = ["--standalone", *args]
        return [sys.executable, "-m", "torch.distributed.run", *args, "-m", WORKER_MODULE]


class PrefixLauncher(Launcher):
    """Any other command: used as a prefix of ``python -m collab_torchrun.worker``."""

    def argv(self) -> list[str]:
        return [*self.words, sys.executable, "-m", WORKER_MODULE]


def make_launcher(command: str | list[str]) -> Launcher:
    """The launcher for ``command``: a registered one by its first word, else a prefix."""
    from collab_core.errors import RecipeError
    from collab_core.registry import get_registry

    words = shlex.split(command) if isinstance(command, str) else list(command)
    if not words:
        raise RecipeError("command is empty; use e.g. 'torchrun --nproc_per_node=2' or 'python'")
    registry = get_registry()
    name = words[0].rsplit("/", 1)[-1]
    if name.startswith("python"):
        name = "python"
    if name in registry.names("launcher"):
        return registry.launcher(name)(words)
    return PrefixLauncher(words)
