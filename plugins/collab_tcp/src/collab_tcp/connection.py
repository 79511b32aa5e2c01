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


def dial_server(kit: Any, host: str, port: int, timeout: float = 15.0) -> tuple[ssl.SSLSocket, str]:
    """Connect to the server with ``kit``'s certificate and check that the peer is the project's
    server; return the TLS socket and the server's name. Raises OSError, ssl.SSLError or AuthError."""
    from .kit import AuthError, peer_identity

    sock = socket.create_connection((host, port), timeout=timeout)
    tls = None
    try:
        tls = handshake(sock, kit.client_context(), server_side=False, server_hostname=kit.server_host, timeout=timeout)
        name, role = peer_identity(tls, kit.project)
    except BaseException:
        (tls or sock).close()  # after wrap_socket, sock is detached: close the TLS socket
        raise
    if role != "server":
        tls.close()
        raise AuthError(f"the peer at {host}:{port} presents a {role} certificate ({name}), not the server's")
    return tls, name
