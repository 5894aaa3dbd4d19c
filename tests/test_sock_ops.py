"""The loop's low-level socket API (sock_recv, sock_recv_into, sock_recvfrom(_into),
sock_sendall, sock_sendto, sock_connect, sock_accept), checked on cqloop against stock
asyncio (the oracle) and uvloop: receiving, sending, connecting and accepting, the refusal
of blocking and SSL sockets, cancellation, and several operations on one fd.

Each test runs once per loop kind (see conftest.py). Loopback only: 127.0.0.1, ::1, Unix
sockets and socket pairs. Waiting is done on futures and on the loop's own turns
(`asyncio.sleep(0)` lets a just-created task run up to its first wait); no test sleeps for
a duration. Where uvloop knowingly differs from asyncio (it has no sock_recvfrom,
sock_recvfrom_into or sock_sendto, and a cancelled operation removes the fd's registration
even when another operation owns it), the test says so and skips.

sock_sendfile is in test_sock_sendfile.py, name resolution in test_getaddrinfo.py, the
one-shot registration of sock_* waits in test_sock_oneshot_waits.py.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import io
import os
import socket
import ssl
import warnings

import pytest

from tests.conftest import skip_where_uvloop_differs
from tests.sock_ops_harness import (  # noqa: F401
    BACKLOG_FILLERS,
    HAS_IPV6,
    LARGE_PAYLOAD_BYTES,
    cancelled,
    client,
    fill_send_buffer,
    listener,
    no_recvfrom_sendto,
    no_sendfile,
    nothing_registered,
    recv_exactly,
    sockpair,
    started,
    udp_pair,
    within,
)

# The harness's fixtures are imported by name and taken as parameters:
# ruff: noqa: F811


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
