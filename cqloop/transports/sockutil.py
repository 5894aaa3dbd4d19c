"""cqloop.transports.sockutil: socket set-up and clean-up shared by the transports.

Small policy helpers that streams, datagrams, servers and the sock_* methods all need,
each with asyncio's behaviour and messages: TCP_NODELAY, SO_REUSEPORT, refusing SSL
sockets, and the Unix socket files a server binds and removes.
"""

from __future__ import annotations

import _socket
import logging
import os
import socket
import stat
import sys
from typing import Any

__all__ = [
    "raw_family_and_type",
    "refuse_ssl_socket",
    "remove_stale_unix_socket",
    "remove_unix_socket_file",
    "set_nodelay",
    "set_reuseport",
]

logger = logging.getLogger("asyncio")


# socket.socket's family and type as the plain ints the C socket holds: the properties
# convert them to enum members, which cost each accepted connection four enum lookups
# between accept() and set_nodelay() (a third of the Python work of accepting one).
_raw_family = _socket.socket.family.__get__
_raw_type = _socket.socket.type.__get__
_TCP_FAMILIES = (socket.AF_INET, socket.AF_INET6)


def set_nodelay(sock: socket.socket) -> None:
    """Turn Nagle's algorithm off on a TCP socket, as asyncio does for its transports."""
    family, kind = raw_family_and_type(sock)
    if family in _TCP_FAMILIES and kind == socket.SOCK_STREAM:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def raw_family_and_type(sock: Any) -> tuple[int, int]:
    """The socket's family and type as plain ints (see above). A socket-like object that
    is not a socket.socket (gunicorn hands servers its own wrappers, which forward
    attributes) is asked through its properties."""
    if isinstance(sock, _socket.socket):
        return _raw_family(sock), _raw_type(sock)
    return int(sock.family), int(sock.type)


def set_reuseport(sock: socket.socket) -> None:
    """SO_REUSEPORT, or asyncio's ValueError where the platform lacks it."""
    if not hasattr(socket, "SO_REUSEPORT"):
        raise ValueError("reuse_port not supported by socket module")
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    except OSError:
        raise ValueError(
            "reuse_port not supported by socket module, SO_REUSEPORT defined but not implemented."
        ) from None


def refuse_ssl_socket(sock: Any) -> None:
    """An SSLSocket's recv/send are TLS records, not bytes: asyncio refuses it. If ssl was
    never imported, no socket can be one (so this module does not import ssl)."""
    ssl = sys.modules.get("ssl")
    if ssl is not None and isinstance(sock, ssl.SSLSocket):
        raise TypeError("Socket cannot be of type SSLSocket")


def remove_stale_unix_socket(path: Any) -> None:
    """Remove a socket file left at `path` by an earlier, now closed, socket."""
    try:
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.remove(path)
    except FileNotFoundError:
        pass
    except OSError as err:
        # The directory may allow creating a socket but not checking or removing one.
        logger.error("Unable to check or remove stale UNIX socket %r: %r", path, err)


def remove_unix_socket_file(path: Any, inode: int) -> None:
    """Remove a Unix server's socket file, unless something else replaced it since."""
    try:
        if os.stat(path).st_ino == inode:
            os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as err:
        logger.error("Unable to clean up listening UNIX socket %r: %r", path, err)
