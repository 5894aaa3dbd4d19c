"""Regression tests for the compiled fast paths of the echo benchmark's sock and streams
modes: the compiled sock_recv / sock_recv_into / sock_sendall (cqloop/_core/sockio.pyx) and
the stream transport's large-read path, which receives straight into a bytes object once
a read was large (cqloop/_core/stream.pyx, _read_data).

Each async test runs on cqloop, stock asyncio (the oracle) and uvloop (see conftest.py).
Loopback only; no sleeps: waiting is on futures and on the peer's data.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

# Over the stream transport's LARGE_READ_BYTES (16 KiB): a read this large switches the
# next reads to the direct path.
LARGE_CHUNK_BYTES = 200 * 1024
SMALL_CHUNK_BYTES = 100
SAFETY_TIMEOUT_S = 10


def nonblocking_socketpair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    return a, b


def pattern(size: int, seed: int) -> bytes:
    """Bytes that differ from one offset and one chunk to the next, so that a byte read
    twice, lost or taken from a stale buffer shows."""
    return bytes((seed * 31 + i * 7) % 251 for i in range(size))


# -- the compiled sock_* coroutines --------------------------------------------------------


async def test_sock_recv_and_sendall_are_coroutines_create_task_accepts() -> None:
    loop = asyncio.get_running_loop()
    a, b = nonblocking_socketpair()
    with a, b:
        sending = loop.sock_sendall(a, b"ping")
        assert asyncio.iscoroutine(sending)
        await asyncio.create_task(sending)
        receiving = loop.sock_recv(b, 4)
        assert asyncio.iscoroutine(receiving)
        assert await asyncio.create_task(receiving) == b"ping"


async def test_sock_recv_waits_then_gets_data_and_recv_into_too() -> None:
    loop = asyncio.get_running_loop()
    a, b = nonblocking_socketpair()
    with a, b:
        pending = asyncio.ensure_future(loop.sock_recv(b, 1024))
        await asyncio.sleep(0)
        assert not pending.done()
        a.send(b"hello")
        assert await asyncio.wait_for(pending, SAFETY_TIMEOUT_S) == b"hello"
        buf = bytearray(16)
        pending_into = asyncio.ensure_future(loop.sock_recv_into(b, buf))
        await asyncio.sleep(0)
        assert not pending_into.done()
        a.send(b"world")
        assert await asyncio.wait_for(pending_into, SAFETY_TIMEOUT_S) == 5
        assert buf[:5] == b"world"


async def test_cancelled_sock_recv_leaves_fd_free_for_the_next_wait() -> None:
    loop = asyncio.get_running_loop()
    a, b = nonblocking_socketpair()
    with a, b:
        pending = asyncio.ensure_future(loop.sock_recv(b, 1024))
        await asyncio.sleep(0)
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending
        again = asyncio.ensure_future(loop.sock_recv(b, 1024))
        await asyncio.sleep(0)
        a.send(b"after")
        assert await asyncio.wait_for(again, SAFETY_TIMEOUT_S) == b"after"


async def test_sock_recv_wait_ends_with_eof_when_peer_closes() -> None:
    loop = asyncio.get_running_loop()
    a, b = nonblocking_socketpair()
    with b:
        pending = asyncio.ensure_future(loop.sock_recv(b, 1024))
        await asyncio.sleep(0)
        a.close()
        assert await asyncio.wait_for(pending, SAFETY_TIMEOUT_S) == b""


async def test_sock_sendall_partial_send_completes_when_writable() -> None:
    loop = asyncio.get_running_loop()
    a, b = nonblocking_socketpair()
    payload = pattern(4 * 1024 * 1024, 1)  # more than a socket buffer takes at once
    with a, b:
        sending = asyncio.ensure_future(loop.sock_sendall(a, payload))
        received = bytearray()
        while len(received) < len(payload):
            received += await asyncio.wait_for(loop.sock_recv(b, 65536), SAFETY_TIMEOUT_S)
        await asyncio.wait_for(sending, SAFETY_TIMEOUT_S)
        assert bytes(received) == payload


# -- the stream transport's large reads ----------------------------------------------------


class Collect(asyncio.Protocol):
    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.chunks: list[bytes] = []
        self.received = 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        assert type(data) is bytes
        self.chunks.append(data)
        self.received += len(data)
        if self.received >= self.expected and not self.done.done():
            self.done.set_result(None)

    def eof_received(self) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def test_large_then_small_reads_deliver_every_byte_once() -> None:
    loop = asyncio.get_running_loop()
    # Alternating large and small chunks: the transport switches between its two read
    # paths, and each data_received must get exactly the bytes sent, whatever the path.
    chunks = []
    for seed in range(6):
        chunks.append(pattern(LARGE_CHUNK_BYTES, seed))
        chunks.append(pattern(SMALL_CHUNK_BYTES, seed + 100))
    payload = b"".join(chunks)
    a, b = nonblocking_socketpair()
    with a:
        transport, protocol = await loop.connect_accepted_socket(lambda: Collect(len(payload)), b)
        try:
            for chunk in chunks:
                await asyncio.wait_for(loop.sock_sendall(a, chunk), SAFETY_TIMEOUT_S)
                # Let the transport read this chunk on its own before the next comes.
                for _ in range(3):
                    await asyncio.sleep(0)
            await asyncio.wait_for(protocol.done, SAFETY_TIMEOUT_S)
            assert b"".join(protocol.chunks) == payload
        finally:
            transport.close()
            await asyncio.sleep(0)


async def test_eof_right_after_a_large_read_is_seen() -> None:
    loop = asyncio.get_running_loop()
    payload = pattern(LARGE_CHUNK_BYTES, 7)
    a, b = nonblocking_socketpair()
    transport, protocol = await loop.connect_accepted_socket(lambda: Collect(10**9), b)
    try:
        with a:
            await asyncio.wait_for(loop.sock_sendall(a, payload), SAFETY_TIMEOUT_S)
        await asyncio.wait_for(protocol.done, SAFETY_TIMEOUT_S)
        assert b"".join(protocol.chunks) == payload
    finally:
        transport.close()
        await asyncio.sleep(0)
