"""Pipe transports: connect_read_pipe and connect_write_pipe on pipes, FIFOs, ptys and
character devices, on cqloop, asyncio and uvloop (conftest parametrises the async tests).

asyncio is the oracle. Ownership is checked closely: a transport closes the pipe object it
was given, once, and never the fd number behind the object's back (uvloop's double-closed
pipe fd).
"""

# The transports own the pipe objects given to them and close them: no `with` blocks.
# ruff: noqa: SIM115

from __future__ import annotations

import asyncio
import errno
import os
import tempfile

import pytest

from tests.conftest import is_uvloop, skip_where_uvloop_differs

PIPE_CHUNK = 64 * 1024


class ReadProto(asyncio.Protocol):
    def __init__(self) -> None:
        self.events: list[str] = []
        self.data = bytearray()
        self.transport: asyncio.ReadTransport | None = None
        self.lost: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
        self.got_data = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.events.append("made")
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.data += data
        self.got_data.set()

    def eof_received(self) -> None:
        self.events.append("eof")

    def connection_lost(self, exc: BaseException | None) -> None:
        self.events.append("lost")
        self.lost.set_result(exc)


class WriteProto(asyncio.BaseProtocol):
    def __init__(self) -> None:
        self.events: list[str] = []
        self.lost: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
        self.resumed = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.events.append("made")

    def pause_writing(self) -> None:
        self.events.append("pause")

    def resume_writing(self) -> None:
        self.events.append("resume")
        self.resumed.set()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.events.append("lost")
        self.lost.set_result(exc)


def fd_is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError as exc:
        assert exc.errno == errno.EBADF
        return False
    return True


async def test_read_pipe_data_eof_and_order() -> None:
    loop = asyncio.get_running_loop()
    rfd, wfd = os.pipe()
    rpipe = open(rfd, "rb", buffering=0)
    transport, proto = await loop.connect_read_pipe(ReadProto, rpipe)
    assert proto.events == ["made"]
    assert transport.get_extra_info("pipe") is rpipe
    assert transport.is_reading()
    os.write(wfd, b"hello")
    await proto.got_data.wait()
    os.write(wfd, b" world")
    os.close(wfd)
    assert await proto.lost is None
    assert bytes(proto.data) == b"hello world"
    assert proto.events == ["made", "eof", "lost"]
    assert rpipe.closed
    assert not fd_is_open(rfd)


async def test_read_pipe_pause_and_resume() -> None:
    loop = asyncio.get_running_loop()
    rfd, wfd = os.pipe()
    transport, proto = await loop.connect_read_pipe(ReadProto, open(rfd, "rb", buffering=0))
    transport.pause_reading()
    assert not transport.is_reading()
    transport.pause_reading()  # twice is fine
    os.write(wfd, b"x")
    # Give the loop iterations in which a reader would have fired.
    for _ in range(5):
        await asyncio.sleep(0)
    assert proto.data == b""
    transport.resume_reading()
    assert transport.is_reading()
    await proto.got_data.wait()
    assert proto.data == b"x"
    transport.close()
    assert transport.is_closing()
    assert not transport.is_reading()
    assert await proto.lost is None
    os.close(wfd)


async def test_read_pipe_close_closes_the_pipe_object_once() -> None:
    """Regression (uvloop's double-closed pipe fd): after close, the fd number freed by the
    pipe object may be reused by another file; nothing may close it a second time."""
    loop = asyncio.get_running_loop()
    rfd, wfd = os.pipe()
    rpipe = open(rfd, "rb", buffering=0)
    transport, proto = await loop.connect_read_pipe(ReadProto, rpipe)
    transport.close()
    await proto.lost
    assert rpipe.closed
    # The number is free: reuse it for another file, then drop everything that held the pipe.
    reused = os.dup(wfd)
    try:
        assert reused == rfd
        del transport, rpipe
        import gc

        gc.collect()
        await asyncio.sleep(0)
        assert fd_is_open(reused)
    finally:
        os.close(reused)
        os.close(wfd)


async def test_write_pipe_write_and_write_eof() -> None:
    loop = asyncio.get_running_loop()
    skip_where_uvloop_differs(loop, "is_closing() stays False after write_eof()")
    rfd, wfd = os.pipe()
    wpipe = open(wfd, "wb", buffering=0)
    transport, proto = await loop.connect_write_pipe(WriteProto, wpipe)
    assert proto.events == ["made"]
    assert transport.can_write_eof()
    transport.write(b"abc")
    transport.write(bytearray(b"def"))
    transport.write(memoryview(b"ghi"))
    transport.write(b"")
    assert transport.get_write_buffer_size() == 0
    transport.write_eof()
    assert transport.is_closing()
    assert await proto.lost is None
    assert wpipe.closed
    with open(rfd, "rb") as reader:
        assert reader.read() == b"abcdefghi"


async def test_write_pipe_flow_control_and_buffer_size() -> None:
    loop = asyncio.get_running_loop()
    rfd, wfd = os.pipe()
    transport, proto = await loop.connect_write_pipe(WriteProto, open(wfd, "wb", buffering=0))
    transport.set_write_buffer_limits(high=PIPE_CHUNK, low=0)
    assert transport.get_write_buffer_limits() == (0, PIPE_CHUNK)
    payload = b"x" * (8 * PIPE_CHUNK)
    transport.write(payload)  # more than a pipe holds (64 KiB by default on Linux)
    assert transport.get_write_buffer_size() > 0
    assert "pause" in proto.events
    received = bytearray()
    reader = open(rfd, "rb", buffering=0)
    os.set_blocking(rfd, False)
    drained = loop.create_future()

    def on_readable() -> None:
        try:
            received.extend(reader.read(PIPE_CHUNK) or b"")
        except BlockingIOError:
            pass
        if len(received) == len(payload) and not drained.done():
            drained.set_result(None)

    loop.add_reader(rfd, on_readable)
    try:
        await proto.resumed.wait()
        await drained
    finally:
        loop.remove_reader(rfd)
    assert transport.get_write_buffer_size() == 0
    assert proto.events == ["made", "pause", "resume"]
    transport.close()
    assert await proto.lost is None
    reader.close()


async def test_write_pipe_reader_closed_is_detected_without_writing() -> None:
    loop = asyncio.get_running_loop()
    rfd, wfd = os.pipe()
    transport, proto = await loop.connect_write_pipe(WriteProto, open(wfd, "wb", buffering=0))
    os.close(rfd)
    # No write: the transport learns it from the write end's EPOLLERR.
    assert await proto.lost is None
    assert proto.events == ["made", "lost"]
    assert transport.is_closing()


async def test_write_pipe_reader_closed_with_data_buffered_is_broken_pipe() -> None:
    loop = asyncio.get_running_loop()
    rfd, wfd = os.pipe()
    transport, proto = await loop.connect_write_pipe(WriteProto, open(wfd, "wb", buffering=0))
    transport.write(b"y" * (4 * PIPE_CHUNK))
    assert transport.get_write_buffer_size() > 0
    os.close(rfd)
    exc = await proto.lost
    assert isinstance(exc, BrokenPipeError)
    assert transport.get_write_buffer_size() == 0


async def test_write_pipe_abort_drops_buffer() -> None:
    loop = asyncio.get_running_loop()
    skip_where_uvloop_differs(loop, "abort() leaves get_write_buffer_size() at its old value")
    rfd, wfd = os.pipe()
    transport, proto = await loop.connect_write_pipe(WriteProto, open(wfd, "wb", buffering=0))
    transport.write(b"z" * (4 * PIPE_CHUNK))
    transport.abort()
    assert transport.is_closing()
    assert transport.get_write_buffer_size() == 0
    assert await proto.lost is None
    # Writes after the end are dropped, not raised.
    transport.write(b"late")
    os.close(rfd)


async def test_write_eof_then_abort_calls_connection_lost_once() -> None:
    loop = asyncio.get_running_loop()
    rfd, wfd = os.pipe()
    transport, proto = await loop.connect_write_pipe(WriteProto, open(wfd, "wb", buffering=0))
    transport.write_eof()
    transport.abort()
    await proto.lost
    for _ in range(3):
        await asyncio.sleep(0)
    assert proto.events == ["made", "lost"]
    os.close(rfd)


async def test_fifo_both_ways() -> None:
    loop = asyncio.get_running_loop()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "fifo")
        os.mkfifo(path)
        rfd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        wfd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        rt, rp = await loop.connect_read_pipe(ReadProto, open(rfd, "rb", buffering=0))
        wt, wp = await loop.connect_write_pipe(WriteProto, open(wfd, "wb", buffering=0))
        wt.write(b"through the fifo")
        wt.close()
        assert await wp.lost is None
        assert await rp.lost is None
        assert rp.data == b"through the fifo"
        assert rt.is_closing()


async def test_pty_read_ends_at_slave_close() -> None:
    loop = asyncio.get_running_loop()
    master, slave = os.openpty()
    transport, proto = await loop.connect_read_pipe(ReadProto, open(master, "rb", buffering=0))
    os.write(slave, b"tty line\n")
    await proto.got_data.wait()
    os.close(slave)
    # A pty master reports EIO once the slave is closed: the end of the stream.
    exc = await proto.lost
    assert exc is None or (isinstance(exc, OSError) and exc.errno == errno.EIO)
    assert b"tty line" in proto.data
    assert transport.is_closing()


async def test_pty_write_transport() -> None:
    loop = asyncio.get_running_loop()
    master, slave = os.openpty()
    transport, proto = await loop.connect_write_pipe(WriteProto, open(slave, "wb", buffering=0))
    transport.write(b"to the master\n")
    os.set_blocking(master, True)
    assert b"to the master" in os.read(master, 1024)
    transport.close()
    assert await proto.lost is None
    os.close(master)


async def test_character_device_write() -> None:
    loop = asyncio.get_running_loop()
    skip_where_uvloop_differs(loop, "libuv aborts the process on a /dev/null write pipe")
    devnull = open(os.devnull, "wb", buffering=0)
    transport, proto = await loop.connect_write_pipe(WriteProto, devnull)
    transport.write(b"into the void")
    assert transport.get_write_buffer_size() == 0
    transport.close()
    assert await proto.lost is None
    assert devnull.closed


@pytest.mark.parametrize("direction", ["read", "write"])
async def test_regular_file_is_refused(direction: str) -> None:
    loop = asyncio.get_running_loop()
    skip_where_uvloop_differs(loop, "libuv aborts the process on a regular file")
    with tempfile.TemporaryFile() as f:
        connect = loop.connect_read_pipe if direction == "read" else loop.connect_write_pipe
        with pytest.raises(ValueError, match="Pipe transport"):
            await connect(asyncio.Protocol, f)  # type: ignore[operator]
        assert not f.closed  # refused: not taken over


async def test_transport_takes_instance_attributes() -> None:
    loop = asyncio.get_running_loop()
    if is_uvloop(loop):
        pytest.skip("uvloop's compiled transports take no instance attributes")
    rfd, wfd = os.pipe()
    transport, proto = await loop.connect_write_pipe(WriteProto, open(wfd, "wb", buffering=0))
    written: list[bytes] = []
    transport.write = written.append  # type: ignore[method-assign]
    transport.write(b"patched")
    assert written == [b"patched"]
    transport.close()
    await proto.lost
    os.close(rfd)


async def test_text_file_object_is_accepted() -> None:
    loop = asyncio.get_running_loop()
    rfd, wfd = os.pipe()
    wobj = open(wfd, "w", 1024, encoding="utf-8")
    transport, proto = await loop.connect_write_pipe(WriteProto, wobj)
    transport.write(b"bytes through a text object's fd")
    transport.close()
    await proto.lost
    assert wobj.closed
    with open(rfd, "rb") as reader:
        assert reader.read() == b"bytes through a text object's fd"
