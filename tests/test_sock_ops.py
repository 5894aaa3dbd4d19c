"""The loop's low-level socket API (sock_recv ... sock_sendfile) and name resolution
(getaddrinfo, getnameinfo), checked on cqloop against stock asyncio (the oracle) and uvloop.

Each test runs once per loop kind (see conftest.py). Loopback only: 127.0.0.1, ::1, Unix
sockets and socket pairs. Waiting is done on futures and on the loop's own turns
(`asyncio.sleep(0)` lets a just-created task run up to its first wait); no test sleeps for
a duration. Where uvloop knowingly differs from asyncio (it has no sock_recvfrom,
sock_recvfrom_into, sock_sendto or sock_sendfile, and a cancelled operation removes the fd's
registration even when another operation owns it), the test says so and skips.

Past 800 lines: the sock_sendfile and name resolution sections are the next to move
out (test_sock_sendfile.py, test_getaddrinfo.py).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import gc
import io
import logging
import os
import select
import socket
import ssl
import warnings
from collections.abc import AsyncIterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


# -- receiving ------------------------------------------------------------------------------


async def test_sock_recv_returns_data_already_there(sockpair):
    loop = asyncio.get_running_loop()
    a, b = sockpair
    b.send(b"hello")
    assert await loop.sock_recv(a, 100) == b"hello"


async def test_sock_recv_waits_for_data(sockpair):
    loop = asyncio.get_running_loop()
    a, b = sockpair
    task = await started(loop.sock_recv(a, 100))
    assert not task.done()
    b.send(b"later")
    assert await within(task) == b"later"
    assert nothing_registered(loop, a.fileno())


async def test_sock_recv_returns_empty_bytes_at_eof(sockpair):
    loop = asyncio.get_running_loop()
    a, b = sockpair
    task = await started(loop.sock_recv(a, 100))
    b.shutdown(socket.SHUT_WR)
    assert await within(task) == b""


async def test_sock_recv_raises_the_sockets_error(listener, client):
    loop = asyncio.get_running_loop()
    await within(loop.sock_connect(client, listener.getsockname()))
    conn, _ = await within(loop.sock_accept(listener))
    with conn:
        task = await started(loop.sock_recv(client, 100))
        # Linger 0: close() sends RST instead of FIN.
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    with pytest.raises(ConnectionResetError):
        await within(task)
    assert nothing_registered(loop, client.fileno())


async def test_sock_recv_into_fills_the_buffer(sockpair):
    loop = asyncio.get_running_loop()
    a, b = sockpair
    buf = bytearray(10)
    b.send(b"now")
    assert await loop.sock_recv_into(a, buf) == 3
    task = await started(loop.sock_recv_into(a, memoryview(buf)[3:]))
    b.send(b"later")
    assert await within(task) == 5
    assert bytes(buf) == b"nowlater\x00\x00"


async def test_sock_recvfrom_returns_data_and_sender(udp_pair):
    loop = asyncio.get_running_loop()
    no_recvfrom_sendto(loop)
    a, b = udp_pair
    task = await started(loop.sock_recvfrom(a, 100))
    b.sendto(b"datagram", a.getsockname())
    assert await within(task) == (b"datagram", b.getsockname())
    b.sendto(b"truncated", a.getsockname())
    assert await loop.sock_recvfrom(a, 5) == (b"trunc", b.getsockname())


async def test_sock_recvfrom_into_honours_nbytes(udp_pair):
    loop = asyncio.get_running_loop()
    no_recvfrom_sendto(loop)
    a, b = udp_pair
    buf = bytearray(16)
    b.sendto(b"0123456789", a.getsockname())
    assert await loop.sock_recvfrom_into(a, buf, 4) == (4, b.getsockname())
    assert bytes(buf[:5]) == b"0123\x00"
    # nbytes 0 means the whole buffer.
    task = await started(loop.sock_recvfrom_into(a, buf))
    b.sendto(b"abcdefghij", a.getsockname())
    assert await within(task) == (10, b.getsockname())
    assert bytes(buf[:10]) == b"abcdefghij"


async def test_sock_recvfrom_into_refuses_nbytes_past_the_buffer(udp_pair):
    loop = asyncio.get_running_loop()
    no_recvfrom_sendto(loop)
    a, b = udp_pair
    b.sendto(b"x", a.getsockname())
    with pytest.raises(ValueError):
        await loop.sock_recvfrom_into(a, bytearray(2), 10)


# -- sending --------------------------------------------------------------------------------


async def test_sock_sendall_sends_small_data_at_once(sockpair):
    loop = asyncio.get_running_loop()
    a, b = sockpair
    assert await loop.sock_sendall(a, b"small") is None
    assert b.recv(100) == b"small"
    assert await loop.sock_sendall(a, b"") is None


async def test_sock_sendall_of_large_data_to_a_slow_reader_sends_it_all_in_order(sockpair):
    loop = asyncio.get_running_loop()
    a, b = sockpair
    payload = os.urandom(1024) * (LARGE_PAYLOAD_BYTES // 1024)
    sender = await started(loop.sock_sendall(a, payload))
    # The buffer is full and nobody reads yet: only part of it has gone.
    assert not sender.done()
    received = await recv_exactly(loop, b, len(payload))
    assert await within(sender) is None
    assert received == payload
    assert nothing_registered(loop, a.fileno())


async def test_sock_sendall_accepts_any_buffer(sockpair):
    loop = asyncio.get_running_loop()
    a, b = sockpair
    await loop.sock_sendall(a, bytearray(b"bytearray "))
    await loop.sock_sendall(a, memoryview(b"memoryview"))
    assert await recv_exactly(loop, b, 20) == b"bytearray memoryview"


async def test_sock_sendall_raises_when_the_peer_is_gone(sockpair):
    loop = asyncio.get_running_loop()
    a, b = sockpair
    fill_send_buffer(a)
    sender = await started(loop.sock_sendall(a, b"more" * 100000))
    b.close()
    with pytest.raises((BrokenPipeError, ConnectionResetError)):
        await within(sender)
    assert nothing_registered(loop, a.fileno())


async def test_sock_sendto_sends_a_datagram(udp_pair):
    loop = asyncio.get_running_loop()
    no_recvfrom_sendto(loop)
    a, b = udp_pair
    assert await loop.sock_sendto(a, b"to b", b.getsockname()) == 4
    assert await loop.sock_recvfrom(b, 100) == (b"to b", a.getsockname())


async def test_sock_sendto_waits_while_the_receiver_is_full(tmp_path):
    # A Unix datagram socket refuses (EAGAIN) to send to a receiver whose queue is full,
    # which a UDP socket never does.
    loop = asyncio.get_running_loop()
    no_recvfrom_sendto(loop)
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    with receiver, sender:
        receiver.setblocking(False)
        sender.setblocking(False)
        path = str(tmp_path / "receiver.sock")
        receiver.bind(path)
        queued = 0
        while True:
            try:
                sender.sendto(b"filler", path)
                queued += 1
            except BlockingIOError:
                break
        task = await started(loop.sock_sendto(sender, b"last", path))
        assert not task.done()
        for _ in range(queued):
            assert receiver.recv(100) == b"filler"
        assert await within(task) == 4
        assert await loop.sock_recv(receiver, 100) == b"last"
        assert nothing_registered(loop, sender.fileno())


# -- connecting and accepting ---------------------------------------------------------------


async def test_sock_connect_and_sock_accept_over_tcp(listener, client):
    loop = asyncio.get_running_loop()
    accepting = await started(loop.sock_accept(listener))
    assert not accepting.done()
    await within(loop.sock_connect(client, listener.getsockname()))
    conn, address = await within(accepting)
    with conn:
        assert address == client.getsockname()
        assert conn.gettimeout() == 0  # handed back non-blocking
        await loop.sock_sendall(client, b"ping")
        assert await loop.sock_recv(conn, 10) == b"ping"
    assert nothing_registered(loop, listener.fileno())
    assert nothing_registered(loop, client.fileno())


async def test_sock_accept_returns_a_waiting_connection_at_once(listener, client):
    loop = asyncio.get_running_loop()
    await within(loop.sock_connect(client, listener.getsockname()))
    conn, address = await within(loop.sock_accept(listener))
    with conn:
        assert address == client.getsockname()
        assert conn.gettimeout() == 0


@pytest.mark.skipif(not HAS_IPV6, reason="no IPv6 on this machine")
async def test_sock_connect_over_ipv6_with_flowinfo_and_scope():
    loop = asyncio.get_running_loop()
    server = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    client6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    with server, client6:
        server.setblocking(False)
        client6.setblocking(False)
        server.bind(("::1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        await within(loop.sock_connect(client6, ("::1", port, 0, 0)))
        conn, address = await within(loop.sock_accept(server))
        with conn:
            assert address[:2] == client6.getsockname()[:2]


async def test_sock_connect_over_a_unix_socket(tmp_path):
    loop = asyncio.get_running_loop()
    path = str(tmp_path / "server.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client_unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with server, client_unix:
        server.setblocking(False)
        client_unix.setblocking(False)
        server.bind(path)
        server.listen(1)
        await within(loop.sock_connect(client_unix, path))
        conn, _ = await within(loop.sock_accept(server))
        with conn:
            await loop.sock_sendall(conn, b"over unix")
            assert await loop.sock_recv(client_unix, 100) == b"over unix"


async def test_sock_connect_resolves_a_host_name(listener, client):
    loop = asyncio.get_running_loop()
    port = listener.getsockname()[1]
    await within(loop.sock_connect(client, ("localhost", port)))
    assert client.getpeername() == ("127.0.0.1", port)
    conn, _ = await within(loop.sock_accept(listener))
    conn.close()


async def test_sock_connect_asks_getaddrinfo_with_the_sockets_parameters(listener, client):
    loop = asyncio.get_running_loop()
    skip_where_uvloop_differs(loop, "its loop takes no instance attributes to spy with")
    queries = []
    real_getaddrinfo = loop.getaddrinfo

    async def spy(host, port, **kwargs):
        queries.append((host, port, kwargs))
        return await real_getaddrinfo(host, port, **kwargs)

    loop.getaddrinfo = spy
    try:
        port = listener.getsockname()[1]
        await within(loop.sock_connect(client, ("127.0.0.1", port)))  # an IP: no query
        assert queries == []
        conn, _ = await within(loop.sock_accept(listener))
        conn.close()
        other = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with other:
            other.setblocking(False)
            await loop.sock_connect(other, ("localhost", str(port)))
            conn, _ = await within(loop.sock_accept(listener))
            conn.close()
    finally:
        del loop.getaddrinfo
    assert queries == [
        (
            "localhost",
            str(port),
            {
                "family": socket.AF_INET,
                "type": socket.SOCK_STREAM,
                "proto": other.proto,
                "flags": 0,
            },
        )
    ]


async def test_sock_connect_to_a_closed_port_is_refused(client):
    loop = asyncio.get_running_loop()
    # A bound socket that does not listen owns the port, so nothing else can answer on it.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as closed:
        closed.bind(("127.0.0.1", 0))
        with pytest.raises(ConnectionRefusedError) as raised:
            await within(loop.sock_connect(client, closed.getsockname()))
    assert raised.value.errno == errno.ECONNREFUSED
    assert nothing_registered(loop, client.fileno())


async def test_sock_connect_failure_leaves_no_reference_cycle(client):
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as closed:
        closed.bind(("127.0.0.1", 0))
        with pytest.raises(ConnectionRefusedError) as raised:
            await loop.sock_connect(client, closed.getsockname())
    # The error's traceback holds the frames it went through; none may still hold the
    # future it was delivered by (future -> error -> traceback -> frame -> future).
    tb = raised.value.__traceback__
    while tb is not None:
        held = [v for v in tb.tb_frame.f_locals.values() if isinstance(v, asyncio.Future)]
        assert not held, tb.tb_frame
        tb = tb.tb_next


# -- the non-blocking check and refused sockets ---------------------------------------------


def _sock_calls(sock, other_address):
    return {
        "sock_recv": lambda loop: loop.sock_recv(sock, 1),
        "sock_recv_into": lambda loop: loop.sock_recv_into(sock, bytearray(1)),
        "sock_recvfrom": lambda loop: loop.sock_recvfrom(sock, 1),
        "sock_recvfrom_into": lambda loop: loop.sock_recvfrom_into(sock, bytearray(1)),
        "sock_sendall": lambda loop: loop.sock_sendall(sock, b"x"),
        "sock_sendto": lambda loop: loop.sock_sendto(sock, b"x", other_address),
        "sock_connect": lambda loop: loop.sock_connect(sock, other_address),
        "sock_accept": lambda loop: loop.sock_accept(sock),
        "sock_sendfile": lambda loop: loop.sock_sendfile(sock, io.BytesIO(b"x")),
    }


SOCK_METHODS = list(_sock_calls(None, None))


@pytest.mark.parametrize("method", SOCK_METHODS)
async def test_blocking_socket_is_refused_in_debug_mode(method):
    loop = asyncio.get_running_loop()
    if method in {"sock_recvfrom", "sock_recvfrom_into", "sock_sendto"}:
        no_recvfrom_sendto(loop)
    if method == "sock_sendfile":
        no_sendfile(loop)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        sock.settimeout(5)
        loop.set_debug(True)
        try:
            with pytest.raises(ValueError, match=r"^the socket must be non-blocking$"):
                await _sock_calls(sock, ("127.0.0.1", 1))[method](loop)
        finally:
            loop.set_debug(False)


@pytest.mark.parametrize("method", SOCK_METHODS)
async def test_ssl_socket_is_refused(method):
    loop = asyncio.get_running_loop()
    skip_where_uvloop_differs(loop, "it does not check for SSL sockets")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    plain = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    plain.setblocking(False)
    wrapped = context.wrap_socket(plain, server_hostname="localhost", do_handshake_on_connect=False)
    with plain, wrapped:
        with pytest.raises(TypeError, match=r"^Socket cannot be of type SSLSocket$"):
            await _sock_calls(wrapped, ("127.0.0.1", 1))[method](loop)


# -- cancellation ---------------------------------------------------------------------------


async def test_cancelled_sock_recv_leaves_no_registration_and_takes_no_data(sockpair):
    loop = asyncio.get_running_loop()
    a, b = sockpair
    await cancelled(await started(loop.sock_recv(a, 100)))
    assert nothing_registered(loop, a.fileno())
    b.send(b"for the next one")
    assert await loop.sock_recv(a, 100) == b"for the next one"


async def test_cancelled_sock_recv_into_leaves_no_registration(sockpair):
    loop = asyncio.get_running_loop()
    a, b = sockpair
    buf = bytearray(4)
    await cancelled(await started(loop.sock_recv_into(a, buf)))
    assert nothing_registered(loop, a.fileno())
    b.send(b"data")
    assert await loop.sock_recv_into(a, buf) == 4


async def test_cancelled_sock_recvfrom_leaves_no_registration(udp_pair):
    loop = asyncio.get_running_loop()
    no_recvfrom_sendto(loop)
    a, _ = udp_pair
    await cancelled(await started(loop.sock_recvfrom(a, 100)))
    await cancelled(await started(loop.sock_recvfrom_into(a, bytearray(10))))
    assert nothing_registered(loop, a.fileno())


async def test_cancelled_sock_accept_leaves_no_registration_and_takes_no_connection(
    listener, client
):
    loop = asyncio.get_running_loop()
    await cancelled(await started(loop.sock_accept(listener)))
    assert nothing_registered(loop, listener.fileno())
    await within(loop.sock_connect(client, listener.getsockname()))
    conn, address = await within(loop.sock_accept(listener))
    with conn:
        assert address == client.getsockname()


async def test_cancelled_sock_connect_leaves_no_registration():
    loop = asyncio.get_running_loop()
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(BACKLOG_FILLERS)]
    pending = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        for sock in [*sockets, pending]:
            sock.setblocking(False)
        # The first connection fills the accept queue; the others' SYNs are dropped.
        await within(loop.sock_connect(sockets[0], server.getsockname()))
        for sock in sockets[1:]:
            try:
                sock.connect(server.getsockname())
            except BlockingIOError:
                pass
        task = await started(loop.sock_connect(pending, server.getsockname()))
        assert not task.done()
        await cancelled(task)
        assert nothing_registered(loop, pending.fileno())
    finally:
        for sock in [*sockets, pending, server]:
            sock.close()


async def test_cancelled_sock_sendall_leaves_no_registration(sockpair):
    loop = asyncio.get_running_loop()
    a, _ = sockpair
    fill_send_buffer(a)
    await cancelled(await started(loop.sock_sendall(a, b"more" * 100000)))
    assert nothing_registered(loop, a.fileno())


async def test_cancelled_sock_sendto_leaves_no_registration(tmp_path):
    loop = asyncio.get_running_loop()
    no_recvfrom_sendto(loop)
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    with receiver, sender:
        sender.setblocking(False)
        path = str(tmp_path / "receiver.sock")
        receiver.bind(path)
        with pytest.raises(BlockingIOError):
            while True:
                sender.sendto(b"filler", path)
        await cancelled(await started(loop.sock_sendto(sender, b"last", path)))
        assert nothing_registered(loop, sender.fileno())


async def test_sock_recv_that_times_out_leaves_no_registration(sockpair):
    loop = asyncio.get_running_loop()
    a, _ = sockpair
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0):
            await loop.sock_recv(a, 100)
    assert nothing_registered(loop, a.fileno())


@pytest.mark.cqloop_only
async def test_sock_accept_cancelled_after_accepting_closes_the_connection(tmp_path):
    # The connection is accepted by the loop's callback, then the task is cancelled before
    # it resumes: the accepted socket must not be left for the GC to close (asyncio leaves
    # it, with a ResourceWarning).
    loop = asyncio.get_running_loop()
    path = str(tmp_path / "server.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    peer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with server, peer:
        server.setblocking(False)
        server.bind(path)
        server.listen(1)
        task = await started(loop.sock_accept(server))
        peer.connect(path)  # a Unix connect is queued at once
        peer.setblocking(False)
        # Turn 1: the listener turns readable; this task runs before the accept callback.
        # Turn 2: the callback has accepted and completed the future; the task's wake-up
        # is queued behind this one, so cancelling now is "after the accept".
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            await cancelled(task)
            gc.collect()
        assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
        assert peer.recv(10) == b""  # the accepted end was closed
        assert nothing_registered(loop, server.fileno())


# -- several operations on one fd -----------------------------------------------------------


async def test_second_sock_recv_on_an_fd_replaces_the_first(sockpair):
    loop = asyncio.get_running_loop()
    skip_where_uvloop_differs(loop, "cancelling the first removes the second's registration")
    a, b = sockpair
    first = await started(loop.sock_recv(a, 100))
    second = await started(loop.sock_recv(a, 100))
    # As asyncio: the second registration replaced the first, and cancelling the first
    # does not remove the second's.
    await cancelled(first)
    b.send(b"to the second")
    assert await within(second) == b"to the second"
    assert nothing_registered(loop, a.fileno())


async def test_sock_recv_and_sock_sendall_wait_on_one_fd_independently(sockpair):
    loop = asyncio.get_running_loop()
    a, b = sockpair
    filled = fill_send_buffer(a)
    reading = await started(loop.sock_recv(a, 100))
    writing = await started(loop.sock_sendall(a, b"tail"))
    assert not reading.done()
    assert not writing.done()
    await loop.sock_sendall(b, b"reply")
    assert await within(reading) == b"reply"
    assert await recv_exactly(loop, b, filled + 4) == b"x" * filled + b"tail"
    await within(writing)
    assert nothing_registered(loop, a.fileno())


async def test_add_reader_after_a_finished_sock_recv_works(sockpair):
    loop = asyncio.get_running_loop()
    a, b = sockpair
    task = await started(loop.sock_recv(a, 100))
    b.send(b"one")
    assert await within(task) == b"one"
    got = loop.create_future()
    loop.add_reader(a, lambda: got.done() or got.set_result(a.recv(100)))
    b.send(b"two")
    assert await within(got) == b"two"
    loop.remove_reader(a)


# -- sock_sendfile --------------------------------------------------------------------------


async def test_sock_sendfile_sends_a_regular_file_without_copying(sockpair, data_file, executor):
    loop = asyncio.get_running_loop()
    no_sendfile(loop)
    a, b = sockpair
    f, payload = data_file
    sending = asyncio.ensure_future(loop.sock_sendfile(a, f))
    received = await recv_exactly(loop, b, len(payload))
    assert await within(sending) == len(payload)
    assert received == payload
    assert f.tell() == len(payload)
    # os.sendfile did the work: the read-and-send fallback would have read in the executor.
    assert executor.submitted == []
    assert nothing_registered(loop, a.fileno())


async def test_sock_sendfile_honours_offset_and_count(sockpair, data_file):
    loop = asyncio.get_running_loop()
    no_sendfile(loop)
    a, b = sockpair
    f, payload = data_file
    assert await loop.sock_sendfile(a, f, 1000, 5000) == 5000
    assert await recv_exactly(loop, b, 5000) == payload[1000:6000]
    assert f.tell() == 6000


async def test_sock_sendfile_of_an_empty_file_sends_nothing(sockpair, tmp_path):
    loop = asyncio.get_running_loop()
    no_sendfile(loop)
    a, _ = sockpair
    path = tmp_path / "empty"
    path.write_bytes(b"")
    with open(path, "rb") as f:
        assert await loop.sock_sendfile(a, f) == 0
        assert f.tell() == 0


async def test_sock_sendfile_from_past_the_end_sends_nothing(sockpair, data_file):
    loop = asyncio.get_running_loop()
    no_sendfile(loop)
    a, _ = sockpair
    f, payload = data_file
    assert await loop.sock_sendfile(a, f, len(payload) + 10, 100) == 0
    assert f.tell() == 0


async def test_sock_sendfile_falls_back_for_a_file_without_fileno(sockpair, executor):
    loop = asyncio.get_running_loop()
    no_sendfile(loop)
    a, b = sockpair
    payload = os.urandom(600 * 1024)
    f = io.BytesIO(payload)
    sending = asyncio.ensure_future(loop.sock_sendfile(a, f, 100, len(payload) - 200))
    received = await recv_exactly(loop, b, len(payload) - 200)
    assert await within(sending) == len(payload) - 200
    assert received == payload[100:-100]
    assert f.tell() == len(payload) - 100
    assert executor.submitted  # the fallback read in the default executor


async def test_sock_sendfile_without_fallback_raises_for_a_file_without_fileno(sockpair):
    loop = asyncio.get_running_loop()
    no_sendfile(loop)
    a, _ = sockpair
    f = io.BytesIO(b"data")
    with pytest.raises(asyncio.SendfileNotAvailableError, match=r"^not a regular file$"):
        await loop.sock_sendfile(a, f, fallback=False)
    assert f.tell() == 0


async def test_sock_sendfile_without_fallback_raises_when_sendfile_fails(sockpair):
    # sendfile() cannot read from a pipe: with a count it fails at once (a pipe's size is 0,
    # so without one asyncio sends nothing and returns 0).
    loop = asyncio.get_running_loop()
    no_sendfile(loop)
    a, _ = sockpair
    rfd, wfd = os.pipe()
    with open(rfd, "rb", buffering=0) as r, open(wfd, "wb", buffering=0) as w:
        w.write(b"piped")
        with pytest.raises(asyncio.SendfileNotAvailableError, match=r"^os\.sendfile call failed$"):
            await loop.sock_sendfile(a, r, 0, 5, fallback=False)
        # asyncio's rule, kept: without a count the size comes from fstat(), 0 for a pipe.
        assert await loop.sock_sendfile(a, r) == 0


async def test_sock_sendfile_of_a_large_file_to_a_slow_reader(sockpair, tmp_path):
    loop = asyncio.get_running_loop()
    no_sendfile(loop)
    a, b = sockpair
    payload = os.urandom(1024) * (LARGE_PAYLOAD_BYTES // 1024)
    path = tmp_path / "large.bin"
    path.write_bytes(payload)
    with open(path, "rb") as f:
        sending = await started(loop.sock_sendfile(a, f))
        assert not sending.done()
        received = await recv_exactly(loop, b, len(payload))
        assert await within(sending) == len(payload)
        assert received == payload
        assert f.tell() == len(payload)
    assert nothing_registered(loop, a.fileno())


async def test_cancelled_sock_sendfile_leaves_no_registration(sockpair, tmp_path):
    loop = asyncio.get_running_loop()
    no_sendfile(loop)
    a, _ = sockpair
    path = tmp_path / "large.bin"
    path.write_bytes(b"z" * LARGE_PAYLOAD_BYTES)
    with open(path, "rb") as f:
        await cancelled(await started(loop.sock_sendfile(a, f)))
    assert nothing_registered(loop, a.fileno())


@pytest.mark.cqloop_only
async def test_cancelled_sock_sendfile_leaves_the_file_position_after_what_was_sent(
    sockpair, tmp_path
):
    # asyncio means to (its fallback does, and its native path when the cancellation meets
    # a queued callback); cqloop always does.
    loop = asyncio.get_running_loop()
    a, b = sockpair
    path = tmp_path / "large.bin"
    path.write_bytes(b"z" * LARGE_PAYLOAD_BYTES)
    with open(path, "rb") as f:
        await cancelled(await started(loop.sock_sendfile(a, f)))
        sent = f.tell()
        assert 0 < sent < LARGE_PAYLOAD_BYTES
        assert len(await recv_exactly(loop, b, sent)) == sent


async def test_sock_sendfile_checks_its_arguments(sockpair, data_file, tmp_path, udp_pair):
    loop = asyncio.get_running_loop()
    no_sendfile(loop)
    a, _ = sockpair
    f, _ = data_file
    text_path = tmp_path / "text.txt"
    text_path.write_text("text")
    with open(text_path) as text:
        with pytest.raises(ValueError, match=r"^file should be opened in binary mode$"):
            await loop.sock_sendfile(a, text)
    with pytest.raises(ValueError, match=r"^only SOCK_STREAM type sockets are supported$"):
        await loop.sock_sendfile(udp_pair[0], f)
    with pytest.raises(ValueError, match=r"^count must be a positive integer \(got 0\)$"):
        await loop.sock_sendfile(a, f, 0, 0)
    with pytest.raises(TypeError, match=r"^count must be a positive integer \(got '1'\)$"):
        await loop.sock_sendfile(a, f, 0, "1")
    with pytest.raises(ValueError, match=r"^offset must be a non-negative integer \(got -1\)$"):
        await loop.sock_sendfile(a, f, -1)
    with pytest.raises(TypeError, match=r"^offset must be a non-negative integer \(got 1\.5\)$"):
        await loop.sock_sendfile(a, f, 1.5)
    assert f.tell() == 0


# -- getaddrinfo and getnameinfo ------------------------------------------------------------

NUMERIC_QUERIES = [
    ("127.0.0.1", 80, 0, 0, 0, 0),
    ("127.0.0.1", "80", socket.AF_INET, socket.SOCK_STREAM, 0, 0),
    ("127.0.0.1", None, 0, socket.SOCK_DGRAM, 0, 0),
    (b"127.0.0.1", b"443", 0, 0, 0, 0),
    ("127.1", 0, 0, 0, 0, 0),
    ("0.0.0.0", 8080, socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, socket.AI_PASSIVE),
    ("::1", 443, 0, socket.SOCK_STREAM, 0, 0),
    ("::1", 443, socket.AF_INET6, 0, 0, socket.AI_CANONNAME),
    ("::ffff:127.0.0.1", 1, socket.AF_INET6, 0, 0, 0),
    ("127.0.0.1", 53, socket.AF_INET6, socket.SOCK_DGRAM, 0, socket.AI_V4MAPPED),
    (None, 8080, 0, socket.SOCK_STREAM, 0, socket.AI_PASSIVE),
    (None, 8080, socket.AF_INET, socket.SOCK_STREAM, 0, 0),
    (None, "0", 0, 0, 0, 0),
]


@pytest.mark.parametrize("query", NUMERIC_QUERIES, ids=repr)
async def test_getaddrinfo_of_a_numeric_host_is_the_standard_librarys(query):
    loop = asyncio.get_running_loop()
    host, port, family, type_, proto, flags = query
    expected = socket.getaddrinfo(host, port, family, type_, proto, flags)
    got = await loop.getaddrinfo(host, port, family=family, type=type_, proto=proto, flags=flags)
    assert got == expected


@pytest.mark.parametrize("family", [0, socket.AF_INET, socket.AF_INET6])
async def test_getaddrinfo_of_localhost_is_the_standard_librarys(family):
    loop = asyncio.get_running_loop()
    try:
        expected = socket.getaddrinfo("localhost", 80, family, socket.SOCK_STREAM)
    except socket.gaierror as exc:
        with pytest.raises(socket.gaierror) as raised:
            await loop.getaddrinfo("localhost", 80, family=family, type=socket.SOCK_STREAM)
        assert raised.value.args == exc.args
        return
    got = await loop.getaddrinfo("localhost", 80, family=family, type=socket.SOCK_STREAM)
    assert got == expected


async def test_getaddrinfo_with_a_service_name_is_the_standard_librarys():
    loop = asyncio.get_running_loop()
    expected = socket.getaddrinfo("127.0.0.1", "http", 0, socket.SOCK_STREAM)
    assert await loop.getaddrinfo("127.0.0.1", "http", type=socket.SOCK_STREAM) == expected


@pytest.mark.parametrize(
    "query",
    [
        ("127.0.0.1", "no-such-service-name", 0, socket.SOCK_STREAM, 0, 0),
        ("", 80, 0, 0, 0, 0),
        (None, None, 0, 0, 0, 0),
    ],
    ids=repr,
)
async def test_getaddrinfo_raises_the_standard_librarys_error(query):
    loop = asyncio.get_running_loop()
    host, port, family, type_, proto, flags = query
    with pytest.raises(socket.gaierror) as expected:
        socket.getaddrinfo(host, port, family, type_, proto, flags)
    with pytest.raises(socket.gaierror) as raised:
        await loop.getaddrinfo(host, port, family=family, type=type_, proto=proto, flags=flags)
    assert raised.value.args == expected.value.args


_ip_hosts = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
    st.none(),
)
_ports = st.one_of(st.none(), st.integers(0, 65535), st.integers(0, 65535).map(str))


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    host=_ip_hosts,
    port=_ports,
    family=st.sampled_from([0, socket.AF_INET, socket.AF_INET6]),
    type_=st.sampled_from([0, socket.SOCK_STREAM, socket.SOCK_DGRAM, socket.SOCK_RAW]),
    proto=st.sampled_from([0, socket.IPPROTO_TCP, socket.IPPROTO_UDP]),
    flags=st.sampled_from(
        [0, socket.AI_PASSIVE, socket.AI_CANONNAME, socket.AI_V4MAPPED | socket.AI_ALL]
    ),
)
def test_getaddrinfo_of_any_numeric_query_is_the_standard_librarys(
    loop, host, port, family, type_, proto, flags
):
    skip_where_uvloop_differs(
        loop,
        "it answers an IP host itself, without the C library's checks of the type and "
        "protocol (SOCK_STREAM with IPPROTO_UDP gets an answer, not an error)",
    )
    try:
        expected = socket.getaddrinfo(host, port, family, type_, proto, flags)
    except socket.gaierror as exc:
        with pytest.raises(socket.gaierror) as raised:
            loop.run_until_complete(
                loop.getaddrinfo(host, port, family=family, type=type_, proto=proto, flags=flags)
            )
        assert raised.value.args == exc.args
        return
    got = loop.run_until_complete(
        loop.getaddrinfo(host, port, family=family, type=type_, proto=proto, flags=flags)
    )
    assert got == expected


@pytest.mark.cqloop_only
async def test_getaddrinfo_of_a_numeric_host_uses_no_thread(executor):
    loop = asyncio.get_running_loop()
    for host, port, family, type_, proto, flags in NUMERIC_QUERIES:
        await loop.getaddrinfo(host, port, family=family, type=type_, proto=proto, flags=flags)
    assert executor.submitted == []
    # A name, a service name and an error go to the executor, as in asyncio.
    await loop.getaddrinfo("localhost", 80)
    await loop.getaddrinfo("127.0.0.1", "http")
    with pytest.raises(socket.gaierror):
        await loop.getaddrinfo("", 80)
    assert executor.submitted == ["getaddrinfo"] * 3


@pytest.mark.cqloop_only
async def test_sock_connect_to_an_ip_uses_no_thread(listener, client, executor):
    loop = asyncio.get_running_loop()
    await within(loop.sock_connect(client, listener.getsockname()))
    conn, _ = await within(loop.sock_accept(listener))
    conn.close()
    assert executor.submitted == []


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_getaddrinfo_in_debug_mode_logs_the_query(host, caplog):
    loop = asyncio.get_running_loop()
    skip_where_uvloop_differs(loop, "it does not log name resolution")
    caplog.set_level(logging.DEBUG, logger="asyncio")
    loop.set_debug(True)
    try:
        got = await loop.getaddrinfo(host, 80, type=socket.SOCK_STREAM)
    finally:
        loop.set_debug(False)
    assert got == socket.getaddrinfo(host, 80, 0, socket.SOCK_STREAM)
    messages = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert f"Get address info {host}:80, type={socket.SOCK_STREAM!r}" in messages
    assert any(
        m.startswith(f"Getting address info {host}:80, type={socket.SOCK_STREAM!r} took ")
        and m.endswith(f": {got!r}")
        for m in messages
    )


@pytest.mark.parametrize(
    "flags", [socket.NI_NUMERICHOST | socket.NI_NUMERICSERV, socket.NI_NUMERICSERV, 0]
)
async def test_getnameinfo_is_the_standard_librarys(flags):
    loop = asyncio.get_running_loop()
    expected = socket.getnameinfo(("127.0.0.1", 80), flags)
    assert await loop.getnameinfo(("127.0.0.1", 80), flags) == expected


@pytest.mark.skipif(not HAS_IPV6, reason="no IPv6 on this machine")
async def test_getnameinfo_of_an_ipv6_address_is_the_standard_librarys():
    loop = asyncio.get_running_loop()
    sockaddr = ("::1", 443, 0, 0)
    flags = socket.NI_NUMERICHOST | socket.NI_NUMERICSERV
    assert await loop.getnameinfo(sockaddr, flags) == socket.getnameinfo(sockaddr, flags)


# -- one-shot waits (cqloop registers sock_* waits with EPOLLONESHOT) -------------------------


async def _recv_after_waiting(loop: asyncio.AbstractEventLoop, a: socket.socket, b: socket.socket):
    task = await started(loop.sock_recv(a, 100))
    b.send(b"x")
    assert await within(task) == b"x"


async def test_a_reader_added_after_a_finished_wait_fires_while_the_fd_stays_readable() -> None:
    # The fd keeps a disarmed one-shot registration after the wait; add_reader must turn
    # it back into an ordinary level-triggered one.
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    a.setblocking(False)
    try:
        await _recv_after_waiting(loop, a, b)
        calls = 0
        twice = loop.create_future()

        def on_readable() -> None:
            nonlocal calls
            calls += 1  # reads nothing: the fd stays readable
            if calls == 2:
                twice.set_result(None)

        loop.add_reader(a.fileno(), on_readable)
        b.send(b"more")
        await within(twice)
        assert loop.remove_reader(a.fileno()) or is_uvloop(loop)
    finally:
        a.close()
        b.close()


@contextlib.asynccontextmanager
async def _fd_number_reused_after_a_wait(
    loop: asyncio.AbstractEventLoop,
) -> AsyncIterator[tuple[socket.socket, socket.socket]]:
    """A sock_recv wait finishes on a socket that is then closed; yields (reused, other):
    a new connected pair whose `reused` end has the closed socket's fd number."""
    a, b = socket.socketpair()
    a.setblocking(False)
    await _recv_after_waiting(loop, a, b)
    number = a.fileno()
    a.close()
    b.close()
    c, d = socket.socketpair()
    try:
        reused = c if c.fileno() == number else d if d.fileno() == number else None
        if reused is None:
            pytest.skip("the fd number was not reused")
        reused.setblocking(False)
        yield reused, (d if reused is c else c)
    finally:
        c.close()
        d.close()


async def test_a_reused_fd_number_is_watched_afresh_after_a_finished_wait() -> None:
    loop = asyncio.get_running_loop()
    async with _fd_number_reused_after_a_wait(loop) as (reused, other):
        fired = loop.create_future()
        number = reused.fileno()
        loop.add_reader(number, lambda: fired.done() or fired.set_result(reused.recv(10)))
        other.send(b"new")
        assert await within(fired) == b"new"
        loop.remove_reader(number)


def _loop_fd_readable(loop: asyncio.AbstractEventLoop) -> bool:
    readable, _, _ = select.select([loop.fileno()], [], [], 0)  # type: ignore[attr-defined]
    return bool(readable)


async def _until_loop_fd_idle(loop: asyncio.AbstractEventLoop) -> None:
    """Let the loop poll (a bounded number of iterations) until its epoll fd reports
    nothing; fail if it stays readable (a registration that spins)."""
    for _ in range(10):
        await asyncio.sleep(0)
        if not _loop_fd_readable(loop):
            return
    raise AssertionError("the loop's epoll fd stays readable")


@pytest.mark.cqloop_only
async def test_a_finished_wait_leaves_nothing_that_spins_the_loop_even_through_a_dup() -> None:
    # The classic epoll trap: a registration outlives its fd number when a dup keeps the
    # file open, and a level-triggered one would then make the loop spin. A finished
    # sock_* wait's registration is edge-triggered (Kernel._wait_sock): data arriving on
    # the dup'd file wakes the loop once per arrival, and nothing runs.
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    a.setblocking(False)
    await _recv_after_waiting(loop, a, b)
    dup = os.dup(a.fileno())
    try:
        a.close()
        b.send(b"data nobody waits for")
        await _until_loop_fd_idle(loop)
        assert loop._kernel_statistics()["fds"] == 0
    finally:
        os.close(dup)
        b.close()


@pytest.mark.cqloop_only
async def test_data_with_nobody_waiting_drops_a_finished_waits_registration() -> None:
    # The idle registration a sock_* wait leaves wakes the loop at most once: the first
    # arrival with nobody waiting drops it, and the next wait registers afresh.
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    a.setblocking(False)
    with a, b:
        await _recv_after_waiting(loop, a, b)
        b.send(b"first")
        await _until_loop_fd_idle(loop)
        b.send(b"second")
        assert not _loop_fd_readable(loop)
        assert await loop.sock_recv(a, 100) == b"firstsecond"
        await _recv_after_waiting(loop, a, b)


async def test_waits_on_one_socket_in_a_row_each_see_their_data() -> None:
    # Consecutive waits on the same socket reuse its registration: each must still wake.
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    a.setblocking(False)
    with a, b:
        for i in range(20):
            task = await started(loop.sock_recv(a, 100))
            b.send(b"%d" % i)
            assert await within(task) == b"%d" % i


async def test_a_wait_on_a_new_socket_with_a_reused_fd_number_wakes() -> None:
    # The fast path must not take the registration of a closed socket's file for the
    # new one's: same fd number, another file.
    loop = asyncio.get_running_loop()
    async with _fd_number_reused_after_a_wait(loop) as (reused, other):
        task = await started(loop.sock_recv(reused, 100))
        other.send(b"new")
        assert await within(task) == b"new"
