r"""cqloop.socket: cqueues' buffered sockets, awaitable on any asyncio loop.

A new socket is in cqueues' text mode, which sends every "\n" written as "\r\n":
pass mode="b" for bytes as they are (what asyncio users expect). docs/cq-sockets.md
tables every mode flag and read format. connect(host, port, tls=True) speaks TLS
(certificates verified by default); the name lookup, the connect and the handshake
happen as part of the first I/O.

Example (a whole program; it runs as it is, on loopback):

    import asyncio

    from cqloop import socket


    async def main():
        server = socket.listen("127.0.0.1", 0, mode="b")
        port = server.localname()[2]

        async def serve():
            async with await server.accept(timeout=10) as conn:
                while await conn.xread("*l", None, 10) not in (b"\r", None):
                    pass  # the request line and headers
                await conn.write(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi")

        serving = asyncio.create_task(serve())
        async with socket.connect("127.0.0.1", port, mode="b") as s:  # usable at once
            await s.write(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
            status = await s.xread("*l", None, 10)  # b"HTTP/1.0 200 OK\r" ("b": \r kept)
            headers = [h async for h in s.lines("*h")]  # [b"Content-Length: 2"]
            await s.read("*l")  # the blank line
            body = await s.read("*a")  # b"hi"
        await serving
        server.close()
        assert (status, headers, body) == (b"HTTP/1.0 200 OK\r", [b"Content-Length: 2"], b"hi")


    asyncio.run(main())

The public module: connect(), listen(), pair(), dup(), fdopen(), socket.type(), and the
defaults for new sockets (setmode, setvbuf, setbufsiz, setmaxline, settimeout,
setmaxerrs, onerror). The Socket object itself, with lazy set-up (name lookup through
cqloop.dns, connect and the TLS handshake happen as part of the first I/O, as in
cqueues), every cqueues read format, cqueues' output modes, TLS, timeouts and sticky
errors, is in cqloop/_cqsocket.py (its set-up in _cqsetup.py, its TLS in _cqtls.py, what
they share in _cqcommon.py); type=SOCK_DGRAM makes its datagram subclass, in
cqloop/_cqdgram.py (one read never spans two datagrams; one flush decision sends one
datagram). A Socket works on any asyncio loop (cqloop, stock,
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
from cqloop._cqcommon import (
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
    _apply_options,
    _channels_and_limit,
    _fd_of,
    _Options,
    _positive,
    _State,
)
from cqloop._cqdgram import DatagramSocket, dtls_unsupported
from cqloop._cqmodes import mode_strings, parse_mode_flags
from cqloop._cqsocket import Socket, socket_class
from cqloop._cqsocket import fdopen as _fdopen
from cqloop._netargs import MAX_PORT, type_name
from cqloop._netargs import port_number as _port_number

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
    "DatagramSocket",
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
    type: int | str = SOCK_STREAM,
    tls: bool = False,
    context: ssl.SSLContext | None = None,
    verify: bool = True,
    sendname: bool | str = True,
    nodelay: bool = False,
    resolver: Any = None,
    mode: str | None = None,
) -> Socket:
    r"""A socket to host:port (or the Unix socket at path), usable at once: the name
    lookup, the connect and (with tls=True or a context) the TLS handshake happen as part
    of its first I/O. TLS verifies the server's certificate and name unless verify=False.
    mode: cqueues' mode string for both directions, as `setmode(mode, mode)` ("b" for
    bytes as they are; the default text mode writes "\n" as "\r\n"; see
    docs/cq-sockets.md). Arguments are checked here, not at the first I/O.
    type=SOCK_DGRAM (or "dgram") makes a connected datagram socket (UDP, or a Unix
    datagram socket at path): one read never spans two datagrams, and each flush
    decision sends one datagram (docs/cq-sockets.md, "Datagram sockets")."""
    port_number: int | None = None
    if path is None:
        if host is None or port is None:
            raise ValueError("connect() needs host and port, or path")
        _check_host(host, "connect")
        port_number = _port_number(port, "connect: port")
        if port_number == 0:
            raise ValueError(f"connect: port must be 1-{MAX_PORT}, not {port!r}")
    else:
        _check_path(path, "connect")
    _check_mode(mode, "connect")
    type = _socktype(type, "connect")
    if type == SOCK_DGRAM and (tls or context is not None):
        dtls_unsupported("connect")
    options = _Options(
        host=host,
        port=port_number,
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
    return _with_mode(socket_class(type)(None, options, _State.NEW), mode)


def listen(
    host: str | None = None,
    port: int | str | None = None,
    *,
    path: str | bytes | None = None,
    family: int = AF_UNSPEC,
    type: int | str = SOCK_STREAM,
    reuseaddr: bool = True,
    reuseport: bool = False,
    v6only: bool | None = None,
    unlink: bool = False,
    mode: str | int | None = None,
    backlog: int = 128,
    nodelay: bool = False,
    context: ssl.SSLContext | None = None,
) -> Socket:
    """A listening socket on host:port (numeric hosts, "*" or None for any address) or a
    Unix socket path, bound at once. accepted connections inherit its modes; with a
    context they start TLS on the server side at their first I/O.
    mode: a str is cqueues' mode string, applied as `setmode(mode, mode)` and inherited
    by accepted connections (see connect()); an int is the permission bits of the Unix
    socket at path (cqueues' `.mode` option of listen).
    type=SOCK_DGRAM (or "dgram") binds a datagram socket, ready at once: it reads the
    datagrams sent to it (as cqueues, it cannot accept() nor write, having no peer)."""
    perm: int | None = None
    iomode: str | None = None
    if isinstance(mode, int) and not isinstance(mode, bool):
        if path is None:
            raise ValueError("listen: an int mode is the permission bits of a Unix socket path")
        perm = mode
    elif mode is not None:
        _check_mode(mode, "listen")
        iomode = str(mode)
    type = _socktype(type, "listen")
    if type == SOCK_DGRAM and context is not None:
        dtls_unsupported("listen")
    if path is None:
        if host is not None:
            _check_host(host, "listen")
        port_number = _port_number(port, "listen: port")
    else:
        _check_path(path, "listen")
        port_number = 0
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
        mode=perm,
        backlog=backlog,
        nodelay=nodelay,
        context=context,
    )
    address: Any
    if path is not None:
        family_, address = int(AF_UNIX), path
    else:
        family_, address = _numeric_listen_address(host, port_number, family)
    sock = _socket.socket(family_, type)
    try:
        _apply_options(sock, options, listening=True)
        if path is not None and unlink:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        sock.bind(address)
        if path is not None and perm is not None:
            os.chmod(path, perm)
        if type == SOCK_STREAM:
            sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    # A datagram socket is ready once bound: it reads what is sent to it (and writes
    # nowhere, having no peer: EDESTADDRREQ, as in cqueues).
    state = _State.LISTENING if type == SOCK_STREAM else _State.READY
    return _with_mode(socket_class(type)(sock, options, state), iomode)


def pair(type: int | str = SOCK_STREAM, *, mode: str | None = None) -> tuple[Socket, Socket]:
    """Two connected Unix sockets, of type SOCK_STREAM (or "stream") or SOCK_DGRAM (or
    "dgram"; see connect() for datagram sockets). mode: cqueues' mode string for both
    sockets and both directions (see connect())."""
    type = _socktype(type, "pair")
    _check_mode(mode, "pair")
    a, b = _socket.socketpair(AF_UNIX, type)
    a.setblocking(False)
    b.setblocking(False)
    cls = socket_class(type)
    return (
        _with_mode(cls(a, _Options(family=AF_UNIX, type=type), _State.READY), mode),
        _with_mode(cls(b, _Options(family=AF_UNIX, type=type), _State.READY), mode),
    )


def fdopen(fd: int, *, mode: str | None = None) -> Socket:
    """A Socket that owns fd (a listening socket passed by systemd or recvfd, say).
    mode: cqueues' mode string for both directions (see connect())."""
    _check_mode(mode, "fdopen")
    return _with_mode(_fdopen(fd), mode)


def dup(fd: Any, *, mode: str | None = None) -> Socket:
    """A Socket on a duplicate of fd (an int or anything with fileno()). mode: as
    fdopen's."""
    _check_mode(mode, "dup")
    return _with_mode(_fdopen(os.dup(_fd_of(fd))), mode)


def type(obj: Any) -> str | None:  # cqueues' name; shadows the builtin in this module only
    """ "socket" for a cq Socket, None otherwise."""
    return "socket" if isinstance(obj, Socket) else None


def setmode(input: str | None = None, output: str | None = None) -> tuple[str, str]:
    """The default modes of new sockets, as Socket.setmode sets a socket's: each string's
    flags applied to cqueues' initial mode ("t-p" in, "tla" out); None leaves a direction
    as it is. Returns the previous defaults, in the same form."""
    defaults = _DEFAULTS
    previous = mode_strings(
        defaults.intext, defaults.pushback, defaults.outtext, defaults.outmode, defaults.autoflush
    )
    # Both strings are checked before anything changes: bad input loses nothing.
    parsed = [None if mode is None else parse_mode_flags(mode) for mode in (input, output)]
    if parsed[0] is not None:
        defaults.intext, _, _, defaults.pushback = parsed[0]
    if parsed[1] is not None:
        defaults.outtext, defaults.outmode, defaults.autoflush, _ = parsed[1]
    return previous


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

# The flags cqueues' setmode knows (Socket.setmode; docs/cq-sockets.md tables them).
_MODE_FLAGS = frozenset("tbnlfaApP-")


def _check_mode(mode: object, what: str) -> None:
    if mode is None:
        return
    if not isinstance(mode, str):
        raise TypeError(
            f"{what}: mode must be a cqueues mode string such as 'b' or 'bn', "
            f"not {type_name(mode)} ({mode!r})"
        )
    unknown = sorted(set(mode) - _MODE_FLAGS)
    if unknown:
        raise ValueError(
            f"{what}: unknown mode flag {unknown[0]!r} in mode {mode!r}; the flags are "
            "t/b (text, binary), n/l/f (output buffering: none, line, full), a/A "
            "(autoflush on, off), p/P (pushback on, off)"
        )


# The socket types a cq socket can have, by the names pair() also takes.
_SOCKET_TYPES = {"stream": SOCK_STREAM, "dgram": SOCK_DGRAM}


def _socktype(value: Any, what: str) -> int:
    if isinstance(value, str):
        if value not in _SOCKET_TYPES:
            raise ValueError(f"{what}: type must be 'stream' or 'dgram', not {value!r}")
        return _SOCKET_TYPES[value]
    if value not in (SOCK_STREAM, SOCK_DGRAM) or isinstance(value, bool):
        raise ValueError(
            f"{what}: type must be SOCK_STREAM or SOCK_DGRAM (or 'stream', 'dgram'), not {value!r}"
        )
    return int(value)


def _with_mode(sock: Socket, mode: str | None) -> Socket:
    # Both directions, as cqueues' setmode(mode, mode); the output-only flags (n, l, f)
    # are ignored on input, as setmode ignores them.
    if mode is not None:
        sock.setmode(mode, mode)
    return sock


def _check_host(host: Any, what: str) -> None:
    if isinstance(host, (bytes, bytearray)):
        raise TypeError(
            f"{what}: host must be a str, not {type_name(host)} ({host!r}); decode it "
            "first, e.g. host.decode('ascii')"
        )
    if not isinstance(host, str):
        raise TypeError(
            f"{what}: host must be a str (a name or an address), not {type_name(host)} ({host!r})"
        )
    if not host:
        raise ValueError(f"{what}: host is empty")


def _check_path(path: Any, what: str) -> None:
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(
            f"{what}: path must be a str, bytes or os.PathLike, not {type_name(path)} ({path!r})"
        )


def _numeric_listen_address(
    host: str | None, port_number: int, family: int
) -> tuple[int, tuple[Any, ...]]:
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
