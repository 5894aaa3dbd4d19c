"""TLS: what a protocol sees over an established TLS connection, on cqloop, asyncio and
uvloop: start_tls on both sides (also TLS inside TLS), BufferedProtocol delivery and
pause_reading, write flow control, loop.sendfile's fallback, a server with many clients,
Unix sockets and accepted sockets, Server.close_clients, and that nothing is left behind.

Certificates come from trustme (tls_harness.py); both ends run on the loop under test, or
the peer is a blocking socket in a thread that the test waits for with asyncio.to_thread
(no sleeps). Handshakes, close_notify and errors are in test_tls.py.
"""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import ssl
import tempfile
import weakref
from typing import Any

import pytest

from tests.conftest import is_cqloop, is_uvloop
from tests.protocols import Collect
from tests.tls_harness import (  # noqa: F401
    BIG,
    HOST,
    Echo,
    ca,
    client_ctx,
    close_server,
    connect_to_peer,
    listener,
    run_peer,
    server_ctx,
    tls_connection,
    tls_peer_socket,
    tls_server,
    until,
)

# The harness's fixtures are imported by name and taken as parameters:
# ruff: noqa: F811

# -- start_tls ------------------------------------------------------------------------------------


class StartTLSServer(asyncio.Protocol):
    """Plain text until the client says STARTTLS; then TLS, and an echo."""

    def __init__(self, server_ctx: ssl.SSLContext, results: list[Any]) -> None:
        self.server_ctx = server_ctx
        self.results = results
        self.buf = b""
        self.upgrading = False
        # Decrypted data may arrive before start_tls returns the transport to answer on.
        self.pending = b""
        self.tls: Any = None
        self.upgrade_task: asyncio.Task[None] | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.upgrading:
            self.pending += data
            self.answer()
            return
        self.buf += data
        if self.buf == b"STARTTLS\n":
            self.transport.write(b"GO\n")
            self.upgrading = True
            self.upgrade_task = asyncio.ensure_future(self.upgrade())

    def answer(self) -> None:
        if self.tls is not None and self.pending:
            self.tls.write(self.pending.upper())
            self.pending = b""

    async def upgrade(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            self.tls = await loop.start_tls(self.transport, self, self.server_ctx, server_side=True)
            self.results.append(self.tls)
            self.answer()
        except Exception as exc:
            self.results.append(exc)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.results.append(("lost", exc))


async def test_start_tls_client_and_server(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    loop = asyncio.get_running_loop()
    results: list[Any] = []
    server = await loop.create_server(lambda: StartTLSServer(server_ctx, results), HOST, 0)
    port = server.sockets[0].getsockname()[1]
    try:
        transport, proto = await loop.create_connection(Collect, HOST, port)
        transport.write(b"STARTTLS\n")
        assert await proto.wait_for_bytes(3) == b"GO\n"
        tls = await loop.start_tls(transport, proto, client_ctx, server_hostname="localhost")
        assert tls.get_extra_info("ssl_object") is not None
        assert tls.get_protocol() is proto
        proto.data.clear()
        proto.enough = loop.create_future()
        tls.write(b"secret")
        assert await proto.wait_for_bytes(6) == b"SECRET"
        server_tls = results[0]
        assert server_tls.get_extra_info("ssl_object").server_side
        tls.close()
        assert await proto.lost is None
        # connection_made ran once, for the plain connection.
        assert proto.events.count("made") == 1
    finally:
        await close_server(server)


async def test_start_tls_wrong_arguments() -> None:
    loop = asyncio.get_running_loop()
    with pytest.raises(TypeError, match="SSLContext"):
        await loop.start_tls(None, None, None)  # type: ignore[arg-type]
    ctx = ssl.create_default_context()
    with pytest.raises(TypeError, match="is not supported"):
        await loop.start_tls(None, None, ctx)  # type: ignore[arg-type]


async def test_start_tls_over_tls(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> None:
    """TLS inside TLS: start_tls over an SSL transport, both ends on the loop."""
    loop = asyncio.get_running_loop()
    results: list[Any] = []
    server = await loop.create_server(
        lambda: StartTLSServer(server_ctx, results), HOST, 0, ssl=server_ctx
    )
    port = server.sockets[0].getsockname()[1]
    try:
        outer, proto = await loop.create_connection(
            Collect, HOST, port, ssl=client_ctx, server_hostname="localhost"
        )
        outer.write(b"STARTTLS\n")
        await proto.wait_for_bytes(3)
        inner = await loop.start_tls(outer, proto, client_ctx, server_hostname="localhost")
        proto.data.clear()
        proto.enough = loop.create_future()
        inner.write(b"nested")
        assert await proto.wait_for_bytes(6) == b"NESTED"
        assert inner.get_extra_info("ssl_object") is not outer.get_extra_info("ssl_object")
        inner.close()
        await proto.lost
        outer.close()
    finally:
        await close_server(server)


# -- reading: BufferedProtocol, pausing -------------------------------------------------------


class SmallBuffers(asyncio.BufferedProtocol):
    def __init__(self, size: int, as_memoryview: bool) -> None:
        self.buffer = bytearray(size)
        self.handed_out: bytearray | memoryview = (
            memoryview(self.buffer) if as_memoryview else self.buffer
        )
        self.data = bytearray()
        self.lost = asyncio.get_running_loop().create_future()
        self.hints: list[int] = []

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def get_buffer(self, sizehint: int) -> bytearray | memoryview:
        self.hints.append(sizehint)
        return self.handed_out

    def buffer_updated(self, nbytes: int) -> None:
        self.data += self.buffer[:nbytes]

    def eof_received(self) -> None:
        pass

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.set_result(exc)


@pytest.mark.parametrize("as_memoryview", [True, False], ids=["memoryview", "bytearray"])
async def test_buffered_protocol_over_tls(
    server_ctx: ssl.SSLContext,
    client_ctx: ssl.SSLContext,
    listener: socket.socket,
    as_memoryview: bool,
) -> None:
    loop = asyncio.get_running_loop()
    if not as_memoryview and not is_cqloop(loop) and not is_uvloop(loop):
        pytest.skip(
            "asyncio's sslproto fills a bytearray's later parts through buf[offset:], a "
            "copy, and loses those bytes (a bug in asyncio)"
        )
    payload = os.urandom(256 * 1024)

    def peer() -> None:
        with tls_peer_socket(listener, server_ctx) as tls:
            tls.sendall(payload)
            tls.unwrap().close()

    done = run_peer(peer)
    _, proto = await connect_to_peer(
        listener, client_ctx, lambda: SmallBuffers(7777, as_memoryview)
    )
    assert await proto.lost is None
    await done
    assert bytes(proto.data) == payload


async def test_pause_reading_holds_data_back(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    async with tls_connection(server_ctx, client_ctx, Collect) as conn:
        transport, proto = conn.transport, conn.proto
        peer = await conn.server_side()
        transport.pause_reading()
        assert not transport.is_reading()
        peer.transport.write(b"first")
        # The server's round trip proves the bytes reached the client's side meanwhile.
        transport.write(b"x")
        await peer.wait_for_bytes(1)
        for _ in range(5):
            await asyncio.sleep(0)
        assert bytes(proto.data) == b""
        transport.resume_reading()
        assert transport.is_reading()
        assert await proto.wait_for_bytes(5) == b"first"
        transport.close()
        await proto.lost


# -- writing: flow control, sendfile ---------------------------------------------------------


async def test_large_write_with_flow_control(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    async with tls_connection(server_ctx, client_ctx, Collect) as conn:
        transport, proto = conn.transport, conn.proto
        peer = await conn.server_side()
        peer.transport.pause_reading()
        transport.set_write_buffer_limits(high=64 * 1024)
        assert transport.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
        payload = os.urandom(BIG)
        chunk = 64 * 1024
        for i in range(0, BIG, chunk):
            transport.write(payload[i : i + chunk])
        # The peer reads nothing: the buffers fill and the writer is paused.
        assert proto.paused == 1
        assert transport.get_write_buffer_size() > 0
        peer.transport.resume_reading()
        got = await peer.wait_for_bytes(BIG)
        assert got == payload
        await proto.writable.wait()
        assert proto.resumed == 1
        transport.close()
        await proto.lost


async def test_sendfile_falls_back_over_tls(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    loop = asyncio.get_running_loop()
    if is_uvloop(loop):
        pytest.skip("uvloop has no loop.sendfile")
    payload = os.urandom(300 * 1024 + 17)
    async with tls_connection(server_ctx, client_ctx, Collect) as conn:
        transport, proto = conn.transport, conn.proto
        with tempfile.TemporaryFile() as f:
            f.write(payload)
            f.flush()
            sent = await loop.sendfile(transport, f, offset=17)
            assert sent == len(payload) - 17
            assert f.tell() == len(payload)
            with pytest.raises(RuntimeError, match="fallback is disabled"):
                await loop.sendfile(transport, f, fallback=False)
        peer = await conn.server_side()
        assert await peer.wait_for_bytes(len(payload) - 17) == payload[17:]
        transport.close()
        await proto.lost


# -- servers, Unix sockets, accepted sockets ------------------------------------------------------


async def test_server_with_many_clients(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    clients = 20
    server, port = await tls_server(server_ctx)

    async def client(n: int) -> bytes:
        reader, writer = await asyncio.open_connection(
            HOST, port, ssl=client_ctx, server_hostname="localhost"
        )
        message = f"client {n}\n".encode() * 100
        writer.write(message)
        got = await reader.readexactly(len(message))
        writer.close()
        await writer.wait_closed()
        return got

    try:
        got = await asyncio.gather(*(client(n) for n in range(clients)))
        assert got == [f"client {n}\n".encode() * 100 for n in range(clients)]
    finally:
        await close_server(server)


async def test_unix_server_and_connection(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, tmp_path: Any
) -> None:
    loop = asyncio.get_running_loop()
    path = str(tmp_path / "tls.sock")
    server = await loop.create_unix_server(Echo, path, ssl=server_ctx)
    try:
        transport, proto = await loop.create_unix_connection(
            Collect, path, ssl=client_ctx, server_hostname="localhost"
        )
        transport.write(b"over unix")
        assert await proto.wait_for_bytes(9) == b"over unix"
        transport.close()
        await proto.lost
    finally:
        await close_server(server)


async def test_connect_accepted_socket_with_ssl(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, listener: socket.socket
) -> None:
    loop = asyncio.get_running_loop()
    client = socket.create_connection(listener.getsockname())
    conn, _ = listener.accept()
    try:
        accept = asyncio.ensure_future(loop.connect_accepted_socket(Echo, conn, ssl=server_ctx))
        transport, proto = await loop.create_connection(
            Collect, sock=client, ssl=client_ctx, server_hostname="localhost"
        )
        server_transport, _ = await accept
        assert "SSL" in type(server_transport).__name__
        transport.write(b"accepted")
        assert await proto.wait_for_bytes(8) == b"accepted"
        transport.close()
        await proto.lost
        server_transport.close()
    finally:
        conn.close()
        client.close()


async def test_server_close_clients_ends_tls_connections(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    loop = asyncio.get_running_loop()
    if not hasattr(asyncio.Server, "close_clients") and not is_cqloop(loop):
        pytest.skip("Server.close_clients is 3.13's")
    if is_uvloop(loop):
        pytest.skip("uvloop's Server has no close_clients")
    server, port = await tls_server(server_ctx)
    transport, proto = await loop.create_connection(
        Collect, HOST, port, ssl=client_ctx, server_hostname="localhost"
    )
    transport.write(b"x")
    await proto.wait_for_bytes(1)
    server.close()
    server.close_clients()  # type: ignore[attr-defined]
    await server.wait_closed()
    await proto.lost
    transport.close()


# -- what is left behind -------------------------------------------------------------------------


async def test_transport_attributes_can_be_replaced(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    loop = asyncio.get_running_loop()
    if is_uvloop(loop):
        pytest.skip("uvloop's transports take no instance attributes")
    async with tls_connection(server_ctx, client_ctx) as conn:
        transport, proto = conn.transport, conn.proto
        written: list[bytes] = []
        original = transport.write

        def write(data: bytes) -> None:
            written.append(data)
            original(data)

        transport.write = write  # what aiohttp's and uvicorn's tests do
        transport.write(b"patched")
        assert await proto.wait_for_bytes(7) == b"patched"
        assert written == [b"patched"]
        transport.close()
        await proto.lost


@pytest.mark.cqloop_only
async def test_nothing_keeps_a_closed_connection_alive(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    from cqloop.transports.tls import SSLProtocol

    async with tls_connection(server_ctx, client_ctx) as conn:
        transport, proto = conn.transport, conn.proto
        transport.write(b"x")
        await proto.wait_for_bytes(1)
        ssl_protocol = weakref.ref(transport._ssl_protocol)
        assert isinstance(ssl_protocol(), SSLProtocol)
        stats = transport._ssl_protocol.statistics()
        assert stats["state"] == "WRAPPED"
        assert stats["app_state"] == "CON_MADE"
        assert stats["write_buffer_size"] == 0
        transport.close()
        await proto.lost
        del transport, proto, conn
    for _ in range(3):
        await asyncio.sleep(0)
    gc.collect()
    assert ssl_protocol() is None
