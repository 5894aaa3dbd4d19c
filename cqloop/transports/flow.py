"""Write flow control shared by the Python transports (datagram.py, pipes.py).

The compiled stream transport has its own copy of the same rule in stream.pyx, where a
Python call would cost more than the rule itself.
"""

from __future__ import annotations

from typing import Any

__all__ = ["call_flow_control"]


def call_flow_control(transport: Any, name: str) -> None:
    """Call transport._protocol.pause_writing() or resume_writing(). An error in it is
    the protocol's: it goes to the loop's exception handler, as asyncio reports it, and
    never up into the transport's write path. SystemExit and KeyboardInterrupt pass."""
    protocol = transport._protocol
    try:
        getattr(protocol, name)()
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as exc:
        transport._loop.call_exception_handler(
            {
                "message": f"protocol.{name}() failed",
                "exception": exc,
                "transport": transport,
                "protocol": protocol,
            }
        )
