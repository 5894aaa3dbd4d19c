"""Stream transports and servers: behaviour a protocol sees, on cqloop, asyncio and uvloop.

Each test builds a loopback TCP or Unix connection with create_server/create_connection
and asserts what the protocol observes: data and its order, flow control, reading pauses,
BufferedProtocol delivery, extra info, and the Server object's life cycle. Faults (resets,
refusals, cancellation, fd exhaustion) are in test_network_faults.py.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import socket
import struct
import sys
import uuid
from typing import Any

import pytest

from tests.conftest import is_cqloop, is_uvloop, skip_where_uvloop_differs
from tests.protocols import Collect


async def _tcp_pair(
    server_proto: type[asyncio.BaseProtocol] = Collect,
    client_proto: type[asyncio.BaseProtocol] = Collect,
) -> tuple[asyncio.Server, Any, Any]:
    """A server and one client connection: (server, client protocol, server protocol)."""
    loop = asyncio.get_running_loop()
    accepted: asyncio.Future[Any] = loop.create_future()

    def factory() -> asyncio.BaseProtocol:
        proto = server_proto()
        if not accepted.done():
            accepted.set_result(proto)
        return proto

    server = await loop.create_server(factory, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, client = await loop.create_connection(client_proto, "127.0.0.1", port)
    peer = await accepted
    await peer.made
    return server, client, peer


async def _close_all(server: asyncio.Server, *protos: Any) -> None:
    for proto in protos:
        if proto.transport is not None:
            proto.transport.close()
    for proto in protos:
        if hasattr(proto, "lost"):
            await proto.lost
    server.close()
    await server.wait_closed()


async def test_bytes_bytearray_and_memoryview_arrive_in_order() -> None:
    server, client, peer = await _tcp_pair()
    peer.wanted = 9
    client.transport.write(b"abc")
    client.transport.write(bytearray(b"def"))
    client.transport.write(memoryview(b"xghix")[1:4])
    client.transport.write(b"")
    await peer.enough
    assert bytes(peer.data) == b"abcdefghi"
    assert peer.events[:2] == ["made", "data"]
    await _close_all(server, client, peer)


async def test_writelines_sends_every_buffer_in_order() -> None:
    server, client, peer = await _tcp_pair()
    chunks = [b"%05d" % i for i in range(2000)]
    peer.wanted = 5 * len(chunks)
    client.transport.writelines(chunks)
    await peer.enough
    assert bytes(peer.data) == b"".join(chunks)
    await _close_all(server, client, peer)


async def test_write_rejects_what_is_not_bytes() -> None:
    server, client, peer = await _tcp_pair()
    with pytest.raises(TypeError, match="bytes-like"):
        client.transport.write("text")
    await _close_all(server, client, peer)


async def test_writelines_rejects_a_list_with_something_not_bytes() -> None:
    skip_where_uvloop_differs(
        asyncio.get_running_loop(), "its writelines does not check the items' types first"
    )
    server, client, peer = await _tcp_pair()
    with pytest.raises(TypeError, match="bytes-like"):
        client.transport.writelines([b"ok", 42])
    await _close_all(server, client, peer)


async def test_write_after_write_eof_raises_and_peer_sees_eof() -> None:
    server, client, peer = await _tcp_pair()
    assert client.transport.can_write_eof()
    client.transport.write(b"last")
    client.transport.write_eof()
    with pytest.raises(RuntimeError, match="write_eof"):
        client.transport.write(b"more")
    await peer.eof
    assert bytes(peer.data) == b"last"
    await _close_all(server, client, peer)


async def test_flow_control_pauses_above_high_water_and_resumes_below_low() -> None:
    server, client, peer = await _tcp_pair()
    transport = client.transport
    transport.set_write_buffer_limits(high=64 * 1024, low=16 * 1024)
    assert transport.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
    peer.transport.pause_reading()
    chunk = b"x" * 65536
    sent = 0
    # The peer reads nothing: the kernel buffers fill, then ours goes past high water.
    while client.paused == 0:
        transport.write(chunk)
        sent += len(chunk)
        assert sent < 256 * 1024 * 1024, "pause_writing never came"
    assert transport.get_write_buffer_size() > 64 * 1024
    assert client.resumed == 0
    peer.wanted = sent
    peer.transport.resume_reading()
    await peer.enough
    assert client.resumed == 1
    assert transport.get_write_buffer_size() == 0
    assert len(peer.data) == sent
    await _close_all(server, client, peer)


async def test_set_write_buffer_limits_checks_its_arguments() -> None:
    server, client, peer = await _tcp_pair()
    with pytest.raises(ValueError, match="must be >="):
        client.transport.set_write_buffer_limits(high=1, low=2)
    client.transport.set_write_buffer_limits(low=100)
    assert client.transport.get_write_buffer_limits() == (100, 400)
    client.transport.set_write_buffer_limits(high=1000)
    assert client.transport.get_write_buffer_limits() == (250, 1000)
    await _close_all(server, client, peer)


async def test_pause_reading_holds_data_until_resumed() -> None:
    server, client, peer = await _tcp_pair()
    assert peer.transport.is_reading()
    peer.transport.pause_reading()
    assert not peer.transport.is_reading()
    peer.transport.pause_reading()  # idempotent
    client.transport.write(b"held")
    # The client's write is in the kernel: a round trip the other way shows time passed.
    client.wanted = 4
    peer.transport.write(b"ping")
    await client.enough
    assert bytes(client.data) == b"ping"
    assert bytes(peer.data) == b""
    peer.wanted = 4
    peer.transport.resume_reading()
    assert peer.transport.is_reading()
    await peer.enough
    assert bytes(peer.data) == b"held"
    await _close_all(server, client, peer)


class Buffered(asyncio.BufferedProtocol):
    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.transport: Any = None
        self.buffer = bytearray(7)
        self.received = bytearray()
        self.sizes: list[int] = []
        self.made = loop.create_future()
        self.lost = loop.create_future()
        self.wanted = 0
        self.enough = loop.create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.made.set_result(None)

    def get_buffer(self, sizehint: int) -> bytearray:
        self.sizes.append(sizehint)
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.received += self.buffer[:nbytes]
        if self.wanted and len(self.received) >= self.wanted and not self.enough.done():
            self.enough.set_result(None)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.set_result(exc)


async def test_buffered_protocol_reads_into_its_own_buffer() -> None:
    server, client, peer = await _tcp_pair(server_proto=Buffered)
    payload = bytes(range(256)) * 40
    peer.wanted = len(payload)
    client.transport.write(payload)
    await peer.enough
    assert bytes(peer.received) == payload
    # Never more than the 7-byte buffer per read.
    assert len(peer.sizes) >= len(payload) // 7
    await _close_all(server, client, peer)


async def test_extra_info_names_socket_ends_and_tcp_nodelay_is_on() -> None:
    server, client, peer = await _tcp_pair()
    transport = client.transport
    sock = transport.get_extra_info("socket")
    assert transport.get_extra_info("sockname") == sock.getsockname()
    assert transport.get_extra_info("peername") == sock.getpeername()
    assert peer.transport.get_extra_info("peername") == sock.getsockname()
    assert transport.get_extra_info("nope", "dflt") == "dflt"
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    await _close_all(server, client, peer)


async def test_accepted_socket_is_a_non_blocking_tcp_socket_with_nodelay() -> None:
    server, client, peer = await _tcp_pair()
    sock = peer.transport.get_extra_info("socket")
    assert sock.family is socket.AF_INET
    assert sock.type is socket.SOCK_STREAM
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    assert sock.gettimeout() == 0
    assert peer.transport.get_extra_info("sockname") == server.sockets[0].getsockname()
    await _close_all(server, client, peer)


async def test_transports_are_asyncio_transports() -> None:
    skip_where_uvloop_differs(asyncio.get_running_loop(), "its transports are not subclasses")
    server, client, peer = await _tcp_pair()
    assert isinstance(client.transport, asyncio.Transport)
    await _close_all(server, client, peer)


async def test_write_can_be_replaced_on_the_instance() -> None:
    loop = asyncio.get_running_loop()
    if is_uvloop(loop):
        pytest.skip("uvloop's compiled transports take no instance attributes")
    server, client, peer = await _tcp_pair()
    seen: list[bytes] = []
    original = client.transport.write

    def spy(data: bytes) -> None:
        seen.append(data)
        original(data)

    client.transport.write = spy
    peer.wanted = 2
    client.transport.write(b"hi")
    await peer.enough
    assert seen == [b"hi"]
    await _close_all(server, client, peer)


async def test_transport_methods_taken_as_values_act_on_their_transport() -> None:
    server, client, peer = await _tcp_pair()
    transport = client.transport
    write, writelines = transport.write, transport.writelines
    is_closing, is_reading = transport.is_closing, transport.is_reading
    pause, resume = transport.pause_reading, transport.resume_reading
    peer.wanted = 6
    write(b"ab")
    writelines([b"cd", b"ef"])
    await peer.enough
    assert bytes(peer.data) == b"abcdef"
    assert transport.get_write_buffer_size() == 0
    pause()
    assert not is_reading()
    resume()
    assert is_reading()
    assert not is_closing()
    transport.close()
    assert is_closing()
    await _close_all(server, client, peer)


@pytest.mark.cqloop_only
async def test_transport_methods_refuse_another_object_as_self() -> None:
    server, client, peer = await _tcp_pair()
    cls = type(client.transport)
    with pytest.raises(TypeError):
        cls.write(object(), b"x")
    with pytest.raises(TypeError):
        cls.is_closing(peer)
    await _close_all(server, client, peer)


@pytest.mark.cqloop_only
async def test_transport_whose_init_failed_is_dropped_without_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from cqloop.transports.socket_transport import SocketTransport

    unraisable: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    sock = socket.socket()
    sock.close()
    with pytest.raises(OSError):
        SocketTransport(asyncio.get_running_loop(), sock, asyncio.Protocol())
    gc.collect()
    assert unraisable == []


async def test_close_waits_for_the_buffer_then_loses_the_connection_once() -> None:
    server, client, peer = await _tcp_pair()
    payload = b"y" * (4 * 1024 * 1024)
    peer.wanted = len(payload)
    client.transport.write(payload)
    client.transport.close()
    assert client.transport.is_closing()
    client.transport.close()  # idempotent
    await peer.enough
    assert await client.lost is None
    assert client.events.count("lost") == 1
    assert bytes(peer.data) == payload
    await _close_all(server, peer)


async def test_abort_drops_the_buffer_and_loses_the_connection() -> None:
    server, client, peer = await _tcp_pair()
    peer.transport.pause_reading()
    client.transport.write(b"z" * (8 * 1024 * 1024))
    assert client.transport.get_write_buffer_size() > 0
    client.transport.abort()
    assert await client.lost is None
    assert client.transport.get_write_buffer_size() == 0
    peer.transport.resume_reading()
    await _close_all(server, peer)


async def test_writes_after_the_connection_is_lost_are_dropped() -> None:
    skip_where_uvloop_differs(asyncio.get_running_loop(), "it raises RuntimeError instead")
    server, client, peer = await _tcp_pair()
    client.transport.close()
    await client.lost
    for _ in range(3):
        client.transport.write(b"gone")
    assert client.transport.get_write_buffer_size() == 0
    await _close_all(server, peer)


async def test_connection_made_precedes_the_waiter_and_data() -> None:
    loop = asyncio.get_running_loop()
    order: list[str] = []

    class Early(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            order.append("made")
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            order.append("data")

    listener = socket.create_server(("127.0.0.1", 0))
    try:
        task = loop.create_task(
            loop.create_connection(Early, "127.0.0.1", listener.getsockname()[1])
        )
        transport, _ = await task
        order.append("returned")
        assert order == ["made", "returned"]
        transport.close()
        await asyncio.sleep(0)
    finally:
        listener.close()


async def test_server_serves_until_closed_and_wait_closed_waits_for_clients() -> None:
    server, client, peer = await _tcp_pair()
    assert server.is_serving()
    assert server.get_loop() is asyncio.get_running_loop()
    server.close()
    assert not server.is_serving()
    assert not server.sockets
    waiting = asyncio.ensure_future(server.wait_closed())
    await asyncio.sleep(0)
    # The accepted connection is still open: wait_closed waits for it from 3.12 (3.11's
    # returned at once, and so does uvloop's own Server).
    loop = asyncio.get_running_loop()
    if sys.version_info >= (3, 12) and not is_uvloop(loop):
        assert not waiting.done()
    peer.transport.close()
    await peer.lost
    await waiting
    client.transport.close()
    await client.lost


async def test_server_async_with_closes_it() -> None:
    loop = asyncio.get_running_loop()
    async with await loop.create_server(Collect, "127.0.0.1", 0) as server:
        assert server.is_serving()
    assert not server.is_serving()
    await server.wait_closed()


async def test_start_serving_false_defers_accepting() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Collect, "127.0.0.1", 0, start_serving=False)
    assert not server.is_serving()
    await server.start_serving()
    assert server.is_serving()
    port = server.sockets[0].getsockname()[1]
    _, client = await loop.create_connection(Collect, "127.0.0.1", port)
    client.transport.close()
    await client.lost
    server.close()
    await server.wait_closed()


async def test_close_clients_and_abort_clients() -> None:
    loop = asyncio.get_running_loop()
    if not hasattr(asyncio.Server, "close_clients") and not is_cqloop(loop):
        pytest.skip("Server.close_clients is new in 3.13")
    server, client, peer = await _tcp_pair()
    if not hasattr(server, "close_clients"):
        pytest.skip("this loop's Server has no close_clients")
    server.close()
    server.close_clients()
    assert await peer.lost is None
    await client.lost
    await server.wait_closed()


async def test_unix_server_and_connection(tmp_path: Any) -> None:
    loop = asyncio.get_running_loop()
    path = str(tmp_path / "s.sock")
    accepted: asyncio.Future[Collect] = loop.create_future()

    def factory() -> Collect:
        proto = Collect()
        accepted.set_result(proto)
        return proto

    server = await loop.create_unix_server(factory, path)
    _, client = await loop.create_unix_connection(Collect, path)
    peer = await accepted
    peer.wanted = 5
    client.transport.write(b"unix!")
    await peer.enough
    assert bytes(peer.data) == b"unix!"
    assert client.transport.get_extra_info("peername") == path
    await _close_all(server, client, peer)
    if sys.version_info >= (3, 13):
        # 3.13's cleanup_socket (test_fidelity_transports checks the other versions).
        assert not os.path.exists(path)


async def test_unix_server_in_the_abstract_namespace() -> None:
    loop = asyncio.get_running_loop()
    skip_where_uvloop_differs(loop, "it refuses abstract names (EINVAL)")
    name = "\0cqloop-test-" + uuid.uuid4().hex
    server = await loop.create_unix_server(Collect, name)
    _, client = await loop.create_unix_connection(Collect, name)
    client.transport.close()
    await client.lost
    server.close()
    await server.wait_closed()


async def test_create_connection_over_a_given_socket() -> None:
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    try:
        transport, proto = await loop.create_connection(Collect, sock=a)
        b.sendall(b"via sock")
        proto.wanted = 8
        await proto.enough
        assert bytes(proto.data) == b"via sock"
        transport.close()
        await proto.lost
        assert a.fileno() == -1
    finally:
        a.close()
        b.close()


async def test_connect_accepted_socket_wraps_a_server_side_socket() -> None:
    loop = asyncio.get_running_loop()
    listener = socket.create_server(("127.0.0.1", 0))
    outside = socket.create_connection(listener.getsockname())
    inside, _ = listener.accept()
    try:
        transport, proto = await loop.connect_accepted_socket(Collect, inside)
        outside.sendall(b"hello")
        proto.wanted = 5
        await proto.enough
        transport.write(b"back")
        outside.settimeout(10)
        assert outside.recv(10) == b"back"
        transport.close()
        await proto.lost
    finally:
        inside.close()
        outside.close()
        listener.close()


async def test_sendfile_sends_the_file_and_keeps_the_transport_usable(tmp_path: Any) -> None:
    loop = asyncio.get_running_loop()
    skip_where_uvloop_differs(loop, "uvloop has no loop.sendfile")
    data = os.urandom(300_000)
    path = tmp_path / "blob"
    path.write_bytes(data)
    server, client, peer = await _tcp_pair()
    peer.wanted = len(data) + 4
    with open(path, "rb") as f:
        sent = await loop.sendfile(client.transport, f, 0, None)
        assert sent == len(data)
        assert f.tell() == len(data)
    client.transport.write(b"tail")
    await peer.enough
    assert bytes(peer.data) == data + b"tail"
    await _close_all(server, client, peer)


async def test_tls_arguments_without_tls_are_rejected_as_in_asyncio() -> None:
    loop = asyncio.get_running_loop()
    with pytest.raises(ValueError, match="server_hostname is only meaningful with ssl"):
        await loop.create_connection(Collect, "127.0.0.1", 1, server_hostname="x")
    with pytest.raises(ValueError, match="ssl_handshake_timeout is only meaningful"):
        await loop.create_server(Collect, "127.0.0.1", 0, ssl_handshake_timeout=1)
    with socket.socket() as sock, pytest.raises(ValueError, match="host/port and sock"):
        await loop.create_connection(Collect, "127.0.0.1", 1, sock=sock)


async def test_add_reader_on_a_transports_fd_is_refused() -> None:
    loop = asyncio.get_running_loop()
    server, client, peer = await _tcp_pair()
    fd = client.transport.get_extra_info("socket").fileno()
    with pytest.raises(RuntimeError, match=f"File descriptor {fd} is used by transport"):
        loop.add_reader(fd, print)
    client.transport.write(b"still")
    peer.wanted = 5
    await peer.enough
    await _close_all(server, client, peer)


async def test_slow_data_received_is_logged_naming_the_read_callback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = asyncio.get_running_loop()
    skip_where_uvloop_differs(loop, "its debug log names its own handle types")
    server, client, peer = await _tcp_pair()
    loop.set_debug(True)
    loop.slow_callback_duration = 0.0
    try:
        with caplog.at_level(logging.WARNING, logger="asyncio"):
            peer.wanted = 2
            client.transport.write(b"hi")
            await peer.enough
    finally:
        loop.set_debug(False)
    slow = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Executing")]
    assert any("_read_ready()" in message for message in slow), slow
    await _close_all(server, client, peer)


async def test_accepted_connection_names_its_peer_after_the_peer_reset_it() -> None:
    loop = asyncio.get_running_loop()
    skip_where_uvloop_differs(loop, "it asks the socket, which no longer knows")
    made: asyncio.Future[None] = loop.create_future()
    seen: asyncio.Future[Any] = loop.create_future()

    class Lost(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            made.set_result(None)

        def connection_lost(self, exc: Exception | None) -> None:
            seen.set_result(self.transport.get_extra_info("peername"))

    server = await loop.create_server(Lost, "127.0.0.1", 0)
    client = socket.create_connection(server.sockets[0].getsockname())
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    address = client.getsockname()
    await made
    client.close()  # with a zero linger time: a reset
    assert await seen == address
    server.close()
    await server.wait_closed()


def test_transport_dropped_unclosed_warns_and_closes_its_socket(loop_factory: Any) -> None:
    if loop_factory.__module__.startswith("uvloop"):
        pytest.skip("uvloop's transports warn of an unclosed resource in their own words")
    loop = loop_factory()
    ours, peer = socket.socketpair()
    try:
        transport, _ = loop.run_until_complete(loop.create_connection(asyncio.Protocol, sock=ours))
        loop.close()  # the loop lets go of its transports without closing them
        with pytest.warns(ResourceWarning, match="unclosed transport"):
            del transport
            gc.collect()
        assert ours.fileno() == -1
    finally:
        ours.close()
        peer.close()


ACCEPT_TIMEOUT_S = 10.0


class _ForwardingSocket:
    """A socket-like wrapper that forwards every attribute, as gunicorn's listeners do."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


async def test_server_accepts_on_a_socket_like_wrapper() -> None:
    loop = asyncio.get_running_loop()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    accepted: asyncio.Future[Any] = loop.create_future()

    def factory() -> asyncio.Protocol:
        proto = Collect()
        accepted.set_result(proto)
        return proto

    server = await loop.create_server(factory, sock=_ForwardingSocket(listener))  # type: ignore[arg-type]
    _, client = await loop.create_connection(Collect, *listener.getsockname())
    # Bounded: a server that cannot accept on the wrapper never calls the factory.
    peer = await asyncio.wait_for(accepted, ACCEPT_TIMEOUT_S)
    await peer.made
    peer.wanted = 2
    client.transport.write(b"ok")
    await peer.enough
    assert bytes(peer.data) == b"ok"
    await _close_all(server, client, peer)
