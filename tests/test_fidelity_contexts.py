"""Which contextvars.Context protocol callbacks run in, for every transport kind: TCP, Unix
and TLS streams (client and server side, Protocol and BufferedProtocol), datagrams, read
and write pipes, subprocesses.

The contract: every protocol callback runs in the context captured when its transport was
made (for a server's connections, the context create_server ran in), whatever set the
callback off. The callbacks that a call from another task sets off are the ones to watch:
pause_writing from a write() that fills the buffer, resume_writing after it drains, the data
a resume_reading() releases, connection_lost after a close() or abort(), error_received
after a sendto().

Stock asyncio keeps the context only for the callbacks it schedules at creation: it runs
pause_writing in the writer's context and adds its fd readers and writers in the context of
whoever (re)starts them, so the callbacks those set off run in the caller's context, and
asyncio's TLS layer does the same. uvloop keeps the transport's context throughout, except
that a server whose serving starts later accepts in the context that started it. The
tests say per loop which contract holds, and mark the others as expected failures (strict:
a loop that starts to hold it fails the mark, and the mark is then taken off).
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import socket
import ssl
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tests import test_fidelity_transports
from tests.conftest import is_cqloop, is_uvloop

# (server, client) contexts for "localhost": the transport fidelity tests' fixture, shared.
tls_contexts = test_fidelity_transports.tls_contexts

WHO: contextvars.ContextVar[str] = contextvars.ContextVar("WHO", default="nobody")
# Far more than a socket's or a pipe's buffer takes at once, so that writing it pauses.
BULK = b"x" * (4 * 1024 * 1024)


def loop_kind(loop: asyncio.AbstractEventLoop) -> str:
    if is_cqloop(loop):
        return "cqloop"
    return "uvloop" if is_uvloop(loop) else "asyncio"


def holds_on(request: pytest.FixtureRequest, *kinds: str, why: str) -> None:
    """The contract this test checks holds on `kinds` only: elsewhere it is an expected
    failure, for the reason `why`."""
    kind = loop_kind(asyncio.get_running_loop())
    if kind not in kinds:
        request.applymarker(pytest.mark.xfail(reason=f"{kind}: {why}", strict=True))


async def as_(who: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """call(*args, **kwargs) from a task of its own whose context has WHO=who; awaited if
    it returns an awaitable."""

    async def run() -> Any:
        WHO.set(who)
        result = call(*args, **kwargs)
        if isinstance(result, Awaitable):
            result = await result
        return result

    return await asyncio.create_task(run())


class Notes:
    """Notes each callback with the WHO it ran under; futures for the steps awaited."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.seen: list[tuple[str, str]] = []
        self.transport: Any = None
        self.data = bytearray()
        self.made = loop.create_future()
        self.lost = loop.create_future()
        self.eof = loop.create_future()
        self.resumed = loop.create_future()
        self.errored = loop.create_future()
        self.wanted = 0
        self.enough = loop.create_future()
        self.keep_open = False

    def note(self, name: str) -> None:
        self.seen.append((name, WHO.get()))

    def names(self) -> set[str]:
        return {name for name, _ in self.seen}

    def strangers(self, who: str) -> list[tuple[str, str]]:
        return [(name, seen) for name, seen in self.seen if seen != who]

    def connection_made(self, transport: Any) -> None:
        self.note("connection_made")
        self.transport = transport
        self.made.set_result(None)

    def _got(self, data: bytes) -> None:
        self.data += data
        if self.wanted and len(self.data) >= self.wanted and not self.enough.done():
            self.enough.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.note("data_received")
        self._got(data)

    def eof_received(self) -> bool | None:
        self.note("eof_received")
        if not self.eof.done():
            self.eof.set_result(None)
        return self.keep_open

    def pause_writing(self) -> None:
        self.note("pause_writing")

    def resume_writing(self) -> None:
        self.note("resume_writing")
        if not self.resumed.done():
            self.resumed.set_result(None)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.note("connection_lost")
        if not self.lost.done():
            self.lost.set_result(exc)

    # datagrams
    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.note("datagram_received")
        self._got(data)

    def error_received(self, exc: Exception) -> None:
        self.note("error_received")
        if not self.errored.done():
            self.errored.set_result(exc)

    async def wait_for_bytes(self, n: int) -> None:
        self.wanted = n
        if len(self.data) >= n and not self.enough.done():
            self.enough.set_result(None)
        await asyncio.wait_for(self.enough, 20)


class Recorder(Notes, asyncio.Protocol):
    pass


class BufferedRecorder(Notes, asyncio.BufferedProtocol):
    def __init__(self) -> None:
        super().__init__()
        self.buffer = bytearray(64 * 1024)

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.note("buffer_updated")
        self._got(bytes(self.buffer[:nbytes]))


# -- streams: TCP, Unix, TLS ----------------------------------------------------------------


async def _stream_pair(
    kind: str, tmp_path: Any, tls: tuple[ssl.SSLContext, ssl.SSLContext], client_cls: type
) -> tuple[asyncio.AbstractServer, Recorder, list[Recorder]]:
    """A server made under WHO=server and a client connection made under WHO=client."""
    loop = asyncio.get_running_loop()
    accepted: list[Recorder] = []

    def factory() -> Recorder:
        accepted.append(Recorder())
        return accepted[-1]

    server_ssl = tls[0] if kind == "tls" else None
    client_ssl: dict[str, Any] = (
        {"ssl": tls[1], "server_hostname": "localhost"} if kind == "tls" else {}
    )
    if kind == "unix":
        path = str(tmp_path / "s.sock")
        server = await as_("server", loop.create_unix_server, factory, path)
        _, client = await as_("client", loop.create_unix_connection, client_cls, path)
    else:
        server = await as_("server", loop.create_server, factory, "127.0.0.1", 0, ssl=server_ssl)
        port = server.sockets[0].getsockname()[1]
        _, client = await as_(
            "client", loop.create_connection, client_cls, "127.0.0.1", port, **client_ssl
        )
    while not accepted:
        await asyncio.sleep(0)
    await asyncio.wait_for(accepted[0].made, 10)
    return server, client, accepted


STREAM_KINDS = ["tcp", "unix", "tls"]
WHY_STREAMS = (
    "runs pause_writing in the writer's context, and re-adds its fd reader/writer "
    "in the context of the task that resumes reading or writes"
)


@pytest.mark.parametrize("client_cls", [Recorder, BufferedRecorder], ids=["plain", "buffered"])
@pytest.mark.parametrize("kind", STREAM_KINDS)
async def test_stream_callbacks_run_in_the_context_their_connection_was_made_in(
    kind: str,
    client_cls: type,
    tmp_path: Any,
    tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext],
    request: pytest.FixtureRequest,
) -> None:
    holds_on(request, "cqloop", "uvloop", why=WHY_STREAMS)
    server, client, accepted = await _stream_pair(kind, tmp_path, tls_contexts, client_cls)
    peer = accepted[0]
    try:
        # Data released by a resume_reading() made elsewhere.
        await as_("other", client.transport.pause_reading)
        await as_("other", peer.transport.write, b"hello")
        await as_("other", client.transport.resume_reading)
        await client.wait_for_bytes(5)
        # pause_writing from a write() made elsewhere; resume_writing once the peer read.
        # Written twice: a TLS transport counts only what the socket did not take, so its
        # buffer grows once the socket transport's is full.
        client.transport.set_write_buffer_limits(high=1)
        await as_("other", client.transport.write, BULK)
        await as_("other", client.transport.write, BULK)
        await peer.wait_for_bytes(2 * len(BULK))
        await asyncio.wait_for(client.resumed, 20)
        # The peer closes from elsewhere: end of file, then the end.
        await as_("other", peer.transport.close)
        await asyncio.wait_for(client.lost, 20)
        await asyncio.wait_for(peer.lost, 20)
    finally:
        server.close()
        await server.wait_closed()
    read = "buffer_updated" if client_cls is BufferedRecorder else "data_received"
    expected = {"connection_made", read, "pause_writing", "resume_writing", "eof_received"}
    assert expected | {"connection_lost"} <= client.names()
    assert {"connection_made", "data_received", "connection_lost"} <= peer.names()
    assert client.strangers("client") == []
    assert peer.strangers("server") == []


@pytest.mark.parametrize("how", ["close", "abort"])
@pytest.mark.parametrize("kind", STREAM_KINDS)
async def test_stream_connection_lost_after_a_close_made_elsewhere_runs_in_its_context(
    kind: str,
    how: str,
    tmp_path: Any,
    tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext],
    request: pytest.FixtureRequest,
) -> None:
    if kind == "tls" and how == "close":
        # asyncio too: its TLS close ends after the close_notify exchange, in its read path.
        pass
    else:
        holds_on(
            request, "cqloop", "uvloop", why="schedules connection_lost in the closer's context"
        )
    server, client, accepted = await _stream_pair(kind, tmp_path, tls_contexts, Recorder)
    try:
        await as_("other", getattr(client.transport, how))
        await asyncio.wait_for(client.lost, 20)
        await asyncio.wait_for(accepted[0].lost, 20)
    finally:
        server.close()
        await server.wait_closed()
    assert client.strangers("client") == []
    assert accepted[0].strangers("server") == []


async def test_server_connections_run_in_create_servers_context_when_serving_starts_elsewhere(
    request: pytest.FixtureRequest,
) -> None:
    loop = asyncio.get_running_loop()
    holds_on(request, "cqloop", why="accepts in the context start_serving() is called in")
    accepted: list[Recorder] = []

    def factory() -> Recorder:
        accepted.append(Recorder())
        return accepted[-1]

    server = await as_("server", loop.create_server, factory, "127.0.0.1", 0, start_serving=False)
    try:
        await as_("other", server.start_serving)
        port = server.sockets[0].getsockname()[1]
        transport, _ = await loop.create_connection(Recorder, "127.0.0.1", port)
        transport.write(b"hi")
        while not accepted:
            await asyncio.sleep(0)
        await accepted[0].wait_for_bytes(2)
        transport.close()
        await asyncio.wait_for(accepted[0].lost, 20)
    finally:
        server.close()
        await server.wait_closed()
    assert accepted[0].strangers("server") == []


# -- datagrams ---------------------------------------------------------------------------------


async def test_datagram_callbacks_run_in_the_context_the_endpoint_was_made_in(
    request: pytest.FixtureRequest,
) -> None:
    loop = asyncio.get_running_loop()
    holds_on(
        request,
        "cqloop",
        "uvloop",
        why="re-adds the reader, and schedules connection_lost, in the caller's context",
    )
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        peer.bind(("127.0.0.1", 0))
        transport, proto = await as_(
            "udp",
            loop.create_datagram_endpoint,
            Recorder,
            local_addr=("127.0.0.1", 0),
        )
        here = transport.get_extra_info("sockname")
        # uvloop's datagram transports cannot pause reading.
        pausable = hasattr(transport, "pause_reading")
        if pausable:
            await as_("other", transport.pause_reading)
        peer.sendto(b"ping", here)
        if pausable:
            await as_("other", transport.resume_reading)
        await proto.wait_for_bytes(4)
        await as_("other", transport.sendto, b"pong", peer.getsockname())
        assert peer.recv(10) == b"pong"
        await as_("other", transport.close)
        await asyncio.wait_for(proto.lost, 10)
    finally:
        peer.close()
    assert {"connection_made", "datagram_received", "connection_lost"} <= proto.names()
    assert proto.strangers("udp") == []


async def test_datagram_error_received_runs_in_the_context_the_endpoint_was_made_in(
    request: pytest.FixtureRequest,
) -> None:
    loop = asyncio.get_running_loop()
    holds_on(request, "cqloop", "uvloop", why="reports a send's error in the sender's context")
    # A port nobody listens on: the ICMP answer to a datagram sent there is an error.
    gone = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    gone.bind(("127.0.0.1", 0))
    address = gone.getsockname()
    gone.close()
    transport, proto = await as_(
        "udp", loop.create_datagram_endpoint, Recorder, remote_addr=address
    )
    try:
        for _ in range(100):
            await as_("other", transport.sendto, b"anyone?")
            done, _ = await asyncio.wait([proto.errored], timeout=0.1)
            if done:
                break
        assert isinstance(proto.errored.result(), ConnectionRefusedError)
    finally:
        transport.close()
        await asyncio.wait_for(proto.lost, 10)
    assert proto.strangers("udp") == []


# -- pipes and subprocesses -----------------------------------------------------------------


@pytest.mark.parametrize("end", ["peer_closes", "closed_elsewhere"])
async def test_read_pipe_callbacks_run_in_the_context_the_transport_was_made_in(
    end: str, request: pytest.FixtureRequest
) -> None:
    loop = asyncio.get_running_loop()
    holds_on(
        request,
        "cqloop",
        "uvloop",
        why="re-adds the reader in the resumer's context, schedules connection_lost in the "
        "closer's",
    )
    rfd, wfd = os.pipe()
    try:
        transport, proto = await as_(
            "pipe", loop.connect_read_pipe, Recorder, os.fdopen(rfd, "rb", buffering=0)
        )
        await as_("other", transport.pause_reading)
        os.write(wfd, b"data")
        await as_("other", transport.resume_reading)
        await proto.wait_for_bytes(4)
        if end == "closed_elsewhere":
            await as_("other", transport.close)
    finally:
        os.close(wfd)
    await asyncio.wait_for(proto.lost, 10)
    expected = {"connection_made", "data_received", "connection_lost"}
    if end == "peer_closes":
        expected.add("eof_received")
    assert expected <= proto.names()
    assert proto.strangers("pipe") == []


async def test_write_pipe_callbacks_run_in_the_context_the_transport_was_made_in(
    request: pytest.FixtureRequest,
) -> None:
    loop = asyncio.get_running_loop()
    holds_on(
        request,
        "cqloop",
        "uvloop",
        why="runs pause_writing in the writer's context and adds the writer there",
    )
    rfd, wfd = os.pipe()
    sink_transport, sink = await loop.connect_read_pipe(Recorder, os.fdopen(rfd, "rb", buffering=0))
    transport, proto = await as_(
        "pipe", loop.connect_write_pipe, Recorder, os.fdopen(wfd, "wb", buffering=0)
    )
    try:
        transport.set_write_buffer_limits(high=1)
        await as_("other", transport.write, BULK)
        await sink.wait_for_bytes(len(BULK))
        await asyncio.wait_for(proto.resumed, 20)
        await as_("other", transport.close)
        await asyncio.wait_for(proto.lost, 10)
        await asyncio.wait_for(sink.lost, 10)
    finally:
        sink_transport.close()
        transport.close()
    assert {"connection_made", "pause_writing", "resume_writing", "connection_lost"} <= (
        proto.names()
    )
    assert proto.strangers("pipe") == []


class ProcessRecorder(asyncio.SubprocessProtocol):
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self.lost = asyncio.get_running_loop().create_future()

    def note(self, name: str) -> None:
        self.seen.append((name, WHO.get()))

    def connection_made(self, transport: Any) -> None:
        self.note("connection_made")

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        self.note("pipe_data_received")

    def pipe_connection_lost(self, fd: int, exc: BaseException | None) -> None:
        self.note(f"pipe_connection_lost({fd})")

    def process_exited(self) -> None:
        self.note("process_exited")

    def connection_lost(self, exc: BaseException | None) -> None:
        self.note("connection_lost")
        self.lost.set_result(exc)


async def test_subprocess_callbacks_run_in_the_context_the_process_was_started_in(
    request: pytest.FixtureRequest,
) -> None:
    loop = asyncio.get_running_loop()
    holds_on(
        request, "cqloop", "uvloop", why="reports a stdin closed elsewhere in the closer's context"
    )
    echo = "import sys; sys.stdout.buffer.write(sys.stdin.buffer.read())"
    transport, proto = await as_(
        "proc",
        loop.subprocess_exec,
        ProcessRecorder,
        sys.executable,
        "-c",
        echo,
        stdin=-1,
        stdout=-1,
        stderr=None,
    )
    try:
        stdin = transport.get_pipe_transport(0)
        await as_("other", stdin.write, b"echo me")
        await as_("other", stdin.close)
        await asyncio.wait_for(proto.lost, 30)
    finally:
        transport.close()
    names = {name for name, _ in proto.seen}
    assert {
        "connection_made",
        "pipe_data_received",
        "pipe_connection_lost(0)",
        "pipe_connection_lost(1)",
        "process_exited",
        "connection_lost",
    } <= names
    assert [(name, who) for name, who in proto.seen if who != "proc"] == []
