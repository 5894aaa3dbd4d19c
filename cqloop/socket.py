"""cqloop.socket: cqueues' buffered sockets, awaitable on any asyncio loop.

    from cqloop import socket
    s = socket.connect("example.org", 443, tls=True)   # usable at once
    await s.write(b"GET / HTTP/1.0\\r\\nHost: example.org\\r\\n\\r\\n")
    status = await s.read("*l")
    async for header in s.lines("*h"): ...

The public module: connect(), listen(), pair(), dup(), fdopen(), socket.type(), and the
defaults for new sockets (setmode, setvbuf, setbufsiz, setmaxline, settimeout,
setmaxerrs, onerror). The Socket object itself, with lazy set-up (name lookup through
cqloop.dns, connect and the TLS handshake happen as part of the first I/O, as in
cqueues), every cqueues read format, cqueues' output modes, TLS, timeouts and sticky
errors, is in cqloop/_cqsocket.py. A Socket works on any asyncio loop (cqloop, stock,
uvloop) and is pollable (`pollfd()`, `events()`, `timeout()`).

Differences from cqueues, on purpose (also in docs/design.md):
- TLS certificates are verified by default (cqueues does not verify): pass `verify=False`
  to connect() to opt out, or your own ssl.SSLContext.
- Errors are raised, never returned: every error is an OSError subclass carrying its errno
  (TimeoutError, BrokenPipeError, ConnectionResetError, ...). cqueues returns EPIPE and
  ETIMEDOUT instead of throwing them; an onerror handler that returns a value gets that
  behaviour back (the value is returned to the caller), up to setmaxerrs() times in a row.
- Errors are sticky as in cqueues: after an error on the input (read, lines, fill,
  unpack, recvfd) or output channel (write, flush, pack, sendfd), every later operation on
  that channel raises it again until clearerr(). EPIPE on the input channel is EOF.
- Data is bytes. write() also takes str, encoded as UTF-8.
- TLS close: cqueues never sends close_notify; aclose() and `async with` send it and wait
  (within the socket's timeout) for the peer's, and close() sends it when it can go at
  once, without waiting. The peer's close_notify reads as end of stream. A FIN without
  close_notify at a record boundary reads as end of stream too, as in asyncio and the
  ssl module's default, and is never answered with an alert; a FIN inside a record is
  ssl.SSLEOFError. Protocols that must detect truncation check their own framing.
"""

from __future__ import annotations

import os
import socket as _socket
import ssl
from typing import Any

from cqloop._core.cqsock import INPUT_HIGH_WATER_BYTES
from cqloop._cqsocket import (
    _DEFAULTS,
    AF_INET,
    AF_INET6,
    AF_UNIX,
    AF_UNSPEC,
    DEFAULT_MAXERRS,
    RECV_CHUNK_BYTES,
    SOCK_DGRAM,
    SOCK_STREAM,
    ErrorHandler,
    Socket,
    _apply_options,
    _channels_and_limit,
    _fd_of,
    _Options,
    _positive,
    _State,
    fdopen,
)

__all__ = [
    "AF_INET",
    "AF_INET6",
    "AF_UNIX",
    "AF_UNSPEC",
    "DEFAULT_MAXERRS",
    "INPUT_HIGH_WATER_BYTES",
    "RECV_CHUNK_BYTES",
    "SOCK_DGRAM",
    "SOCK_STREAM",
    "Socket",
    "connect",
    "dup",
    "fdopen",
    "listen",
    "onerror",
    "pair",
    "setbufsiz",
    "setmaxerrs",
    "setmaxline",
    "setmode",
    "settimeout",
    "setvbuf",
    "type",
]

# -- module functions -------------------------------------------------------------------


def connect(
    host: str | None = None,
    port: int | str | None = None,
    *,
    path: str | bytes | None = None,
    family: int = AF_UNSPEC,
    type: int = SOCK_STREAM,
    tls: bool = False,
    context: ssl.SSLContext | None = None,
    verify: bool = True,
    sendname: bool | str = True,
    nodelay: bool = False,
    resolver: Any = None,
) -> Socket:
    """A socket to host:port (or the Unix socket at path), usable at once: the name
    lookup, the connect and (with tls=True or a context) the TLS handshake happen as part
    of its first I/O. TLS verifies the server's certificate and name unless verify=False."""
    if path is None and (host is None or port is None):
        raise ValueError("connect() needs host and port, or path")
    options = _Options(
        host=host,
        port=port,
        path=path,
        family=AF_UNIX if path is not None else family,
        type=type,
        tls=tls or context is not None,
        context=context,
        verify=verify,
        sendname=sendname,
        nodelay=nodelay,
        resolver=resolver,
    )
    return Socket(None, options, _State.NEW)


def listen(
    host: str | None = None,
    port: int | str | None = None,
    *,
    path: str | bytes | None = None,
    family: int = AF_UNSPEC,
    type: int = SOCK_STREAM,
    reuseaddr: bool = True,
    reuseport: bool = False,
    v6only: bool | None = None,
    unlink: bool = False,
    mode: int | None = None,
    backlog: int = 128,
    nodelay: bool = False,
    context: ssl.SSLContext | None = None,
) -> Socket:
    """A listening socket on host:port (numeric hosts, "*" or None for any address) or a
    Unix socket path, bound at once. accepted connections inherit its modes; with a
    context they start TLS on the server side at their first I/O."""
    options = _Options(
        host=host,
        port=port,
        path=path,
        family=AF_UNIX if path is not None else family,
        type=type,
        reuseaddr=reuseaddr,
        reuseport=reuseport,
        v6only=v6only,
        unlink=unlink,
        mode=mode,
        backlog=backlog,
        nodelay=nodelay,
        context=context,
    )
    address: Any
    if path is not None:
        family_, address = int(AF_UNIX), path
    else:
        family_, address = _numeric_listen_address(host, port, family)
    sock = _socket.socket(family_, type)
    try:
        _apply_options(sock, options, listening=True)
        if path is not None and unlink:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        sock.bind(address)
        if path is not None and mode is not None:
            os.chmod(path, mode)
        if type == SOCK_STREAM:
            sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return Socket(sock, options, _State.LISTENING)


def pair(type: int | str = SOCK_STREAM) -> tuple[Socket, Socket]:
    """Two connected Unix sockets."""
    if isinstance(type, str):
        type = {"stream": SOCK_STREAM, "dgram": SOCK_DGRAM}[type]
    a, b = _socket.socketpair(AF_UNIX, type)
    a.setblocking(False)
    b.setblocking(False)
    return (
        Socket(a, _Options(family=AF_UNIX, type=type), _State.READY),
        Socket(b, _Options(family=AF_UNIX, type=type), _State.READY),
    )


def dup(fd: Any) -> Socket:
    """A Socket on a duplicate of fd (an int or anything with fileno())."""
    return fdopen(os.dup(_fd_of(fd)))


def type(obj: Any) -> str | None:  # cqueues' name; shadows the builtin in this module only
    """ "socket" for a cq Socket, None otherwise."""
    return "socket" if isinstance(obj, Socket) else None


def setmode(input: str | None = None, output: str | None = None) -> None:
    """Default modes for new sockets (see Socket.setmode)."""
    for mode, is_input in ((input, True), (output, False)):
        for flag in mode or "":
            if flag in "tb":
                _DEFAULTS.text = flag == "t"
            elif flag in "nlf" and not is_input:
                _DEFAULTS.outmode = flag
            elif flag in "aA":
                _DEFAULTS.autoflush = flag == "a"
            elif flag in "pP":
                _DEFAULTS.pushback = flag == "p"


def setvbuf(mode: str, size: int | None = None) -> None:
    _DEFAULTS.outmode = {"no": "n", "line": "l", "full": "f"}.get(mode, mode)
    if size is not None:
        _DEFAULTS.outbufsiz = _positive(size, "size")


def setbufsiz(input: int | None = None, output: int | None = None) -> None:
    if input is not None:
        _DEFAULTS.inbufsiz = _positive(input, "input buffer size")
    if output is not None:
        _DEFAULTS.outbufsiz = _positive(output, "output buffer size")


def setmaxline(input: int | None = None, output: int | None = None) -> None:
    if input is not None:
        _DEFAULTS.inmaxline = _positive(input, "input maxline")
    if output is not None:
        _DEFAULTS.outmaxline = _positive(output, "output maxline")


def settimeout(timeout: float | None = None) -> None:
    _DEFAULTS.timeout = timeout


def setmaxerrs(which: str | int = "rw", limit: int | None = None) -> None:
    channels, limit = _channels_and_limit(which, limit)
    if limit is not None:
        for channel in channels:
            _DEFAULTS.maxerrs[channel] = limit


def onerror(handler: ErrorHandler | None = None) -> ErrorHandler | None:
    previous = _DEFAULTS.onerror
    _DEFAULTS.onerror = handler
    return previous


# -- helpers ----------------------------------------------------------------------------


def _numeric_listen_address(
    host: str | None, port: int | str | None, family: int
) -> tuple[int, tuple[Any, ...]]:
    port_number = int(port or 0)
    if host in (None, "", "*"):
        if family == AF_INET6:
            return (AF_INET6, ("::", port_number))
        return (AF_INET, ("0.0.0.0", port_number))
    assert host is not None
    for fam in (AF_INET, AF_INET6):
        if family not in (AF_UNSPEC, fam):
            continue
        try:
            _socket.inet_pton(fam, host.split("%")[0])
        except OSError:
            continue
        return (fam, (host, port_number))
    # A name: resolve it here with the system resolver (listen() binds at once, and
    # listening on a name is rare enough not to deserve a lazy bind).
    infos = _socket.getaddrinfo(host, port_number, family, SOCK_STREAM, 0, _socket.AI_PASSIVE)
    fam, _, _, _, address = infos[0]
    return (fam, address)
