"""Timer edge contracts, checked on cqloop against stock asyncio (the oracle) and uvloop:
non-finite and out-of-range delays and deadlines (NaN, infinities, huge values) in every API
that takes one, the value TimerHandle.when() gives back, and a loop clock replaced on the
instance (test suites' fake clocks).

What asyncio does with NaN depends on where the heap puts the timer: a NaN timer at the
head of the heap is due at once on 3.11 and 3.12 (`max(0, nan)` is 0 and `nan >= end` is
false), while on 3.13 it reaches the selector and run_forever dies with ValueError; a NaN
timer elsewhere in the heap leaves whenever sifting brings it to the head. cqloop makes a
NaN deadline due at once wherever it is, and keeps the heap ordered around it. Tests whose
setting puts asyncio's NaN timer at the head while nothing else is ready skip asyncio on
3.13 for that reason.

A test that would hang on a broken loop runs under `_watchdog`, which stops the loop from
another thread after a bound and fails the test instead of the suite.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sys
import threading
from collections.abc import Iterator
from unittest import mock

import pytest

from tests.conftest import is_cqloop, is_uvloop, skip_where_uvloop_differs

NAN = float("nan")
INF = float("inf")
PY312 = sys.version_info >= (3, 12)
PY313 = sys.version_info >= (3, 13)
# Long enough for any loaded machine, short enough that a hang costs little.
WATCHDOG_S = 10.0


class _Hung(SystemExit):
    """Raised by a hard watchdog inside the loop: one of the two exceptions a callback
    passes up through run_forever and step() (the loop's own stop() ends only run_forever)."""


def _abort() -> None:
    raise _Hung("the loop blocked past the watchdog's bound")


@contextlib.contextmanager
def _watchdog(loop: asyncio.AbstractEventLoop, hard: bool = False) -> Iterator[threading.Event]:
    """Stop `loop` from another thread if it is still running after WATCHDOG_S (`hard`:
    raise _Hung in it instead, for loops driven by step()); the event says whether it had
    to."""
    fired = threading.Event()

    def stop() -> None:
        fired.set()
        loop.call_soon_threadsafe(_abort if hard else loop.stop)

    timer = threading.Timer(WATCHDOG_S, stop)
    timer.start()
    try:
        yield fired
    finally:
        timer.cancel()
        timer.join()


def _skip_uvloop_for_nan(loop: asyncio.AbstractEventLoop) -> None:
    skip_where_uvloop_differs(
        loop, "a NaN delay becomes an integer in C (undefined); it never runs"
    )


def _skip_where_a_nan_head_crashes(loop: asyncio.AbstractEventLoop) -> None:
    _skip_uvloop_for_nan(loop)
    if PY313 and not is_cqloop(loop) and not is_uvloop(loop):
        pytest.skip("asyncio 3.13's run_forever raises ValueError with a NaN timer at the head")


# -- NaN ------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["call_later", "call_at"])
def test_nan_timer_is_due_at_once(loop, method):
    _skip_uvloop_for_nan(loop)
    fired = []
    handle = getattr(loop, method)(NAN, fired.append, "nan")
    loop.call_soon(loop.stop)
    with _watchdog(loop) as hung:
        loop.run_forever()
    assert not hung.is_set()
    assert fired == ["nan"]
    assert math.isnan(handle.when())


def test_nan_timer_at_the_head_neither_blocks_nor_holds_back_later_timers(loop):
    _skip_where_a_nan_head_crashes(loop)
    order = []
    done = loop.create_future()
    loop.call_later(NAN, order.append, "nan")
    loop.call_later(0.001, order.append, "later")
    loop.call_later(0.002, done.set_result, None)
    with _watchdog(loop) as hung:
        with contextlib.suppress(RuntimeError):
            loop.run_until_complete(done)
    assert not hung.is_set()
    assert order == ["nan", "later"]


def test_nan_timers_leave_the_heap_order_of_the_others_intact(loop):
    skip_where_uvloop_differs(loop, "libuv orders timers due in the same millisecond by start")
    # asyncio's heapq loses its order around NaN keys (every comparison with one is false);
    # its NaN timers run whenever they surface. The finite timers must still run in order.
    if not is_cqloop(loop):
        pytest.skip("asyncio's heapq does not keep its order around NaN keys")
    base = loop.time()
    fired = []
    offsets = [7, 3, 9, 1, 8, 2, 6, 4, 5, 10]
    for i, ms in enumerate(offsets):
        loop.call_at(base + ms / 1000, fired.append, ms)
        if i % 2:
            loop.call_at(NAN, fired.append, "nan")
    done = loop.create_future()
    loop.call_at(base + 0.02, done.set_result, None)
    with _watchdog(loop) as hung:
        loop.run_until_complete(done)
    assert not hung.is_set()
    assert fired[:5] == ["nan"] * 5
    assert fired[5:] == sorted(offsets)


def test_step_with_a_nan_timer_pending_never_blocks(loop):
    if not is_cqloop(loop):
        pytest.skip("step() is cqloop's (the cqueues controller API)")
    fired = []
    loop.call_later(NAN, fired.append, "nan")
    with _watchdog(loop, hard=True) as hung:
        loop.step(1.0)
    assert not hung.is_set()
    assert fired == ["nan"]
    # The loop's fd says how long an outside poller may sleep: never NaN.
    loop.call_later(NAN, fired.append, "nan2")
    assert loop.timeout() == 0.0


@pytest.mark.cqloop_only
def test_step_timeouts_nan_and_infinite_are_due_now_and_uncapped(loop):
    fired = []
    with _watchdog(loop, hard=True) as hung:
        loop.step(NAN)  # nothing to do: a NaN wait is no wait, as a NaN timer is due now
        loop.call_later(0.001, fired.append, "timer")
        while not fired and not hung.is_set():
            loop.step(INF)  # waits for the timer, as step(None) does
    assert not hung.is_set()
    assert fired == ["timer"]
    with pytest.raises(ValueError):
        loop.step(-INF)
    with pytest.raises(ValueError):
        loop.step(-1)


@pytest.mark.cqloop_only
def test_controller_loop_with_a_nan_timeout_returns_at_once(loop):
    # cqueues' loop(timeout): a NaN timeout has passed already, as a NaN deadline is due now.
    async def forever():
        await asyncio.Event().wait()

    loop.wrap(forever())
    with _watchdog(loop, hard=True) as hung:
        try:
            finished = loop.loop(NAN)
        except _Hung:
            pytest.fail("loop(nan) blocked")
    assert not hung.is_set()
    assert finished is False
    for task in asyncio.all_tasks(loop):
        task.cancel()
    loop.loop(1.0)


# -- infinite, huge and negative deadlines ---------------------------------------------------


@pytest.mark.parametrize("value", [INF, 1e300, sys.float_info.max])
def test_infinite_and_huge_deadlines_stay_pending_without_blocking_others(loop, value):
    fired = []
    handles = [
        loop.call_later(value, fired.append, "later"),
        loop.call_at(value, fired.append, "at"),
    ]
    loop.call_later(0.001, loop.stop)
    with _watchdog(loop) as hung:
        loop.run_forever()
    assert not hung.is_set()
    assert fired == []
    if not is_uvloop(loop):  # (uvloop caps deadlines at about a hundred years)
        assert handles[1].when() == value
        assert handles[0].when() >= value
    for handle in handles:
        handle.cancel()


@pytest.mark.parametrize("value", [-INF, -1e300])
def test_deadlines_at_minus_infinity_are_due_at_once(loop, value):
    fired = []
    loop.call_later(value, fired.append, "later")
    loop.call_at(value, fired.append, "at")
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert fired == ["later", "at"]


def test_an_infinite_timer_leaves_the_loop_idle_for_an_outside_poller(loop):
    if not is_cqloop(loop):
        pytest.skip("timeout() is cqloop's (the pollable protocol)")
    loop.call_later(INF, print)
    # A number select() and poll() accept: the loop's own cap on one wait.
    assert loop.timeout() == 24 * 3600.0


def test_delays_asyncio_refuses_are_refused(loop):
    skip_where_uvloop_differs(loop, "it accepts delays too large for a float")
    with pytest.raises(OverflowError):
        loop.call_later(10**400, print)
    with pytest.raises(TypeError):
        loop.call_later("1", print)
    with pytest.raises(TypeError):
        loop.call_later(None, print)
    with pytest.raises(TypeError):
        loop.call_at(None, print)
    assert loop.call_later(0, print) is not None


@pytest.mark.parametrize("value", [NAN, -INF, -1e300])
async def test_wait_for_and_timeout_time_out_at_once_on_nan_and_minus_infinity(value):
    # asyncio.timeout and wait_for compute a deadline from the loop's clock: NaN and minus
    # infinity are due at once.
    if math.isnan(value):
        _skip_where_a_nan_head_crashes(asyncio.get_running_loop())
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.sleep(1), value)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(value):
            await asyncio.sleep(1)


@pytest.mark.parametrize("value", [INF, 1e300])
async def test_wait_for_and_timeout_never_time_out_on_infinite_timeouts(value):
    assert await asyncio.wait_for(asyncio.sleep(0, "done"), value) == "done"
    async with asyncio.timeout(value):
        await asyncio.sleep(0)


async def test_sleep_with_non_finite_delays():
    _skip_uvloop_for_nan(asyncio.get_running_loop())
    if PY313:
        # asyncio.sleep refuses NaN itself from 3.13 (CPython gh-105331).
        with pytest.raises(ValueError):
            await asyncio.sleep(NAN)
    else:
        assert await asyncio.sleep(NAN, "woke") == "woke"
    assert await asyncio.sleep(-INF, "woke") == "woke"
    task = asyncio.ensure_future(asyncio.sleep(INF))
    await asyncio.sleep(0.001)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# -- TimerHandle.when() ---------------------------------------------------------------------


def test_timer_handle_when_returns_the_value_given_to_call_at(loop):
    skip_where_uvloop_differs(loop, "its TimerHandle.when() converts the deadline to a float")
    deadline = math.ceil(loop.time()) + 3600
    handle = loop.call_at(deadline, print)
    # aiohttp schedules at ceil(t) and compares what when() gives back with an int.
    assert handle.when() == deadline
    assert type(handle.when()) is int
    handle.cancel()
    assert type(loop.call_later(1, print).when()) is float


# -- a clock replaced on the instance ---------------------------------------------------------


def test_a_patched_time_moves_the_scheduler(loop):
    skip_where_uvloop_differs(loop, "libuv schedules by its own clock, not loop.time()")
    now = [loop.time()]
    fired = []
    with mock.patch.object(loop, "time", side_effect=lambda: now[0]):
        handle = loop.call_later(100, fired.append, "later")
        assert handle.when() == now[0] + 100
        loop.call_at(now[0] + 50, fired.append, "at")
        loop.call_soon(loop.stop)
        loop.run_forever()
        assert fired == []
        now[0] += 100
        loop.call_soon(loop.stop)
        with _watchdog(loop) as hung:
            loop.run_forever()
        assert not hung.is_set()
        assert fired == ["at", "later"]
    # Unpatched, the loop's own clock is back.
    assert loop.time() < now[0]
    loop.call_later(0, fired.append, "real")
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert fired[-1] == "real"


def test_a_fake_clock_assigned_to_the_loop_schedules_its_timers(loop):
    skip_where_uvloop_differs(loop, "libuv schedules by its own clock, not loop.time()")
    fake = [1000.0]
    fired = []
    loop.time = lambda: fake[0]
    try:
        loop.call_later(5, fired.append, "five")
        assert loop.call_later(1, print).when() == 1001.0
        fake[0] = 1006.0
        loop.call_soon(loop.stop)
        with _watchdog(loop) as hung:
            loop.run_forever()
        assert not hung.is_set()
        assert fired == ["five"]
    finally:
        del loop.time
    assert loop.time() != 1006.0
