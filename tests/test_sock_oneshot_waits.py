"""One-shot waits: cqloop registers the waits of sock_* operations with EPOLLONESHOT. These
tests check that a finished wait leaves nothing behind that changes what comes after it: a
reader added later, a reused fd number, a dup of the fd, data with nobody waiting, and waits
in a row on one socket. Checked on cqloop against stock asyncio (the oracle) and uvloop.

Each test runs once per loop kind, on loopback, without sleeps (see test_sock_ops.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import socket
from collections.abc import AsyncIterator

import pytest

from tests.conftest import is_uvloop
from tests.sock_ops_harness import started, within

# -- one-shot waits (cqloop registers sock_* waits with EPOLLONESHOT) -------------------------


async def _recv_after_waiting(loop: asyncio.AbstractEventLoop, a: socket.socket, b: socket.socket):
    task = await started(loop.sock_recv(a, 100))
    b.send(b"x")
    assert await within(task) == b"x"


async def test_a_reader_added_after_a_finished_wait_fires_while_the_fd_stays_readable() -> None:
    # The fd keeps a disarmed one-shot registration after the wait; add_reader must turn
    # it back into an ordinary level-triggered one.
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    a.setblocking(False)
    try:
        await _recv_after_waiting(loop, a, b)
        calls = 0
        twice = loop.create_future()

        def on_readable() -> None:
            nonlocal calls
            calls += 1  # reads nothing: the fd stays readable
            if calls == 2:
                twice.set_result(None)

        loop.add_reader(a.fileno(), on_readable)
        b.send(b"more")
        await within(twice)
        assert loop.remove_reader(a.fileno()) or is_uvloop(loop)
    finally:
        a.close()
        b.close()


@contextlib.asynccontextmanager
async def _fd_number_reused_after_a_wait(
    loop: asyncio.AbstractEventLoop,
) -> AsyncIterator[tuple[socket.socket, socket.socket]]:
    """A sock_recv wait finishes on a socket that is then closed; yields (reused, other):
    a new connected pair whose `reused` end has the closed socket's fd number."""
    a, b = socket.socketpair()
    a.setblocking(False)
    await _recv_after_waiting(loop, a, b)
    number = a.fileno()
    a.close()
    b.close()
    c, d = socket.socketpair()
    try:
        reused = c if c.fileno() == number else d if d.fileno() == number else None
        if reused is None:
            pytest.skip("the fd number was not reused")
        reused.setblocking(False)
        yield reused, (d if reused is c else c)
    finally:
        c.close()
        d.close()


async def test_a_reused_fd_number_is_watched_afresh_after_a_finished_wait() -> None:
    loop = asyncio.get_running_loop()
    async with _fd_number_reused_after_a_wait(loop) as (reused, other):
        fired = loop.create_future()
        number = reused.fileno()
        loop.add_reader(number, lambda: fired.done() or fired.set_result(reused.recv(10)))
        other.send(b"new")
        assert await within(fired) == b"new"
        loop.remove_reader(number)


def _loop_fd_readable(loop: asyncio.AbstractEventLoop) -> bool:
    readable, _, _ = select.select([loop.fileno()], [], [], 0)  # type: ignore[attr-defined]
    return bool(readable)


async def _until_loop_fd_idle(loop: asyncio.AbstractEventLoop) -> None:
    """Let the loop poll (a bounded number of iterations) until its epoll fd reports
    nothing; fail if it stays readable (a registration that spins)."""
    for _ in range(10):
        await asyncio.sleep(0)
        if not _loop_fd_readable(loop):
            return
    raise AssertionError("the loop's epoll fd stays readable")


@pytest.mark.cqloop_only
async def test_a_finished_wait_leaves_nothing_that_spins_the_loop_even_through_a_dup() -> None:
    # The classic epoll trap: a registration outlives its fd number when a dup keeps the
    # file open, and a level-triggered one would then make the loop spin. A finished
    # sock_* wait's registration is edge-triggered (Kernel._wait_sock): data arriving on
    # the dup'd file wakes the loop once per arrival, and nothing runs.
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    a.setblocking(False)
    await _recv_after_waiting(loop, a, b)
    dup = os.dup(a.fileno())
    try:
        a.close()
        b.send(b"data nobody waits for")
        await _until_loop_fd_idle(loop)
        assert loop._kernel_statistics()["fds"] == 0
    finally:
        os.close(dup)
        b.close()


@pytest.mark.cqloop_only
async def test_data_with_nobody_waiting_drops_a_finished_waits_registration() -> None:
    # The idle registration a sock_* wait leaves wakes the loop at most once: the first
    # arrival with nobody waiting drops it, and the next wait registers afresh.
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    a.setblocking(False)
    with a, b:
        await _recv_after_waiting(loop, a, b)
        b.send(b"first")
        await _until_loop_fd_idle(loop)
        b.send(b"second")
        assert not _loop_fd_readable(loop)
        assert await loop.sock_recv(a, 100) == b"firstsecond"
        await _recv_after_waiting(loop, a, b)


async def test_waits_on_one_socket_in_a_row_each_see_their_data() -> None:
    # Consecutive waits on the same socket reuse its registration: each must still wake.
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    a.setblocking(False)
    with a, b:
        for i in range(20):
            task = await started(loop.sock_recv(a, 100))
            b.send(b"%d" % i)
            assert await within(task) == b"%d" % i


async def test_a_wait_on_a_new_socket_with_a_reused_fd_number_wakes() -> None:
    # The fast path must not take the registration of a closed socket's file for the
    # new one's: same fd number, another file.
    loop = asyncio.get_running_loop()
    async with _fd_number_reused_after_a_wait(loop) as (reused, other):
        task = await started(loop.sock_recv(reused, 100))
        other.send(b"new")
        assert await within(task) == b"new"
