"""What the TLS transport tests share (test_tls.py, test_tls_streams.py): trustme's
certificates (one CA for the session, a certificate for "localhost") as server and client
SSLContexts, a TLS echo server on the loop under test with one client connected to it
(tls_connection), and blocking peers in a thread for the tests that need a peer which
misbehaves or checks the TLS exchange itself (listener, run_peer, tls_peer_socket,
connect_to_peer)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import trustme

from tests.protocols import Collect

HOST = "127.0.0.1"
# bytes: more than every buffer on the way holds, the io_uring engine's buffer ring (8 MiB,
# which receives while the loop's thread runs system calls) included.
BIG = 16 * 1024 * 1024
SO_LINGER_RESET = struct.pack("ii", 1, 0)  # close() sends RST instead of FIN
# How long a test waits for the server to accept before it fails instead of hanging.
ACCEPT_TIMEOUT_S = 10


# -- certificates -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def server_ctx(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(ctx)
    return ctx


@pytest.fixture(scope="session")
def client_ctx(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(ctx)
    return ctx


# -- both ends on the loop ----------------------------------------------------------------------


class Echo(Collect):
    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self.transport.write(data)


async def tls_server(
    server_ctx: ssl.SSLContext, factory: Callable[[], asyncio.BaseProtocol] = Echo, **kwargs: Any
) -> tuple[asyncio.AbstractServer, int]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(factory, HOST, 0, ssl=server_ctx, **kwargs)
    return server, server.sockets[0].getsockname()[1]


async def close_server(server: asyncio.AbstractServer) -> None:
    server.close()
    await server.wait_closed()


async def until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0)


@dataclasses.dataclass
class TLSConnection:
    """A client connected over TLS to a server on the same loop."""

    server: asyncio.AbstractServer
    port: int
    transport: Any
    proto: Collect
    accepted: list[Collect]  # the server's protocols, one a connection

    async def server_side(self) -> Collect:
        """The server's protocol of this connection, once it is connected."""
        await asyncio.wait_for(until(lambda: bool(self.accepted)), ACCEPT_TIMEOUT_S)
        await self.accepted[0].made
        return self.accepted[0]


@contextlib.asynccontextmanager
async def tls_connection(
    server_ctx: ssl.SSLContext,
    client_ctx: ssl.SSLContext,
    protocol: Callable[[], Collect] = Echo,
) -> AsyncIterator[TLSConnection]:
    """A TLS server (a `protocol` a connection) and one Collect client connected to it by
    name ("localhost"); the server is closed on exit, the client is the test's to close."""
    loop = asyncio.get_running_loop()
    accepted: list[Collect] = []

    def factory() -> Collect:
        accepted.append(protocol())
        return accepted[-1]

    server, port = await tls_server(server_ctx, factory)
    try:
        transport, proto = await loop.create_connection(
            Collect, HOST, port, ssl=client_ctx, server_hostname="localhost"
        )
        yield TLSConnection(server, port, transport, proto, accepted)
    finally:
        await close_server(server)


# -- a blocking peer in a thread ------------------------------------------------------------------


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A blocking listening socket for a peer thread."""
    sock = socket.create_server((HOST, 0))
    try:
        yield sock
    finally:
        sock.close()


def run_peer(target: Callable[[], Any]) -> asyncio.Future[Any]:
    """Run a blocking peer in a thread; the future has its result or exception."""
    return asyncio.ensure_future(asyncio.to_thread(target))


def tls_peer_socket(listener: socket.socket, server_ctx: ssl.SSLContext) -> ssl.SSLSocket:
    """Accept one connection and do the server's handshake (wrap_socket takes over the
    accepted socket's fd)."""
    conn, _ = listener.accept()
    return server_ctx.wrap_socket(conn, server_side=True)


async def connect_to_peer(
    listener: socket.socket,
    client_ctx: ssl.SSLContext,
    protocol: Callable[[], asyncio.BaseProtocol] = Collect,
    **kwargs: Any,
) -> tuple[Any, Any]:
    """The loop's TLS client connected to the peer behind `listener`."""
    loop = asyncio.get_running_loop()
    return await loop.create_connection(
        protocol, *listener.getsockname(), ssl=client_ctx, server_hostname="localhost", **kwargs
    )
