"""cqloop.transports.sockops: the loop's sock_* methods, getaddrinfo and getnameinfo.

SockOpsMixin is a base of cqloop.loop.Loop; its methods use only the loop's public
add_reader/add_writer API and its executor.
"""

from __future__ import annotations

__all__ = ["SockOpsMixin"]


class SockOpsMixin:
    """sock_recv ... sock_sendfile, getaddrinfo, getnameinfo (being written)."""
