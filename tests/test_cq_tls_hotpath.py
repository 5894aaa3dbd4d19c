"""The compiled hot paths of a cq socket under TLS (cqloop/_core/cqsock.pyx: write()
encrypting the output buffer's due bytes, or an unbuffered piece where it lies, and the
receive callback decrypting records straight into the input buffer): ciphertext the
kernel refuses is queued and sent in order, byte counts, and a failed send is a sticky
"socket:write:" error. Run on every loop of the suite."""

from __future__ import annotations

import asyncio
import errno
import socket as pysocket
import ssl
import struct

import pytest
import trustme

from cqloop import socket as cqsocket

HOST = "127.0.0.1"
TIMEOUT = 20.0  # seconds: every wait in this file is bounded by it
SO_LINGER_RESET = struct.pack("ii", 1, 0)  # close() sends RST instead of FIN
# More than loopback's socket buffers take at once, so that part of a write waits.
LARGE = bytes(range(256)) * (16 * 4096)  # 16 MiB
MAX_WRITES = 10_000


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def contexts(ca: trustme.CA) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client


async def _pair(
    contexts: tuple[ssl.SSLContext, ssl.SSLContext], mode: str
) -> tuple[cqsocket.Socket, cqsocket.Socket, cqsocket.Socket]:
    """(listener, server side, client side), TLS up on both, in `mode`."""
    listener = cqsocket.listen(HOST, 0, context=contexts[0], mode=mode)
    client = cqsocket.connect(HOST, listener.localname()[2], context=contexts[1], mode=mode)
    client.settimeout(TIMEOUT)

    async def greet() -> None:  # the client's handshake runs while the server's does
        await client.write(b"hello\n")
        await client.flush()

    greeting = asyncio.ensure_future(greet())
    server = await listener.accept(timeout=TIMEOUT)
    server.settimeout(TIMEOUT)
    assert await server.read("*l") == b"hello"
    await asyncio.wait_for(greeting, TIMEOUT)
    return listener, server, client


async def _read_to_end(con: cqsocket.Socket) -> bytes:
    pieces = []
    while (piece := await con.read(-65536)) is not None:
        pieces.append(piece)
    return b"".join(pieces)


@pytest.mark.parametrize("mode", ["bn", "bf", "bl"])
async def test_tls_writes_larger_than_the_kernel_takes_arrive_whole_and_in_order(contexts, mode):
    # Two tasks write at once: the first write's ciphertext does not all go at once, and
    # the second must not be sent past what waits (the records would then arrive out of
    # sequence and fail to decrypt).
    listener, server, client = await _pair(contexts, mode)
    try:

        async def write_both() -> None:
            await asyncio.gather(server.write(LARGE), server.write(b"tail\n"))
            await server.flush()
            await server.aclose()

        writing = asyncio.ensure_future(write_both())
        assert await asyncio.wait_for(_read_to_end(client), TIMEOUT) == LARGE + b"tail\n"
        await client.aclose()  # the close_notify the server's aclose() waits for
        await asyncio.wait_for(writing, TIMEOUT)
        assert server.stat()["sent"]["count"] == len(LARGE) + len(b"tail\n")
        assert client.stat()["rcvd"]["count"] == len(LARGE) + len(b"tail\n")
    finally:
        client.close()
        server.close()
        listener.close()


async def test_tls_line_echo_counts_every_byte_both_ways(contexts):
    listener, server, client = await _pair(contexts, "bl")
    lines = [b"line %d" % i * (i % 7 + 1) for i in range(200)]
    try:

        async def echo() -> None:
            while (line := await server.read("*l")) is not None:
                await server.write(line, b"\n")
            await server.aclose()

        echoing = asyncio.ensure_future(echo())
        for line in lines:
            await client.write(line, b"\n")
            assert await client.read("*l") == line
        await client.aclose()
        await asyncio.wait_for(echoing, TIMEOUT)
        total = sum(len(line) + 1 for line in lines)
        assert client.stat()["sent"]["count"] == len(b"hello\n") + total
        assert server.stat()["sent"]["count"] == total
        assert server.stat()["rcvd"]["count"] == len(b"hello\n") + total
    finally:
        client.close()
        server.close()
        listener.close()


@pytest.mark.parametrize("mode", ["bn", "bl"])
async def test_tls_write_to_a_reset_peer_is_a_sticky_socket_write_error(contexts, mode):
    listener, server, client = await _pair(contexts, mode)
    try:
        raw = pysocket.socket(fileno=client.fileno())
        try:
            raw.setsockopt(pysocket.SOL_SOCKET, pysocket.SO_LINGER, SO_LINGER_RESET)
        finally:
            raw.detach()
        client.close()
        chunk = b"x" * 65535 + b"\n"
        with pytest.raises(OSError) as caught:
            for _ in range(MAX_WRITES):
                await server.write(chunk)
        assert caught.value.errno in (errno.EPIPE, errno.ECONNRESET)
        assert str(caught.value).startswith(f"[Errno {caught.value.errno}] socket:write: ")
        assert server.error("w") == (caught.value,)
        with pytest.raises(OSError) as again:
            await server.write(b"more\n")
        assert again.value is caught.value
    finally:
        server.close()
        listener.close()
