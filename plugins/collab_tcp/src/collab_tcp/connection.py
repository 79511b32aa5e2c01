"""TLS connections: the handshake, on top of core's framed message channel
(:mod:`collab_core.connection`: chunks, heartbeats, liveness), which this module re-exports."""

from __future__ import annotations

import logging
import socket
import ssl
from typing import Any

from collab_core.connection import (  # noqa: F401  (re-exported for the rest of collab-tcp)
    CHUNK,
    MAX_CHUNK,
    PEER_LIMITS,
    SMALL,
    ConnectionClosed,
    Heartbeats,
)
from collab_core.connection import Connection as _Connection

log = logging.getLogger("collab.tcp")


class Connection(_Connection):
    """Core's connection, logging under ``collab.tcp``."""

    def __init__(self, *args: Any, logger: logging.Logger | None = None, **kwargs: Any):
        super().__init__(*args, logger=logger or log, **kwargs)


def handshake(sock: socket.socket, ctx: ssl.SSLContext, *, server_side: bool, server_hostname: str | None = None,
              timeout: float = 15.0) -> ssl.SSLSocket:
    """Wrap ``sock`` in TLS and complete the handshake within ``timeout`` seconds."""
    sock.settimeout(timeout)
    tls = ctx.wrap_socket(sock, server_side=server_side, server_hostname=server_hostname,
                          do_handshake_on_connect=False)
    # wrap_socket detaches ``sock``: from here on only closing ``tls`` closes the connection
    try:
        tls.do_handshake()
        tls.settimeout(None)
        tls.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except BaseException:
        tls.close()
        raise
    return tls
