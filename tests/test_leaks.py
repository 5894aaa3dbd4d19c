"""Leaks: making, using and closing many cqloop loops gives back every fd and thread.

A loop owns an epoll fd, an eventfd and (once driven from outside) a timerfd, and no threads
of its own; its default executor owns threads until it is shut down. After 1,000 loops
created and closed (unused, after running something, after being stepped from outside,
with fds still watched, or dropped without close()), the process must hold the same fds
and threads as before and the loops themselves must be freed. The same for an inner loop
nested in an outer one and closed, 100 times over: the outer loop keeps no registration
and keeps working.

Each test counts fds itself (and the autouse per-test fd check of conftest.py still runs).
Executor threads are joined (shutdown_default_executor, or join() after close()) before
threads are counted; waits are bounded only as a safety net.
"""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import threading
import time
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import pytest

import cqloop
from tests.conftest import open_fds
from tests.loops import OUTER_FACTORIES, OUTER_KINDS

pytestmark = pytest.mark.cqloop_only

N_LOOPS = 1000
N_NESTED = 100
WAIT_S = 5.0


# -- accounting -------------------------------------------------------------------------------


# uvloop's getaddrinfo (run by other test modules) starts libuv's thread pool, whose C
# threads live as long as the process: they are not ours to count.
FOREIGN_THREAD_NAMES = frozenset({"libuv-worker"})


def os_thread_count() -> int:
    """Threads of this process as the kernel counts them (Python's and any other), less
    the foreign pools named in FOREIGN_THREAD_NAMES."""
    count = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                name = f.read().strip()
        except FileNotFoundError:
            continue  # ended while we listed
        if name not in FOREIGN_THREAD_NAMES:
            count += 1
    return count


def settled_os_thread_count(expected: int) -> int:
    """The OS thread count, once it is `expected` (or after WAIT_S): a joined Python thread
    may still be leaving the kernel for a moment after join() returns."""
    deadline = time.monotonic() + WAIT_S
    count = os_thread_count()
    while count != expected and time.monotonic() < deadline:
        os.sched_yield()
        count = os_thread_count()
    return count


def _expected_os_threads() -> int:
    # Python's threads are OS threads one to one; anything else (none here) would differ.
    return threading.active_count()


class Snapshot:
    """The fds and threads of the process, after a GC pass."""

    def __init__(self) -> None:
        gc.collect()
        self.fds = open_fds()
        self.threads = set(threading.enumerate())
        # A thread joined by an earlier test may still be leaving the kernel: let the
        # count settle (bounded) on the Python threads' own count before taking it.
        self.os_threads = settled_os_thread_count(_expected_os_threads())

    def assert_unchanged(self) -> None:
        after = Snapshot()
        leaked = after.fds - self.fds
        assert not leaked, f"{len(leaked)} fds leaked, e.g. " + ", ".join(
            f"{fd} -> {_describe_fd(fd)}" for fd in sorted(leaked)[:10]
        )
        assert after.fds == self.fds, f"fds closed behind the test: {sorted(self.fds - after.fds)}"
        assert after.threads == self.threads, (
            f"threads left running: {sorted(t.name for t in after.threads - self.threads)}"
        )
        assert settled_os_thread_count(self.os_threads) == self.os_threads


def _describe_fd(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError as exc:
        return f"? ({exc})"


def noop() -> None:
    pass


# -- many loops created and closed -------------------------------------------------------------


def _unused(loop: cqloop.Loop, _socks: Any) -> None:
    pass


def _ran_a_coroutine(loop: cqloop.Loop, _socks: Any) -> None:
    async def trivial() -> int:
        await asyncio.sleep(0)
        return 1

    assert loop.run_until_complete(trivial()) == 1
    loop.call_later(60, noop)  # still pending at close()
    loop.call_soon(noop)


def _driven_from_outside(loop: cqloop.Loop, _socks: Any) -> None:
    loop.fileno()  # makes the loop keep its fd truthful: creates the timerfd with a timer
    ran: list[int] = []
    loop.call_at(loop.time() - 1, ran.append, 1)
    loop.call_later(60, noop)
    loop.step(0)
    assert ran == [1]
    assert loop.statistics()["timerfd"]


def _watches_fds(loop: cqloop.Loop, socks: Any) -> None:
    a, b = socks
    loop.add_reader(a, noop)
    loop.add_writer(b, noop)
    loop.step(0)  # b is writable: one event dispatched; close() must unregister both


def _nested_in_a_fresh_cqloop(loop: cqloop.Loop, _socks: Any) -> None:
    outer = cqloop.new_event_loop()
    try:
        loop.nest_in(outer)
        loop.call_soon(noop)
        outer.run_until_complete(asyncio.sleep(0))
    finally:
        outer.close()  # closed first: the inner loop's close() must cope


USES: dict[str, Callable[[cqloop.Loop, Any], None]] = {
    "unused": _unused,
    "ran-a-coroutine": _ran_a_coroutine,
    "driven-from-outside": _driven_from_outside,
    "watches-fds": _watches_fds,
    "nested-in-a-cqloop-closed-first": _nested_in_a_fresh_cqloop,
}


@pytest.mark.parametrize("use", list(USES))
def test_creating_and_closing_1000_loops_leaves_fds_and_threads_unchanged(use):
    socks = socket.socketpair()
    try:
        before = Snapshot()
        # Kept alive until counted: close() itself must give the fds back (a loop's
        # deallocation would too, and hide a close() that does not).
        closed = []
        for _ in range(N_LOOPS):
            loop = cqloop.new_event_loop()
            try:
                USES[use](loop, socks)
            finally:
                loop.close()
            closed.append(loop)
        before.assert_unchanged()
        # And once dropped, the loops are freed (nothing keeps a closed loop alive).
        refs = [weakref.ref(each) for each in closed]
        del closed, loop
        gc.collect()
        assert sum(ref() is not None for ref in refs) == 0
    finally:
        for sock in socks:
            sock.close()


def test_1000_loops_dropped_without_close_give_their_fds_back():
    before = Snapshot()
    with pytest.warns(ResourceWarning, match="unclosed event loop"):
        for _ in range(N_LOOPS):
            loop = cqloop.new_event_loop()
            loop.fileno()
            loop.call_later(60, noop)
            loop.step(0)
            del loop
        gc.collect()
    before.assert_unchanged()


def test_loops_that_used_the_default_executor_leave_no_threads_after_shutdown():
    before = Snapshot()
    caller = threading.get_ident()
    for i in range(N_LOOPS):
        loop = cqloop.new_event_loop()
        try:
            if i % 100 == 0:
                worker = loop.run_until_complete(loop.run_in_executor(None, threading.get_ident))
                assert worker != caller
                # Joins the executor's threads, and the thread that joins them.
                loop.run_until_complete(loop.shutdown_default_executor())
            else:
                loop.run_until_complete(asyncio.sleep(0))
        finally:
            loop.close()
    before.assert_unchanged()


def test_close_shuts_the_default_executor_down_without_waiting_and_its_threads_end():
    before = Snapshot()
    loop = cqloop.new_event_loop()
    try:
        release = threading.Event()
        started = loop.run_in_executor(None, release.wait, WAIT_S)
        loop.run_until_complete(loop.run_in_executor(None, noop))
    finally:
        # A job is still running: close() must not wait for it (nor leave its threads
        # behind for good once it ends).
        t0 = time.monotonic()
        loop.close()
        closed_in = time.monotonic() - t0
        release.set()
    del started
    assert closed_in < WAIT_S / 2
    for thread in set(threading.enumerate()) - before.threads:
        thread.join(WAIT_S)
        assert not thread.is_alive(), f"executor thread {thread.name} never ended"
    before.assert_unchanged()


# -- a nested loop closed over and over -----------------------------------------------------


@pytest.mark.parametrize("depth", [1, 3])
@pytest.mark.parametrize("outer_kind", OUTER_KINDS)
def test_nested_loops_closed_100_times_leave_no_fds_and_the_outer_loop_working(outer_kind, depth):
    outer = OUTER_FACTORIES[outer_kind]()
    a, b = socket.socketpair()
    try:
        # Whatever the outer loop opens on its first run is part of the baseline.
        outer.run_until_complete(asyncio.sleep(0))
        before = Snapshot()
        for i in range(N_NESTED):
            chain = []
            parent: Any = outer
            for _ in range(depth):
                child = cqloop.new_event_loop()
                child.nest_in(parent)
                chain.append(child)
                parent = child
            innermost = chain[-1]
            try:
                # Each round's loops most likely get the fd numbers of the last round's:
                # a registration the outer kept would make this nest_in/step fail.
                task = innermost.create_task(asyncio.sleep(0.001, i))
                done = outer.create_future()
                task.add_done_callback(lambda t, done=done: done.set_result(t.result()))
                assert outer.run_until_complete(asyncio.wait_for(done, WAIT_S)) == i
                if i % 2:
                    # Closed with work pending and an fd watched.
                    innermost.call_later(60, noop)
                    innermost.call_soon(noop)
                    innermost.add_reader(a, noop)
                else:
                    innermost.unnest()
            finally:
                for each in reversed(chain):
                    each.close()
        before.assert_unchanged()
        if isinstance(outer, cqloop.Loop):
            assert outer.statistics()["fds"] == 0
        assert outer.run_until_complete(asyncio.sleep(0.001, "outer works")) == "outer works"
    finally:
        outer.close()
        a.close()
        b.close()


def test_leak_checks_see_a_leaked_loop():
    # The accounting above can fail: a loop left open shows up as leaked fds.
    before = Snapshot()
    loop = cqloop.new_event_loop()
    try:
        with pytest.raises(AssertionError, match="fds leaked"):
            before.assert_unchanged()
    finally:
        loop.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        before.assert_unchanged()
