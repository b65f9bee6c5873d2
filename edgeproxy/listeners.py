"""Listening sockets: taken from socket activation or bound from ``[server] listen``, then ``tls_listen``.

The process that faces the operator binds them once, before it serves or starts workers; a worker inherits the
same sockets, so every worker accepts from one queue per address and a restarting worker refuses nothing.

Never: serves a connection (``edgeproxy.local`` does) or rebinds on reload (listen addresses need a restart).
"""

from __future__ import annotations

import socket
import ssl

from edgeproxy import systemd
from edgeproxy.config import Config

Listener = tuple[str, socket.socket]  # (scheme, listening socket)
BACKLOG = 4096


def bind_listeners(config: Config) -> list[Listener]:
    """Socket-activated sockets (plain HTTP) or the configured ``listen``; then ``tls_listen``."""
    plain = [sock for _name, sock in systemd.listen_fds()]
    plain = plain or [_bind(host, port) for host, port in config.server.listen]
    return [("http", sock) for sock in plain] + [("https", _bind(h, p)) for h, p in config.server.tls_listen]


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=BACKLOG)


def addresses(listeners: list[Listener]) -> list[str]:
    """``scheme://host:port`` of each listener, for logs and systemd's STATUS=."""
    return [f"{scheme}://{sock.getsockname()[0]}:{sock.getsockname()[1]}" for scheme, sock in listeners]


def server_ssl_context(cert: str, key: str, peer_ca: str | None = None) -> ssl.SSLContext:
    """The TLS listeners' context. ``peer_ca``: cluster peers show certificates it signed (``[cluster]`` mutual TLS):
    a certificate is asked for but optional (clients show none; a cluster request without one is refused at the
    exchange), as nginx's ``ssl_verify_client optional``."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    if peer_ca is not None:
        ctx.verify_mode = ssl.CERT_OPTIONAL
        ctx.load_verify_locations(peer_ca)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx
