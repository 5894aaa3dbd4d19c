"""cqloop.thread: functions in new threads, their socket, join, and the pollable handle.

Async tests run on every loop kind through conftest's pytest-asyncio hook. Every thread a
test starts is joined before the test ends, and every socket closed (the fd leak check
would catch the eventfd or a socket left open). Threads that must stay alive while the
test looks at them block on their socket until the test writes to it: no sleeps.

start() blocks every signal in the starting thread for the instant of the thread's start
and then restores the mask exactly; test_start_leaves_the_callers_mask_as_it_was checks
that, so running these tests in the pytest process leaves its mask alone.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import math
import signal
import socket
import threading
from typing import Any

import pytest

import cqloop
from cqloop import auxlib, thread
from cqloop.pollable import poll


def wait_for_go(sock: socket.socket) -> bytes:
    """A plain thread function: block until the parent writes, return what it wrote."""
    return sock.recv(100)


async def test_plain_function_runs_in_a_new_thread_and_join_returns_its_result() -> None:
    def work(sock: socket.socket, a: int, b: int) -> tuple[int, int]:
        return threading.get_ident(), a * b

    thr, sock = thread.start(work, 6, 7)
    with sock:
        ident, product = await thr.join()
    assert product == 42
    assert ident != threading.get_ident()
    assert ident == thr.ident


async def test_async_function_runs_on_its_own_cqloop_loop() -> None:
    async def work(sock: socket.socket) -> tuple[bool, int]:
        loop = asyncio.get_running_loop()
        return isinstance(loop, cqloop.Loop), id(loop)

    outer = asyncio.get_running_loop()
    thr, sock = thread.start(work)
    with sock:
        on_cqloop, loop_id = await thr.join()
    assert on_cqloop
    assert loop_id != id(outer)


async def test_socket_pair_connects_the_caller_and_the_thread() -> None:
    async def echo_upper(sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while data := await loop.sock_recv(sock, 1024):
            await loop.sock_sendall(sock, data.upper())

    loop = asyncio.get_running_loop()
    thr, sock = thread.start(echo_upper)
    with sock:
        assert not sock.getblocking()
        await loop.sock_sendall(sock, b"hello")
        received = b""
        while len(received) < 5:
            received += await loop.sock_recv(sock, 1024)
        assert received == b"HELLO"
        sock.shutdown(socket.SHUT_WR)
        assert await thr.join() is None
        # The thread's end was closed when its function returned.
        assert await loop.sock_recv(sock, 1024) == b""


async def test_lines_from_a_thread_until_eof_then_join() -> None:
    # cqueues' examples/thread.count: a thread writes numbers, one a line, the caller reads
    # lines until EOF and then joins.
    async def count(sock: socket.socket, first: int, last: int) -> str:
        loop = asyncio.get_running_loop()
        for n in range(first, last + 1):
            await loop.sock_sendall(sock, f"{n}\n".encode())
        return "OK"

    loop = asyncio.get_running_loop()
    thr, sock = thread.start(count, 0, 9)
    with sock:
        received = b""
        while data := await loop.sock_recv(sock, 4096):
            received += data
        assert received.decode().splitlines() == [str(n) for n in range(10)]
        assert await thr.join() == "OK"


async def test_join_raises_what_the_thread_raised() -> None:
    def fail(sock: socket.socket) -> None:
        raise LookupError("from the thread")

    thr, sock = thread.start(fail)
    with sock, pytest.raises(LookupError, match="from the thread"):
        await thr.join()
    # And again, to a later join.
    with pytest.raises(LookupError):
        await thr


async def test_join_reports_a_thread_that_died_of_system_exit() -> None:
    # cqueues' regress/51-join-defunct-thread: a thread that dies without finishing its
    # function must be reported by join, not waited on forever.
    def die(sock: socket.socket) -> None:
        raise SystemExit(3)

    thr, sock = thread.start(die)
    with sock, pytest.raises(SystemExit) as caught:
        await thr.join(30)
    assert caught.value.code == 3


async def test_join_timeout_raises_timeout_error_and_the_thread_runs_on() -> None:
    loop = asyncio.get_running_loop()
    thr, sock = thread.start(wait_for_go)
    with sock:
        with pytest.raises(TimeoutError) as caught:
            await thr.join(0.01)
        assert caught.value.errno == errno.ETIMEDOUT
        assert thr.is_alive() and not thr.done()
        await loop.sock_sendall(sock, b"go")
        assert await thr.join() == b"go"


async def test_join_result_through_auxlib_result() -> None:
    # regress/51's `ok, why, code = auxlib.fileresult(thr:join(5))`, in Python terms.
    loop = asyncio.get_running_loop()
    thr, sock = thread.start(wait_for_go)
    with sock:
        value, why, code = await auxlib.result(thr.join(0))
        assert value is None and code == errno.ETIMEDOUT and why
        await loop.sock_sendall(sock, b"x")
        assert await auxlib.result(thr.join()) == (b"x", None, None)


async def test_thread_is_pollable_until_it_ends() -> None:
    loop = asyncio.get_running_loop()
    thr, sock = thread.start(wait_for_go)
    with sock:
        assert thr.events() == "r"
        assert isinstance(thr.pollfd(), int)
        assert await poll(thr, timeout=0) == ()
        await loop.sock_sendall(sock, b"end")
        assert await poll(thr) == (thr,)
        assert thr.done()
        await thr.join()
    # Joined: the eventfd is closed, and polling a finished thread returns at once.
    assert thr.pollfd() is None
    assert thr.timeout() == 0.0
    assert await poll(thr) == (thr,)


async def test_several_tasks_join_one_thread() -> None:
    loop = asyncio.get_running_loop()
    thr, sock = thread.start(wait_for_go)
    with sock:
        joins = [asyncio.ensure_future(thr.join()) for _ in range(3)]
        loop.call_soon(sock.send, b"all")
        assert await asyncio.gather(*joins) == [b"all"] * 3


async def test_arguments_reach_the_thread_unchanged() -> None:
    # cqueues' regress/152-thread-integer-passing: integers beyond a double's precision and
    # special floats must arrive exactly (cqueues serialises them; here they are passed).
    big = 2**63 - 1
    args = (big, float(big), math.inf, -math.inf, -0.0, 1 / 3, "text", b"\0bytes")

    def echo(sock: socket.socket, *received: Any) -> tuple[Any, ...]:
        return received

    thr, sock = thread.start(echo, *args)
    with sock:
        received = await thr.join()
    assert received == args
    assert all(a is b for a, b in zip(received, args, strict=True))
    assert isinstance(received[0], int) and received[0] != received[1]
    assert math.copysign(1.0, received[4]) == -1.0


async def test_current_is_the_running_thread_and_it_cannot_join_itself() -> None:
    async def work(sock: socket.socket) -> tuple[bool, str]:
        me = thread.current()
        try:
            await me.join()
        except RuntimeError as exc:
            return me is thread.self(), str(exc)
        return False, "joined itself"

    assert thread.current() is None
    thr, sock = thread.start(work)
    with sock:
        same, message = await thr.join()
    assert same
    assert "itself" in message


async def test_new_thread_blocks_every_signal() -> None:
    def mask(sock: socket.socket) -> set[int]:
        return signal.pthread_sigmask(signal.SIG_BLOCK, [])

    thr, sock = thread.start(mask)
    with sock:
        blocked = await thr.join()
    catchable = set(signal.valid_signals()) - {signal.SIGKILL, signal.SIGSTOP}
    assert blocked == catchable


async def test_join_wakes_another_task_polling_the_thread_with_other_objects() -> None:
    loop = asyncio.get_running_loop()
    thr, sock = thread.start(wait_for_go)
    other_read, other_write = socket.socketpair()
    with sock, other_read, other_write:
        polling = asyncio.ensure_future(poll(thr, other_read))
        loop.call_soon(sock.send, b"end")
        assert await thr.join() == b"end"
        assert await polling == (thr,)


async def test_exception_nobody_retrieved_is_logged_when_the_thread_is_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def fail(sock: socket.socket) -> None:
        raise LookupError("lost")

    thr, sock = thread.start(fail)
    with sock:
        assert await poll(thr) == (thr,)
    # The OS thread holds the Thread object until its very end: wait for that end first,
    # so that dropping the last reference here is what frees it.
    thr._thread.join()
    with caplog.at_level(logging.ERROR, logger="cqloop.thread"):
        del thr
        gc.collect()
    assert "never joined" in caplog.text
    assert "LookupError: lost" in caplog.text


def test_start_leaves_the_callers_mask_as_it_was(loop: asyncio.AbstractEventLoop) -> None:
    before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    thr, sock = thread.start(lambda sock: None)
    with sock:
        assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == before
        loop.run_until_complete(thr.join())


def test_start_refuses_what_is_not_callable() -> None:
    with pytest.raises(TypeError):
        thread.start(42)  # type: ignore[arg-type]
