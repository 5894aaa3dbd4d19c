"""cqloop.transports.server: Server, what create_server and create_unix_server return.

Owns the listening sockets of one server, the set of transports it accepted, and the
accept path: a reader on each listening socket that accepts up to `backlog` connections per
readiness event and makes a transport for each. When the process is out of fds (EMFILE,
ENFILE, ENOBUFS, ENOMEM) it stops accepting for ACCEPT_RETRY_DELAY seconds, as asyncio does,
and logs the condition once per episode rather than once per retry.

Semantics follow the running Python where asyncio's changed between versions:
- wait_closed: from 3.12 (3.12.1's fix) it waits for the server to be closed *and* its
  connections to be gone; on 3.11 it returns as soon as the server is closed (so that
  `async with server: await server.serve_forever()`, cancelled with an idle keep-alive
  client connected, returns at once there, as it does on asyncio);
- a Unix server removes its socket file on close from 3.13 (cleanup_socket's default,
  UNIX_SOCKET_CLEANUP_DEFAULT); create_unix_server takes `cleanup_socket` on every version.
close_clients/abort_clients (3.13) exist on every version.

A server made with `ssl` (ServerTLS) puts an SSLProtocol (tls.py) between each accepted
socket's transport and the protocol the factory makes; the handshake runs without a task.
As in asyncio, a failed handshake is the client's business: it closes the connection and
is reported (to the exception handler) only in debug mode. The server's client set holds
the socket transports, which close_clients and abort_clients act on.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import errno
import logging
import os
import socket
import sys
from asyncio import constants, trsock
from typing import TYPE_CHECKING, Any

from cqloop._core.acceptor import Acceptor
from cqloop._core.contexts import run_in_context
from cqloop.transports.socket_transport import SocketTransport
from cqloop.transports.sockutil import raw_family_and_type, remove_unix_socket_file
from cqloop.transports.tls import SSLProtocol

if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable

    from cqloop.loop import Loop

__all__ = ["UNIX_SOCKET_CLEANUP_DEFAULT", "Server", "ServerTLS"]

logger = logging.getLogger("asyncio")

# accept() failing with these means the process or system is out of a resource, not that
# the listening socket is broken: wait and retry.
OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# Whether create_unix_server removes the socket file on close when not told (3.13's
# cleanup_socket=True; 3.11 and 3.12 leave the file).
UNIX_SOCKET_CLEANUP_DEFAULT = sys.version_info >= (3, 13)
# The families the compiled Acceptor serves (its addresses are formatted in sockaddr.pyx).
_ACCEPTOR_FAMILIES = (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX)
# 3.11's wait_closed returns once the server is closed, connections or not.
_WAIT_CLOSED_FOR_CLIENTS = sys.version_info >= (3, 12)


@dataclasses.dataclass(frozen=True)
class ServerTLS:
    """What a TLS server wraps each accepted connection with."""

    context: ssl.SSLContext
    handshake_timeout: float | None = None
    shutdown_timeout: float | None = None


class Server(asyncio.AbstractServer):
    """A listening server: asyncio.Server's API on cqloop's accept path."""

    def __init__(
        self,
        loop: Loop,
        sockets: list[socket.socket],
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        backlog: int,
        unix_paths: dict[socket.socket, tuple[Any, int]] | None = None,
        tls: ServerTLS | None = None,
    ) -> None:
        self._loop = loop
        self._sockets: list[socket.socket] | None = sockets
        # A plain set (asyncio's is a WeakSet): a connection leaves it at connection_lost
        # (_detach), and until then the loop's fd table holds it anyway, so weak references
        # would keep nothing alive less long; they cost each idle connection 146 bytes.
        # (After loop.close(), which drops the table, a connection never closed is kept
        # until the server goes, and warns then.)
        self._clients: set[SocketTransport] = set()
        self._waiters: list[asyncio.Future[None]] | None = []
        self._protocol_factory = protocol_factory
        self._backlog = backlog
        self._serving = False
        self._serving_forever_fut: asyncio.Future[None] | None = None
        # Unix socket files to remove on close: socket -> (path, inode when bound).
        self._unix_paths = unix_paths or {}
        # Whether the current out-of-fds episode was logged already.
        self._accept_error_logged = False
        self._tls = tls
        # The compiled accept path's reader on each listening socket that has one.
        self._acceptors: dict[socket.socket, Acceptor] = {}
        # Accepted connections (their transports, and so their protocols' callbacks) get
        # the context create_server ran in, even when serving starts later from elsewhere.
        self._context = contextvars.copy_context()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} sockets={self.sockets!r}>"

    # -- public API ----------------------------------------------------------------------

    def get_loop(self) -> Loop:
        return self._loop

    def is_serving(self) -> bool:
        return self._serving

    @property
    def sockets(self) -> tuple[trsock.TransportSocket, ...]:
        if self._sockets is None:
            return ()
        return tuple(trsock.TransportSocket(s) for s in self._sockets)

    def close(self) -> None:
        sockets = self._sockets
        if sockets is None:
            return
        self._sockets = None
        for sock in sockets:
            self._stop_accepting(sock)
        self._serving = False
        fut = self._serving_forever_fut
        if fut is not None and not fut.done():
            fut.cancel()
            self._serving_forever_fut = None
        if len(self._clients) == 0:
            self._wakeup()

    def close_clients(self) -> None:
        for transport in self._clients.copy():
            transport.close()

    def abort_clients(self) -> None:
        for transport in self._clients.copy():
            transport.abort()

    async def start_serving(self) -> None:
        self._start_serving()
        # One iteration, so that the accept readers are in place when this returns.
        await asyncio.sleep(0)

    async def serve_forever(self) -> None:
        if self._serving_forever_fut is not None:
            raise RuntimeError(f"server {self!r} is already being awaited on serve_forever()")
        if self._sockets is None:
            raise RuntimeError(f"server {self!r} is closed")
        self._start_serving()
        self._serving_forever_fut = self._loop.create_future()
        try:
            await self._serving_forever_fut
        except asyncio.CancelledError:
            try:
                self.close()
                await self.wait_closed()
            finally:
                raise
        finally:
            self._serving_forever_fut = None

    async def wait_closed(self) -> None:
        """Wait until the server is closed and every connection it accepted is gone (on
        3.11: until the server is closed, as asyncio's did there)."""
        if self._waiters is None or (not _WAIT_CLOSED_FOR_CLIENTS and self._sockets is None):
            return
        waiter = self._loop.create_future()
        self._waiters.append(waiter)
        await waiter

    # -- transports report here ----------------------------------------------------------

    def _attach(self, transport: SocketTransport) -> None:
        self._clients.add(transport)

    def _detach(self, transport: SocketTransport) -> None:
        self._clients.discard(transport)
        if len(self._clients) == 0 and self._sockets is None:
            self._wakeup()

    def _wakeup(self) -> None:
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    # -- accepting -----------------------------------------------------------------------

    def _start_serving(self) -> None:
        if self._serving or self._sockets is None:
            return
        self._serving = True
        for sock in self._sockets:
            sock.listen(self._backlog)
            self._start_accepting(sock)

    def _start_accepting(self, sock: socket.socket) -> None:
        if self._sockets is None or sock.fileno() < 0:
            return
        run_in_context(self._context, self._loop.add_reader, sock.fileno(), *self._acceptor(sock))

    def _acceptor(self, sock: socket.socket) -> tuple[Any, ...]:
        # A plain TCP or Unix socket without TLS is accepted from by the compiled
        # Acceptor; anything else (TLS, other families, gunicorn's socket wrappers, which
        # must accept through their own accept()) by _on_acceptable.
        if type(sock) is socket.socket and self._tls is None:
            family, kind = raw_family_and_type(sock)
            if family in _ACCEPTOR_FAMILIES:
                acceptor = Acceptor(
                    self._loop,
                    self,
                    sock,
                    family,
                    kind,
                    sock.proto,
                    self._protocol_factory,
                    SocketTransport,
                    self._backlog,
                    self._clients,
                )
                self._acceptors[sock] = acceptor
                return (acceptor,)
        return (self._on_acceptable, sock)

    def _stop_accepting(self, sock: socket.socket) -> None:
        acceptor = self._acceptors.pop(sock, None)
        if acceptor is not None:
            acceptor.stop()
        if not self._loop.is_closed():
            self._loop.remove_reader(sock.fileno())
        unix = self._unix_paths.pop(sock, None)
        sock.close()
        if unix is not None:
            remove_unix_socket_file(*unix)

    def _on_acceptable(self, sock: socket.socket) -> None:
        loop = self._loop
        # (TLS servers, other families, socket wrappers: see _acceptor.) A plain
        # socket.socket is accepted from without socket.accept()'s wrapper, which
        # reads the listening socket's family and type through properties that make enum
        # members (two enum lookups per connection) and checks the default timeout (the
        # connection is made non-blocking below either way). Anything else that a server
        # was given as its socket (gunicorn's wrappers) is asked to accept().
        plain = type(sock) is socket.socket
        if plain:
            family, kind = raw_family_and_type(sock)
            proto = sock.proto
        for _ in range(self._backlog):
            # A protocol factory may have closed the server during this batch.
            if self._sockets is None:
                return
            try:
                if plain:
                    fd, addr = sock._accept()  # type: ignore[attr-defined]
                else:
                    conn, addr = sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno not in OUT_OF_RESOURCES:
                    raise
                self._on_out_of_resources(sock, exc)
                return
            self._accept_error_logged = False
            if plain:
                try:
                    conn = socket.socket(family, kind, proto, fileno=fd)
                except BaseException:
                    os.close(fd)
                    raise
            try:
                conn.setblocking(False)
                protocol = self._protocol_factory()
                if self._tls is not None:
                    protocol = self._wrap_tls(protocol)
                SocketTransport(loop, conn, protocol, None, None, self, addr)
            except (SystemExit, KeyboardInterrupt):
                conn.close()
                raise
            except BaseException as exc:
                conn.close()
                loop.call_exception_handler(
                    {
                        "message": "Error on transport creation for incoming connection",
                        "exception": exc,
                    }
                )
                continue
            if loop.get_debug():
                logger.debug("%r got a new connection from %r", self, addr)

    def _wrap_tls(self, protocol: asyncio.BaseProtocol) -> SSLProtocol:
        tls = self._tls
        assert tls is not None
        waiter = self._loop.create_future()
        waiter.add_done_callback(self._on_handshake_done)
        return SSLProtocol(
            self._loop,
            protocol,
            tls.context,
            waiter,
            server_side=True,
            ssl_handshake_timeout=tls.handshake_timeout,
            ssl_shutdown_timeout=tls.shutdown_timeout,
        )

    def _on_handshake_done(self, waiter: asyncio.Future[None]) -> None:
        # The SSL protocol has closed a connection whose handshake failed; asyncio tells
        # the exception handler only in debug mode.
        if waiter.cancelled():
            return
        exc = waiter.exception()
        if exc is not None and self._loop.get_debug():
            self._loop.call_exception_handler(
                {
                    "message": "Error on transport creation for incoming connection",
                    "exception": exc,
                }
            )

    def _on_out_of_resources(self, sock: socket.socket, exc: OSError) -> None:
        # Stop accepting for a while: the pending connections stay in the backlog, and a
        # reader left in place would spin on them.
        if not self._accept_error_logged:
            self._accept_error_logged = True
            self._loop.call_exception_handler(
                {
                    "message": "socket.accept() out of system resource",
                    "exception": exc,
                    "socket": trsock.TransportSocket(sock),
                }
            )
        self._loop.remove_reader(sock.fileno())
        self._loop.call_later(constants.ACCEPT_RETRY_DELAY, self._start_accepting, sock)
