"""TLS: what a protocol sees over ssl=... connections and start_tls, on cqloop, asyncio and
uvloop.

Certificates come from trustme (one CA for the session, a certificate for "localhost").
Both ends run on the loop under test where that is enough; where the test needs a peer
that misbehaves or that checks the TLS exchange itself (close_notify received, a reset in
the middle of a handshake), the peer is a blocking socket in a thread, and the test waits
for it with asyncio.to_thread (no sleeps). What is checked: handshakes and extra info,
hostname verification, handshake timeouts, close_notify in both directions, resets during
the handshake and after it reaching the protocol as exceptions, start_tls on both sides,
BufferedProtocol delivery, write flow control, loop.sendfile's fallback, a server with many
clients, garbage from a peer (hypothesis), and that nothing is left behind.
"""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import ssl
import struct
import tempfile
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trustme
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import is_cqloop, is_uvloop
from tests.protocols import Collect

HOST = "127.0.0.1"
BIG = 4 * 1024 * 1024  # bytes: more than every buffer on the way holds
SO_LINGER_RESET = struct.pack("ii", 1, 0)  # close() sends RST instead of FIN


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


# -- protocols ----------------------------------------------------------------------------------


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


# -- handshake, data, extra info ----------------------------------------------------------------


async def test_client_server_echo_and_extra_info(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    loop = asyncio.get_running_loop()
    server, port = await tls_server(server_ctx)
    try:
        transport, proto = await loop.create_connection(
            Collect, HOST, port, ssl=client_ctx, server_hostname="localhost"
        )
        if not is_uvloop(loop):  # uvloop's transports are not asyncio.Transport subclasses
            assert isinstance(transport, asyncio.Transport)
        sslobj = transport.get_extra_info("ssl_object")
        assert isinstance(sslobj, ssl.SSLObject)
        assert sslobj.server_hostname == "localhost"
        assert transport.get_extra_info("sslcontext") is client_ctx
        assert transport.get_extra_info("peercert")["subjectAltName"] == (("DNS", "localhost"),)
        cipher = transport.get_extra_info("cipher")
        assert isinstance(cipher, tuple) and len(cipher) == 3
        assert transport.get_extra_info("compression") is None
        assert transport.get_extra_info("peername")[1] == port
        assert transport.get_extra_info("sockname")[0] == HOST
        assert transport.get_extra_info("socket") is not None
        assert transport.get_extra_info("no such thing", "default") == "default"
        assert not transport.can_write_eof()
        assert transport.is_reading()
        transport.write(b"hello ")
        transport.writelines([b"over ", bytearray(b"tls"), memoryview(b"!")])
        assert await proto.wait_for_bytes(14) == b"hello over tls!"
        transport.close()
        assert transport.is_closing()
        assert await proto.lost is None
        assert proto.events == ["made", "data", "eof", "lost"]
    finally:
        await close_server(server)


async def test_write_eof_is_refused(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> None:
    loop = asyncio.get_running_loop()
    server, port = await tls_server(server_ctx)
    try:
        transport, proto = await loop.create_connection(
            Collect, HOST, port, ssl=client_ctx, server_hostname="localhost"
        )
        with pytest.raises(NotImplementedError):
            transport.write_eof()
        transport.close()
        await proto.lost
    finally:
        await close_server(server)


async def test_wrong_hostname_is_rejected(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda loop, context: None)
    server, port = await tls_server(server_ctx)
    try:
        made = []
        with pytest.raises(ssl.SSLCertVerificationError):
            await loop.create_connection(
                lambda: made.append(1) or Collect(),
                HOST,
                port,
                ssl=client_ctx,
                server_hostname="not-localhost.example",
            )
        # The factory ran, but the protocol was never connected.
        assert made == [1]
    finally:
        await close_server(server)


async def test_untrusted_certificate_is_rejected(server_ctx: ssl.SSLContext) -> None:
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda loop, context: None)
    server, port = await tls_server(server_ctx)
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            # The system's CAs do not know trustme's.
            await loop.create_connection(Collect, HOST, port, ssl=True, server_hostname="localhost")
    finally:
        await close_server(server)


async def test_server_hostname_defaults_to_host(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda loop, context: None)
    server, port = await tls_server(server_ctx)
    try:
        # The certificate names localhost, not 127.0.0.1: connecting by address fails ...
        with pytest.raises(ssl.SSLCertVerificationError):
            await loop.create_connection(Collect, HOST, port, ssl=client_ctx)
        # ... and by name succeeds.
        transport, proto = await loop.create_connection(Collect, "localhost", port, ssl=client_ctx)
        assert transport.get_extra_info("ssl_object").server_hostname == "localhost"
        transport.close()
        await proto.lost
    finally:
        await close_server(server)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"server_hostname": "x"}, "server_hostname is only meaningful with ssl"),
        ({"ssl_handshake_timeout": 1.0}, "ssl_handshake_timeout is only meaningful with ssl"),
        ({"ssl_shutdown_timeout": 1.0}, "ssl_shutdown_timeout is only meaningful with ssl"),
    ],
)
async def test_tls_arguments_without_ssl_are_refused(kwargs: dict[str, Any], message: str) -> None:
    loop = asyncio.get_running_loop()
    with pytest.raises(ValueError, match=message):
        await loop.create_connection(asyncio.Protocol, HOST, 1, **kwargs)


async def test_ssl_without_host_needs_server_hostname(client_ctx: ssl.SSLContext) -> None:
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    try:
        with pytest.raises(ValueError, match="server_hostname"):
            await loop.create_connection(asyncio.Protocol, sock=a, ssl=client_ctx)
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("timeout", [0, -1.0])
async def test_handshake_timeout_must_be_positive(
    client_ctx: ssl.SSLContext, listener: socket.socket, timeout: float
) -> None:
    loop = asyncio.get_running_loop()
    with pytest.raises(ValueError, match="positive"):
        await loop.create_connection(
            asyncio.Protocol,
            *listener.getsockname(),
            ssl=client_ctx,
            server_hostname="localhost",
            ssl_handshake_timeout=timeout,
        )


async def test_create_server_refuses_ssl_true() -> None:
    loop = asyncio.get_running_loop()
    with pytest.raises(TypeError, match="SSLContext"):
        await loop.create_server(asyncio.Protocol, HOST, 0, ssl=True)


# -- handshake failures -------------------------------------------------------------------------


async def test_handshake_timeout_aborts(
    client_ctx: ssl.SSLContext, listener: socket.socket
) -> None:
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda loop, context: None)

    def silent_peer() -> bytes:
        # Reads the ClientHello and never answers; sees EOF or a reset when the client
        # gives up.
        conn, _ = listener.accept()
        with conn:
            got = b""
            try:
                while chunk := conn.recv(65536):
                    got += chunk
            except ConnectionResetError:
                pass
            return got

    peer = run_peer(silent_peer)
    with pytest.raises(ConnectionAbortedError, match="SSL handshake is taking longer"):
        await loop.create_connection(
            Collect,
            *listener.getsockname(),
            ssl=client_ctx,
            server_hostname="localhost",
            ssl_handshake_timeout=0.1,
        )
    hello = await peer
    assert hello[:1] == b"\x16"  # a TLS handshake record was sent


async def test_reset_during_handshake_raises(
    client_ctx: ssl.SSLContext, listener: socket.socket
) -> None:
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda loop, context: None)

    def resetting_peer() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)  # the ClientHello
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, SO_LINGER_RESET)
        conn.close()

    peer = run_peer(resetting_peer)
    made = []
    with pytest.raises(ConnectionResetError):
        await loop.create_connection(
            lambda: made.append(1) or Collect(),
            *listener.getsockname(),
            ssl=client_ctx,
            server_hostname="localhost",
        )
    await peer


async def test_eof_during_handshake_raises(
    client_ctx: ssl.SSLContext, listener: socket.socket
) -> None:
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda loop, context: None)

    def closing_peer() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.close()

    peer = run_peer(closing_peer)
    with pytest.raises(ConnectionResetError):
        await loop.create_connection(
            Collect, *listener.getsockname(), ssl=client_ctx, server_hostname="localhost"
        )
    await peer


async def test_server_survives_a_failed_handshake(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda loop, context: None)
    made: list[Collect] = []

    def factory() -> Collect:
        proto = Echo()
        made.append(proto)
        return proto

    server, port = await tls_server(server_ctx, factory)
    try:
        # A client that speaks plain text, then goes away.
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(b"GET / HTTP/1.0\r\n\r\n")
        await reader.read()  # the server closes the connection
        writer.close()
        await writer.wait_closed()
        # The failed connection never reached its protocol; the next one works.
        transport, proto = await loop.create_connection(
            Collect, HOST, port, ssl=client_ctx, server_hostname="localhost"
        )
        transport.write(b"ping")
        assert await proto.wait_for_bytes(4) == b"ping"
        transport.close()
        await proto.lost
        assert [p.events[0] for p in made if p.events] == ["made"]
    finally:
        await close_server(server)


# -- close_notify -----------------------------------------------------------------------------


def _tls_peer_socket(listener: socket.socket, server_ctx: ssl.SSLContext) -> ssl.SSLSocket:
    """Accept one connection and do the server's handshake (wrap_socket takes over the
    accepted socket's fd)."""
    conn, _ = listener.accept()
    return server_ctx.wrap_socket(conn, server_side=True)


async def test_close_sends_close_notify(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, listener: socket.socket
) -> None:
    loop = asyncio.get_running_loop()

    def peer() -> bytes:
        with _tls_peer_socket(listener, server_ctx) as tls:
            got = tls.recv(4)
            tls.sendall(b"pong")
            # unwrap() returns only once the client's close_notify arrived (and sends ours).
            plain = tls.unwrap()
            plain.close()
            return got

    done = run_peer(peer)
    transport, proto = await loop.create_connection(
        Collect, *listener.getsockname(), ssl=client_ctx, server_hostname="localhost"
    )
    transport.write(b"ping")
    assert await proto.wait_for_bytes(4) == b"pong"
    transport.close()
    assert await done == b"ping"
    assert await proto.lost is None


async def test_peer_close_notify_reaches_eof_received(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, listener: socket.socket
) -> None:
    loop = asyncio.get_running_loop()

    def peer() -> None:
        with _tls_peer_socket(listener, server_ctx) as tls:
            tls.sendall(b"bye")
            # Sends close_notify first; returns once the client answered with its own.
            plain = tls.unwrap()
            plain.close()

    done = run_peer(peer)
    transport, proto = await loop.create_connection(
        Collect, *listener.getsockname(), ssl=client_ctx, server_hostname="localhost"
    )
    await proto.eof
    assert bytes(proto.data) == b"bye"
    assert await proto.lost is None
    await done
    assert proto.events == ["made", "data", "eof", "lost"]
    assert transport.is_closing()


async def test_shutdown_timeout_when_peer_never_answers_close_notify(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, listener: socket.socket
) -> None:
    loop = asyncio.get_running_loop()
    release = threading.Event()

    def peer() -> bytes:
        # Reads our close_notify's record but never answers it nor closes, until released.
        with _tls_peer_socket(listener, server_ctx) as tls:
            tls.sendall(b"hi")
            raw = socket.socket(fileno=os.dup(tls.fileno()))
            with raw:
                got = raw.recv(65536)
                release.wait(10)
                return got

    done = run_peer(peer)
    transport, proto = await loop.create_connection(
        Collect,
        *listener.getsockname(),
        ssl=client_ctx,
        server_hostname="localhost",
        ssl_shutdown_timeout=0.2,
    )
    await proto.wait_for_bytes(2)
    transport.close()
    exc = await proto.lost
    release.set()
    assert isinstance(exc, TimeoutError)
    # The close_notify went out (under TLS 1.3 an alert travels as an encrypted record).
    assert await done


async def test_close_notify_between_two_loop_endpoints(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    loop = asyncio.get_running_loop()
    accepted: list[Collect] = []

    def factory() -> Collect:
        accepted.append(Collect())
        return accepted[-1]

    server, port = await tls_server(server_ctx, factory)
    try:
        _, proto = await loop.create_connection(
            Collect, HOST, port, ssl=client_ctx, server_hostname="localhost"
        )
        await asyncio.wait_for(_until(lambda: bool(accepted)), 10)
        await accepted[0].made
        accepted[0].transport.write(b"from server")
        await proto.wait_for_bytes(11)
        # The server side closes: the client gets eof_received, then connection_lost.
        accepted[0].transport.close()
        assert await proto.lost is None
        assert await accepted[0].lost is None
        assert proto.events == ["made", "data", "eof", "lost"]
        assert accepted[0].events == ["made", "eof", "lost"]
    finally:
        await close_server(server)


async def _until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0)


# -- errors after the handshake -------------------------------------------------------------------


async def test_reset_mid_stream_reaches_connection_lost(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, listener: socket.socket
) -> None:
    loop = asyncio.get_running_loop()
    release = threading.Event()

    def peer() -> None:
        with _tls_peer_socket(listener, server_ctx) as tls:
            tls.sendall(b"hello")
            release.wait(10)
            tls.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, SO_LINGER_RESET)

    done = run_peer(peer)
    transport, proto = await loop.create_connection(
        Collect, *listener.getsockname(), ssl=client_ctx, server_hostname="localhost"
    )
    await proto.wait_for_bytes(5)
    release.set()
    exc = await proto.lost
    await done
    assert isinstance(exc, ConnectionResetError)
    transport.close()


async def test_corrupted_record_reaches_connection_lost(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, listener: socket.socket
) -> None:
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda loop, context: None)
    release = threading.Event()

    def peer() -> None:
        with _tls_peer_socket(listener, server_ctx) as tls:
            tls.sendall(b"hello")
            release.wait(10)
            # Bytes in the middle of the TLS stream that are not a valid record, written
            # under TLS's feet through a second fd of the same socket.
            with socket.socket(fileno=os.dup(tls.fileno())) as raw:
                raw.sendall(b"\x17\x03\x03\x00\x10" + b"\x00" * 16)
                try:
                    raw.recv(1024)
                except OSError:
                    pass

    done = run_peer(peer)
    transport, proto = await loop.create_connection(
        Collect, *listener.getsockname(), ssl=client_ctx, server_hostname="localhost"
    )
    await proto.wait_for_bytes(5)
    release.set()
    exc = await proto.lost
    assert isinstance(exc, ssl.SSLError)
    transport.close()
    await done


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(garbage=st.binary(min_size=1, max_size=2048))
def test_garbage_from_server_is_an_error_not_a_hang(
    loop: asyncio.AbstractEventLoop, client_ctx: ssl.SSLContext, garbage: bytes
) -> None:
    async def main() -> None:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(1)
            writer.write(garbage)
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(answer, HOST, 0)
        port = server.sockets[0].getsockname()[1]
        try:
            with pytest.raises((ssl.SSLError, ConnectionError)):
                await asyncio.wait_for(
                    loop.create_connection(
                        Collect, HOST, port, ssl=client_ctx, server_hostname="localhost"
                    ),
                    30,
                )
        finally:
            server.close()
            await server.wait_closed()

    loop.set_exception_handler(lambda loop, context: None)
    loop.run_until_complete(main())


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
        with _tls_peer_socket(listener, server_ctx) as tls:
            tls.sendall(payload)
            tls.unwrap().close()

    done = run_peer(peer)
    _, proto = await loop.create_connection(
        lambda: SmallBuffers(7777, as_memoryview),
        *listener.getsockname(),
        ssl=client_ctx,
        server_hostname="localhost",
    )
    assert await proto.lost is None
    await done
    assert bytes(proto.data) == payload


async def test_pause_reading_holds_data_back(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    loop = asyncio.get_running_loop()
    accepted: list[Collect] = []

    def factory() -> Collect:
        accepted.append(Collect())
        return accepted[-1]

    server, port = await tls_server(server_ctx, factory)
    try:
        transport, proto = await loop.create_connection(
            Collect, HOST, port, ssl=client_ctx, server_hostname="localhost"
        )
        await asyncio.wait_for(_until(lambda: bool(accepted)), 10)
        peer = accepted[0]
        await peer.made
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
    finally:
        await close_server(server)


# -- writing: flow control, sendfile ---------------------------------------------------------


async def test_large_write_with_flow_control(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    loop = asyncio.get_running_loop()
    accepted: list[Collect] = []

    def factory() -> Collect:
        accepted.append(Collect())
        return accepted[-1]

    server, port = await tls_server(server_ctx, factory)
    try:
        transport, proto = await loop.create_connection(
            Collect, HOST, port, ssl=client_ctx, server_hostname="localhost"
        )
        await asyncio.wait_for(_until(lambda: bool(accepted)), 10)
        peer = accepted[0]
        await peer.made
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
    finally:
        await close_server(server)


async def test_sendfile_falls_back_over_tls(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    loop = asyncio.get_running_loop()
    if is_uvloop(loop):
        pytest.skip("uvloop has no loop.sendfile")
    accepted: list[Collect] = []

    def factory() -> Collect:
        accepted.append(Collect())
        return accepted[-1]

    payload = os.urandom(300 * 1024 + 17)
    server, port = await tls_server(server_ctx, factory)
    try:
        transport, proto = await loop.create_connection(
            Collect, HOST, port, ssl=client_ctx, server_hostname="localhost"
        )
        with tempfile.TemporaryFile() as f:
            f.write(payload)
            f.flush()
            sent = await loop.sendfile(transport, f, offset=17)
            assert sent == len(payload) - 17
            assert f.tell() == len(payload)
            with pytest.raises(RuntimeError, match="fallback is disabled"):
                await loop.sendfile(transport, f, fallback=False)
        await asyncio.wait_for(_until(lambda: bool(accepted)), 10)
        assert await accepted[0].wait_for_bytes(len(payload) - 17) == payload[17:]
        transport.close()
        await proto.lost
    finally:
        await close_server(server)


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
    server, port = await tls_server(server_ctx)
    try:
        transport, proto = await loop.create_connection(
            Collect, HOST, port, ssl=client_ctx, server_hostname="localhost"
        )
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
    finally:
        await close_server(server)


@pytest.mark.cqloop_only
async def test_nothing_keeps_a_closed_connection_alive(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    from cqloop.transports.tls import SSLProtocol

    loop = asyncio.get_running_loop()
    server, port = await tls_server(server_ctx)
    try:
        transport, proto = await loop.create_connection(
            Collect, HOST, port, ssl=client_ctx, server_hostname="localhost"
        )
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
        del transport, proto
    finally:
        await close_server(server)
    for _ in range(3):
        await asyncio.sleep(0)
    gc.collect()
    assert ssl_protocol() is None
