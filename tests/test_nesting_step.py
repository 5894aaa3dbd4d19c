"""Nesting, the step: what an outside poller and a loop stepping a cqloop loop can rely on
(DESIGN-BRIEF.md, "Nesting semantics"):
- the loop's fd turns readable exactly when it has work (ready callbacks, a due timer, a
  watched fd, a call_soon_threadsafe from another thread), and timeout() tells an outside
  poller how long it may sleep;
- step() runs one cqueues step (one poll, then the callbacks made ready, bounded), never
  blocks past its timeout, and makes the inner loop the running loop (and its task the
  current task) only while it runs;
- misuse (a step inside run_forever or inside itself, on a closed loop; nest_in of itself,
  twice, or without a running loop) raises.

Every test is `cqloop_only`, with outer loops and waits as in test_nesting.py.
"""

from __future__ import annotations

import asyncio
import select
import socket
import sys
import threading
import time
from typing import Any

import pytest

import cqloop
from tests.loops import OUTER_KINDS
from tests.nesting_harness import (  # noqa: F401
    PROMPT_S,
    TIMER_SLACK_S,
    WAIT_S,
    Watchdog,
    loops,
    noop,
    readable,
    run_outer,
    wait_until_blocked_in_poll,
    watches,
    wchan_shows_poll,
)

# The harness's fixtures are imported by name and taken as parameters:
# ruff: noqa: F811


pytestmark = pytest.mark.cqloop_only

# -- an outside poller sees the inner loop's timers ------------------------------------------


def _wait_readable(poller: str, fd: int, timeout: float) -> bool:
    if poller == "select":
        return readable(fd, timeout)
    if poller == "poll":
        p = select.poll()
        p.register(fd, select.POLLIN)
        return bool(p.poll(timeout * 1000))
    with select.epoll() as ep:
        ep.register(fd, select.EPOLLIN)
        return bool(ep.poll(timeout))


@pytest.mark.parametrize("order", ["fileno-first", "timer-first"])
@pytest.mark.parametrize("poller", ["select", "poll", "epoll"])
def test_outside_poller_wakes_when_the_inner_loops_timer_is_due(loops, poller, order):
    inner = loops()
    fired: list[bool] = []
    if order == "fileno-first":
        fd = inner.fileno()
        t0 = time.monotonic()
        handle = inner.call_later(0.1, fired.append, True)
    else:
        t0 = time.monotonic()
        handle = inner.call_later(0.1, fired.append, True)
        fd = inner.fileno()
    assert not _wait_readable(poller, fd, 0)
    assert _wait_readable(poller, fd, WAIT_S)
    woke = time.monotonic()
    assert woke >= handle.when()
    assert woke - t0 <= PROMPT_S
    assert fired == []  # nothing runs until someone steps the loop
    inner.step(0)
    assert fired == [True]
    assert not _wait_readable(poller, fd, 0)


@pytest.mark.parametrize("poller", ["select", "epoll"])
def test_outside_poller_wakes_when_another_thread_calls_soon_threadsafe(
    loops, poller, wchan_shows_poll
):
    inner = loops()
    fd = inner.fileno()
    main_tid = threading.get_native_id()
    ran: list[str] = []
    saw_blocked: list[bool] = []

    def poke() -> None:
        saw_blocked.append(wait_until_blocked_in_poll(main_tid))
        inner.call_soon_threadsafe(ran.append, "from thread")

    thread = threading.Thread(target=poke)
    thread.start()
    try:
        assert _wait_readable(poller, fd, WAIT_S)
    finally:
        thread.join(WAIT_S)
    if wchan_shows_poll:
        assert saw_blocked == [True]
    inner.step(0)
    assert ran == ["from thread"]
    assert not readable(fd)


# -- running loop and current task during a step -------------------------------------------


@pytest.mark.parametrize("outer_kind", OUTER_KINDS)
def test_running_loop_and_current_task_are_the_inner_ones_only_during_a_step(loops, outer_kind):
    outer = loops(outer_kind)
    inner = loops()
    seen: dict[str, Any] = {}

    async def inner_coro() -> None:
        seen["task_loop"] = asyncio.get_running_loop()
        seen["task_event_loop"] = asyncio.get_event_loop()
        seen["task_task"] = asyncio.current_task()

    def inner_callback() -> None:
        seen["cb_loop"] = asyncio.get_running_loop()
        seen["cb_task"] = asyncio.current_task()

    async def outer_main() -> tuple:
        me = asyncio.current_task()
        hooks = sys.get_asyncgen_hooks()
        inner_task = inner.create_task(inner_coro())
        inner.call_soon(inner_callback)
        inner.step(0)
        after = (asyncio.get_running_loop(), asyncio.current_task(), sys.get_asyncgen_hooks())
        return me, hooks, inner_task, after

    me, hooks, inner_task, after = run_outer(outer, outer_main())
    assert inner_task.done()
    assert seen["task_loop"] is inner
    assert seen["task_event_loop"] is inner
    assert seen["task_task"] is inner_task
    assert seen["cb_loop"] is inner
    assert seen["cb_task"] is None
    assert after[0] is outer
    assert after[1] is me
    assert after[2] == hooks


def test_a_step_outside_any_loop_leaves_no_running_loop(loops):
    inner = loops()
    seen = []
    inner.call_soon(lambda: seen.append(asyncio.get_running_loop()))
    hooks = sys.get_asyncgen_hooks()
    inner.step(0)
    assert seen == [inner]
    assert asyncio._get_running_loop() is None
    assert not inner.is_running()
    assert sys.get_asyncgen_hooks() == hooks


@pytest.mark.parametrize("outer_kind", OUTER_KINDS)
def test_base_exception_leaving_a_step_restores_the_outer_loop(loops, outer_kind):
    outer = loops(outer_kind)
    inner = loops()

    fd = inner.fileno()
    ran: list[str] = []

    def bail_out() -> None:
        raise SystemExit("from the inner loop")

    async def outer_main() -> tuple:
        me = asyncio.current_task()
        inner.call_soon(bail_out)
        inner.call_soon(ran.append, "rest of the batch")
        with pytest.raises(SystemExit):
            inner.step(0)
        return me, asyncio.get_running_loop(), asyncio.current_task(), inner.is_running()

    me, running, current, inner_running = run_outer(outer, outer_main())
    assert running is outer
    assert current is me
    assert inner_running is False
    # The rest of the interrupted batch is still due, and the fd says so.
    assert ran == []
    assert readable(fd)
    inner.step(0)
    assert ran == ["rest of the batch"]
    assert not readable(fd)


# -- step semantics ------------------------------------------------------------------------


def test_callbacks_made_ready_during_a_step_run_in_it_and_timers_in_the_next(loops):
    # cqueues' step: what the step's callbacks make ready runs in the same step (up to
    # STEP_MAX_ROUNDS rounds, tests/test_cq_step.py); a timer scheduled during it, even
    # one due at once, waits for the next step.
    inner = loops()
    order: list[str] = []

    def first() -> None:
        order.append("first")
        inner.call_soon(order.append, "scheduled by first")
        inner.call_later(0, order.append, "timer set by first")

    inner.call_soon(first)
    inner.call_soon(order.append, "second")
    inner.step(0)
    assert order == ["first", "second", "scheduled by first"]
    inner.step(0)
    assert order == ["first", "second", "scheduled by first", "timer set by first"]
    inner.step(0)
    assert order == ["first", "second", "scheduled by first", "timer set by first"]


def test_a_task_advances_one_cq_sleep_per_step(loops):
    inner = loops()
    progress: list[int] = []

    async def stepper() -> str:
        for i in range(3):
            progress.append(i)
            await cqloop.sleep(0)
        return "done"

    task = inner.create_task(stepper())
    for i in range(3):
        inner.step(0)
        assert progress == list(range(i + 1))
        assert not task.done()
    inner.step(0)
    assert task.done()
    assert task.result() == "done"


@pytest.mark.parametrize("pending", ["idle", "far-timer", "quiet-fd"])
def test_step_zero_never_blocks(loops, pending):
    inner = loops()
    a, b = socket.socketpair()
    with a, b:
        if pending == "far-timer":
            inner.call_later(60, noop)
        elif pending == "quiet-fd":
            inner.add_reader(a, noop)
        inner.fileno()
        with Watchdog(inner):
            for _ in range(3):
                t0 = time.monotonic()
                inner.step(0)
                assert time.monotonic() - t0 < PROMPT_S
        inner.remove_reader(a)


@pytest.mark.parametrize("pending", ["idle", "far-timer"])
def test_step_with_a_timeout_returns_after_at_most_that_timeout(loops, pending):
    inner = loops()
    ran: list[str] = []
    if pending == "far-timer":
        inner.call_later(60, ran.append, "far timer")
    with Watchdog(inner):
        t0 = time.monotonic()
        inner.step(0.05)
        elapsed = time.monotonic() - t0
    assert elapsed < 0.05 + PROMPT_S
    assert ran == []


def test_step_with_a_long_timeout_returns_when_a_timer_is_due_and_runs_it(loops):
    inner = loops()
    ran: list[float] = []
    handle = inner.call_later(0.05, lambda: ran.append(inner.time()))
    t0 = time.monotonic()
    inner.step(WAIT_S)
    assert time.monotonic() - t0 < 0.05 + PROMPT_S
    assert len(ran) == 1
    assert handle.when() <= ran[0] <= handle.when() + TIMER_SLACK_S


def test_step_refuses_a_negative_timeout(loops):
    inner = loops()
    with pytest.raises(ValueError):
        inner.step(-1)


def test_timeout_reports_how_long_an_outside_poller_may_sleep(loops):
    inner = loops()
    assert inner.timeout() is None  # idle
    timer = inner.call_later(10, noop)
    assert 9.0 < inner.timeout() <= 10
    inner.call_soon(noop)
    assert inner.timeout() == 0.0  # callbacks ready
    inner.step(0)
    assert 9.0 < inner.timeout() <= 10
    timer.cancel()
    assert inner.timeout() is None
    inner.call_at(inner.time() - 1, noop)
    assert inner.timeout() == 0.0  # a timer already due
    inner.step(0)
    assert inner.timeout() is None


def test_fd_is_readable_exactly_when_work_is_pending(loops):
    inner = loops()
    fd = inner.fileno()
    assert inner.pollfd() == fd
    assert inner.events() == "r"
    assert not readable(fd)

    # A callback queued from outside a step.
    inner.call_soon(noop)
    assert readable(fd)
    inner.step(0)
    assert not readable(fd)

    # A timer set during a step is pending after it, even one due at once.
    inner.call_soon(inner.call_later, 0, noop)
    inner.step(0)
    assert readable(fd)
    inner.step(0)
    assert not readable(fd)

    # A watched fd turning readable.
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        received: list[bytes] = []
        inner.add_reader(a, lambda: received.append(a.recv(100)))
        assert not readable(fd)
        b.send(b"data")
        assert readable(fd)
        inner.step(0)
        assert received == [b"data"]
        assert not readable(fd)
        inner.remove_reader(a)

    # A callback queued from another thread.
    thread = threading.Thread(target=inner.call_soon_threadsafe, args=(noop,))
    thread.start()
    thread.join()
    assert readable(fd)
    inner.step(0)
    assert not readable(fd)

    # A timer: not readable before it is due, readable once it is, not after it ran.
    far = inner.call_later(10, noop)
    assert not readable(fd)
    far.cancel()
    inner.call_at(inner.time() - 1, noop)
    assert readable(fd, WAIT_S)
    inner.step(0)
    assert not readable(fd)


def test_fd_tells_the_truth_after_run_until_complete(loops):
    # A loop driven from outside may also be run; afterwards its fd must again report the
    # work left behind (callbacks queued in the last iteration, pending timers).
    inner = loops()
    fd = inner.fileno()
    ran: list[str] = []

    async def main() -> None:
        inner.call_later(0.05, ran.append, "timer")
        await asyncio.sleep(0)

    task = inner.create_task(main())
    task.add_done_callback(lambda _: inner.call_soon(ran.append, "left over"))
    inner.run_until_complete(task)
    assert ran == []
    assert readable(fd)
    inner.step(0)
    assert ran == ["left over"]
    assert not readable(fd)
    t0 = time.monotonic()
    assert readable(fd, WAIT_S)
    assert time.monotonic() - t0 < PROMPT_S
    inner.step(0)
    assert ran == ["left over", "timer"]
    assert not readable(fd)


# -- misuse --------------------------------------------------------------------------------


def test_step_inside_run_forever_raises(loops):
    inner = loops()

    async def main() -> None:
        inner.step(0)

    with pytest.raises(RuntimeError, match="already running"):
        inner.run_until_complete(main())


def test_step_from_inside_its_own_step_raises(loops):
    inner = loops()
    errors: list[BaseException] = []

    def reenter() -> None:
        try:
            inner.step(0)
        except RuntimeError as exc:
            errors.append(exc)

    inner.call_soon(reenter)
    inner.step(0)
    assert len(errors) == 1
    assert "already running" in str(errors[0])
    assert not inner.is_running()


def test_step_on_a_closed_loop_raises(loops):
    inner = loops()
    inner.close()
    with pytest.raises(RuntimeError, match="closed"):
        inner.step(0)


def test_nest_in_itself_raises(loops):
    inner = loops()
    with pytest.raises(ValueError):
        inner.nest_in(inner)
    assert inner.statistics()["nested_in"] is None


@pytest.mark.parametrize("outer_kind", OUTER_KINDS)
def test_nest_in_twice_raises(loops, outer_kind):
    outer = loops(outer_kind, spy=True)
    other = loops(outer_kind, spy=True)
    inner = loops()
    inner.nest_in(outer)
    with pytest.raises(RuntimeError, match="already nested"):
        inner.nest_in(other)
    assert not watches(other, inner.fileno())
    assert watches(outer, inner.fileno())


def test_nest_in_without_a_running_loop_raises(loops):
    inner = loops()
    with pytest.raises(RuntimeError):
        inner.nest_in()
    assert inner.statistics()["nested_in"] is None
