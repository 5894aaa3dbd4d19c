"""Transport and server edge contracts, checked on cqloop against stock asyncio (the oracle)
and uvloop: a protocol switched from inside its own callbacks (TCP, Unix and TLS streams),
fd watching on a transport's fd, the reading half of a write pipe transport, and the
server behaviour that changed between Python versions (the Unix socket file on close,
Server.wait_closed).
"""

from __future__ import annotations

import asyncio
import os
import ssl
import sys
from collections.abc import Callable
from typing import Any

import pytest
import trustme

from tests.conftest import is_cqloop, skip_where_uvloop_differs

PY312 = sys.version_info >= (3, 12)
PY313 = sys.version_info >= (3, 13)
# Far more than one read of either path takes, so a switch lands in mid-stream.
PAYLOAD = bytes(range(256)) * 4096
SWITCH_AFTER = 5000


@pytest.fixture(scope="module")
def tls_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server, client) contexts for "localhost", from a CA of this module's own."""
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server)
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(client)
    return server, client


class Sink:
    """What the server's protocols received, in order: (protocol kind, bytes)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.chunks: list[tuple[str, bytes]] = []
        self.done: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None

    def received(self) -> int:
        return sum(len(data) for _, data in self.chunks)

    def finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)


class _SinkSide:
    """What both server protocols share: deliver to the sink, and once SWITCH_AFTER bytes
    have arrived, replace themselves on the transport (once) from inside the callback."""

    def __init__(self, sink: Sink, switch_to: Callable[[Sink], asyncio.BaseProtocol] | None):
        self.sink = sink
        self.switch_to = switch_to

    def connection_made(self, transport: Any) -> None:
        self.sink.transport = transport

    def _received(self, kind: str, data: bytes) -> None:
        self.sink.chunks.append((kind, data))
        if self.switch_to is not None and self.sink.received() >= SWITCH_AFTER:
            assert self.sink.transport is not None
            self.sink.transport.set_protocol(self.switch_to(self.sink))
            self.switch_to = None

    def eof_received(self) -> None:
        self.sink.finish()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.sink.finish()


class PlainSide(_SinkSide, asyncio.Protocol):
    def data_received(self, data: bytes) -> None:
        self._received("plain", bytes(data))


class BufferedSide(_SinkSide, asyncio.BufferedProtocol):
    def __init__(self, sink: Sink, switch_to: Callable[[Sink], asyncio.BaseProtocol] | None):
        super().__init__(sink, switch_to)
        self.buffer = bytearray(4096)

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        self._received("buffered", bytes(self.buffer[:nbytes]))


class Client(asyncio.Protocol):
    def __init__(self) -> None:
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.set_result(None)


async def _serve(
    family: str,
    factory: Callable[[], asyncio.BaseProtocol],
    tmp_path: Any,
    tls: tuple[ssl.SSLContext, ssl.SSLContext] | None = None,
):
    """A server of `family` ("tcp", "unix", or "tls" with `tls`, the server's and the
    client's contexts) and a connected client (its transport and protocol)."""
    loop = asyncio.get_running_loop()
    if family == "tls":
        assert tls is not None
        server = await loop.create_server(factory, "127.0.0.1", 0, ssl=tls[0])
        port = server.sockets[0].getsockname()[1]
        transport, client = await loop.create_connection(
            Client, "127.0.0.1", port, ssl=tls[1], server_hostname="localhost"
        )
    elif family == "tcp":
        server = await loop.create_server(factory, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        transport, client = await loop.create_connection(Client, "127.0.0.1", port)
    else:
        path = str(tmp_path / "s.sock")
        server = await loop.create_unix_server(factory, path)
        transport, client = await loop.create_unix_connection(Client, path)
    return server, transport, client


async def _send_all(transport: asyncio.WriteTransport, data: bytes, sink: Sink) -> bytes:
    """Write `data` and EOF from the client (a TLS client closes: close_notify); what the
    server's protocols received."""
    transport.write(data)
    if transport.can_write_eof():
        transport.write_eof()
    else:
        transport.close()
    await sink.done
    return b"".join(chunk for _, chunk in sink.chunks)


async def _hang_up(sink: Sink, client: Client, server: asyncio.AbstractServer) -> None:
    assert sink.transport is not None
    sink.transport.close()
    await client.lost
    server.close()
    await server.wait_closed()


@pytest.mark.parametrize("family", ["tcp", "unix", "tls"])
@pytest.mark.parametrize(
    ("first", "then"),
    [("buffered", "plain"), ("plain", "buffered"), ("buffered", "buffered"), ("plain", "plain")],
)
async def test_set_protocol_from_inside_a_read_callback_delivers_every_byte_in_order(
    family, first, then, tmp_path, tls_contexts
):
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    sink = Sink(loop)
    kinds = {"plain": PlainSide, "buffered": BufferedSide}

    def second(sink: Sink) -> asyncio.BaseProtocol:
        return kinds[then](sink, None)

    server, transport, client = await _serve(
        family, lambda: kinds[first](sink, second), tmp_path, tls_contexts
    )
    received = await _send_all(transport, PAYLOAD, sink)
    assert errors == []
    assert received == PAYLOAD
    # Everything up to the switch went to the first protocol, everything after to the second.
    owners = [kind for kind, _ in sink.chunks]
    switched = next(
        i
        for i in range(len(owners))
        if sum(len(data) for _, data in sink.chunks[: i + 1]) >= SWITCH_AFTER
    )
    assert set(owners[: switched + 1]) == {first}
    assert set(owners[switched + 1 :]) <= {then}
    await _hang_up(sink, client, server)


@pytest.mark.parametrize("family", ["tcp", "unix"])
async def test_set_protocol_from_connection_made_reads_with_the_new_protocol(family, tmp_path):
    loop = asyncio.get_running_loop()
    sink = Sink(loop)

    class Switching(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            sink.transport = transport
            transport.set_protocol(BufferedSide(sink, None))

        def data_received(self, data: bytes) -> None:
            raise AssertionError("the replaced protocol got data")

    server, transport, client = await _serve(family, Switching, tmp_path)
    assert await _send_all(transport, PAYLOAD, sink) == PAYLOAD
    assert {kind for kind, _ in sink.chunks} == {"buffered"}
    await _hang_up(sink, client, server)


# -- fd watching on a transport's fd ----------------------------------------------------------


@pytest.mark.parametrize("method", ["remove_reader", "remove_writer"])
async def test_removing_a_watch_on_a_transports_fd_is_refused(method, tmp_path):
    loop = asyncio.get_running_loop()
    sink = Sink(loop)
    server, transport, client = await _serve("tcp", lambda: PlainSide(sink, None), tmp_path)
    fd = transport.get_extra_info("socket").fileno()
    with pytest.raises(RuntimeError, match=f"File descriptor {fd} is used by transport"):
        getattr(loop, method)(fd)
    # The transport still works.
    assert await _send_all(transport, b"still here", sink) == b"still here"
    await _hang_up(sink, client, server)


# -- pipes ----------------------------------------------------------------------------------------


async def test_write_pipe_transport_refuses_reading_calls_as_asyncio_transport():
    loop = asyncio.get_running_loop()
    skip_where_uvloop_differs(loop, "its write pipe transport is not an asyncio.Transport")
    rfd, wfd = os.pipe()
    with open(rfd, "rb", buffering=0) as reader, open(wfd, "wb", buffering=0) as writer:
        transport, _ = await loop.connect_write_pipe(asyncio.Protocol, writer)
        try:
            assert isinstance(transport, asyncio.Transport)
            for name in ("pause_reading", "resume_reading", "is_reading"):
                with pytest.raises(NotImplementedError):
                    getattr(transport, name)()
            transport.write(b"ok")
            assert reader.read(2) == b"ok"
        finally:
            transport.close()
            await asyncio.sleep(0)


# -- servers: what changed between Python versions ---------------------------------------------


async def test_unix_server_removes_its_socket_file_on_close_only_from_313(tmp_path):
    loop = asyncio.get_running_loop()
    skip_where_uvloop_differs(loop, "it never removes the socket file")
    path = str(tmp_path / "s.sock")
    server = await loop.create_unix_server(asyncio.Protocol, path)
    assert os.path.exists(path)
    server.close()
    await server.wait_closed()
    assert os.path.exists(path) == (not PY313)


async def test_unix_server_cleanup_socket_keyword_is_honoured(tmp_path):
    loop = asyncio.get_running_loop()
    if not PY313 and not is_cqloop(loop):
        pytest.skip("cleanup_socket is new in 3.13 (cqloop takes it on every version)")
    skip_where_uvloop_differs(loop, "it has no cleanup_socket")
    for cleanup in (False, True):
        path = str(tmp_path / f"s{cleanup}.sock")
        server = await loop.create_unix_server(asyncio.Protocol, path, cleanup_socket=cleanup)
        server.close()
        await server.wait_closed()
        assert os.path.exists(path) == (not cleanup)


async def _server_with_a_client() -> tuple[asyncio.AbstractServer, Any, Client, Any]:
    """A TCP server and one idle client: (server, client transport, client protocol, the
    server side's transport)."""
    loop = asyncio.get_running_loop()
    accepted: asyncio.Future[asyncio.Transport] = loop.create_future()

    class Accepting(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            accepted.set_result(transport)

    server = await loop.create_server(Accepting, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport, client = await loop.create_connection(Client, "127.0.0.1", port)
    return server, transport, client, await accepted


async def test_serve_forever_cancelled_with_an_idle_client_follows_the_running_version():
    # `async with server: await server.serve_forever()`, cancelled while a keep-alive
    # client is connected and idle: 3.11's wait_closed returns once the server is closed;
    # from 3.12 it waits for the connections too, so the task ends when the client goes.
    skip_where_uvloop_differs(
        asyncio.get_running_loop(), "its Server.wait_closed never waits for connections"
    )
    server, transport, client, _ = await _server_with_a_client()

    async def serve() -> None:
        async with server:
            await server.serve_forever()

    task = asyncio.ensure_future(serve())
    await asyncio.sleep(0)
    task.cancel()
    if PY312:
        for _ in range(20):
            await asyncio.sleep(0)
        assert not task.done()
        transport.close()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)
    transport.close()
    await client.lost


async def test_wait_closed_after_close_with_a_client_follows_the_running_version():
    skip_where_uvloop_differs(
        asyncio.get_running_loop(), "its Server.wait_closed never waits for connections"
    )
    server, transport, client, peer = await _server_with_a_client()
    server.close()
    waiter = asyncio.ensure_future(server.wait_closed())
    for _ in range(20):
        await asyncio.sleep(0)
    # 3.11: closed is enough; 3.12: the connection must be gone too.
    assert waiter.done() == (not PY312)
    peer.close()
    await waiter
    transport.close()
    await client.lost


# -- extra info --------------------------------------------------------------------------------


@pytest.mark.parametrize("side", ["server", "client"])
async def test_socket_extra_info_first_asked_after_close_still_names_the_ends(side):
    # cqloop reads "socket", "sockname" and "peername" from the socket when first asked;
    # asked for the first time once the transport is closed and its socket gone, they must
    # be what they were while it was open, as asyncio keeps them.
    loop = asyncio.get_running_loop()
    skip_where_uvloop_differs(loop, "a closed transport's 'socket' extra info is None")
    lost: dict[str, asyncio.Future[asyncio.Transport]] = {
        "server": loop.create_future(),
        "client": loop.create_future(),
    }

    class Ends(asyncio.Protocol):
        def __init__(self, name: str) -> None:
            self.name = name

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport
            if self.name == "server":
                transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            lost[self.name].set_result(self.transport)

    server = await loop.create_server(lambda: Ends("server"), "127.0.0.1", 0)
    address = server.sockets[0].getsockname()
    try:
        await loop.create_connection(lambda: Ends("client"), *address)
        transport = await asyncio.wait_for(lost[side], 10)
        sockname = transport.get_extra_info("sockname")
        peername = transport.get_extra_info("peername")
        ends = (sockname, peername) if side == "server" else (peername, sockname)
        assert ends[0] == address
        assert ends[1][0] == "127.0.0.1" and ends[1][1] not in (0, address[1])
        assert transport.get_extra_info("socket") is not None
        assert transport.get_extra_info("socket") is transport.get_extra_info("socket")
    finally:
        lost["client"].done() or (await asyncio.wait_for(lost["client"], 10))
        server.close()
        await server.wait_closed()
