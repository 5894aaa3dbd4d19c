"""cqloop.transports.datagram: UDP and Unix datagram transports, create_datagram_endpoint.

DatagramMixin is a base of cqloop.loop.Loop.
"""

from __future__ import annotations

__all__ = ["DatagramMixin"]


class DatagramMixin:
    """create_datagram_endpoint (being written)."""
