"""cqloop._netargs: checks of the network arguments cqloop.socket and cqloop.dns share
(ports, type names in messages). Standard library only, so cqloop.socket checks its
arguments without importing pycares (which cqloop.dns needs)."""

from __future__ import annotations

import socket

__all__ = ["MAX_PORT", "port_number", "type_name"]

MAX_PORT = 0xFFFF


def port_number(port: int | str | None, what: str = "port") -> int:
    """port as a number: an int, a numeric string or a TCP service name; None is 0. A
    float, a bool or bytes is refused (int() would truncate 80.5 to 80 silently)."""
    if port is None:
        return 0
    if isinstance(port, str):
        if port.isascii() and port.isdigit():
            number = int(port)
        else:
            try:
                return socket.getservbyname(port, "tcp")
            except OSError:
                raise ValueError(
                    f"{what} must be a number 0-{MAX_PORT} or a TCP service name; "
                    f"no service is named {port!r}"
                ) from None
    elif isinstance(port, int) and not isinstance(port, bool):
        number = port
    else:
        raise TypeError(
            f"{what} must be an int or a str (a number or a TCP service name), "
            f"not {type_name(port)} ({port!r})"
        )
    if not 0 <= number <= MAX_PORT:
        raise ValueError(f"{what} out of range 0-{MAX_PORT}: {port!r}")
    return number


def type_name(value: object) -> str:
    """The name of value's type, for messages ("float", "bytes")."""
    return type(value).__name__
