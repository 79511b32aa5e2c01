"""collab-sim: run a collab job in one process (SimEnv)."""

from .backend import InProcessBackend
from .env import SimEnv

__all__ = ["SimEnv", "InProcessBackend"]
