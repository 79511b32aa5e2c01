"""collab-torchrun: run a site's client code in a worker group (torchrun / DDP, python, or a custom launcher)."""

from .client import SubprocessClient
from .group import WorkerError, WorkerGroup

__all__ = ["SubprocessClient", "WorkerError", "WorkerGroup"]
