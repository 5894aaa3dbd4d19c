"""Stream transports' reads on both engines: by readiness (epoll; io_uring by default) and
through the ring (io_uring with CQLOOP_URING_READS=1: multishot receives into its
provided buffer ring). What a protocol sees must not depend on which: the order of
data_received, eof_received and connection_lost, pause/resume under load, close and
reset in the middle of a receive, fd numbers reused after a close, fork, messages larger
than one provided buffer, BufferedProtocol's copies, many connections at once."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import subprocess
import sys
import textwrap

import pytest

import cqloop
from cqloop._core import uring

pytestmark = pytest.mark.cqloop_only

USABLE, REASON = uring.probe()
needs_uring = pytest.mark.skipif(not USABLE, reason=f"io_uring not usable here: {REASON}")
# (engine, CQLOOP_URING_READS)
ENGINES = [
    pytest.param(("epoll", "0"), id="epoll"),
    pytest.param(("io_uring", "0"), id="io_uring", marks=needs_uring),
    pytest.param(("io_uring", "1"), id="io_uring-ring-reads", marks=needs_uring),
]
WAIT_S = 10.0
PROVIDED_BUFFER_BYTES = 8192  # uring.pyx's PBUF_SIZE: messages below are larger


@pytest.fixture(params=ENGINES)
def loop(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    engine, reads = request.param
    monkeypatch.setenv("CQLOOP_URING_READS", reads)
    loop = cqloop.new_event_loop(engine=engine)
    assert loop.statistics()["stream_reads"] == (reads == "1")
    try:
        yield loop
    finally:
        loop.close()


def run(loop: asyncio.AbstractEventLoop, coro):
    return loop.run_until_complete(asyncio.wait_for(coro, WAIT_S))


def pattern(size: int, seed: int = 0) -> bytes:
    """Bytes whose every 4-byte word says its position: a reordered chunk shows."""
    words = (size + 3) // 4
    return b"".join(struct.pack("<I", (seed << 24) + i) for i in range(words))[:size]


class Recorder(asyncio.Protocol):
    """Records what the transport delivers, in order."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.data = bytearray()
        self.transport: asyncio.Transport | None = None
        self.lost = asyncio.get_running_loop().create_future()
        self.lost_exc: BaseException | None = None
        self.eof = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport
        self.events.append("made")

    def data_received(self, data: bytes) -> None:
        assert self.events[-1] in ("made", "data")
        self.events.append("data")
        self.data += data

    def eof_received(self):
        self.events.append("eof")
        self.eof.set_result(None)
        return None

    def connection_lost(self, exc):
        self.events.append("lost")
        self.lost_exc = exc
        self.lost.set_result(None)


async def serve(factory) -> tuple[asyncio.AbstractServer, socket.socket, object]:
    """A server for `factory` and a plain client socket connected to it (non-blocking),
    with the server side's protocol once it is made."""
    loop = asyncio.get_running_loop()
    made = loop.create_future()

    def make():
        proto = factory()
        if not made.done():
            made.set_result(proto)
        return proto

    server = await loop.create_server(make, "127.0.0.1", 0)
    client = socket.socket()
    client.setblocking(False)
    await loop.sock_connect(client, server.sockets[0].getsockname())
    proto = await made
    return server, client, proto


async def closed(server: asyncio.AbstractServer) -> None:
    server.close()
    await server.wait_closed()


def test_data_then_end_of_file_then_connection_lost_in_order(loop):
    async def main():
        server, client, proto = await serve(Recorder)
        payload = pattern(3 * PROVIDED_BUFFER_BYTES + 123)
        await loop.sock_sendall(client, payload[:1000])
        await loop.sock_sendall(client, payload[1000:])
        client.shutdown(socket.SHUT_WR)
        await proto.lost
        client.close()
        await closed(server)
        assert bytes(proto.data) == payload
        assert proto.events[0] == "made"
        assert proto.events[-2:] == ["eof", "lost"]
        assert set(proto.events[1:-2]) == {"data"}
        assert proto.lost_exc is None

    run(loop, main())


def test_pause_reading_holds_data_until_resume_under_load(loop):
    total = 4 * 1024 * 1024

    class Pausing(Recorder):
        paused = False

        def data_received(self, data):
            assert not self.paused, "data_received while reading is paused"
            super().data_received(data)
            self.paused = True
            self.transport.pause_reading()
            asyncio.get_running_loop().call_soon(self.resume)

        def resume(self):
            self.paused = False
            self.transport.resume_reading()

    async def main():
        server, client, proto = await serve(Pausing)
        payload = pattern(total, seed=7)
        await loop.sock_sendall(client, payload)
        client.shutdown(socket.SHUT_WR)
        await proto.lost
        client.close()
        await closed(server)
        assert len(proto.data) == total
        assert bytes(proto.data) == payload
        assert proto.events[-2:] == ["eof", "lost"]

    run(loop, main())


def test_data_received_before_a_pause_is_delivered_after_resume(loop):
    """Bytes that arrived (and, on io_uring, were received into the ring) while the
    protocol was paused come after resume_reading, before newer ones."""

    async def main():
        server, client, proto = await serve(Recorder)
        await loop.sock_sendall(client, b"first")
        while bytes(proto.data) != b"first":
            await asyncio.sleep(0)
        proto.transport.pause_reading()
        await loop.sock_sendall(client, b"second")
        for _ in range(20):
            await asyncio.sleep(0)
        assert bytes(proto.data) == b"first"
        proto.transport.resume_reading()
        await loop.sock_sendall(client, b"third")
        while len(proto.data) < len(b"firstsecondthird"):
            await asyncio.sleep(0)
        assert bytes(proto.data) == b"firstsecondthird"
        client.close()
        await proto.lost
        await closed(server)

    run(loop, main())


def test_close_while_a_receive_waits_releases_the_socket(loop):
    """Closing a transport whose receive is in flight closes the socket at once: the peer
    reads end of file (an io_uring request still holding the file would keep it open)."""

    async def main():
        server, client, proto = await serve(Recorder)
        await loop.sock_sendall(client, b"x")
        while not proto.data:
            await asyncio.sleep(0)
        proto.transport.close()
        await proto.lost
        assert await loop.sock_recv(client, 10) == b""
        client.close()
        await closed(server)

    run(loop, main())


def test_peer_reset_after_data_is_reported_after_the_data(loop):
    async def main():
        server, client, proto = await serve(Recorder)
        await loop.sock_sendall(client, b"before the reset")
        while bytes(proto.data) != b"before the reset":
            await asyncio.sleep(0)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        await proto.lost
        await closed(server)
        assert isinstance(proto.lost_exc, ConnectionResetError)
        assert bytes(proto.data) == b"before the reset"

    run(loop, main())


def test_a_reused_fd_number_gets_only_its_own_connections_data(loop):
    """A closes while its peer is still sending; B, accepted next under A's fd number,
    receives B's bytes alone."""

    async def main():
        server, client_a, proto_a = await serve(Recorder)
        fd_a = proto_a.transport.get_extra_info("socket").fileno()
        await loop.sock_sendall(client_a, b"A" * 5000)
        proto_a.transport.close()
        await loop.sock_sendall(client_a, b"A" * 5000)
        await proto_a.lost
        made = loop.create_future()
        protos: list[Recorder] = []

        def make():
            proto = Recorder()
            protos.append(proto)
            made.set_result(proto)
            return proto

        server2 = await loop.create_server(make, "127.0.0.1", 0)
        client_b = socket.socket()
        client_b.setblocking(False)
        await loop.sock_connect(client_b, server2.sockets[0].getsockname())
        proto_b = await made
        fd_b = proto_b.transport.get_extra_info("socket").fileno()
        await loop.sock_sendall(client_b, b"B" * 3000)
        client_b.shutdown(socket.SHUT_WR)
        await proto_b.eof
        client_a.close()
        client_b.close()
        await proto_b.lost
        await closed(server)
        await closed(server2)
        # (The number is reused when nothing else took it meanwhile; the data check
        # holds either way.)
        assert fd_b in (fd_a, fd_b)
        assert bytes(proto_b.data) == b"B" * 3000

    run(loop, main())


def test_messages_larger_than_a_provided_buffer_echo_whole(loop):
    class Echo(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            self.transport.write(data)

    async def main():
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
        for size in (PROVIDED_BUFFER_BYTES - 1, PROVIDED_BUFFER_BYTES + 1, 1 << 20, 5 << 20):
            payload = pattern(size, seed=size % 200)
            writer.write(payload)
            assert await reader.readexactly(size) == payload
        writer.close()
        await writer.wait_closed()
        await closed(server)

    run(loop, main())


def test_buffered_protocol_gets_each_chunk_copied_into_small_buffers(loop):
    class Small(asyncio.BufferedProtocol):
        def __init__(self):
            self.buf = bytearray(100)
            self.data = bytearray()
            self.lost = asyncio.get_running_loop().create_future()
            self.eof = False
            self.sizes: list[int] = []

        def connection_made(self, transport):
            self.transport = transport

        def get_buffer(self, sizehint):
            return self.buf

        def buffer_updated(self, nbytes):
            self.sizes.append(nbytes)
            self.data += self.buf[:nbytes]

        def eof_received(self):
            self.eof = True

        def connection_lost(self, exc):
            self.lost.set_result(exc)

    async def main():
        server, client, proto = await serve(Small)
        payload = pattern(3 * PROVIDED_BUFFER_BYTES + 7, seed=3)
        await loop.sock_sendall(client, payload)
        client.shutdown(socket.SHUT_WR)
        assert await proto.lost is None
        client.close()
        await closed(server)
        assert bytes(proto.data) == payload
        assert proto.eof
        assert max(proto.sizes) <= 100

    run(loop, main())


def test_buffered_protocol_paused_mid_chunk_gets_the_rest_after_resume(loop):
    class PausesOnce(asyncio.BufferedProtocol):
        def __init__(self):
            self.buf = bytearray(1000)
            self.data = bytearray()
            self.paused_at: int | None = None
            self.paused = False
            self.lost = asyncio.get_running_loop().create_future()

        def connection_made(self, transport):
            self.transport = transport

        def get_buffer(self, sizehint):
            return self.buf

        def buffer_updated(self, nbytes):
            assert not self.paused, "buffer_updated while reading is paused"
            self.data += self.buf[:nbytes]
            if self.paused_at is None and len(self.data) >= 2000:
                self.paused_at = len(self.data)
                self.paused = True
                self.transport.pause_reading()

        def connection_lost(self, exc):
            self.lost.set_result(exc)

    async def main():
        server, client, proto = await serve(PausesOnce)
        payload = pattern(20000, seed=9)
        await loop.sock_sendall(client, payload)
        while proto.paused_at is None:
            await asyncio.sleep(0)
        for _ in range(10):
            await asyncio.sleep(0)
        assert len(proto.data) == proto.paused_at
        proto.paused = False
        proto.transport.resume_reading()
        while len(proto.data) < len(payload):
            await asyncio.sleep(0)
        assert bytes(proto.data) == payload
        client.close()
        await proto.lost
        await closed(server)

    run(loop, main())


def test_many_connections_echo_at_once(loop):
    count = 200

    class Echo(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            self.transport.write(data)

    async def one(address, i):
        reader, writer = await asyncio.open_connection(*address)
        for round_ in range(3):
            payload = pattern(1024 + i, seed=(i + round_) % 250)
            writer.write(payload)
            assert await reader.readexactly(len(payload)) == payload
        writer.close()
        await writer.wait_closed()

    async def main():
        server = await loop.create_server(Echo, "127.0.0.1", 0, backlog=count)
        address = server.sockets[0].getsockname()
        await asyncio.gather(*(one(address, i) for i in range(count)))
        await closed(server)

    run(loop, main())


@needs_uring
def test_stream_reads_through_the_ring_are_opt_in():
    """On io_uring with CQLOOP_URING_READS=1 a stream transport reads with the ring's
    receives; without it (the default) by readiness."""
    script = textwrap.dedent(
        """
        import asyncio, cqloop

        async def main():
            loop = asyncio.get_running_loop()
            got = loop.create_future()

            class P(asyncio.Protocol):
                def data_received(self, data):
                    got.set_result(data)

            server = await loop.create_server(P, "127.0.0.1", 0)
            r, w = await asyncio.open_connection(*server.sockets[0].getsockname())
            w.write(b"hello")
            assert await got == b"hello"
            w.close()
            await w.wait_closed()
            server.close()
            await server.wait_closed()

        loop = cqloop.new_event_loop(engine="io_uring")
        print(loop.statistics()["stream_reads"])
        loop.run_until_complete(main())
        loop.close()
        """
    )
    for setting, expected in (("1", "True"), ("0", "False"), (None, "False")):
        env = dict(os.environ)
        env.pop("CQLOOP_URING_READS", None)
        if setting is not None:
            env["CQLOOP_URING_READS"] = setting
        out = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == expected


@needs_uring
def test_forked_child_resets_and_reads_while_the_parent_reads_on():
    script = textwrap.dedent(
        """
        import asyncio, os, socket, cqloop

        class Echo(asyncio.Protocol):
            def connection_made(self, transport):
                self.transport = transport
            def data_received(self, data):
                self.transport.write(data)

        async def round_trip(address, payload):
            r, w = await asyncio.open_connection(*address)
            w.write(payload)
            got = await r.readexactly(len(payload))
            w.close()
            await w.wait_closed()
            return got

        loop = cqloop.new_event_loop(engine="io_uring")
        server = loop.run_until_complete(loop.create_server(Echo, "127.0.0.1", 0))
        address = server.sockets[0].getsockname()
        assert loop.run_until_complete(round_trip(address, b"before")) == b"before"
        pid = os.fork()
        if pid == 0:
            loop.reset()
            # The parent's server is the parent's: the child serves its own.
            child = loop.run_until_complete(loop.create_server(Echo, "127.0.0.1", 0))
            ok = loop.run_until_complete(
                round_trip(child.sockets[0].getsockname(), b"child" * 5000))
            os._exit(0 if ok == b"child" * 5000 else 1)
        assert loop.run_until_complete(round_trip(address, b"parent" * 5000)) == b"parent" * 5000
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        server.close()
        loop.run_until_complete(server.wait_closed())
        loop.close()
        print("ok")
        """
    )
    env = dict(os.environ, CQLOOP_URING_READS="1")
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
