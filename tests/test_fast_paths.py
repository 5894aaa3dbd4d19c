"""Regression tests for the compiled fast paths of the echo benchmark's sock and streams
modes: the compiled sock_recv / sock_recv_into / sock_sendall (cqloop/_core/sockio.pyx) and
the stream transport's large-read path, which receives straight into a bytes object once
a read was large (cqloop/_core/stream.pyx, _read_data), and reads again at once while a
BufferedProtocol's buffer comes back full (_read_into_buffer).

Each async test runs on cqloop, stock asyncio (the oracle) and uvloop (see conftest.py).
Loopback only; no sleeps: waiting is on futures and on the peer's data.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import socket
import struct
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

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


_P = TypeVar("_P", bound=asyncio.BaseProtocol)


@contextlib.asynccontextmanager
async def transport_on(
    sock: socket.socket, factory: Callable[[], _P]
) -> AsyncIterator[tuple[asyncio.Transport, _P]]:
    """A stream transport over an accepted socket, closed (and its close run) on exit."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.connect_accepted_socket(factory, sock)
    try:
        yield transport, protocol
    finally:
        transport.close()
        await asyncio.sleep(0)


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
        async with transport_on(b, lambda: Collect(len(payload))) as (_, protocol):
            for chunk in chunks:
                await asyncio.wait_for(loop.sock_sendall(a, chunk), SAFETY_TIMEOUT_S)
                # Let the transport read this chunk on its own before the next comes.
                for _ in range(3):
                    await asyncio.sleep(0)
            await asyncio.wait_for(protocol.done, SAFETY_TIMEOUT_S)
            assert b"".join(protocol.chunks) == payload


async def test_eof_right_after_a_large_read_is_seen() -> None:
    loop = asyncio.get_running_loop()
    payload = pattern(LARGE_CHUNK_BYTES, 7)
    a, b = nonblocking_socketpair()
    async with transport_on(b, lambda: Collect(10**9)) as (_, protocol):
        with a:
            await asyncio.wait_for(loop.sock_sendall(a, payload), SAFETY_TIMEOUT_S)
        await asyncio.wait_for(protocol.done, SAFETY_TIMEOUT_S)
        assert b"".join(protocol.chunks) == payload


# -- a BufferedProtocol whose buffer each read fills ---------------------------------------


class SmallBuffer(asyncio.BufferedProtocol):
    """Reads through a buffer far smaller than what arrives; can pause itself once."""

    def __init__(self, expected: int, buffer_size: int, pause_after: int = 0) -> None:
        self.expected = expected
        self.buffer = bytearray(buffer_size)
        self.received = bytearray()
        self.pause_after = pause_after
        self.calls_while_paused = 0
        self.paused = False
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.reached_pause: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        if self.paused:
            self.calls_while_paused += 1
        self.received += self.buffer[:nbytes]
        if self.pause_after and len(self.received) >= self.pause_after and not self.paused:
            self.paused = True
            assert self.transport is not None
            self.transport.pause_reading()
            self.reached_pause.set_result(None)
        if len(self.received) >= self.expected and not self.done.done():
            self.done.set_result(None)


async def test_a_small_buffered_protocol_buffer_gets_every_byte_in_order() -> None:
    loop = asyncio.get_running_loop()
    payload = pattern(LARGE_CHUNK_BYTES, 3)
    a, b = nonblocking_socketpair()
    with a:
        async with transport_on(b, lambda: SmallBuffer(len(payload), 1000)) as (_, protocol):
            await asyncio.wait_for(loop.sock_sendall(a, payload), SAFETY_TIMEOUT_S)
            await asyncio.wait_for(protocol.done, SAFETY_TIMEOUT_S)
            assert bytes(protocol.received) == payload


async def test_pause_reading_in_buffer_updated_stops_the_reads_at_once() -> None:
    loop = asyncio.get_running_loop()
    payload = pattern(LARGE_CHUNK_BYTES, 5)
    a, b = nonblocking_socketpair()
    with a:
        pausing = lambda: SmallBuffer(len(payload), 1000, pause_after=5000)  # noqa: E731
        async with transport_on(b, pausing) as (transport, protocol):
            sending = asyncio.ensure_future(loop.sock_sendall(a, payload))
            await asyncio.wait_for(protocol.reached_pause, SAFETY_TIMEOUT_S)
            # Several loop iterations with data waiting: nothing more may arrive.
            for _ in range(5):
                await asyncio.sleep(0)
            assert protocol.calls_while_paused == 0
            assert len(protocol.received) == 5000
            transport.resume_reading()
            await asyncio.wait_for(protocol.done, SAFETY_TIMEOUT_S)
            await asyncio.wait_for(sending, SAFETY_TIMEOUT_S)
            assert bytes(protocol.received) == payload


# -- a large read takes what arrived since, and keeps an error it meets ---------------------


class Record(asyncio.Protocol):
    """Records data, end of file and the connection_lost exception."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.eof = False
        self.lost: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

        self._waiting: tuple[int, asyncio.Future[None]] | None = None

    def data_received(self, data: bytes) -> None:
        self.received += data
        if self._waiting is not None and len(self.received) >= self._waiting[0]:
            self._waiting[1].set_result(None)
            self._waiting = None

    async def until(self, size: int) -> None:
        """Until `size` bytes in all have arrived."""
        if len(self.received) < size:
            waiter = asyncio.get_running_loop().create_future()
            self._waiting = (size, waiter)
            await asyncio.wait_for(waiter, SAFETY_TIMEOUT_S)

    def eof_received(self) -> None:
        self.eof = True

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.set_result(exc)


async def test_a_reset_after_a_large_write_is_reported_after_its_data() -> None:
    # The peer's data and its reset are both waiting before the transport reads: the read
    # takes the data (large: the transport reads again at once, and meets the reset), and
    # the reset must still come through as connection_lost(ConnectionResetError), not as
    # an end of file.
    payload = pattern(40 * 1024, 9)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        peer = socket.create_connection(listener.getsockname())
        server_side, _ = listener.accept()
    with peer:
        peer.sendall(payload)
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    server_side.setblocking(False)
    async with transport_on(server_side, Record) as (_, protocol):
        exc = await asyncio.wait_for(protocol.lost, SAFETY_TIMEOUT_S)
        assert bytes(protocol.received) == payload
        assert isinstance(exc, ConnectionResetError)
        assert not protocol.eof


async def test_after_many_whole_large_messages_data_and_a_reset_still_arrive_in_order() -> None:
    # Each message arrives whole before the next is sent, so cqloop's second read finds
    # nothing and the transport stops making it but for a probe now and then (stream.pyx,
    # _want_reread); the last message and the reset behind it must still come through.
    messages = [pattern(40 * 1024, seed) for seed in range(40)]
    with socket.create_server(("127.0.0.1", 0)) as listener:
        peer = socket.create_connection(listener.getsockname())
        server_side, _ = listener.accept()
    server_side.setblocking(False)
    with peer:
        async with transport_on(server_side, Record) as (_, protocol):
            sent = 0
            for message in messages[:-1]:
                peer.sendall(message)
                sent += len(message)
                await protocol.until(sent)
            peer.sendall(messages[-1])
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            peer.close()
            exc = await asyncio.wait_for(protocol.lost, SAFETY_TIMEOUT_S)
            assert bytes(protocol.received) == b"".join(messages)
            assert isinstance(exc, ConnectionResetError)
            assert not protocol.eof


# -- the settled heap (kernel.pyx, _settle_heap) --------------------------------------------

# Blocks of a 100 KiB echo's size, freed from the top of the heap: glibc's default trim
# threshold (128 KiB) gives all but 128 KiB of them back to the kernel at once, and the next
# message faults fresh pages in again (5.7 page faults per message in the echo benchmark's
# sock mode before the heap was settled at loop creation, not at the first transport).
_HEAP_PROBE = """
import ctypes, sys
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "loop":
    import cqloop
    cqloop.new_event_loop().close()
blocks = [libc.malloc(100 * 1024) for _ in range(8)]
for block in reversed(blocks):
    libc.free(block)
print(libc.mallinfo2().keepcost)
"""
# What the heap keeps of the 800 KiB freed: glibc's default keeps at most its 128 KiB trim
# threshold; the settled heap all of it that ends at the top (where it lies depends on what
# the interpreter allocated before, so not exactly all of it).
_KEPT_BYTES = 4 * 100 * 1024


def _kept_heap_bytes(make_loop: bool) -> int:
    result = subprocess.run(
        [sys.executable, "-c", _HEAP_PROBE, "loop" if make_loop else "none"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return int(result.stdout)


@pytest.mark.cqloop_only
def test_a_process_that_made_a_loop_keeps_freed_message_sized_blocks_in_its_heap() -> None:
    try:
        ctypes.CDLL(None).mallinfo2  # noqa: B018 (glibc 2.33 and later)
    except AttributeError:
        pytest.skip("not glibc's malloc: no thresholds to settle")
    if _kept_heap_bytes(make_loop=False) >= _KEPT_BYTES:
        pytest.skip("this malloc keeps freed blocks anyway (MALLOC_TRIM_THRESHOLD_ set?)")
    assert _kept_heap_bytes(make_loop=True) >= _KEPT_BYTES
