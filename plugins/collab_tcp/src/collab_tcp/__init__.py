"""collab-tcp: run collab jobs as processes over mutually authenticated TLS.

``PocEnv`` runs a job as a server and one process per site on this machine; ``ProdEnv`` submits
to a long-running server (``collab server start``) that sites (``collab site start``) dial out to.
"""

from .envs import PocEnv, ProdEnv

__version__ = "0.1.0"

__all__ = ["PocEnv", "ProdEnv"]
