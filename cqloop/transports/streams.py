"""cqloop.transports.streams: TCP and Unix stream connections and servers.

StreamsMixin is a base of cqloop.loop.Loop.
"""

from __future__ import annotations

__all__ = ["StreamsMixin"]


class StreamsMixin:
    """create_connection, create_server, ... (being written)."""
