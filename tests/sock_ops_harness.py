"""What the tests of the loop's low-level socket API share (test_sock_ops.py,
test_sock_sendfile.py, test_getaddrinfo.py, test_sock_oneshot_waits.py): socket fixtures
(socket pairs, a TCP listener and client, a UDP pair, a data file), an executor that records
what is submitted to it, and helpers that await with a safety timeout, cancel, fill a send
buffer, and ask the loop whether an fd is still registered."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import socket

import pytest

from tests.conftest import is_cqloop, is_uvloop, skip_where_uvloop_differs

HAS_IPV6 = socket.has_ipv6 and os.path.exists("/proc/net/if_inet6")

# Big enough that no socket buffer takes it in one send() (Linux's defaults are well
# under 1 MiB for both Unix and loopback TCP sockets).
LARGE_PAYLOAD_BYTES = 8 * 1024 * 1024

# How long an operation the test expects to complete may take before the test fails
# instead of hanging.
SAFETY_TIMEOUT_S = 10

# Enough non-blocking connects to a listen(0) socket that the later ones find its accept
# queue full: Linux drops their SYNs, so they stay in progress until the test ends.
BACKLOG_FILLERS = 2


# -- helpers and fixtures -----------------------------------------------------------------


def no_recvfrom_sendto(loop: asyncio.AbstractEventLoop) -> None:
    skip_where_uvloop_differs(loop, "sock_recvfrom/_into and sock_sendto raise NotImplementedError")


def no_sendfile(loop: asyncio.AbstractEventLoop) -> None:
    skip_where_uvloop_differs(loop, "sock_sendfile raises NotImplementedError")


def nothing_registered(loop: asyncio.AbstractEventLoop, fd: int) -> bool:
    """True when the loop has neither a reader nor a writer for fd. uvloop's remove_reader
    returns None, so there the question is only answered by the behaviour tests."""
    if is_uvloop(loop):
        return True
    if is_cqloop(loop):
        # The kernel watches no fd at all (these tests watch nothing else).
        assert loop._kernel_statistics()["fds"] == 0
    had_reader = loop.remove_reader(fd)
    had_writer = loop.remove_writer(fd)
    return not had_reader and not had_writer


async def within(aw):
    """Await aw, failing the test if the loop never completes it (a guard, not a way to
    wait: every awaited operation here completes at once when the loop works)."""
    return await asyncio.wait_for(aw, SAFETY_TIMEOUT_S)


async def started(coro):
    """A task running coro, after it has run up to its first wait."""
    task = asyncio.ensure_future(coro)
    await asyncio.sleep(0)
    return task


async def cancelled(task: asyncio.Task) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


class RecordingExecutor(concurrent.futures.ThreadPoolExecutor):
    """A default executor that notes what is submitted to it."""

    def __init__(self) -> None:
        super().__init__(max_workers=2)
        self.submitted: list[str] = []

    def submit(self, fn, /, *args, **kwargs):
        self.submitted.append(getattr(fn, "__name__", repr(fn)))
        return super().submit(fn, *args, **kwargs)


@pytest.fixture
async def executor():
    """A RecordingExecutor installed as the running loop's default executor."""
    recording = RecordingExecutor()
    asyncio.get_running_loop().set_default_executor(recording)
    try:
        yield recording
    finally:
        recording.shutdown(wait=True)


@pytest.fixture
def sockpair():
    """A connected pair of non-blocking Unix stream sockets, closed after the test."""
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


@pytest.fixture
def listener():
    """A non-blocking TCP socket listening on 127.0.0.1."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    try:
        yield sock
    finally:
        sock.close()


@pytest.fixture
def client():
    """A non-blocking, unconnected TCP/IPv4 socket."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        yield sock
    finally:
        sock.close()


@pytest.fixture
def udp_pair():
    """Two non-blocking UDP sockets bound on 127.0.0.1."""
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for sock in (a, b):
        sock.setblocking(False)
        sock.bind(("127.0.0.1", 0))
    try:
        yield a, b
    finally:
        a.close()
        b.close()


@pytest.fixture
def data_file(tmp_path):
    """A regular file of 1 MiB of varied bytes, opened for binary reading."""
    payload = bytes(range(256)) * 4096
    path = tmp_path / "payload.bin"
    path.write_bytes(payload)
    with open(path, "rb") as f:
        yield f, payload


async def recv_exactly(loop, sock, size):
    chunks = []
    received = 0
    while received < size:
        chunk = await within(loop.sock_recv(sock, min(65536, size - received)))
        assert chunk, "unexpected EOF"
        chunks.append(chunk)
        received += len(chunk)
    return b"".join(chunks)


def fill_send_buffer(sock):
    """Send until the socket's send buffer is full; return how much went."""
    chunk = b"x" * 65536
    sent = 0
    while True:
        try:
            sent += sock.send(chunk)
        except BlockingIOError:
            return sent
