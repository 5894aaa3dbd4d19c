"""cqloop.transports.streams: the loop's stream methods over TCP and Unix sockets.

StreamsMixin is a base of cqloop.loop.Loop and gives it create_connection (happy eyeballs,
interleave, local_addr, all_errors), create_server, create_unix_connection,
create_unix_server (removing its socket file on close from 3.13), connect_accepted_socket
and loop.sendfile. Arguments are checked as asyncio checks them, with asyncio's messages.
Resolution goes through the loop's getaddrinfo, connecting through its sock_connect (see
sockops.py). The transports are SocketTransport (socket_transport.py); servers are Server
(server.py).

With `ssl`, the socket transport carries an SSLProtocol (tls.py) and the caller gets its
SSLTransport; start_tls layers one over a connected transport. loop.sendfile over TLS
reads the file and writes through the TLS transport (its `_sendfile_compatible` says so).
"""

from __future__ import annotations

import asyncio
import collections.abc
import errno
import functools
import itertools
import logging
import os
import socket
import ssl
from asyncio import constants, staggered
from typing import TYPE_CHECKING, Any

from cqloop.transports.server import UNIX_SOCKET_CLEANUP_DEFAULT, Server
from cqloop.transports.server import ServerTLS as _ServerTLS
from cqloop.transports.socket_transport import SocketTransport
from cqloop.transports.sockutil import (
    refuse_ssl_socket,
    remove_stale_unix_socket,
    set_reuseport,
)
from cqloop.transports.tls import SSLProtocol

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    AddrInfo = tuple[int, int, int, str, Any]
    ProtocolFactory = Callable[[], asyncio.BaseProtocol]

__all__ = ["StreamsMixin"]

logger = logging.getLogger("asyncio")

# Bytes per read when loop.sendfile falls back to reading the file (asyncio's block size).
SENDFILE_FALLBACK_BLOCK_SIZE = 16 * 1024


def _interleave(infos: list[AddrInfo], first_family_count: int) -> list[AddrInfo]:
    """Order addresses for happy eyeballs (RFC 8305): `first_family_count` of the first
    family, then alternate between the families."""
    by_family: dict[int, list[AddrInfo]] = {}
    for info in infos:
        by_family.setdefault(info[0], []).append(info)
    groups = list(by_family.values())
    ordered: list[AddrInfo] = []
    if first_family_count > 1:
        ordered.extend(groups[0][: first_family_count - 1])
        groups[0] = groups[0][first_family_count - 1 :]
    for row in itertools.zip_longest(*groups):
        ordered.extend(info for info in row if info is not None)
    return ordered


def _raise_connect_errors(errors: list[OSError], all_errors: bool) -> None:
    if all_errors:
        raise ExceptionGroup("create_connection failed", errors)
    if len(errors) == 1:
        raise errors[0]
    model = str(errors[0])
    if all(str(exc) == model for exc in errors):
        raise errors[0]
    raise OSError("Multiple exceptions: {}".format(", ".join(str(exc) for exc in errors)))


class StreamsMixin:
    """Stream connections and servers for cqloop.loop.Loop."""

    # Provided by Loop and its other bases.
    if TYPE_CHECKING:

        def get_debug(self) -> bool: ...
        def create_future(self) -> asyncio.Future[Any]: ...
        def call_soon(self, callback: Callable[..., object], *args: Any) -> Any: ...
        async def getaddrinfo(self, *args: Any, **kwargs: Any) -> list[AddrInfo]: ...
        async def sock_connect(self, sock: socket.socket, address: Any) -> None: ...
        async def sock_sendfile(self, *args: Any, **kwargs: Any) -> int: ...
        def run_in_executor(self, executor: Any, func: Any, *args: Any) -> Any: ...

    # -- connecting ----------------------------------------------------------------------

    async def create_connection(
        self,
        protocol_factory: ProtocolFactory,
        host: str | None = None,
        port: int | str | None = None,
        *,
        ssl: Any = None,
        family: int = 0,
        proto: int = 0,
        flags: int = 0,
        sock: socket.socket | None = None,
        local_addr: tuple[str, int] | None = None,
        server_hostname: str | None = None,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
        happy_eyeballs_delay: float | None = None,
        interleave: int | None = None,
        all_errors: bool = False,
    ) -> tuple[asyncio.BaseTransport, asyncio.BaseProtocol]:
        """Connect to a TCP server (or use `sock`); return (transport, protocol)."""
        if server_hostname is not None and not ssl:
            raise ValueError("server_hostname is only meaningful with ssl")
        if server_hostname is None and ssl:
            # The host is checked against the certificate unless server_hostname says
            # otherwise ('' turns the check off).
            if not host:
                raise ValueError("You must set server_hostname when using ssl without a host")
            server_hostname = host
        if ssl_handshake_timeout is not None and not ssl:
            raise ValueError("ssl_handshake_timeout is only meaningful with ssl")
        if ssl_shutdown_timeout is not None and not ssl:
            raise ValueError("ssl_shutdown_timeout is only meaningful with ssl")
        if sock is not None:
            refuse_ssl_socket(sock)
        if happy_eyeballs_delay is not None and interleave is None:
            interleave = 1

        own_sock = host is not None or port is not None
        if own_sock:
            if sock is not None:
                raise ValueError("host/port and sock can not be specified at the same time")
            infos = await self._resolve_stream(host, port, family, proto, flags)
            laddr_infos = None
            if local_addr is not None:
                laddr_infos = await self._resolve_stream(*local_addr, family, proto, flags)
            if interleave:
                infos = _interleave(infos, interleave)
            errors: list[list[OSError]] = []
            if happy_eyeballs_delay is None:
                for info in infos:
                    try:
                        sock = await self._connect_one(errors, info, laddr_infos)
                        break
                    except OSError:
                        continue
            else:
                attempts = (
                    functools.partial(self._connect_one, errors, info, laddr_infos)
                    for info in infos
                )
                sock, _, _ = await staggered.staggered_race(
                    attempts,
                    happy_eyeballs_delay,
                    loop=self,  # type: ignore[arg-type]
                )
            if sock is None:
                flat = [exc for attempt in errors for exc in attempt]
                errors = []
                _raise_connect_errors(flat, all_errors)
        else:
            if sock is None:
                raise ValueError("host and port was not specified and no sock specified")
            if sock.type != socket.SOCK_STREAM:
                raise ValueError(f"A Stream Socket was expected, got {sock!r}")

        assert sock is not None
        transport, protocol = await self._make_connection(
            sock,
            protocol_factory,
            ssl,
            server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
            own_sock=own_sock,
        )
        if self.get_debug():
            logger.debug(
                "%r connected to %s:%r: (%r, %r)",
                transport.get_extra_info("socket"),
                host,
                port,
                transport,
                protocol,
            )
        return transport, protocol

    async def _resolve_stream(
        self, host: Any, port: Any, family: int, proto: int, flags: int
    ) -> list[AddrInfo]:
        infos = await self.getaddrinfo(
            host, port, family=family, type=socket.SOCK_STREAM, proto=proto, flags=flags
        )
        if not infos:
            raise OSError("getaddrinfo() returned empty list")
        return infos

    async def _connect_one(
        self,
        errors: list[list[OSError]],
        info: AddrInfo,
        laddr_infos: list[AddrInfo] | None,
    ) -> socket.socket:
        """Create, bind (to the first local address of the same family) and connect one
        socket; its errors go to a list of their own in `errors`."""
        mine: list[OSError] = []
        errors.append(mine)
        family, type_, proto, _, address = info
        sock = None
        try:
            sock = socket.socket(family=family, type=type_, proto=proto)
            sock.setblocking(False)
            if laddr_infos is not None:
                for lfamily, _, _, _, laddr in laddr_infos:
                    if lfamily != family:
                        continue
                    try:
                        sock.bind(laddr)
                        break
                    except OSError as exc:
                        msg = (
                            f"error while attempting to bind on address {laddr!r}: "
                            f"{str(exc).lower()}"
                        )
                        mine.append(OSError(exc.errno, msg))
                else:
                    if mine:
                        raise mine.pop()
                    raise OSError(f"no matching local address with {family=} found")
            await self.sock_connect(sock, address)
            return sock
        except OSError as exc:
            mine.append(exc)
            if sock is not None:
                sock.close()
            raise
        except BaseException:
            if sock is not None:
                sock.close()
            raise

    async def _make_connection(
        self,
        sock: socket.socket,
        protocol_factory: ProtocolFactory,
        ssl: Any = None,
        server_hostname: str | None = None,
        *,
        server_side: bool = False,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
        own_sock: bool = False,
    ) -> tuple[asyncio.Transport, asyncio.BaseProtocol]:
        """The transport for a connected socket and the protocol the factory makes; with
        `ssl` (a context, or True for a default client context), once the handshake is
        done. A socket the loop made itself (`own_sock`) is closed if no transport takes
        it; a caller's is left to the caller, as asyncio leaves it."""
        transport: asyncio.Transport
        try:
            sock.setblocking(False)
            protocol = protocol_factory()
            waiter = self.create_future()
            if ssl:
                ssl_protocol = SSLProtocol(
                    self,
                    protocol,
                    None if isinstance(ssl, bool) else ssl,
                    waiter,
                    server_side=server_side,
                    server_hostname=server_hostname,
                    ssl_handshake_timeout=ssl_handshake_timeout,
                    ssl_shutdown_timeout=ssl_shutdown_timeout,
                )
                transport = ssl_protocol._app_transport  # type: ignore[assignment]
                SocketTransport(self, sock, ssl_protocol)
            else:
                transport = SocketTransport(self, sock, protocol, waiter)
        except BaseException:
            if own_sock:
                sock.close()
            raise
        try:
            await waiter
        except BaseException:
            transport.close()
            # The exception (an SSL error, say) holds frames that hold the transport.
            waiter = None  # type: ignore[assignment]
            raise
        return transport, protocol

    async def create_unix_connection(
        self,
        protocol_factory: ProtocolFactory,
        path: Any = None,
        *,
        ssl: Any = None,
        sock: socket.socket | None = None,
        server_hostname: str | None = None,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
    ) -> tuple[asyncio.BaseTransport, asyncio.BaseProtocol]:
        """Connect to a Unix stream socket at `path` (or use `sock`)."""
        if ssl:
            if server_hostname is None:
                raise ValueError("you have to pass server_hostname when using ssl")
        else:
            if server_hostname is not None:
                raise ValueError("server_hostname is only meaningful with ssl")
            if ssl_handshake_timeout is not None:
                raise ValueError("ssl_handshake_timeout is only meaningful with ssl")
            if ssl_shutdown_timeout is not None:
                raise ValueError("ssl_shutdown_timeout is only meaningful with ssl")
        if sock is not None:
            refuse_ssl_socket(sock)
        if path is not None:
            if sock is not None:
                raise ValueError("path and sock can not be specified at the same time")
            path = os.fspath(path)
            own_sock = True
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0)
            try:
                sock.setblocking(False)
                await self.sock_connect(sock, path)
            except BaseException:
                sock.close()
                raise
        else:
            if sock is None:
                raise ValueError("no path and sock were specified")
            if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
                raise ValueError(f"A UNIX Domain Stream Socket was expected, got {sock!r}")
            own_sock = False
        return await self._make_connection(
            sock,
            protocol_factory,
            ssl,
            server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
            own_sock=own_sock,
        )

    async def connect_accepted_socket(
        self,
        protocol_factory: ProtocolFactory,
        sock: socket.socket,
        *,
        ssl: Any = None,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
    ) -> tuple[asyncio.BaseTransport, asyncio.BaseProtocol]:
        """Wrap a socket accepted elsewhere in a transport."""
        if sock.type != socket.SOCK_STREAM:
            raise ValueError(f"A Stream Socket was expected, got {sock!r}")
        if ssl_handshake_timeout is not None and not ssl:
            raise ValueError("ssl_handshake_timeout is only meaningful with ssl")
        if ssl_shutdown_timeout is not None and not ssl:
            raise ValueError("ssl_shutdown_timeout is only meaningful with ssl")
        refuse_ssl_socket(sock)
        transport, protocol = await self._make_connection(
            sock,
            protocol_factory,
            ssl,
            "",
            server_side=True,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
        )
        if self.get_debug():
            logger.debug(
                "%r handled: (%r, %r)", transport.get_extra_info("socket"), transport, protocol
            )
        return transport, protocol

    # -- TLS on an open connection ---------------------------------------------------------

    async def start_tls(
        self,
        transport: asyncio.BaseTransport,
        protocol: asyncio.BaseProtocol,
        sslcontext: ssl.SSLContext,
        *,
        server_side: bool = False,
        server_hostname: str | None = None,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
    ) -> asyncio.Transport:
        """Upgrade `transport` to TLS; return the transport `protocol` must use from now on
        (its connection_made is not called again)."""
        if not isinstance(sslcontext, ssl.SSLContext):
            raise TypeError(
                f"sslcontext is expected to be an instance of ssl.SSLContext, got {sslcontext!r}"
            )
        if not (
            isinstance(transport, SocketTransport)
            or getattr(transport, "_start_tls_compatible", False)
        ):
            raise TypeError(f"transport {transport!r} is not supported by start_tls()")
        assert isinstance(transport, asyncio.Transport)
        waiter = self.create_future()
        ssl_protocol = SSLProtocol(
            self,
            protocol,
            sslcontext,
            waiter,
            server_side,
            server_hostname,
            call_connection_made=False,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
        )
        # Paused first, so that no data reaches the SSL protocol before connection_made.
        transport.pause_reading()
        transport.set_protocol(ssl_protocol)
        made = self.call_soon(ssl_protocol.connection_made, transport)
        resumed = self.call_soon(transport.resume_reading)
        try:
            await waiter
        except BaseException:
            transport.close()
            made.cancel()
            resumed.cancel()
            raise
        app_transport = ssl_protocol._app_transport
        assert app_transport is not None
        return app_transport

    # -- serving -------------------------------------------------------------------------

    async def create_server(
        self,
        protocol_factory: ProtocolFactory,
        host: str | Iterable[str] | None = None,
        port: int | str | None = None,
        *,
        family: int = socket.AF_UNSPEC,
        flags: int = socket.AI_PASSIVE,
        sock: socket.socket | None = None,
        backlog: int = 100,
        ssl: Any = None,
        reuse_address: bool | None = None,
        reuse_port: bool | None = None,
        keep_alive: bool | None = None,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
        start_serving: bool = True,
    ) -> Server:
        """Listen on every address `host` (one or several) resolves to, or on `sock`."""
        if isinstance(ssl, bool):
            raise TypeError("ssl argument must be an SSLContext or None")
        if ssl_handshake_timeout is not None and ssl is None:
            raise ValueError("ssl_handshake_timeout is only meaningful with ssl")
        if ssl_shutdown_timeout is not None and ssl is None:
            raise ValueError("ssl_shutdown_timeout is only meaningful with ssl")
        if sock is not None:
            refuse_ssl_socket(sock)
        tls = _ServerTLS(ssl, ssl_handshake_timeout, ssl_shutdown_timeout) if ssl else None

        if host is not None or port is not None:
            if sock is not None:
                raise ValueError("host/port and sock can not be specified at the same time")
            if reuse_address is None:
                reuse_address = True
            hosts: Iterable[Any]
            if host == "":
                hosts = [None]
            elif isinstance(host, str) or not isinstance(host, collections.abc.Iterable):
                hosts = [host]
            else:
                hosts = host
            resolved = await asyncio.gather(
                *(
                    self.getaddrinfo(one, port, family=family, type=socket.SOCK_STREAM, flags=flags)
                    for one in hosts
                )
            )
            infos = set(itertools.chain.from_iterable(resolved))
            sockets = self._bind_listeners(infos, reuse_address, reuse_port, keep_alive)
        else:
            if sock is None:
                raise ValueError("Neither host/port nor sock were specified")
            if sock.type != socket.SOCK_STREAM:
                raise ValueError(f"A Stream Socket was expected, got {sock!r}")
            sockets = [sock]

        for listener in sockets:
            listener.setblocking(False)
        server = Server(self, sockets, protocol_factory, backlog, tls=tls)  # type: ignore[arg-type]
        if start_serving:
            server._start_serving()
            await asyncio.sleep(0)
        if self.get_debug():
            logger.info("%r is serving", server)
        return server

    def _bind_listeners(
        self,
        infos: Iterable[AddrInfo],
        reuse_address: bool,
        reuse_port: bool | None,
        keep_alive: bool | None,
    ) -> list[socket.socket]:
        infos = list(infos)
        sockets: list[socket.socket] = []
        completed = False
        try:
            for family, type_, proto, _, address in infos:
                try:
                    sock = socket.socket(family, type_, proto)
                except OSError:
                    if self.get_debug():
                        logger.warning(
                            "create_server() failed to create socket.socket(%r, %r, %r)",
                            family,
                            type_,
                            proto,
                            exc_info=True,
                        )
                    continue
                sockets.append(sock)
                if reuse_address:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, True)
                if reuse_port:
                    set_reuseport(sock)
                if keep_alive:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, True)
                if family == socket.AF_INET6:
                    # One socket per family, as asyncio binds them.
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, True)
                try:
                    sock.bind(address)
                except OSError as err:
                    msg = (
                        f"error while attempting to bind on address {address!r}: {str(err).lower()}"
                    )
                    if err.errno == errno.EADDRNOTAVAIL:
                        sockets.pop()
                        sock.close()
                        if self.get_debug():
                            logger.warning(msg)
                        continue
                    raise OSError(err.errno, msg) from None
            if not sockets:
                raise OSError(
                    f"could not bind on any address out of {[info[4] for info in infos]!r}"
                )
            completed = True
        finally:
            if not completed:
                for sock in sockets:
                    sock.close()
        return sockets

    async def create_unix_server(
        self,
        protocol_factory: ProtocolFactory,
        path: Any = None,
        *,
        sock: socket.socket | None = None,
        backlog: int = 100,
        ssl: Any = None,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
        start_serving: bool = True,
        cleanup_socket: bool | None = None,
    ) -> Server:
        """Listen on a Unix stream socket at `path` (a file, or the abstract namespace when
        it starts with a NUL), or on `sock`. With cleanup_socket (the default from 3.13,
        as in asyncio), closing the server removes the socket file it bound."""
        if cleanup_socket is None:
            cleanup_socket = UNIX_SOCKET_CLEANUP_DEFAULT
        if isinstance(ssl, bool):
            raise TypeError("ssl argument must be an SSLContext or None")
        if ssl_handshake_timeout is not None and not ssl:
            raise ValueError("ssl_handshake_timeout is only meaningful with ssl")
        if ssl_shutdown_timeout is not None and not ssl:
            raise ValueError("ssl_shutdown_timeout is only meaningful with ssl")
        tls = _ServerTLS(ssl, ssl_handshake_timeout, ssl_shutdown_timeout) if ssl else None
        if path is not None:
            if sock is not None:
                raise ValueError("path and sock can not be specified at the same time")
            path = os.fspath(path)
            own_sock = True
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            # Everything from here to the Server owning it closes the socket on failure,
            # whatever the error (asyncio leaves it to the GC when the stale-file check
            # raises something other than OSError: a NUL in the path, say).
            try:
                if path[0] not in (0, "\x00"):
                    remove_stale_unix_socket(path)
                sock.bind(path)
            except BaseException as exc:
                sock.close()
                if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
                    msg = f"Address {path!r} is already in use"
                    raise OSError(errno.EADDRINUSE, msg) from None
                raise
        else:
            own_sock = False
            if sock is None:
                raise ValueError("path was not specified, and no sock specified")
            if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
                raise ValueError(f"A UNIX Domain Stream Socket was expected, got {sock!r}")

        unix_paths: dict[socket.socket, tuple[Any, int]] = {}
        try:
            if cleanup_socket:
                bound = sock.getsockname()
                if bound and bound[0] not in (0, "\x00"):
                    try:
                        unix_paths[sock] = (bound, os.stat(bound).st_ino)
                    except FileNotFoundError:
                        pass
            sock.setblocking(False)
            server = Server(self, [sock], protocol_factory, backlog, unix_paths, tls)  # type: ignore[arg-type]
        except BaseException:
            if own_sock:
                sock.close()
            raise
        if start_serving:
            server._start_serving()
            await asyncio.sleep(0)
        return server

    # -- sendfile ------------------------------------------------------------------------

    async def sendfile(
        self,
        transport: asyncio.WriteTransport,
        file: Any,
        offset: int = 0,
        count: int | None = None,
        *,
        fallback: bool = True,
    ) -> int:
        """Send a file over a transport: os.sendfile once the transport's buffer is empty
        when it is one of ours, else (or when the kernel refuses) read and write."""
        if transport.is_closing():
            raise RuntimeError("Transport is closing")
        mode = getattr(transport, "_sendfile_compatible", constants._SendfileMode.UNSUPPORTED)
        if mode is constants._SendfileMode.UNSUPPORTED:
            raise RuntimeError(f"sendfile is not supported for transport {transport!r}")
        if mode is constants._SendfileMode.TRY_NATIVE and isinstance(transport, SocketTransport):
            try:
                return await self._sendfile_native(transport, file, offset, count)
            except asyncio.SendfileNotAvailableError:
                if not fallback:
                    raise
        if not fallback:
            raise RuntimeError(
                f"fallback is disabled and native sendfile is not supported for "
                f"transport {transport!r}"
            )
        return await self._sendfile_fallback(transport, file, offset, count)

    async def _sendfile_native(
        self, transport: SocketTransport, file: Any, offset: int, count: int | None
    ) -> int:
        # Reading is paused and the buffer drained first, so the file's bytes follow the
        # transport's and nothing the protocol does interleaves with them.
        resume_reading = transport.is_reading()
        transport.pause_reading()
        await transport._make_empty_waiter()
        transport._core._lend_fd()
        try:
            return await self.sock_sendfile(transport._sock, file, offset, count, fallback=False)
        finally:
            transport._core._reclaim_fd()
            transport._reset_empty_waiter()
            if resume_reading:
                transport.resume_reading()

    async def _sendfile_fallback(
        self, transport: asyncio.WriteTransport, file: Any, offset: int, count: int | None
    ) -> int:
        if offset:
            file.seek(offset)
        blocksize = (
            min(count, SENDFILE_FALLBACK_BLOCK_SIZE) if count else SENDFILE_FALLBACK_BLOCK_SIZE
        )
        buf = bytearray(blocksize)
        total_sent = 0
        flow = _SendfileFlowControl(transport)
        try:
            while True:
                if count:
                    blocksize = min(count - total_sent, blocksize)
                    if blocksize <= 0:
                        return total_sent
                view = memoryview(buf)[:blocksize]
                read = await self.run_in_executor(None, file.readinto, view)
                if not read:
                    return total_sent
                await flow.drain()
                transport.write(view[:read])
                total_sent += read
        finally:
            if total_sent > 0 and hasattr(file, "seek"):
                file.seek(offset + total_sent)
            await flow.restore()


class _SendfileFlowControl(asyncio.Protocol):
    """Stands in for a transport's protocol while loop.sendfile writes through it: waits
    out pause_writing, and hands the protocol back (resuming it if it was paused) after."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self._protocol = transport.get_protocol()
        self._should_resume_reading = transport.is_reading()
        self._should_resume_writing = bool(getattr(transport, "_protocol_paused", False))
        transport.pause_reading()
        transport.set_protocol(self)
        self._write_ready_fut: asyncio.Future[None] | None = None
        if self._should_resume_writing:
            self._write_ready_fut = transport._loop.create_future()

    async def drain(self) -> None:
        if self._transport.is_closing():
            raise ConnectionError("Connection closed by peer")
        fut = self._write_ready_fut
        if fut is not None:
            await fut

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        raise RuntimeError("Invalid state: connection should have been established already.")

    def connection_lost(self, exc: Exception | None) -> None:
        fut = self._write_ready_fut
        if fut is not None and not fut.done():
            if exc is None:
                fut.set_exception(ConnectionError("Connection is closed by peer"))
            else:
                fut.set_exception(exc)
        self._protocol.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._write_ready_fut is None:
            self._write_ready_fut = self._transport._loop.create_future()

    def resume_writing(self) -> None:
        fut = self._write_ready_fut
        if fut is not None:
            fut.set_result(None)
            self._write_ready_fut = None

    def data_received(self, data: bytes) -> None:
        raise RuntimeError("Invalid state: reading should be paused")

    def eof_received(self) -> bool | None:
        raise RuntimeError("Invalid state: reading should be paused")

    async def restore(self) -> None:
        self._transport.set_protocol(self._protocol)
        if self._should_resume_reading:
            self._transport.resume_reading()
        fut = self._write_ready_fut
        if fut is not None:
            fut.cancel()
        if self._should_resume_writing:
            self._protocol.resume_writing()
