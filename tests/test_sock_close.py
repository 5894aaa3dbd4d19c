"""socket.close() while a loop.sock_* operation waits on the socket.

The contract (cqloop's; stock asyncio leaves the operation pending forever and frees the fd
number at once, uvloop keeps the fd but also leaves the operation pending): the operation
fails promptly with OSError(EBADF), as the socket's own methods do once it is closed, and
the fd number is not released for reuse before the operation has ended, so a waiting
operation can never act on a file opened after the close. Failing promptly is cqloop's
alone (cqloop_only); keeping the fd is run on uvloop too. What must hold on every loop: a
socket whose operations ended closes at once, and nothing is left open (the suite's fd
leak check runs after each test).

Loopback only: socket pairs, 127.0.0.1 TCP and UDP. A task is started up to its wait with
an event set just before the operation's first step; the "never hangs" bound is a
wait_for, which only a regression reaches.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import socket
import tempfile
import threading
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from tests.conftest import is_cqloop, is_uvloop

# Only a hang (the regression) waits this long.
HANG_BOUND_SECONDS = 10.0
# More than any loopback socket buffer takes in one go.
LARGE_PAYLOAD = b"x" * (4 * 1024 * 1024)

# Makes one waiting operation: given an exit stack (for what the test must close), returns
# the socket to close under the operation and the operation's coroutine.
PendingOp = Callable[
    [asyncio.AbstractEventLoop, contextlib.ExitStack],
    Awaitable[tuple[socket.socket, Awaitable[Any]]],
]


def _nonblocking(sock: socket.socket) -> socket.socket:
    sock.setblocking(False)
    return sock


def _fill_send_buffer(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    with contextlib.suppress(BlockingIOError):
        while True:
            sock.send(b"y" * 65536)


async def _recv(loop: asyncio.AbstractEventLoop, stack: contextlib.ExitStack) -> Any:
    a, b = socket.socketpair()
    stack.callback(b.close)
    return _nonblocking(a), loop.sock_recv(a, 100)


async def _recv_into(loop: asyncio.AbstractEventLoop, stack: contextlib.ExitStack) -> Any:
    a, b = socket.socketpair()
    stack.callback(b.close)
    return _nonblocking(a), loop.sock_recv_into(a, bytearray(100))


async def _recvfrom(loop: asyncio.AbstractEventLoop, stack: contextlib.ExitStack) -> Any:
    udp = _nonblocking(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    udp.bind(("127.0.0.1", 0))
    return udp, loop.sock_recvfrom(udp, 100)


async def _recvfrom_into(loop: asyncio.AbstractEventLoop, stack: contextlib.ExitStack) -> Any:
    udp = _nonblocking(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    udp.bind(("127.0.0.1", 0))
    return udp, loop.sock_recvfrom_into(udp, bytearray(100))


async def _accept(loop: asyncio.AbstractEventLoop, stack: contextlib.ExitStack) -> Any:
    listener = _nonblocking(socket.socket())
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    return listener, loop.sock_accept(listener)


async def _connect(loop: asyncio.AbstractEventLoop, stack: contextlib.ExitStack) -> Any:
    # A listener with a backlog of 0 takes one connection into its accept queue and then
    # drops SYNs (Linux): the next connect stays in progress until the queue has room.
    listener = stack.enter_context(socket.socket())
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    filler = stack.enter_context(_nonblocking(socket.socket()))
    await loop.sock_connect(filler, listener.getsockname())
    client = _nonblocking(socket.socket())
    return client, loop.sock_connect(client, listener.getsockname())


async def _sendall(loop: asyncio.AbstractEventLoop, stack: contextlib.ExitStack) -> Any:
    a, b = socket.socketpair()
    stack.callback(b.close)
    _fill_send_buffer(_nonblocking(a))
    return a, loop.sock_sendall(a, LARGE_PAYLOAD)


async def _sendfile(loop: asyncio.AbstractEventLoop, stack: contextlib.ExitStack) -> Any:
    file = stack.enter_context(tempfile.TemporaryFile())  # noqa: SIM115 (the stack closes it)
    file.write(LARGE_PAYLOAD)
    file.seek(0)
    a, b = socket.socketpair()
    stack.callback(b.close)
    _fill_send_buffer(_nonblocking(a))
    return a, loop.sock_sendfile(a, file)


PENDING_OPS: dict[str, PendingOp] = {
    "sock_recv": _recv,
    "sock_recv_into": _recv_into,
    "sock_recvfrom": _recvfrom,
    "sock_recvfrom_into": _recvfrom_into,
    "sock_accept": _accept,
    "sock_connect": _connect,
    "sock_sendall": _sendall,
    "sock_sendfile": _sendfile,
}


async def _start(op: Awaitable[Any]) -> asyncio.Task[Any]:
    """A task running op, returned once op waits (the event is set right before op's
    first step, which runs up to its wait without yielding)."""
    started = asyncio.Event()

    async def run() -> Any:
        started.set()
        return await op

    task = asyncio.create_task(run())
    await started.wait()
    assert not task.done(), "the operation did not wait: the test would prove nothing"
    return task


@contextlib.asynccontextmanager
async def _pending(name: str) -> AsyncIterator[tuple[socket.socket, asyncio.Task[Any]]]:
    loop = asyncio.get_running_loop()
    with contextlib.ExitStack() as stack:
        sock, op = await PENDING_OPS[name](loop, stack)
        stack.callback(sock.close)
        task = await _start(op)
        try:
            yield sock, task
        finally:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


async def _fails_with_ebadf(task: asyncio.Task[Any]) -> None:
    with pytest.raises(OSError) as raised:
        await asyncio.wait_for(task, HANG_BOUND_SECONDS)
    assert raised.value.errno == errno.EBADF, raised.value


@pytest.mark.cqloop_only
@pytest.mark.parametrize("name", sorted(PENDING_OPS))
async def test_close_under_a_pending_operation_fails_it_with_ebadf(name: str) -> None:
    async with _pending(name) as (sock, task):
        sock.close()
        await _fails_with_ebadf(task)
        # The operation has ended: the fd is closed now.
        assert sock.fileno() == -1


async def test_closed_fd_is_not_reused_while_an_operation_waits_on_it() -> None:
    loop = asyncio.get_running_loop()
    if not (is_cqloop(loop) or is_uvloop(loop)):
        pytest.skip("asyncio frees the fd number at close(), under a waiting operation too")
    async with _pending("sock_recv") as (sock, task):
        fd = sock.fileno()
        sock.close()
        with contextlib.ExitStack() as stack:
            pairs = [socket.socketpair() for _ in range(4)]
            for pair in pairs:
                for end in pair:
                    stack.callback(end.close)
            assert fd not in {end.fileno() for pair in pairs for end in pair}
            for i, (_, writer) in enumerate(pairs):
                writer.send(b"for the new socket %d" % i)
            if is_cqloop(loop):
                await _fails_with_ebadf(task)
            else:
                # uvloop keeps the fd but leaves the operation waiting: end it.
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            # Nothing sent to the newer sockets went to the old operation.
            for i, (reader, _) in enumerate(pairs):
                assert reader.recv(100) == b"for the new socket %d" % i
        assert sock.fileno() == -1


@pytest.mark.cqloop_only
async def test_close_under_a_pending_operation_never_acts_on_a_reused_fd() -> None:
    # After the operation failed, its fd number is free again; data arriving on the file
    # that reuses it belongs to the new owner alone.
    async with _pending("sock_recv") as (sock, task):
        fd = sock.fileno()
        sock.close()
        await _fails_with_ebadf(task)
        with contextlib.ExitStack() as stack:
            pairs = []
            while not any(fd in (a.fileno(), b.fileno()) for a, b in pairs):
                pair = socket.socketpair()
                pairs.append(pair)
                stack.callback(pair[0].close)
                stack.callback(pair[1].close)
                assert len(pairs) < 64, "the closed fd number was never reused"
            for _, writer in pairs:
                writer.send(b"mine")
            loop = asyncio.get_running_loop()
            for a, _ in pairs:
                a.setblocking(False)
                assert await loop.sock_recv(a, 100) == b"mine"


@pytest.mark.cqloop_only
async def test_operation_started_after_close_under_a_pending_one_fails_too() -> None:
    # Between close() and the end of the waiting operation the fd is still open; a new
    # operation on the closed socket must fail as well, not wait on that fd forever. The
    # new operation's coroutine is driven by hand up to its wait, so that it starts before
    # the first operation has ended (a task would start after it).
    loop = asyncio.get_running_loop()
    async with _pending("sock_recv") as (sock, task):
        sock.close()
        late = loop.sock_recv(sock, 100)
        try:
            # Failing, it raises at once; waiting, it would yield its pending future.
            with pytest.raises(OSError) as raised:
                late.send(None)
            assert raised.value.errno == errno.EBADF
        finally:
            late.close()
        await _fails_with_ebadf(task)
        assert sock.fileno() == -1


@pytest.mark.cqloop_only
async def test_close_from_another_thread_fails_the_pending_operation() -> None:
    async with _pending("sock_recv") as (sock, task):
        closer = threading.Thread(target=sock.close)
        closer.start()
        await _fails_with_ebadf(task)
        closer.join()
        assert sock.fileno() == -1


@pytest.mark.cqloop_only
async def test_close_fails_every_operation_waiting_on_the_socket() -> None:
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    with b:
        _fill_send_buffer(_nonblocking(a))
        receive = await _start(loop.sock_recv(a, 100))
        send = await _start(loop.sock_sendall(a, LARGE_PAYLOAD))
        a.close()
        await _fails_with_ebadf(receive)
        await _fails_with_ebadf(send)
        assert a.fileno() == -1


@pytest.mark.cqloop_only
async def test_close_under_a_pending_operation_keeps_makefile_semantics() -> None:
    # socket.makefile() objects keep the fd open past close() (the socket's own count);
    # a waiting operation's hold on the fd must not lose that count.
    async with _pending("sock_recv") as (sock, task):
        reader = sock.makefile("rb", buffering=0)
        sock.close()
        await _fails_with_ebadf(task)
        assert sock.fileno() != -1, "the file object still holds the fd"
        reader.close()
        assert sock.fileno() == -1


async def test_socket_closes_at_once_after_its_operations_ended() -> None:
    # On every loop: a waiting operation that completed, or was cancelled, leaves the
    # socket's close() as it was: the fd goes at once.
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        receive = await _start(loop.sock_recv(a, 100))
        b.send(b"data")
        assert await receive == b"data"
        cancelled = await _start(loop.sock_recv(a, 100))
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        a.close()
        assert a.fileno() == -1


async def test_socket_that_waited_is_freed_without_the_cyclic_gc() -> None:
    # The loop's hold on a waited-on socket must not make a reference cycle with it: a
    # dropped socket goes at once (and an unclosed one warns at once, as without a wait).
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    with b:
        a.setblocking(False)
        receive = await _start(loop.sock_recv(a, 100))
        b.send(b"data")
        assert await receive == b"data"
        del receive
        a.close()
        ref = weakref.ref(a)
        gc.disable()
        try:
            del a
            assert ref() is None
        finally:
            gc.enable()


async def test_close_right_after_cancelling_a_pending_operation_leaks_nothing() -> None:
    # The cancelled operation has not ended yet when close() runs (its task resumes
    # later): the fd may stay open until it has, and must be closed then.
    async with _pending("sock_recv") as (sock, task):
        task.cancel()
        sock.close()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert sock.fileno() == -1
