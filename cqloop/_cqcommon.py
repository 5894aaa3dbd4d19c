"""What the cq socket's modules share: constants, defaults, options, the error builders.

Owns the constants of cqloop.socket (families, types, buffer sizes, DEFAULT_MAXERRS), the
module-wide defaults for new sockets (`_DEFAULTS`, set by cqloop.socket's setmode() and
friends), a socket's options (`_Options`), which operations' errors stick to which
channel, `_operation` and `_handled` (what public async methods of a socket do first
and last), and the small helpers that build errors (`_oserror`, `_timeout_error`,
`_as_oserror`, `_io_error`), check arguments and apply socket options. Imported by
cqloop/_cqsocket.py (the Socket), cqloop/_cqsetup.py (its connection set-up) and
cqloop/socket.py; it imports none of them.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import os
import socket as _socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cqloop._core.cqsock import SocketState, _Handled

MSG_NOSIGNAL = _socket.MSG_NOSIGNAL
AF_INET = _socket.AF_INET
AF_INET6 = _socket.AF_INET6
AF_UNIX = _socket.AF_UNIX
AF_UNSPEC = _socket.AF_UNSPEC
SOCK_STREAM = _socket.SOCK_STREAM
SOCK_DGRAM = _socket.SOCK_DGRAM

# Bytes asked of the kernel per recv: at least this, or the input buffer size if larger.
RECV_CHUNK_BYTES = 65536
# INPUT_HIGH_WATER_BYTES (cqsock.pyx): receiving stops when this much input is buffered
# and nobody reads it.
# cqueues' initial unchecked-error limit per channel (socket:setmaxerrs).
DEFAULT_MAXERRS = 100

# Operations whose errors stick to a channel until clearerr() (cqueues' `preserve`).
_STICKY_CHANNEL = {
    "read": "r",
    "lines": "r",
    "fill": "r",
    "unpack": "r",
    "recvfd": "r",
    "write": "w",
    "flush": "w",
    "pack": "w",
    "sendfd": "w",
}

ErrorHandler = Callable[[Any, str, OSError], Any]  # handler(socket, op, error)


# The socket's life cycle (new, connected, ready, listening, closed); the compiled half's.
_State = SocketState


@dataclass
class _Defaults:
    """Module-wide defaults for new sockets (socket.setmode() and friends)."""

    intext: bool = True
    outtext: bool = True
    outmode: str = "l"
    autoflush: bool = True
    pushback: bool = True
    inbufsiz: int = 4096
    outbufsiz: int = 4096
    inmaxline: int = 4096
    outmaxline: int = 4096
    timeout: float | None = None
    maxerrs: dict[str, int] = field(default_factory=lambda: {"r": DEFAULT_MAXERRS, "w": 0})
    onerror: ErrorHandler | None = None


_DEFAULTS = _Defaults()
_DEFAULTS.maxerrs["w"] = DEFAULT_MAXERRS


def _oserror(code: int, message: str) -> OSError:
    """OSError(code, message): Python picks the subclass (TimeoutError, ...)."""
    return OSError(code, message)


def _handled(method: Callable[..., Any]) -> Callable[..., Any]:
    """Make a public async method of a socket return what an onerror handler returned."""

    @functools.wraps(method)
    async def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await method(self, *args, **kwargs)
        except _Handled as handled:
            return handled.value

    return wrapper


def _operation(method: Callable[..., Any]) -> Callable[..., Any]:
    """_handled, for a method that starts with no events: cqueues clears what the socket
    waited for at the start of every operation but flush() (so events() says what this
    one waited for or found the kernel not ready for, "" when nothing)."""
    handled = _handled(method)

    @functools.wraps(method)
    async def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        self._events = ""
        return await handled(self, *args, **kwargs)

    return wrapper


@dataclass
class _Options:
    host: str | None = None
    port: int | str | None = None
    path: str | bytes | None = None
    family: int = AF_UNSPEC
    type: int = SOCK_STREAM
    nodelay: bool = False
    reuseaddr: bool = True
    reuseport: bool = False
    v6only: bool | None = None
    unlink: bool = False
    mode: int | None = None
    backlog: int = 128
    tls: bool = False
    context: ssl.SSLContext | None = None
    verify: bool = True
    sendname: bool | str = True
    resolver: Any = None


# -- helpers ---------------------------------------------------------------------------


def _channels_and_limit(which: str | int, limit: int | None) -> tuple[str, int | None]:
    # cqueues' setmaxerrs([which,] limit): a lone number is the limit for both channels.
    if isinstance(which, int):
        return ("rw", which)
    return (which, limit)


def _positive(value: int, what: str) -> int:
    value = int(value)
    if value <= 0:
        raise ValueError(f"{what} must be positive, not {value}")
    return value


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _timeout_error(op: str) -> TimeoutError:
    return TimeoutError(errno.ETIMEDOUT, f"socket:{op}: {os.strerror(errno.ETIMEDOUT)}")


def _as_oserror(exc: BaseException) -> OSError:
    if isinstance(exc, OSError) and not isinstance(exc, ssl.SSLError):
        return exc
    if isinstance(exc, ssl.SSLError):
        # Keep the SSLError itself (it is an OSError): the reason is in it.
        return exc
    return _oserror(errno.EIO, str(exc))


def _io_error(op: str, exc: BaseException) -> OSError:
    """A system call's error as this module's errors read: "socket:OP: reason", with the
    same errno (so the same OSError subclass: BrokenPipeError, ConnectionResetError...)
    and the original as its cause. TLS errors stay as they are."""
    if isinstance(exc, OSError) and not isinstance(exc, ssl.SSLError) and exc.errno:
        error = _oserror(exc.errno, f"socket:{op}: {os.strerror(exc.errno)}")
        error.__cause__ = exc
        return error
    return _as_oserror(exc)


def _fd_of(obj: Any) -> int:
    if isinstance(obj, int):
        return obj
    fileno = getattr(obj, "fileno", None)
    if fileno is None:
        raise TypeError(f"not a descriptor: {obj!r}")
    return int(fileno())


def _apply_options(sock: _socket.socket, opts: _Options, *, listening: bool) -> None:
    if sock.family in (AF_INET, AF_INET6):
        if listening and opts.reuseaddr:
            sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
        if opts.reuseport:
            sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEPORT, 1)
        if sock.type == SOCK_STREAM and opts.nodelay:
            sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        if sock.family == AF_INET6 and opts.v6only is not None:
            sock.setsockopt(_socket.IPPROTO_IPV6, _socket.IPV6_V6ONLY, int(opts.v6only))
