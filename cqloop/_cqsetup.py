"""The connection set-up of a cq socket: resolve, connect, listen, accept, names.

Owns SocketSetup, a base class of cqloop._cqsocket.Socket: the lazy set-up that runs at
a socket's first operation (`_establish`: the name lookup through cqloop.dns, connecting
to each address in turn, then the TLS handshake of SocketTLS in cqloop/_cqtls.py),
the public waits on it (connect(), listen(), starttls()), accepting connections
(accept(), clients(), with the listener's modes inherited), adopting and dropping the
fd (`_adopt`, `_drop_sock`: the only places `_sock` changes), and the socket's names
(localname(), peername(), peereid(), peerpid()).

Invariant: set-up runs once, in whichever task gets there first; the others wait on
`_setup_done`. A set-up error sticks (`_setup_error`) and every later operation raises it.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket as _socket
import ssl
import struct
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Self

from cqloop._cqcommon import (
    AF_INET,
    AF_INET6,
    AF_UNIX,
    AF_UNSPEC,
    _apply_options,
    _as_oserror,
    _operation,
    _Options,
    _oserror,
    _remaining,
    _State,
    _timeout_error,
)
from cqloop._cqtls import context_part
from cqloop.pollable import cancel as _cancel_polls

if TYPE_CHECKING:
    from typing import NoReturn

    from cqloop._core.cqbuf import InputBuffer
    from cqloop._core.cqoutbuf import OutputBuffer
    from cqloop._core.cqtls import TLSChannel
    from cqloop.condition import Condition


class SocketSetup:
    """The set-up methods of cqloop._cqsocket.Socket (see the module docstring)."""

    if TYPE_CHECKING:
        # Socket's, SocketTLS's and SocketCore's state and methods these use.
        _sock: _socket.socket | None
        _fd: int
        _opts: _Options
        _state: _State
        _server_side: bool
        _events: str | None
        _setup_error: OSError | None
        _setting_up: bool
        _setup_done: Condition
        _tls: TLSChannel | None
        _tls_pending: bool
        _ibuf: InputBuffer
        _obuf: OutputBuffer
        _recv_bytes: int
        _autoflush: bool
        _pushback: bool
        _timeout: float | None
        _onerror: Any
        _maxerrs: dict[str, int]

        def __init__(
            self, sock: _socket.socket | None, options: _Options, state: _State
        ) -> None: ...
        def _deadline(self, timeout: float | None) -> float | None: ...
        async def _wait(self, reading: bool, deadline: float | None, op: str) -> None: ...
        async def _handshake(self, deadline: float | None) -> None: ...
        def _raise(self, op: str, error: OSError, *, sticky: bool = True) -> NoReturn: ...

    # -- set-up ------------------------------------------------------------------------

    @_operation
    async def connect(self, timeout: float | None = None) -> Self:
        """Wait until the connection (and a TLS handshake asked for) is established."""
        await self._establish(self._deadline(timeout), "connect")
        return self

    @_operation
    async def listen(self, timeout: float | None = None) -> Self:
        """Wait until the listening socket is bound."""
        await self._establish(self._deadline(timeout), "listen")
        return self

    @_operation
    async def starttls(
        self,
        context: ssl.SSLContext | None = None,
        timeout: float | None = None,
        *,
        server_side: bool | None = None,
        server_hostname: str | None = None,
    ) -> Self:
        """Switch to TLS and wait for the handshake. Pending output is flushed first;
        with pushback (the default) input buffered so far is handed to TLS, never read
        as plaintext. The side taken is the context's when it was made for one
        (PROTOCOL_TLS_SERVER or _CLIENT, as cqueues takes it from its context; a
        `server_side` that disagrees is a ValueError), else `server_side`, else the
        socket's: accepted, the server; connected, the client."""
        deadline = self._deadline(timeout)
        if self._tls is not None:
            return self
        given = context if context is not None else self._opts.context
        part = None if given is None else context_part(given)
        if server_side is not None and part is not None and part != server_side:
            made_for = "server" if part else "client"
            raise ValueError(
                f"starttls(server_side={server_side}): the context is made for the {made_for} side"
            )
        if context is not None:
            self._opts.context = context
        if server_side is not None:
            self._server_side = server_side
        if server_hostname is not None:
            self._opts.sendname = server_hostname
        self._tls_pending = True
        await self._establish(deadline, "starttls")
        return self

    def checktls(self) -> ssl.SSLObject | None:
        """The ssl.SSLObject once TLS is on, else None."""
        return None if self._tls is None else self._tls.sslobj

    async def _establish(self, deadline: float | None, op: str) -> None:
        """Finish whatever set-up is due (resolve, connect, TLS), once, whichever task
        gets here first; the others wait for it."""
        while self._state is not _State.READY and self._state is not _State.LISTENING:
            if self._state is _State.CLOSED:
                raise _oserror(errno.EBADF, f"socket:{op}: socket is closed")
            if self._setup_error is not None:
                self._raise(op, self._setup_error, sticky=False)
            if self._setting_up:
                signalled = await self._setup_done.wait(timeout=_remaining(deadline))
                if not signalled and deadline is not None and time.monotonic() >= deadline:
                    self._raise(op, _timeout_error(op), sticky=False)
                continue
            self._setting_up = True
            try:
                await self._setup_step(deadline, op)
            except (OSError, ssl.SSLError) as exc:
                if not isinstance(exc, TimeoutError):
                    self._setup_error = _as_oserror(exc)
                self._raise(op, _as_oserror(exc), sticky=False)
            finally:
                self._setting_up = False
                self._setup_done.signal()
        if self._tls_pending and self._state is _State.READY:
            self._state = _State.CONNECTED
            await self._establish(deadline, op)

    async def _setup_step(self, deadline: float | None, op: str) -> None:
        # A finished step waits for nothing: events() says "" after it, as cqueues'.
        if self._state is _State.NEW:
            await self._connect_somewhere(deadline)
            self._state = _State.CONNECTED
            self._events = ""
        if self._state is _State.CONNECTED:
            if self._tls_pending:
                await self._handshake(deadline)
                self._events = ""
            self._state = _State.READY

    async def _connect_somewhere(self, deadline: float | None) -> None:
        opts = self._opts
        candidates: list[tuple[int, Any]]
        if opts.path is not None:
            candidates = [(AF_UNIX, opts.path)]
        else:
            candidates = await _resolve(opts, deadline)
        last_error: OSError | None = None
        for family, address in candidates:
            sock = _socket.socket(family, opts.type)
            try:
                _apply_options(sock, opts, listening=False)
                sock.setblocking(False)
                self._adopt(sock)
                err = sock.connect_ex(address)
                if err == errno.EINPROGRESS:
                    await self._wait(False, deadline, "connect")
                    err = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_ERROR)
                if err:
                    raise _oserror(err, f"connect to {address!r}: {os.strerror(err)}")
                return
            except TimeoutError:
                self._drop_sock()
                raise
            except OSError as exc:
                last_error = exc
                self._drop_sock()
        assert last_error is not None
        raise last_error

    def _adopt(self, sock: _socket.socket) -> None:
        self._sock = sock
        self._fd = sock.fileno()

    def _drop_sock(self) -> None:
        sock, self._sock = self._sock, None
        self._fd = -1
        if sock is not None:
            _cancel_polls(sock.fileno())
            sock.close()

    # -- listening -----------------------------------------------------------------------

    @_operation
    async def accept(self, timeout: float | None = None) -> Self:
        """The next incoming connection, as a Socket with this one's modes."""
        deadline = self._deadline(timeout)
        await self._establish(deadline, "accept")
        sock = self._sock
        assert sock is not None
        while True:
            try:
                conn, _ = sock.accept()
                break
            except (BlockingIOError, InterruptedError):
                await self._wait(True, deadline, "accept")
            except OSError as exc:
                return self._raise("accept", exc, sticky=False)
        conn.setblocking(False)
        if conn.family in (AF_INET, AF_INET6) and self._opts.nodelay:
            conn.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        context = self._opts.context
        options = _Options(type=self._opts.type, tls=context is not None, context=context)
        # With a context the connection starts TLS (server side) at its first I/O.
        child = type(self)(conn, options, _State.CONNECTED if context is not None else _State.READY)
        child._server_side = True
        child._inherit(self)
        return child

    async def clients(self, timeout: float | None = None) -> AsyncIterator[Self]:
        """accept() forever: `async for con in srv.clients(): ...`."""
        while True:
            yield await self.accept(timeout)

    def _inherit(self, parent: Self) -> None:
        self._ibuf.text = parent._ibuf.text
        self._ibuf.maxline = parent._ibuf.maxline
        self._ibuf.bufsiz = parent._ibuf.bufsiz
        self._obuf.maxline = parent._obuf.maxline
        self._recv_bytes = parent._recv_bytes
        self._obuf.text = parent._obuf.text
        self._obuf.mode = parent._obuf.mode
        self._obuf.bufsiz = parent._obuf.bufsiz
        self._autoflush = parent._autoflush
        self._pushback = parent._pushback
        self._timeout = parent._timeout
        self._onerror = parent._onerror
        self._maxerrs = dict(parent._maxerrs)

    # -- names ----------------------------------------------------------------------------

    def peername(self) -> tuple[Any, ...]:
        return self._name(getpeer=True)

    def localname(self) -> tuple[Any, ...]:
        return self._name(getpeer=False)

    def _name(self, getpeer: bool) -> tuple[Any, ...]:
        sock = self._sock
        if sock is None:
            return (AF_UNSPEC,)
        try:
            address = sock.getpeername() if getpeer else sock.getsockname()
        except OSError as exc:
            if exc.errno == errno.ENOTCONN:
                return (AF_UNSPEC,)
            raise
        if sock.family == AF_UNIX:
            return (AF_UNIX, address or None)
        return (sock.family, address[0], address[1])

    def peereid(self) -> tuple[int, int]:
        """The peer's effective (uid, gid) on a Unix stream socket (SO_PEERCRED)."""
        _, uid, gid = self._peercred()
        return (uid, gid)

    def peerpid(self) -> int:
        return self._peercred()[0]

    def _peercred(self) -> tuple[int, int, int]:
        sock = self._sock
        if sock is None or sock.family != AF_UNIX:
            raise _oserror(errno.EINVAL, "peer credentials need a connected Unix socket")
        creds = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, gid = struct.unpack("3i", creds)
        return (pid, uid, gid)


async def _resolve(opts: _Options, deadline: float | None) -> list[tuple[int, Any]]:
    """The addresses to try for connect(), through cqloop.dns (no query for numeric
    hosts; /etc/hosts honoured)."""
    import cqloop.dns as dns  # pycares is imported only by programs that resolve

    assert opts.host is not None and opts.port is not None
    lookup = dns.resolve_host(opts.host, opts.port, family=opts.family, resolver=opts.resolver)
    timeout = _remaining(deadline)
    try:
        found = await asyncio.wait_for(lookup, timeout)
    except dns.DNSError:
        raise  # the resolver's own errors, its timeouts included, as they are
    except TimeoutError:
        raise _timeout_error("connect") from None
    return [(int(address.family), address.sockaddr) for address in found]
