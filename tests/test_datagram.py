"""create_datagram_endpoint and datagram transports, checked on cqloop against stock asyncio
(the oracle) and uvloop: UDP over IPv4 and IPv6, Unix datagram sockets (paths and the
abstract namespace), connected and unconnected sendto, ICMP errors, the write buffer and
flow control, close and abort, sock=, reuse_port, allow_broadcast, argument errors, and
errors raised by protocols or sockets.

Each async test runs once per loop kind (pytest-asyncio's loop factories, see conftest.py).
Everything stays on loopback. A full socket buffer is made with a Unix datagram socket whose
peer does not read (UDP over loopback never blocks a sender: the kernel drops datagrams at
the receiver instead). Waits are on futures and queues, bounded only as a safety net.

Where uvloop knowingly differs from asyncio, the test names the difference and skips uvloop.
Where stock asyncio trips over its own state (an AttributeError from sendto(), a stale
buffer count), cqloop does what asyncio evidently means to do; those tests name asyncio's
failure and skip asyncio (or run on cqloop alone when uvloop trips too).

Past 800 lines: the write buffer and flow control section and the argument errors are
the next to move out (test_datagram_flow.py, test_datagram_args.py).
"""

from __future__ import annotations

import asyncio
import asyncio.selector_events
import errno
import logging
import os
import socket
import sys
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.conftest import is_cqloop, is_uvloop, skip_where_uvloop_differs

PY313 = sys.version_info >= (3, 13)
WAIT_S = 5.0
LOOPBACK = "127.0.0.1"

NO_UNIX_PATHS = "its create_datagram_endpoint takes no Unix paths (only sock=)"
NO_PAUSE_READING = "its datagram transport has no pause_reading()/resume_reading()"
READS_WITH_LIBUV = "it reads and writes the fd with libuv, never through the socket object"


def ipv6_loopback_works() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def skip_where_asyncio_trips(loop: asyncio.AbstractEventLoop, why: str) -> None:
    """Where stock asyncio fails on its own state (an AttributeError, a fatal TypeError, a
    stale count), cqloop does what asyncio means to do, as uvloop does; asyncio skips."""
    if not (is_cqloop(loop) or is_uvloop(loop)):
        pytest.skip(f"stock asyncio trips here: {why}")


def skip_where_asyncio_never_drains_its_header_count(loop: asyncio.AbstractEventLoop) -> None:
    """asyncio 3.13 counts 8 header bytes per buffered datagram; until gh-135444 (a later
    3.13 release) it never takes them off, so the buffer never drains to a low-water mark
    below that count and resume_writing() never comes."""
    fixed = hasattr(asyncio.selector_events._SelectorDatagramTransport, "_header_size")
    if PY313 and not fixed and not (is_cqloop(loop) or is_uvloop(loop)):
        pytest.skip("asyncio 3.13 before gh-135444 miscounts its datagram buffer")


class Recorder(asyncio.DatagramProtocol):
    """Records what its transport tells it: `events` lists every call in order; datagrams
    and errors are queued for the test to await; the rest are futures."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.transport: Any = None
        self.events: list[str] = []
        self.datagrams: asyncio.Queue[tuple[bytes, Any]] = asyncio.Queue()
        self.errors: asyncio.Queue[Exception] = asyncio.Queue()
        self.made: asyncio.Future[Any] = loop.create_future()
        self.lost: asyncio.Future[Exception | None] = loop.create_future()
        self.paused: asyncio.Future[None] = loop.create_future()
        self.resumed: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.events.append("made")
        self.made.set_result(transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.events.append("datagram")
        self.datagrams.put_nowait((data, addr))

    def error_received(self, exc: Exception) -> None:
        self.events.append("error")
        self.errors.put_nowait(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append("lost")
        self.lost.set_result(exc)

    def pause_writing(self) -> None:
        self.events.append("pause_writing")
        if not self.paused.done():
            self.paused.set_result(None)

    def resume_writing(self) -> None:
        self.events.append("resume_writing")
        if not self.resumed.done():
            self.resumed.set_result(None)

    async def next_datagram(self) -> tuple[bytes, Any]:
        return await asyncio.wait_for(self.datagrams.get(), WAIT_S)

    async def next_error(self) -> Exception:
        return await asyncio.wait_for(self.errors.get(), WAIT_S)

    async def wait_lost(self) -> Exception | None:
        return await asyncio.wait_for(asyncio.shield(self.lost), WAIT_S)


class Echo(Recorder):
    def datagram_received(self, data: bytes, addr: Any) -> None:
        super().datagram_received(data, addr)
        self.transport.sendto(data, addr)


async def close_all(*protocols: Recorder) -> None:
    """Close each protocol's transport and wait until it has been told connection_lost."""
    for protocol in protocols:
        if protocol.transport is not None:
            protocol.transport.close()
    for protocol in protocols:
        await protocol.wait_lost()


def free_udp_port() -> int:
    """A UDP port nothing listens on (bound, then closed again)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def handled_errors(loop: asyncio.AbstractEventLoop) -> list[dict[str, Any]]:
    """The contexts `loop`'s exception handler will receive (each test has a fresh loop)."""
    contexts: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: contexts.append(context))
    return contexts


# -- a Unix datagram peer that does not read, to fill a sender's buffer ------------------


class SilentPeer:
    """A Unix datagram socket bound to a path that reads only when told to, and a sender
    socket bound beside it and connected to it. A sender's queue toward a peer that does
    not read fills after a few datagrams; then send() fails with EAGAIN."""

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, "peer")
        self.sender_path = os.path.join(directory, "sender")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setblocking(False)
        self.received: list[bytes] = []
        self._wanted = 0
        self._all_received: asyncio.Future[None] | None = None

    def make_sender(self) -> socket.socket:
        sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sender.bind(self.sender_path)
        sender.connect(self.path)
        return sender

    def read_available(self) -> list[bytes]:
        while True:
            try:
                self.received.append(self.sock.recv(1 << 16))
            except BlockingIOError:
                return self.received

    async def read_until(self, count: int) -> list[bytes]:
        """Start reading (as a reader on the running loop) until `count` datagrams."""
        loop = asyncio.get_running_loop()
        self._wanted = count
        self._all_received = loop.create_future()
        loop.add_reader(self.sock, self._on_readable)
        try:
            self._on_readable()
            await asyncio.wait_for(asyncio.shield(self._all_received), WAIT_S)
        finally:
            loop.remove_reader(self.sock)
        return self.received

    def _on_readable(self) -> None:
        self.read_available()
        fut = self._all_received
        if fut is not None and not fut.done() and len(self.received) >= self._wanted:
            fut.set_result(None)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def silent_peer(tmp_path: Any) -> Iterator[SilentPeer]:
    peer = SilentPeer(str(tmp_path))
    yield peer
    peer.close()


def fill_until_buffered(transport: Any, make_datagram: Callable[[int], bytes]) -> list[bytes]:
    """sendto() numbered datagrams until the transport has to buffer one; all of them, in
    order (the last one is the first buffered)."""
    sent: list[bytes] = []
    for i in range(10_000):
        data = make_datagram(i)
        transport.sendto(data)
        sent.append(data)
        if transport.get_write_buffer_size():
            return sent
    raise AssertionError("the socket never refused a datagram")


def numbered(i: int, size: int = 512) -> bytes:
    return f"{i:08d}".encode().ljust(size, b".")


# -- echo over each family --------------------------------------------------------------------


async def test_udp_echo_over_ipv4_with_addresses_and_extra_info():
    loop = asyncio.get_running_loop()
    server_tr, server = await loop.create_datagram_endpoint(Echo, local_addr=(LOOPBACK, 0))
    server_addr = server_tr.get_extra_info("sockname")
    client_tr, client = await loop.create_datagram_endpoint(Recorder, remote_addr=server_addr)
    try:
        assert client.made.done() and client.made.result() is client_tr
        client_addr = client_tr.get_extra_info("sockname")
        assert client_addr[0] == LOOPBACK
        assert client_tr.get_extra_info("peername") == server_addr
        assert server_tr.get_extra_info("peername") is None
        assert client_tr.get_extra_info("socket").family == socket.AF_INET
        assert client_tr.get_extra_info("socket").type == socket.SOCK_DGRAM
        assert client_tr.get_extra_info("no-such-key", "default") == "default"

        client_tr.sendto(b"ping")
        assert await server.next_datagram() == (b"ping", client_addr)
        assert await client.next_datagram() == (b"ping", server_addr)
        assert client_tr.get_write_buffer_size() == 0
        assert not client_tr.is_closing()
    finally:
        await close_all(client, server)
    assert client.events == ["made", "datagram", "lost"]
    assert client.lost.result() is None


@pytest.mark.skipif(not ipv6_loopback_works(), reason="no IPv6 loopback here")
async def test_udp_echo_over_ipv6():
    loop = asyncio.get_running_loop()
    server_tr, server = await loop.create_datagram_endpoint(Echo, local_addr=("::1", 0))
    server_addr = server_tr.get_extra_info("sockname")
    assert len(server_addr) == 4
    client_tr, client = await loop.create_datagram_endpoint(Recorder, remote_addr=server_addr[:2])
    try:
        assert client_tr.get_extra_info("socket").family == socket.AF_INET6
        client_addr = client_tr.get_extra_info("sockname")
        client_tr.sendto(b"ping6")
        data, addr = await server.next_datagram()
        assert (data, addr[:2]) == (b"ping6", client_addr[:2])
        data, addr = await client.next_datagram()
        assert (data, addr[:2]) == (b"ping6", server_addr[:2])
    finally:
        await close_all(client, server)


async def test_unix_datagram_echo_between_paths(tmp_path):
    loop = asyncio.get_running_loop()
    skip_where_uvloop_differs(loop, NO_UNIX_PATHS)
    server_path, client_path = str(tmp_path / "srv"), str(tmp_path / "cli")
    server_tr, server = await loop.create_datagram_endpoint(
        Echo, local_addr=server_path, family=socket.AF_UNIX
    )
    client_tr, client = await loop.create_datagram_endpoint(
        Recorder, local_addr=client_path, remote_addr=server_path, family=socket.AF_UNIX
    )
    try:
        assert server_tr.get_extra_info("sockname") == server_path
        assert client_tr.get_extra_info("peername") == server_path
        client_tr.sendto(b"over unix")
        assert await server.next_datagram() == (b"over unix", client_path)
        assert await client.next_datagram() == (b"over unix", server_path)
        with pytest.raises(ValueError, match="Invalid address"):
            client_tr.sendto(b"elsewhere", str(tmp_path / "other"))
    finally:
        await close_all(client, server)


async def test_unix_datagram_in_the_abstract_namespace():
    loop = asyncio.get_running_loop()
    skip_where_uvloop_differs(loop, NO_UNIX_PATHS)
    tag = uuid.uuid4().hex
    server_name, client_name = f"\0cqloop-test-{tag}-srv", f"\0cqloop-test-{tag}-cli"
    _, server = await loop.create_datagram_endpoint(
        Echo, local_addr=server_name, family=socket.AF_UNIX
    )
    client_tr, client = await loop.create_datagram_endpoint(
        Recorder, local_addr=client_name, remote_addr=server_name, family=socket.AF_UNIX
    )
    try:
        client_tr.sendto(b"abstract")
        # Linux reports abstract names as bytes.
        assert await server.next_datagram() == (b"abstract", client_name.encode())
        assert await client.next_datagram() == (b"abstract", server_name.encode())
    finally:
        await close_all(client, server)


async def test_unix_datagram_endpoint_replaces_a_stale_socket_file(tmp_path):
    loop = asyncio.get_running_loop()
    skip_where_uvloop_differs(loop, NO_UNIX_PATHS)
    path = str(tmp_path / "stale")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as old:
        old.bind(path)  # closing leaves the socket file behind
    assert os.path.exists(path)
    transport, protocol = await loop.create_datagram_endpoint(
        Recorder, local_addr=path, family=socket.AF_UNIX
    )
    try:
        assert transport.get_extra_info("sockname") == path
    finally:
        await close_all(protocol)


async def test_unix_datagram_endpoint_does_not_remove_a_regular_file(tmp_path):
    loop = asyncio.get_running_loop()
    skip_where_uvloop_differs(loop, NO_UNIX_PATHS)
    path = tmp_path / "regular"
    path.write_text("keep me")
    with pytest.raises(OSError) as caught:
        await loop.create_datagram_endpoint(Recorder, local_addr=str(path), family=socket.AF_UNIX)
    assert caught.value.errno == errno.EADDRINUSE
    assert path.read_text() == "keep me"


# -- sendto and addresses ---------------------------------------------------------------------


async def test_connected_sendto_accepts_only_the_remote_address():
    loop = asyncio.get_running_loop()
    server_tr, server = await loop.create_datagram_endpoint(Recorder, local_addr=(LOOPBACK, 0))
    server_addr = server_tr.get_extra_info("sockname")
    client_tr, client = await loop.create_datagram_endpoint(Recorder, remote_addr=server_addr)
    try:
        with pytest.raises(ValueError, match="Invalid address: must be None or"):
            client_tr.sendto(b"x", (LOOPBACK, server_addr[1] + 1))
        client_tr.sendto(b"with its own address", server_addr)
        client_tr.sendto(b"with none")
        assert (await server.next_datagram())[0] == b"with its own address"
        assert (await server.next_datagram())[0] == b"with none"
        assert not client_tr.is_closing()
    finally:
        await close_all(client, server)


async def test_unconnected_sendto_reaches_each_address():
    loop = asyncio.get_running_loop()
    a_tr, a = await loop.create_datagram_endpoint(Recorder, local_addr=(LOOPBACK, 0))
    b_tr, b = await loop.create_datagram_endpoint(Recorder, local_addr=(LOOPBACK, 0))
    sender_tr, sender = await loop.create_datagram_endpoint(Recorder, family=socket.AF_INET)
    try:
        assert sender_tr.get_extra_info("peername") is None
        sender_tr.sendto(b"to a", a_tr.get_extra_info("sockname"))
        sender_tr.sendto(bytearray(b"to b"), b_tr.get_extra_info("sockname"))
        sender_tr.sendto(memoryview(b"xx to a again")[3:], a_tr.get_extra_info("sockname"))
        assert (await a.next_datagram())[0] == b"to a"
        assert (await b.next_datagram())[0] == b"to b"
        assert (await a.next_datagram())[0] == b"to a again"
    finally:
        await close_all(sender, a, b)


async def test_unconnected_sendto_without_an_address_is_a_fatal_write_error():
    loop = asyncio.get_running_loop()
    errors = handled_errors(loop)
    skip_where_uvloop_differs(
        loop, "it passes no address to the kernel and reports EDESTADDRREQ to error_received"
    )
    transport, protocol = await loop.create_datagram_endpoint(Recorder, local_addr=(LOOPBACK, 0))
    transport.sendto(b"where to?")
    exc = await protocol.wait_lost()
    assert isinstance(exc, TypeError)
    assert [c["message"] for c in errors] == ["Fatal write error on datagram transport"]
    assert errors[0]["exception"] is exc
    assert errors[0]["transport"] is transport
    assert errors[0]["protocol"] is protocol


async def test_sendto_refuses_data_that_is_not_bytes_like():
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(Recorder, family=socket.AF_INET)
    try:
        for bad in ("text", 42, [b"a list"]):
            with pytest.raises(TypeError):
                transport.sendto(bad, (LOOPBACK, 9))
    finally:
        await close_all(protocol)


async def test_sendto_of_empty_data():
    loop = asyncio.get_running_loop()
    if PY313:
        skip_where_uvloop_differs(loop, "it drops empty datagrams, as asyncio did before 3.13")
    receiver_tr, receiver = await loop.create_datagram_endpoint(Recorder, local_addr=(LOOPBACK, 0))
    sender_tr, sender = await loop.create_datagram_endpoint(
        Recorder, remote_addr=receiver_tr.get_extra_info("sockname")
    )
    try:
        sender_tr.sendto(b"")
        sender_tr.sendto(b"end")
        first, _ = await receiver.next_datagram()
        # 3.13 sends empty datagrams (gh-113812); before, asyncio dropped them.
        assert first == (b"" if PY313 else b"end")
    finally:
        await close_all(sender, receiver)


async def test_sendto_after_close_is_dropped_and_logged_past_a_threshold(caplog):
    loop = asyncio.get_running_loop()
    receiver_tr, receiver = await loop.create_datagram_endpoint(Recorder, local_addr=(LOOPBACK, 0))
    sender_tr, sender = await loop.create_datagram_endpoint(
        Recorder, remote_addr=receiver_tr.get_extra_info("sockname")
    )
    await close_all(sender)
    assert sender_tr.is_closing()

    def warnings_logged() -> int:
        return sum(r.getMessage() == "socket.send() raised exception." for r in caplog.records)

    try:
        with caplog.at_level(logging.WARNING, logger="asyncio"):
            # close() counts as the first write to a lost connection; the fifth is logged.
            for _ in range(4):
                sender_tr.sendto(b"lost")
            assert warnings_logged() == 0
            sender_tr.sendto(b"lost")
            assert warnings_logged() == 1
            sender_tr.sendto(b"lost")
            assert warnings_logged() == 2
    finally:
        await close_all(receiver)


# -- errors from the network ------------------------------------------------------------------


async def test_connection_refused_goes_to_error_received_on_a_connected_socket():
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        Recorder, remote_addr=(LOOPBACK, free_udp_port())
    )
    try:
        transport.sendto(b"anyone there?")
        exc = await protocol.next_error()
        assert isinstance(exc, ConnectionRefusedError)
        # An ICMP error is news for the protocol, not the end of the transport.
        assert not transport.is_closing()
        assert not protocol.lost.done()
    finally:
        await close_all(protocol)


# -- the write buffer and flow control --------------------------------------------------------


async def test_default_write_buffer_limits():
    loop = asyncio.get_running_loop()
    skip_where_uvloop_differs(loop, "its default low-water mark is 16 bytes, not 16 KiB")
    transport, protocol = await loop.create_datagram_endpoint(Recorder, family=socket.AF_INET)
    try:
        assert transport.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
    finally:
        await close_all(protocol)


async def test_set_write_buffer_limits():
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(Recorder, family=socket.AF_INET)
    try:
        transport.set_write_buffer_limits(high=100)
        assert transport.get_write_buffer_limits() == (25, 100)
        transport.set_write_buffer_limits(low=10)
        assert transport.get_write_buffer_limits() == (10, 40)
        transport.set_write_buffer_limits(high=0)
        assert transport.get_write_buffer_limits() == (0, 0)
        with pytest.raises(ValueError, match="must be >="):
            transport.set_write_buffer_limits(high=1, low=2)
        with pytest.raises(ValueError, match="must be >="):
            transport.set_write_buffer_limits(high=10, low=-1)
        # An empty buffer never pauses the protocol, whatever the limits.
        assert "pause_writing" not in protocol.events
    finally:
        await close_all(protocol)


async def test_full_socket_buffers_datagrams_and_flow_control_pauses_and_resumes(silent_peer):
    loop = asyncio.get_running_loop()
    skip_where_asyncio_never_drains_its_header_count(loop)
    transport, protocol = await loop.create_datagram_endpoint(
        Recorder, sock=silent_peer.make_sender()
    )
    try:
        transport.set_write_buffer_limits(high=4096, low=1024)
        sent = fill_until_buffered(transport, numbered)
        assert not protocol.paused.done()
        while not protocol.paused.done():
            data = numbered(len(sent))
            transport.sendto(data)
            sent.append(data)
        assert transport.get_write_buffer_size() > 4096

        received = await silent_peer.read_until(len(sent))
        await asyncio.wait_for(asyncio.shield(protocol.resumed), WAIT_S)
        assert received == sent  # every datagram, in order
        assert transport.get_write_buffer_size() == 0
        assert protocol.events == ["made", "pause_writing", "resume_writing"]
    finally:
        await close_all(protocol)


async def test_buffered_datagram_is_a_copy_of_what_sendto_was_given(silent_peer):
    loop = asyncio.get_running_loop()
    skip_where_uvloop_differs(
        loop, "it keeps a view of the caller's buffer and sends what it holds later"
    )
    transport, protocol = await loop.create_datagram_endpoint(
        Recorder, sock=silent_peer.make_sender()
    )
    try:
        sent = fill_until_buffered(transport, numbered)
        # 3.13 counts 8 bytes of header per buffered datagram (gh-113812).
        header_bytes = 8 if PY313 else 0
        assert transport.get_write_buffer_size() == len(sent[-1]) + header_bytes
        reused = bytearray(numbered(len(sent)))
        transport.sendto(reused)
        sent.append(bytes(reused))
        reused[:] = b"overwritten".ljust(len(reused), b"!")
        assert await silent_peer.read_until(len(sent)) == sent
    finally:
        await close_all(protocol)


async def test_setting_a_lower_high_water_mark_pauses_a_protocol_with_a_full_buffer(silent_peer):
    loop = asyncio.get_running_loop()
    skip_where_asyncio_never_drains_its_header_count(loop)
    transport, protocol = await loop.create_datagram_endpoint(
        Recorder, sock=silent_peer.make_sender()
    )
    try:
        sent = fill_until_buffered(transport, numbered)
        assert not protocol.paused.done()
        transport.set_write_buffer_limits(high=1)
        assert protocol.paused.done()
        await silent_peer.read_until(len(sent))
        await asyncio.wait_for(asyncio.shield(protocol.resumed), WAIT_S)
    finally:
        await close_all(protocol)


async def test_pause_writing_error_goes_to_the_exception_handler(silent_peer):
    class BrokenPause(Recorder):
        def pause_writing(self) -> None:
            super().pause_writing()
            raise RuntimeError("pause_writing broke")

    loop = asyncio.get_running_loop()
    errors = handled_errors(loop)
    transport, protocol = await loop.create_datagram_endpoint(
        BrokenPause, sock=silent_peer.make_sender()
    )
    try:
        transport.set_write_buffer_limits(high=0)
        sent = fill_until_buffered(transport, numbered)
        assert protocol.paused.done()
        assert [c["message"] for c in errors] == ["protocol.pause_writing() failed"]
        assert isinstance(errors[0]["exception"], RuntimeError)
        assert not transport.is_closing()
        await silent_peer.read_until(len(sent))
    finally:
        await close_all(protocol)


async def test_close_sends_the_buffer_before_connection_lost(silent_peer):
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        Recorder, sock=silent_peer.make_sender()
    )
    sent = fill_until_buffered(transport, numbered)
    for _ in range(3):
        sent.append(numbered(len(sent)))
        transport.sendto(sent[-1])
    transport.close()
    assert transport.is_closing()
    assert transport.get_write_buffer_size() > 0
    # The peer starts reading only now: connection_lost must wait for the buffer.
    received = await silent_peer.read_until(len(sent))
    assert await protocol.wait_lost() is None
    assert received == sent
    assert protocol.events[-1] == "lost"


async def test_abort_drops_the_buffer_and_calls_connection_lost(silent_peer):
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        Recorder, sock=silent_peer.make_sender()
    )
    sent = fill_until_buffered(transport, numbered)
    transport.sendto(numbered(len(sent)))
    transport.abort()
    assert transport.is_closing()
    assert await protocol.wait_lost() is None
    # Only what the socket took before it refused the first datagram reached the peer.
    assert silent_peer.read_available() == sent[:-1]


async def test_abort_empties_the_write_buffer_size(silent_peer):
    loop = asyncio.get_running_loop()
    skip_where_asyncio_trips(loop, "get_write_buffer_size() still counts what abort() dropped")
    transport, protocol = await loop.create_datagram_endpoint(
        Recorder, sock=silent_peer.make_sender()
    )
    fill_until_buffered(transport, numbered)
    transport.abort()
    assert await protocol.wait_lost() is None
    assert transport.get_write_buffer_size() == 0


@pytest.mark.cqloop_only
async def test_sendto_after_a_close_that_drained_the_buffer_is_dropped(silent_peer, caplog):
    # asyncio then sends on no socket and raises AttributeError from sendto(); uvloop
    # raises RuntimeError (the handle is closed). Neither counts the close as a write to a
    # lost connection, as they do when close() finds the buffer empty.
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        Recorder, sock=silent_peer.make_sender()
    )
    sent = fill_until_buffered(transport, numbered)
    transport.close()
    await silent_peer.read_until(len(sent))
    await protocol.wait_lost()
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        for _ in range(5):
            transport.sendto(b"too late")
    assert "socket.send() raised exception." in caplog.messages


async def test_unconnected_sendto_after_the_socket_is_closed_is_dropped():
    loop = asyncio.get_running_loop()
    skip_where_asyncio_trips(loop, "its transport then sends on no socket: AttributeError")
    receiver_tr, receiver = await loop.create_datagram_endpoint(Recorder, local_addr=(LOOPBACK, 0))
    sender_tr, sender = await loop.create_datagram_endpoint(Recorder, family=socket.AF_INET)
    receiver_addr = receiver_tr.get_extra_info("sockname")
    await close_all(sender)
    try:
        sender_tr.sendto(b"too late", receiver_addr)
        # Loopback queues a datagram at the receiver during sendto(): the marker, sent
        # after, is the first datagram to arrive.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
            other.sendto(b"marker", receiver_addr)
        assert (await receiver.next_datagram())[0] == b"marker"
    finally:
        await close_all(receiver)


async def test_close_and_abort_are_idempotent():
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(Recorder, family=socket.AF_INET)
    transport.close()
    transport.close()
    transport.abort()
    assert await protocol.wait_lost() is None
    transport.close()
    transport.abort()
    assert protocol.events == ["made", "lost"]


# -- sock=, reuse_port, allow_broadcast -------------------------------------------------------


async def test_sock_argument_uses_the_socket_and_close_closes_it():
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOOPBACK, 0))
    server_tr, server = await loop.create_datagram_endpoint(Echo, sock=sock)
    client_tr, client = await loop.create_datagram_endpoint(
        Recorder, remote_addr=sock.getsockname()
    )
    try:
        assert server_tr.get_extra_info("sockname") == sock.getsockname()
        assert server_tr.get_extra_info("socket").fileno() == sock.fileno()
        assert not sock.getblocking()
        client_tr.sendto(b"via sock=")
        assert (await client.next_datagram())[0] == b"via sock="
    finally:
        await close_all(client, server)
    assert sock.fileno() == -1


async def test_sock_argument_with_a_connected_unnamed_unix_socket():
    loop = asyncio.get_running_loop()
    skip_where_asyncio_trips(
        loop,
        "it takes a connected socket whose peer address is '' (a socketpair) for "
        "unconnected and calls sendto(data, None): a fatal TypeError",
    )
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        transport, protocol = await loop.create_datagram_endpoint(Recorder, sock=mine)
        transport.sendto(b"to the other end")
        theirs.send(b"and back")
        assert (await protocol.next_datagram())[0] == b"and back"
        theirs.settimeout(WAIT_S)
        assert theirs.recv(100) == b"to the other end"
        await close_all(protocol)
    finally:
        theirs.close()


async def test_reuse_port_lets_two_endpoints_share_a_port():
    loop = asyncio.get_running_loop()
    first_tr, first = await loop.create_datagram_endpoint(
        Recorder, local_addr=(LOOPBACK, 0), reuse_port=True
    )
    addr = first_tr.get_extra_info("sockname")
    second_tr, second = await loop.create_datagram_endpoint(
        Recorder, local_addr=addr, reuse_port=True
    )
    try:
        assert second_tr.get_extra_info("sockname") == addr
        for transport in (first_tr, second_tr):
            sock = transport.get_extra_info("socket")
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
    finally:
        await close_all(first, second)


async def test_without_reuse_port_a_bound_port_is_refused():
    loop = asyncio.get_running_loop()
    skip_where_uvloop_differs(loop, "its bind error is a new OSError without errno")
    first_tr, first = await loop.create_datagram_endpoint(Recorder, local_addr=(LOOPBACK, 0))
    try:
        with pytest.raises(OSError) as caught:
            await loop.create_datagram_endpoint(
                Recorder, local_addr=first_tr.get_extra_info("sockname")
            )
        assert caught.value.errno == errno.EADDRINUSE
    finally:
        await close_all(first)


def both_loopbacks_on_one_port() -> tuple[Any, Any, int]:
    """Host None resolves to both loopbacks: the first and the last addrinfo of a port
    that is free (for now) in both families."""
    if not ipv6_loopback_works():
        pytest.skip("no IPv6 loopback here")
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
        probe.bind(("::1", 0))
        port = int(probe.getsockname()[1])
    choices = socket.getaddrinfo(None, port, 0, socket.SOCK_DGRAM)
    assert {info[0] for info in choices} == {socket.AF_INET, socket.AF_INET6}
    return choices[0], choices[-1], port


async def test_each_resolved_address_is_tried_until_one_binds():
    loop = asyncio.get_running_loop()
    first, second, port = both_loopbacks_on_one_port()
    with socket.socket(first[0], socket.SOCK_DGRAM) as blocker:
        blocker.bind(first[4])
        transport, protocol = await loop.create_datagram_endpoint(Recorder, local_addr=(None, port))
        try:
            assert transport.get_extra_info("socket").family == second[0]
            assert transport.get_extra_info("sockname")[:2] == second[4][:2]
        finally:
            await close_all(protocol)


async def test_when_no_resolved_address_binds_the_first_error_is_raised():
    loop = asyncio.get_running_loop()
    skip_where_uvloop_differs(loop, "its bind error is a new OSError without errno")
    first, second, port = both_loopbacks_on_one_port()
    with (
        socket.socket(first[0], socket.SOCK_DGRAM) as first_blocker,
        socket.socket(second[0], socket.SOCK_DGRAM) as second_blocker,
    ):
        first_blocker.bind(first[4])
        second_blocker.bind(second[4])
        with pytest.raises(OSError) as caught:
            await loop.create_datagram_endpoint(Recorder, local_addr=(None, port))
    assert caught.value.errno == errno.EADDRINUSE


async def test_host_names_are_resolved():
    loop = asyncio.get_running_loop()
    receiver_tr, receiver = await loop.create_datagram_endpoint(
        Recorder, local_addr=("localhost", 0), family=socket.AF_INET
    )
    port = receiver_tr.get_extra_info("sockname")[1]
    sender_tr, sender = await loop.create_datagram_endpoint(
        Recorder, remote_addr=("localhost", port), family=socket.AF_INET
    )
    try:
        assert receiver_tr.get_extra_info("sockname")[0] == LOOPBACK
        assert sender_tr.get_extra_info("peername") == (LOOPBACK, port)
        sender_tr.sendto(b"by name")
        assert (await receiver.next_datagram())[0] == b"by name"
    finally:
        await close_all(sender, receiver)


async def test_allow_broadcast_sets_so_broadcast():
    loop = asyncio.get_running_loop()
    plain_tr, plain = await loop.create_datagram_endpoint(Recorder, local_addr=(LOOPBACK, 0))
    broadcast_tr, broadcast = await loop.create_datagram_endpoint(
        Recorder, local_addr=(LOOPBACK, 0), allow_broadcast=True
    )
    try:
        option = (socket.SOL_SOCKET, socket.SO_BROADCAST)
        assert broadcast_tr.get_extra_info("socket").getsockopt(*option)
        assert not plain_tr.get_extra_info("socket").getsockopt(*option)
    finally:
        await close_all(plain, broadcast)


async def test_allow_broadcast_with_remote_addr_leaves_the_socket_unconnected():
    loop = asyncio.get_running_loop()
    skip_where_uvloop_differs(loop, "it connects the socket to remote_addr anyway")
    receiver_tr, receiver = await loop.create_datagram_endpoint(Recorder, local_addr=(LOOPBACK, 0))
    receiver_addr = receiver_tr.get_extra_info("sockname")
    sender_tr, sender = await loop.create_datagram_endpoint(
        Recorder, remote_addr=receiver_addr, allow_broadcast=True
    )
    try:
        assert sender_tr.get_extra_info("peername") is None
        sender_tr.sendto(b"to remote_addr")
        assert (await receiver.next_datagram())[0] == b"to remote_addr"
        # Not connected, but sendto() still takes only remote_addr.
        with pytest.raises(ValueError, match="Invalid address"):
            sender_tr.sendto(b"x", (LOOPBACK, receiver_addr[1] + 1))
    finally:
        await close_all(sender, receiver)


# -- argument errors --------------------------------------------------------------------------

ARGUMENT_ERRORS = [
    pytest.param({}, ValueError, "unexpected address family", id="no-address-no-family"),
    pytest.param({"local_addr": "not a tuple"}, TypeError, None, id="local-addr-not-a-tuple"),
    pytest.param(
        {"remote_addr": (LOOPBACK, 9, 0)}, TypeError, None, id="remote-addr-not-a-2-tuple"
    ),
]


@pytest.mark.parametrize(("kwargs", "error", "message"), ARGUMENT_ERRORS)
async def test_argument_errors(kwargs, error, message):
    loop = asyncio.get_running_loop()
    with pytest.raises(error, match=message):
        await loop.create_datagram_endpoint(Recorder, **kwargs)


async def test_unix_family_wants_string_addresses():
    loop = asyncio.get_running_loop()
    skip_where_uvloop_differs(loop, NO_UNIX_PATHS)
    with pytest.raises(TypeError, match="string is expected"):
        await loop.create_datagram_endpoint(
            Recorder, local_addr=(LOOPBACK, 0), family=socket.AF_UNIX
        )
    with pytest.raises(TypeError, match="string is expected"):
        await loop.create_datagram_endpoint(
            Recorder, remote_addr=b"/bytes/path", family=socket.AF_UNIX
        )


async def test_local_and_remote_addresses_of_different_families_are_refused():
    loop = asyncio.get_running_loop()
    skip_where_uvloop_differs(loop, "it raises OSError('could not bind to remote_addr ...')")
    with pytest.raises(ValueError, match="can not get address information"):
        await loop.create_datagram_endpoint(
            Recorder, local_addr=(LOOPBACK, 0), remote_addr=("::1", 9)
        )


async def test_sock_must_be_a_datagram_socket():
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as stream:
        with pytest.raises(ValueError, match=r"(?i)socket was expected"):
            await loop.create_datagram_endpoint(Recorder, sock=stream)


@pytest.mark.parametrize(
    "modifier",
    [
        {"local_addr": (LOOPBACK, 0)},
        {"remote_addr": (LOOPBACK, 9)},
        {"family": socket.AF_INET},
        {"proto": socket.IPPROTO_UDP},
        {"flags": socket.AI_PASSIVE},
        {"reuse_port": True},
        {"allow_broadcast": True},
    ],
    ids=lambda modifier: next(iter(modifier)),
)
async def test_sock_refuses_socket_modifiers(modifier):
    loop = asyncio.get_running_loop()
    (name,) = modifier
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        with pytest.raises(ValueError, match=f"when sock is specified. .*{name}="):
            await loop.create_datagram_endpoint(Recorder, sock=sock, **modifier)


async def test_reuse_address_is_gone():
    loop = asyncio.get_running_loop()
    skip_where_uvloop_differs(
        loop, "it still takes reuse_address: ValueError for True, DeprecationWarning for False"
    )
    # Removed in 3.11 (deprecated since 3.8.1): an unknown keyword argument.
    for value in (True, False):
        with pytest.raises(TypeError, match="reuse_address"):
            await loop.create_datagram_endpoint(
                Recorder, local_addr=(LOOPBACK, 0), reuse_address=value
            )


async def test_protocol_factory_error_propagates_and_leaves_no_socket_open():
    loop = asyncio.get_running_loop()

    def broken_factory() -> Recorder:
        raise RuntimeError("no protocol today")

    with pytest.raises(RuntimeError, match="no protocol today"):
        await loop.create_datagram_endpoint(broken_factory, local_addr=(LOOPBACK, 0))


async def test_cancelled_while_waiting_for_connection_made_closes_the_transport():
    loop = asyncio.get_running_loop()
    skip_where_uvloop_differs(
        loop, "it leaves the transport open when the call is cancelled after connection_made"
    )
    holder: dict[str, Any] = {}

    class CancelsItsCreator(Recorder):
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            holder["protocol"] = self
            holder["task"].cancel()

    holder["task"] = loop.create_task(
        loop.create_datagram_endpoint(CancelsItsCreator, local_addr=(LOOPBACK, 0))
    )
    with pytest.raises(asyncio.CancelledError):
        await holder["task"]
    protocol = holder["protocol"]
    assert protocol.transport.is_closing()
    assert await protocol.wait_lost() is None


# -- errors raised by protocols and sockets ---------------------------------------------------


async def test_error_in_datagram_received_goes_to_the_exception_handler():
    loop = asyncio.get_running_loop()
    errors = handled_errors(loop)

    class Broken(Recorder):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            super().datagram_received(data, addr)
            if data == b"break":
                raise ZeroDivisionError("datagram_received broke")

    transport, protocol = await loop.create_datagram_endpoint(Broken, local_addr=(LOOPBACK, 0))
    addr = transport.get_extra_info("sockname")
    try:
        transport.sendto(b"break", addr)
        transport.sendto(b"after", addr)
        assert (await protocol.next_datagram())[0] == b"break"
        assert (await protocol.next_datagram())[0] == b"after"
        assert len(errors) == 1
        assert isinstance(errors[0]["exception"], ZeroDivisionError)
        assert not transport.is_closing()
    finally:
        await close_all(protocol)


class FaultySocket(socket.socket):
    """A datagram socket whose recvfrom or sendto fails with a non-OSError."""

    fail_recvfrom = False
    fail_sendto = False

    def recvfrom(self, *args: Any) -> Any:
        if self.fail_recvfrom:
            raise RuntimeError("recvfrom broke")
        return super().recvfrom(*args)

    def sendto(self, *args: Any) -> Any:
        if self.fail_sendto:
            raise RuntimeError("sendto broke")
        return super().sendto(*args)


@pytest.mark.parametrize(
    ("direction", "message"),
    [("recvfrom", "Fatal read error"), ("sendto", "Fatal write error")],
)
async def test_non_os_error_from_the_socket_is_fatal(direction, message):
    loop = asyncio.get_running_loop()
    errors = handled_errors(loop)
    skip_where_uvloop_differs(loop, READS_WITH_LIBUV)
    sock = FaultySocket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOOPBACK, 0))
    setattr(sock, f"fail_{direction}", True)
    transport, protocol = await loop.create_datagram_endpoint(Recorder, sock=sock)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as outsider:
        outsider.sendto(b"incoming", sock.getsockname())
        transport.sendto(b"outgoing", outsider.getsockname())
        exc = await protocol.wait_lost()
    assert isinstance(exc, RuntimeError) and str(exc) == f"{direction} broke"
    assert [c["message"] for c in errors] == [f"{message} on datagram transport"]
    assert errors[0]["exception"] is exc
    assert transport.is_closing()
    assert sock.fileno() == -1


# -- reading, the transport object ------------------------------------------------------------


async def test_pause_reading_holds_datagrams_until_resume_reading():
    loop = asyncio.get_running_loop()
    skip_where_uvloop_differs(loop, NO_PAUSE_READING)
    transport, protocol = await loop.create_datagram_endpoint(Recorder, local_addr=(LOOPBACK, 0))
    try:
        assert transport.is_reading()
        transport.pause_reading()
        assert not transport.is_reading()
        transport.sendto(b"while paused", transport.get_extra_info("sockname"))
        sentinel_tr, sentinel = await loop.create_datagram_endpoint(
            Recorder, local_addr=(LOOPBACK, 0)
        )
        # A second endpoint's datagram, sent after, shows the loop has had its chance.
        transport.sendto(b"sentinel", sentinel_tr.get_extra_info("sockname"))
        await sentinel.next_datagram()
        await close_all(sentinel)
        assert protocol.datagrams.empty()
        transport.resume_reading()
        assert transport.is_reading()
        assert (await protocol.next_datagram())[0] == b"while paused"
    finally:
        await close_all(protocol)
    assert not transport.is_reading()


async def test_transport_takes_instance_attributes_and_set_protocol():
    loop = asyncio.get_running_loop()
    skip_where_uvloop_differs(loop, "its transports are extension types without __dict__")
    transport, protocol = await loop.create_datagram_endpoint(Recorder, family=socket.AF_INET)
    try:
        transport.write = lambda data: None
        transport.custom = "yes"
        assert transport.custom == "yes"
        assert transport.get_protocol() is protocol
        other = Recorder()
        transport.set_protocol(other)
        assert transport.get_protocol() is other
        transport.set_protocol(protocol)
    finally:
        await close_all(protocol)


async def test_debug_mode_logs_the_new_endpoint(caplog):
    loop = asyncio.get_running_loop()
    skip_where_uvloop_differs(loop, "it logs nothing when an endpoint is created")
    loop.set_debug(True)
    with caplog.at_level(logging.DEBUG, logger="asyncio"):
        transport, protocol = await loop.create_datagram_endpoint(
            Recorder, local_addr=(LOOPBACK, 0)
        )
    try:
        created = [m for m in caplog.messages if m.startswith("Datagram endpoint ")]
        assert len(created) == 1
        assert f"local_addr=('{LOOPBACK}', 0)" in created[0]
        assert f"fd={transport.get_extra_info('socket').fileno()}" in created[0]
        assert "read=" in repr(transport) and "write=<idle, bufsize=0>" in repr(transport)
    finally:
        await close_all(protocol)
    loop.set_debug(False)
