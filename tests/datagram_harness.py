"""What the datagram tests share (test_datagram.py, test_datagram_flow.py,
test_datagram_options.py): a recording DatagramProtocol and an echoing one, free UDP ports,
the errors a loop handled, the skips where asyncio or uvloop knowingly differ, and a Unix
datagram peer that does not read (SilentPeer), to fill a sender's buffer: UDP over loopback
never blocks a sender, the kernel drops datagrams at the receiver instead."""

from __future__ import annotations

import asyncio
import asyncio.selector_events
import os
import socket
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.conftest import is_cqloop, is_uvloop

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
