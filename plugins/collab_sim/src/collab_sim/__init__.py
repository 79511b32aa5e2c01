"""collab-sim: run a collab job in one process (SimEnv)."""

from .backend import InProcessBackend
from .env import SimEnv
from .fox import FoxSimulator

__version__ = "0.1.0"

__all__ = ["SimEnv", "InProcessBackend", "FoxSimulator"]
