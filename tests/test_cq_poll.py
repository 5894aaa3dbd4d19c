"""cqloop.poll, sleep, cancel, Condition and Promise on cqloop, stock asyncio and uvloop.

Everything here runs on each loop through conftest's parametrisation: these are the
portable path (add_reader/add_writer and the per-loop registry) and cqloop's fast path.
"""

from __future__ import annotations

import asyncio
import select
import socket
import threading

import pytest

import cqloop
from cqloop.condition import Condition
from cqloop.pollable import Pollable, poll, polled_fds, pollfd_of, sleep
from cqloop.promise import Promise
from tests.conftest import is_uvloop


class FdPollable:
    """A pollable as cqueues users write them: plain attributes."""

    def __init__(self, fd: int, events: str = "r", timeout: float | None = None) -> None:
        self.pollfd = fd
        self.events = events
        self.timeout = timeout


class MethodPollable:
    def __init__(self, fd: int | None, events: str | None, timeout: float | None) -> None:
        self._fd, self._events, self._timeout = fd, events, timeout

    def pollfd(self) -> int | None:
        return self._fd

    def events(self) -> str | None:
        return self._events

    def timeout(self) -> float | None:
        return self._timeout


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def test_pollable_protocol_accepts_methods_and_attributes():
    assert isinstance(MethodPollable(3, "r", None), Pollable)
    assert pollfd_of(FdPollable(5)) == 5
    cond = Condition()
    assert pollfd_of(cond) is cond


async def test_poll_returns_the_readable_object(pair):
    a, b = pair
    readable = FdPollable(a.fileno(), "r")
    other = FdPollable(b.fileno(), "r")
    b.send(b"x")
    assert await poll(readable, other, timeout=5) == (readable,)


async def test_poll_returns_empty_tuple_on_timeout(pair):
    a, _ = pair
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await poll(FdPollable(a.fileno()), timeout=0.02) == ()
    assert loop.time() - start >= 0.02 - 0.005


async def test_poll_timeout_as_a_bare_number_like_cqueues(pair):
    a, _ = pair
    assert await poll(FdPollable(a.fileno()), 0.01) == ()


async def test_poll_reports_an_object_whose_own_timeout_passes(pair):
    a, _ = pair
    patient = FdPollable(a.fileno(), "r", timeout=5)
    hasty = MethodPollable(None, None, 0.01)
    assert await poll(patient, hasty) == (hasty,)


async def test_poll_writable_and_rw(pair):
    a, _ = pair
    writable = FdPollable(a.fileno(), "w")
    assert await poll(writable, timeout=5) == (writable,)
    both = FdPollable(a.fileno(), "rw")
    assert await poll(both, timeout=5) == (both,)


async def test_poll_reports_every_object_ready_at_once_in_argument_order(pair):
    a, b = pair
    a.send(b"x")
    b.send(b"y")
    first, second = FdPollable(b.fileno()), FdPollable(a.fileno())
    assert set(await poll(first, second, timeout=5)) <= {first, second}
    # Both fds are readable before the poll starts, so both are reported together.
    assert await poll(first, second, timeout=5) == (first, second)


async def test_poll_with_nothing_yields_once():
    order = []

    async def other():
        order.append("other")

    task = asyncio.ensure_future(other())
    assert await poll() == ()
    order.append("after poll")
    await task
    assert order == ["other", "after poll"]


async def test_several_tasks_poll_one_fd(pair):
    a, b = pair
    loop = asyncio.get_running_loop()
    pollables = [FdPollable(a.fileno()) for _ in range(3)]
    tasks = [asyncio.ensure_future(poll(p, timeout=5)) for p in pollables]
    await asyncio.sleep(0)
    assert polled_fds(loop) == {"readers": 1, "writers": 0}
    b.send(b"x")
    results = await asyncio.gather(*tasks)
    assert results == [(p,) for p in pollables]
    assert polled_fds(loop) == {"readers": 0, "writers": 0}


async def test_cancelled_poll_leaves_no_registration(pair):
    a, _ = pair
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(poll(FdPollable(a.fileno()), FdPollable(a.fileno(), "w")))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert polled_fds(loop) == {"readers": 0, "writers": 0}
    # The fd can be watched again by the application and by poll.
    ready = asyncio.Event()
    loop.add_reader(a.fileno(), ready.set)
    loop.remove_reader(a.fileno())


async def test_one_waiter_cancelled_others_still_wake(pair):
    a, b = pair
    keep, leave = FdPollable(a.fileno()), FdPollable(a.fileno())
    staying = asyncio.ensure_future(poll(keep, timeout=5))
    leaving = asyncio.ensure_future(poll(leave, timeout=5))
    await asyncio.sleep(0)
    leaving.cancel()
    await asyncio.sleep(0)
    b.send(b"x")
    assert await staying == (keep,)
    with pytest.raises(asyncio.CancelledError):
        await leaving


async def test_poll_again_right_after_a_wake_sees_new_data(pair):
    # A waiter is removed when it fires, so a poll that starts before the woken task
    # resumes registers afresh (the one-shot registration on cqloop is re-armed).
    a, b = pair
    for round_ in range(20):
        b.send(bytes([round_]))
        assert await poll(FdPollable(a.fileno()), timeout=5)
        assert a.recv(10) == bytes([round_])


async def test_sleep_waits_at_least_the_time_given():
    loop = asyncio.get_running_loop()
    start = loop.time()
    await sleep(0.02)
    assert loop.time() - start >= 0.02 - 0.005
    await sleep(-1)  # negative is no wait, as in cqueues


async def test_cancel_wakes_a_poll_as_if_ready(pair):
    a, _ = pair
    watched = FdPollable(a.fileno())
    task = asyncio.ensure_future(poll(watched))
    await asyncio.sleep(0)
    assert cqloop.cancel(a.fileno()) == 1
    assert await task == (watched,)
    assert polled_fds(asyncio.get_running_loop()) == {"readers": 0, "writers": 0}


async def test_cancel_by_object():
    never = MethodPollable(None, None, None)
    task = asyncio.ensure_future(poll(never))
    await asyncio.sleep(0)
    assert cqloop.cancel(never) == 1
    assert await task == (never,)


# -- Condition ---------------------------------------------------------------------------


async def test_condition_wait_is_true_when_signalled():
    cond = Condition()
    waiter = asyncio.ensure_future(cond.wait())
    await asyncio.sleep(0)
    assert cond.signal() == 1
    assert await waiter is True


async def test_condition_wait_times_out_false():
    assert await Condition().wait(timeout=0.01) is False


async def test_condition_signal_without_waiters_is_not_remembered():
    cond = Condition()
    assert cond.signal() == 0
    assert await cond.wait(timeout=0.01) is False


async def test_condition_signal_n_wakes_in_fifo_order():
    cond = Condition()
    woken = []

    async def waiter(i):
        await cond.wait()
        woken.append(i)

    tasks = [asyncio.ensure_future(waiter(i)) for i in range(4)]
    await asyncio.sleep(0)
    assert cond.signal(2) == 2
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert woken == [0, 1]
    assert cond.signal() == 2
    await asyncio.gather(*tasks)
    assert woken == [0, 1, 2, 3]


async def test_condition_lifo_wakes_newest_first():
    cond = Condition(lifo=True)
    woken = []

    async def waiter(i):
        await cond.wait()
        woken.append(i)

    tasks = [asyncio.ensure_future(waiter(i)) for i in range(3)]
    await asyncio.sleep(0)
    assert cond.signal(1) == 1
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert woken == [2]
    cond.signal()
    await asyncio.gather(*tasks)


async def test_condition_wait_also_returns_false_when_other_ready(pair):
    a, b = pair
    b.send(b"x")
    assert await Condition().wait(FdPollable(a.fileno()), timeout=5) is False


async def test_condition_in_poll_with_an_fd(pair):
    a, _ = pair
    cond = Condition()
    task = asyncio.ensure_future(poll(cond, FdPollable(a.fileno())))
    await asyncio.sleep(0)
    cond.signal()
    assert await task == (cond,)


async def test_condition_signalled_from_another_thread():
    cond = Condition()
    waiter = asyncio.ensure_future(cond.wait(timeout=10))
    await asyncio.sleep(0)
    thread = threading.Thread(target=cond.signal)
    thread.start()
    assert await waiter is True
    thread.join()


async def test_cancelled_condition_wait_is_not_counted_by_signal():
    cond = Condition()
    waiter = asyncio.ensure_future(cond.wait())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert cond.signal() == 0


def test_condition_fileno_is_seen_by_select_outside_any_loop():
    with Condition() as cond:
        fd = cond.fileno()
        assert select.select([fd], [], [], 0)[0] == []
        cond.signal()
        assert select.select([fd], [], [], 0)[0] == [fd]
        assert cond.clear() == 1
        assert select.select([fd], [], [], 0)[0] == []


# -- Promise -----------------------------------------------------------------------------


async def test_promise_get_after_set_result():
    promise = Promise()
    assert promise.status() == "pending"
    getter = asyncio.ensure_future(promise.get())
    await asyncio.sleep(0)
    promise.set_result(42)
    assert await getter == 42
    assert promise.status() == "fulfilled"
    assert await promise == 42


async def test_promise_set_with_several_values_gives_a_tuple():
    promise = Promise()
    promise.set(True, 1, 2)
    assert await promise.get() == (1, 2)
    empty = Promise()
    empty.set(True)
    assert await empty.get() is None


async def test_promise_rejected_raises_its_error():
    promise = Promise()
    promise.set(False, ValueError("boom"))
    assert promise.status() == "rejected"
    with pytest.raises(ValueError, match="boom"):
        await promise.get()
    other = Promise()
    other.set(False, "not an exception")
    with pytest.raises(RuntimeError, match="not an exception"):
        await other


async def test_promise_resolves_only_once():
    promise = Promise()
    promise.set_result(1)
    with pytest.raises(RuntimeError, match="already fulfilled"):
        promise.set_result(2)


async def test_promise_wait_and_get_time_out():
    promise = Promise()
    assert await promise.wait(timeout=0.01) is None
    with pytest.raises(TimeoutError):
        await promise.get(timeout=0.01)
    with pytest.raises(asyncio.InvalidStateError):
        promise.result()


async def test_promise_is_pollable():
    promise = Promise()
    task = asyncio.ensure_future(poll(promise))
    await asyncio.sleep(0)
    promise.set_result("x")
    assert await task == (promise,)
    # Resolved: a poll returns at once.
    assert await poll(promise, timeout=5) == (promise,)


async def test_promise_set_from_another_thread():
    promise = Promise()
    thread = threading.Thread(target=promise.set_result, args=("from thread",))
    getter = asyncio.ensure_future(promise.get(timeout=10))
    await asyncio.sleep(0)
    thread.start()
    assert await getter == "from thread"
    thread.join()


async def test_promise_new_runs_a_function():
    async def compute(x):
        await asyncio.sleep(0)
        return x * 2

    assert await cqloop.promise.new(compute, 21) == 42

    def fails():
        raise KeyError("k")

    with pytest.raises(KeyError):
        await cqloop.promise.new(fails)


# -- poll beside the application's own add_reader/add_writer ---------------------------------


def assert_was_watched(loop: asyncio.AbstractEventLoop, removed: object) -> None:
    """remove_reader/remove_writer said the application's registration was still there
    (uvloop's always answer None; there the tests' second readiness shows it instead)."""
    if not is_uvloop(loop):
        assert removed is True


async def test_poll_on_an_fd_the_application_reads_keeps_the_applications_reader(pair):
    a, b = pair
    loop = asyncio.get_running_loop()
    app_saw = asyncio.Event()
    loop.add_reader(a.fileno(), app_saw.set)
    try:
        b.send(b"x")
        assert await poll(FdPollable(a.fileno()), timeout=30) != ()
        await asyncio.wait_for(app_saw.wait(), 30)
        # The application's reader is still there, still working, and still its own.
        a.recv(10)
        app_saw.clear()
        b.send(b"y")
        await asyncio.wait_for(app_saw.wait(), 30)
        a.recv(10)
    finally:
        assert_was_watched(loop, loop.remove_reader(a.fileno()))
    assert polled_fds(loop) == {"readers": 0, "writers": 0}


async def test_poll_on_an_fd_the_application_writes_keeps_the_applications_writer(pair):
    a, _b = pair
    loop = asyncio.get_running_loop()
    app_calls = 0
    app_saw = asyncio.Event()

    def on_writable() -> None:
        nonlocal app_calls
        app_calls += 1
        app_saw.set()

    loop.add_writer(a.fileno(), on_writable)
    try:
        assert await poll(FdPollable(a.fileno(), "w"), timeout=30) != ()
        app_saw.clear()
        await asyncio.wait_for(app_saw.wait(), 30)
    finally:
        assert_was_watched(loop, loop.remove_writer(a.fileno()))
    assert app_calls >= 1


async def test_a_reader_added_while_a_poll_waits_is_not_dropped_by_the_poll(pair):
    # The application takes the fd's registration over while a poll waits (add_reader
    # replaces, as it does for any earlier reader); the poll's end must not remove it.
    a, b = pair
    loop = asyncio.get_running_loop()
    waiting = asyncio.ensure_future(poll(FdPollable(a.fileno()), timeout=0.05))
    await asyncio.sleep(0)
    app_saw = asyncio.Event()
    loop.add_reader(a.fileno(), app_saw.set)
    try:
        await waiting  # times out or wakes: either way it leaves
        b.send(b"x")
        await asyncio.wait_for(app_saw.wait(), 30)
        a.recv(10)
    finally:
        assert_was_watched(loop, loop.remove_reader(a.fileno()))


async def test_cancel_of_a_polled_fd_leaves_the_applications_reader(pair):
    a, b = pair
    loop = asyncio.get_running_loop()
    app_saw = asyncio.Event()
    loop.add_reader(a.fileno(), app_saw.set)
    try:
        waiting = asyncio.ensure_future(poll(FdPollable(a.fileno())))
        await asyncio.sleep(0)
        assert cqloop.cancel(a.fileno()) == 1
        assert await asyncio.wait_for(waiting, 30) != ()
        b.send(b"x")
        await asyncio.wait_for(app_saw.wait(), 30)
        a.recv(10)
    finally:
        assert_was_watched(loop, loop.remove_reader(a.fileno()))
