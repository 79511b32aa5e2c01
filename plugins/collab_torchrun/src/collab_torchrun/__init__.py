"""collab-torchrun: run a site's client code in a worker group (torchrun / DDP, python, or a
custom launcher). Recipes use it through ``CollabRecipe(..., launch_external_process=True,
command="torchrun --nproc_per_node=2")``."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["SubprocessClient", "WorkerError", "WorkerGroup"]


def __getattr__(name: str) -> Any:  # lazy: `python -m collab_torchrun.worker` imports nothing else
    if name == "SubprocessClient":
        from .client import SubprocessClient

        return SubprocessClient
    if name in ("WorkerError", "WorkerGroup"):
        from . import group

        return getattr(group, name)
    raise AttributeError(name)
