"""TLS: handshakes and their failures over ssl=... connections, on cqloop, asyncio and
uvloop: extra info, hostname verification, argument checks, handshake timeouts, resets and
EOF during the handshake, close_notify in both directions, errors after the handshake
(resets, corrupted records) reaching the protocol as exceptions, and garbage from a peer
(hypothesis).

Certificates come from trustme (tls_harness.py). Both ends run on the loop under test where
that is enough; where the test needs a peer that misbehaves or that checks the TLS exchange
itself (close_notify received, a reset in the middle of a handshake), the peer is a
blocking socket in a thread, and the test waits for it with asyncio.to_thread (no sleeps).
start_tls, reading, writing, servers and what is left behind are in test_tls_streams.py.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import is_uvloop
from tests.protocols import Collect
from tests.tls_harness import (  # noqa: F401
    HOST,
    SO_LINGER_RESET,
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

# -- handshake, data, extra info ----------------------------------------------------------------


async def test_client_server_echo_and_extra_info(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> None:
    loop = asyncio.get_running_loop()
    async with tls_connection(server_ctx, client_ctx) as conn:
        transport, proto = conn.transport, conn.proto
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
        assert transport.get_extra_info("peername")[1] == conn.port
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


async def test_write_eof_is_refused(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> None:
    async with tls_connection(server_ctx, client_ctx) as conn:
        with pytest.raises(NotImplementedError):
            conn.transport.write_eof()
        conn.transport.close()
        await conn.proto.lost


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


@pytest.mark.parametrize("reset", [True, False], ids=["reset", "eof"])
async def test_reset_or_eof_during_handshake_raises(
    client_ctx: ssl.SSLContext, listener: socket.socket, reset: bool
) -> None:
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda loop, context: None)

    def peer_that_goes_away() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)  # the ClientHello
        if reset:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, SO_LINGER_RESET)
        conn.close()

    peer = run_peer(peer_that_goes_away)
    with pytest.raises(ConnectionResetError):
        await connect_to_peer(listener, client_ctx)
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


async def test_close_sends_close_notify(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, listener: socket.socket
) -> None:
    def peer() -> bytes:
        with tls_peer_socket(listener, server_ctx) as tls:
            got = tls.recv(4)
            tls.sendall(b"pong")
            # unwrap() returns only once the client's close_notify arrived (and sends ours).
            plain = tls.unwrap()
            plain.close()
            return got

    done = run_peer(peer)
    transport, proto = await connect_to_peer(listener, client_ctx)
    transport.write(b"ping")
    assert await proto.wait_for_bytes(4) == b"pong"
    transport.close()
    assert await done == b"ping"
    assert await proto.lost is None


async def test_peer_close_notify_reaches_eof_received(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, listener: socket.socket
) -> None:
    def peer() -> None:
        with tls_peer_socket(listener, server_ctx) as tls:
            tls.sendall(b"bye")
            # Sends close_notify first; returns once the client answered with its own.
            plain = tls.unwrap()
            plain.close()

    done = run_peer(peer)
    transport, proto = await connect_to_peer(listener, client_ctx)
    await proto.eof
    assert bytes(proto.data) == b"bye"
    assert await proto.lost is None
    await done
    assert proto.events == ["made", "data", "eof", "lost"]
    assert transport.is_closing()


async def test_shutdown_timeout_when_peer_never_answers_close_notify(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, listener: socket.socket
) -> None:
    release = threading.Event()

    def peer() -> bytes:
        # Reads our close_notify's record but never answers it nor closes, until released.
        with tls_peer_socket(listener, server_ctx) as tls:
            tls.sendall(b"hi")
            raw = socket.socket(fileno=os.dup(tls.fileno()))
            with raw:
                got = raw.recv(65536)
                release.wait(10)
                return got

    done = run_peer(peer)
    transport, proto = await connect_to_peer(listener, client_ctx, ssl_shutdown_timeout=0.2)
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
    async with tls_connection(server_ctx, client_ctx, Collect) as conn:
        proto = conn.proto
        peer = await conn.server_side()
        peer.transport.write(b"from server")
        await proto.wait_for_bytes(11)
        # The server side closes: the client gets eof_received, then connection_lost.
        peer.transport.close()
        assert await proto.lost is None
        assert await peer.lost is None
        assert proto.events == ["made", "data", "eof", "lost"]
        assert peer.events == ["made", "eof", "lost"]


# -- errors after the handshake -------------------------------------------------------------------


def _reset(tls: ssl.SSLSocket) -> None:
    tls.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, SO_LINGER_RESET)


def _corrupt(tls: ssl.SSLSocket) -> None:
    # Bytes in the middle of the TLS stream that are not a valid record, written under
    # TLS's feet through a second fd of the same socket.
    with socket.socket(fileno=os.dup(tls.fileno())) as raw:
        raw.sendall(b"\x17\x03\x03\x00\x10" + b"\x00" * 16)
        try:
            raw.recv(1024)
        except OSError:
            pass


@pytest.mark.parametrize(
    ("break_stream", "error"),
    [(_reset, ConnectionResetError), (_corrupt, ssl.SSLError)],
    ids=["reset", "corrupted-record"],
)
async def test_error_mid_stream_reaches_connection_lost(
    server_ctx: ssl.SSLContext,
    client_ctx: ssl.SSLContext,
    listener: socket.socket,
    break_stream: Callable[[ssl.SSLSocket], None],
    error: type[Exception],
) -> None:
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda loop, context: None)
    release = threading.Event()

    def peer() -> None:
        with tls_peer_socket(listener, server_ctx) as tls:
            tls.sendall(b"hello")
            release.wait(10)
            break_stream(tls)

    done = run_peer(peer)
    transport, proto = await connect_to_peer(listener, client_ctx)
    await proto.wait_for_bytes(5)
    release.set()
    exc = await proto.lost
    await done
    assert isinstance(exc, error)
    transport.close()


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
