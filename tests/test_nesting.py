"""Nesting: a cqloop loop is a pollable object that another event loop (or select()) drives.
Checks the promises of DESIGN-BRIEF.md, "Nesting semantics":
- an inner cqloop loop nested (nest_in, or add_reader(inner.fileno(), inner.step)) in stock
  asyncio, uvloop or cqloop runs its tasks, timers and fd callbacks while only the outer loop
  runs, also several levels deep and under a hand-written select() loop;
- its fd turns readable when a timer is due or another thread calls soon, so an idle outer
  loop blocked in its poll is woken on time;
- closing a nested loop unregisters it from the outer loop.

step() itself, timeout(), the fd's readability and misuse are in test_nesting_step.py.

Every inner loop here is cqloop, so every test is `cqloop_only`; outer loops are created
explicitly and parametrised over OUTER_KINDS. Waits are on futures, bounded by WAIT_S only
as a safety net so a broken loop fails instead of hanging.
"""

from __future__ import annotations

import asyncio
import errno
import os
import select
import socket
import threading
import time
from typing import Any

import pytest

from tests.loops import OUTER_KINDS
from tests.nesting_harness import (  # noqa: F401
    PROMPT_S,
    TIMER_SLACK_S,
    WAIT_S,
    loops,
    nest_chain,
    noop,
    outer_future_of,
    readable,
    run_outer,
    wait_until_blocked_in_poll,
    watches,
    wchan_shows_poll,
)

# The harness's fixtures are imported by name and taken as parameters:
# ruff: noqa: F811


try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is in the test extra
    uvloop = None

pytestmark = pytest.mark.cqloop_only

# -- an inner loop runs while only the outer loop runs --------------------------------------


@pytest.mark.parametrize("outer_kind", OUTER_KINDS)
def test_inner_tasks_run_to_completion_while_only_the_outer_loop_runs(loops, outer_kind):
    outer = loops(outer_kind)
    inner = loops()
    inner.nest_in(outer)
    seen_loops = []

    async def worker(n: int) -> int:
        seen_loops.append(asyncio.get_running_loop())
        await asyncio.sleep(0)
        await asyncio.sleep(0.01)  # an inner timer
        fut = inner.create_future()
        inner.call_soon(fut.set_result, n * 10)
        return await fut

    async def main() -> list[int]:
        return await asyncio.gather(*(worker(i) for i in range(3)))

    task = inner.create_task(main())
    assert run_outer(outer, outer_future_of(outer, task)) == [0, 10, 20]
    assert seen_loops == [inner, inner, inner]
    assert not inner.is_running()
    # The outer loop ran only its own code: the inner loop left it as it found it.
    assert outer.run_until_complete(asyncio.sleep(0, "outer still works")) == "outer still works"


@pytest.mark.parametrize("outer_kind", OUTER_KINDS)
def test_inner_fd_callbacks_run_while_only_the_outer_loop_runs(loops, outer_kind):
    outer = loops(outer_kind)
    inner = loops()
    inner.nest_in(outer)
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        got = outer.create_future()

        def on_readable() -> None:
            assert asyncio.get_running_loop() is inner
            data = a.recv(100)
            if not got.done():
                got.set_result(data)

        inner.add_reader(a, on_readable)
        # Written by the outer loop once it runs: the inner fd event reaches the outer
        # through the inner's epoll fd.
        outer.call_soon(b.send, b"ping")
        try:
            assert run_outer(outer, got) == b"ping"
        finally:
            inner.remove_reader(a)


@pytest.mark.parametrize("outer_kind", OUTER_KINDS)
def test_manual_add_reader_of_inner_fileno_with_inner_step_drives_the_inner_loop(loops, outer_kind):
    outer = loops(outer_kind)
    inner = loops()
    fd = inner.fileno()
    outer.add_reader(fd, inner.step)
    try:

        async def work() -> str:
            await asyncio.sleep(0.01)
            return "done"

        task = inner.create_task(work())
        assert run_outer(outer, outer_future_of(outer, task)) == "done"
    finally:
        outer.remove_reader(fd)


@pytest.mark.parametrize("outer_kind", OUTER_KINDS)
def test_outer_code_resolving_an_inner_future_wakes_the_inner_task(loops, outer_kind):
    outer = loops(outer_kind)
    inner = loops()
    inner.nest_in(outer)
    gate = inner.create_future()

    async def waiter() -> str:
        return "woken with " + await gate

    task = inner.create_task(waiter())
    result = outer_future_of(outer, task)

    async def main() -> str:
        await asyncio.sleep(0)
        assert not task.done()
        gate.set_result("gate")  # from the outer loop's task, outside any inner step
        return await result

    assert run_outer(outer, main()) == "woken with gate"


@pytest.mark.parametrize("outer_kind", OUTER_KINDS)
def test_nest_in_without_argument_nests_in_the_running_loop(loops, outer_kind):
    outer = loops(outer_kind)
    inner = loops()

    async def main() -> Any:
        inner.nest_in()
        assert inner.statistics()["nested_in"] == repr(asyncio.get_running_loop())
        task = inner.create_task(asyncio.sleep(0.01, "inner result"))
        return await outer_future_of(outer, task)

    assert run_outer(outer, main()) == "inner result"


@pytest.mark.parametrize("outer_kind", OUTER_KINDS)
def test_inner_callback_errors_go_to_the_inner_exception_handler_and_the_outer_keeps_running(
    loops, outer_kind
):
    outer = loops(outer_kind)
    inner = loops()
    inner.nest_in(outer)
    inner_errors: list[dict] = []
    outer_errors: list[dict] = []
    inner.set_exception_handler(lambda _loop, ctx: inner_errors.append(ctx))
    outer.set_exception_handler(lambda _loop, ctx: outer_errors.append(ctx))
    done = outer.create_future()
    inner.call_soon(lambda: 1 / 0)
    inner.call_soon(inner.call_soon, done.set_result, "after the error")
    assert run_outer(outer, done) == "after the error"
    assert [type(ctx.get("exception")) for ctx in inner_errors] == [ZeroDivisionError]
    assert outer_errors == []


# -- deep nests ------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [2, 3, 4])
@pytest.mark.parametrize("outer_kind", OUTER_KINDS)
def test_tasks_run_at_every_level_of_a_deep_nest(loops, outer_kind, depth):
    outer = loops(outer_kind)
    chain = nest_chain(loops, outer, depth)

    async def level_work(level: int, own: Any) -> tuple:
        first = asyncio.get_running_loop() is own
        await asyncio.sleep(0)
        await asyncio.sleep(0.01)
        event = asyncio.Event()
        own.call_soon(event.set)
        await event.wait()
        return (level, first, asyncio.get_running_loop() is own, asyncio.current_task().get_name())

    results = [
        outer_future_of(outer, own.create_task(level_work(level, own), name=f"level-{level}"))
        for level, own in enumerate(chain)
    ]

    async def gather_all() -> list:
        return await asyncio.gather(*results)

    assert run_outer(outer, gather_all()) == [
        (level, True, True, f"level-{level}") for level in range(depth)
    ]


@pytest.mark.parametrize("depth", [1, 3])
def test_a_select_loop_drives_a_nest_of_cqloop_loops(loops, depth):
    # The outermost "loop" is a cqueues-style hand-written poller: select() on the top
    # loop's fd for at most its timeout(), then one step.
    top = loops()
    chain = nest_chain(loops, top, depth)
    innermost = chain[-1]

    async def work() -> str:
        for _ in range(3):
            await asyncio.sleep(0.02)
        return "done"

    task = innermost.create_task(work())
    t0 = time.monotonic()
    deadline = t0 + WAIT_S
    while not task.done() and time.monotonic() < deadline:
        wait = top.timeout()
        select.select([top.fileno()], [], [], WAIT_S if wait is None else min(wait, WAIT_S))
        top.step(0)
    assert task.done()
    assert task.result() == "done"
    assert time.monotonic() - t0 < 0.06 + 3 * TIMER_SLACK_S + PROMPT_S


def test_nesting_loops_in_a_cycle_raises_and_leaves_both_usable(loops):
    a = loops()
    b = loops()
    b.nest_in(a)
    with pytest.raises(OSError) as info:
        a.nest_in(b)
    assert info.value.errno == errno.ELOOP
    assert a.statistics()["nested_in"] is None
    assert b.statistics()["fds"] == 0  # no half-made registration is left in b
    task = b.create_task(asyncio.sleep(0, "b works"))
    assert run_outer(a, outer_future_of(a, task)) == "b works"


def test_nesting_deeper_than_the_kernels_epoll_limit_fails_cleanly_at_nest_in(loops):
    # Linux refuses epoll instances nested more than EP_MAX_NESTS (4) below another one.
    # Four cqloop levels under an epoll-based outer loop work; a deeper nest_in must fail
    # at once with ELOOP, leave that loop un-nested, and leave the levels above working.
    outer = loops("asyncio")
    parent: Any = outer
    chain = []
    refused = None
    for _ in range(8):
        child = loops()
        try:
            child.nest_in(parent)
        except OSError as exc:
            refused = (child, exc)
            break
        chain.append(child)
        parent = child
    assert len(chain) >= 4
    if refused is not None:
        child, exc = refused
        assert exc.errno == errno.ELOOP
        assert child.statistics()["nested_in"] is None
        assert parent.statistics()["fds"] == 0
    task = chain[-1].create_task(asyncio.sleep(0.01, "deepest works"))
    assert run_outer(outer, outer_future_of(outer, task)) == "deepest works"


# -- inner timers wake an idle outer loop --------------------------------------------------


@pytest.mark.parametrize("earlier_timer_pending", [False, True], ids=["first-timer", "rearm"])
@pytest.mark.parametrize("scheduled", ["outside-a-step", "inside-a-step"])
@pytest.mark.parametrize("depth", [1, 3])
@pytest.mark.parametrize("outer_kind", OUTER_KINDS)
def test_inner_timer_fires_on_time_while_only_the_outermost_loop_blocks(
    loops, outer_kind, depth, scheduled, earlier_timer_pending
):
    outer = loops(outer_kind)
    inner = nest_chain(loops, outer, depth)[-1]
    fired = outer.create_future()
    deadlines: list[float] = []
    delay = 0.05

    def on_timer() -> None:
        fired.set_result(inner.time())

    def schedule() -> None:
        if earlier_timer_pending:
            # A later timer is armed first; the new, earlier one must re-arm the timerfd.
            inner.call_later(60, noop)
        deadlines.append(inner.call_later(delay, on_timer).when())

    if scheduled == "outside-a-step":
        schedule()
    else:
        inner.call_soon(schedule)
    # The outer loop has nothing to do but wait (up to WAIT_S): only the inner loop's fd
    # can wake it when the timer is due.
    t0 = outer.time()
    fired_at = run_outer(outer, fired)
    assert fired_at >= deadlines[0]
    assert fired_at - deadlines[0] <= TIMER_SLACK_S
    assert outer.time() - t0 < delay + TIMER_SLACK_S + PROMPT_S


@pytest.mark.parametrize("outer_kind", OUTER_KINDS)
def test_cancelled_inner_timer_does_not_fire_and_the_next_one_fires_on_time(loops, outer_kind):
    outer = loops(outer_kind)
    inner = loops()
    inner.nest_in(outer)
    fired = outer.create_future()
    early = inner.call_later(0.02, fired.set_result, "cancelled timer")
    late = inner.call_later(0.08, lambda: fired.set_result(inner.time()))
    early.cancel()
    fired_at = run_outer(outer, fired)
    assert fired_at != "cancelled timer"
    assert late.when() <= fired_at <= late.when() + TIMER_SLACK_S


@pytest.mark.parametrize("outer_kind", OUTER_KINDS)
def test_inner_asyncio_sleep_chain_keeps_time_while_nested(loops, outer_kind):
    # Each sleep's timer is scheduled during a step (from the task), so it is the end of
    # the step that arms the timerfd.
    outer = loops(outer_kind)
    inner = loops()
    inner.nest_in(outer)

    async def sleeper() -> float:
        start = inner.time()
        for _ in range(5):
            await asyncio.sleep(0.02)
        return inner.time() - start

    elapsed = run_outer(outer, outer_future_of(outer, inner.create_task(sleeper())))
    assert 0.1 <= elapsed <= 0.1 + 5 * TIMER_SLACK_S


# -- wake-ups from other threads ---------------------------------------------------------


@pytest.mark.parametrize("depth", [1, 3])
@pytest.mark.parametrize("outer_kind", OUTER_KINDS)
def test_call_soon_threadsafe_on_the_inner_loop_wakes_the_idle_outer_loop(
    loops, outer_kind, depth, wchan_shows_poll
):
    outer = loops(outer_kind)
    inner = nest_chain(loops, outer, depth)[-1]
    woke = outer.create_future()
    main_tid = threading.get_native_id()
    saw_outer_blocked: list[bool] = []

    def on_inner() -> None:
        woke.set_result((threading.get_ident(), asyncio.get_running_loop() is inner))

    def poke() -> None:
        # Wait until the outer loop sleeps in its poll (it has nothing else to do), then
        # queue a callback on the inner loop: only the inner loop's eventfd can wake it.
        saw_outer_blocked.append(wait_until_blocked_in_poll(main_tid))
        inner.call_soon_threadsafe(on_inner)

    thread = threading.Thread(target=poke)
    outer.call_soon(thread.start)
    t0 = time.monotonic()
    try:
        result = run_outer(outer, woke)
    finally:
        thread.join(WAIT_S)
    assert result == (threading.get_ident(), True)
    if wchan_shows_poll:
        assert saw_outer_blocked == [True]
    # Woken at once, not by the outer's WAIT_S timeout (the probe itself may take a while
    # on a loaded machine, hence the generous bound).
    assert time.monotonic() - t0 < WAIT_S / 2


def test_step_with_no_timeout_waits_until_another_thread_queues_work(loops, wchan_shows_poll):
    inner = loops()
    main_tid = threading.get_native_id()
    ran: list[int] = []
    saw_blocked: list[bool] = []

    def poke() -> None:
        saw_blocked.append(wait_until_blocked_in_poll(main_tid))
        inner.call_soon_threadsafe(lambda: ran.append(threading.get_ident()))

    safety = inner.call_later(WAIT_S, noop)
    thread = threading.Thread(target=poke)
    thread.start()
    t0 = time.monotonic()
    try:
        inner.step(None)
    finally:
        thread.join(WAIT_S)
        safety.cancel()
    assert time.monotonic() - t0 < WAIT_S / 2
    assert ran == [threading.get_ident()]
    if wchan_shows_poll:
        assert saw_blocked == [True]


# -- closing, unnesting --------------------------------------------------------------------


def _fd_is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


@pytest.mark.parametrize("outer_kind", OUTER_KINDS)
def test_closing_a_nested_inner_loop_unregisters_it_from_the_outer_loop(loops, outer_kind):
    outer = loops(outer_kind, spy=True)
    inner = loops()
    inner.nest_in(outer)
    fd = inner.fileno()
    assert watches(outer, fd)
    task = inner.create_task(asyncio.sleep(0.01, "nested"))
    assert run_outer(outer, outer_future_of(outer, task)) == "nested"
    inner.call_later(60, noop)  # pending work is dropped with the loop

    inner.close()

    assert inner.is_closed()
    assert not _fd_is_open(fd)
    # close() removed the outer loop's reader (before closing the fd).
    assert not watches(outer, fd)
    if not isinstance(outer, uvloop.Loop if uvloop is not None else ()):
        # asyncio and cqloop also say so (uvloop's remove_reader returns None).
        assert outer.remove_reader(fd) is False
    # The fd number is free for reuse: give it to a pipe and watch that in the outer loop,
    # which must neither refuse it nor confuse it with the closed loop.
    r, w = os.pipe()
    if r != fd:  # the pipe may have got the number already
        os.dup2(r, fd)
        os.close(r)
    try:
        got = outer.create_future()

        def on_readable() -> None:
            if not got.done():
                got.set_result(os.read(fd, 100))

        outer.add_reader(fd, on_readable)
        try:
            os.write(w, b"reused")
            assert run_outer(outer, got) == b"reused"
        finally:
            outer.remove_reader(fd)
    finally:
        os.close(fd)
        os.close(w)
    assert run_outer(outer, asyncio.sleep(0.01, "outer works")) == "outer works"


@pytest.mark.parametrize("outer_kind", OUTER_KINDS)
def test_closing_the_inner_loop_from_an_outer_task_leaves_the_outer_running(loops, outer_kind):
    outer = loops(outer_kind, spy=True)
    inner = loops()

    async def main() -> str:
        inner.nest_in()
        first = await outer_future_of(outer, inner.create_task(asyncio.sleep(0, "one")))
        inner.call_soon(noop)  # the inner fd is readable when it closes
        fd = inner.fileno()
        assert watches(outer, fd)
        inner.close()
        assert not watches(outer, fd)
        await asyncio.sleep(0.01)
        return first

    assert run_outer(outer, main()) == "one"
    assert inner.is_closed()


@pytest.mark.parametrize("outer_kind", OUTER_KINDS)
def test_inner_closed_by_an_outer_callback_while_its_step_is_due_is_harmless(loops, outer_kind):
    # The inner loop's fd and another fd are readable in the same outer iteration; the other
    # fd's callback closes the inner loop, maybe after the outer queued the inner's step.
    outer = loops(outer_kind)
    inner = loops()
    inner.nest_in(outer)
    outer_errors: list[dict] = []
    outer.set_exception_handler(lambda _loop, ctx: outer_errors.append(ctx))
    a, b = socket.socketpair()
    with a, b:
        done = outer.create_future()

        def close_inner() -> None:
            outer.remove_reader(a)
            inner.close()
            # Finish two outer iterations later, after any step queued for the inner loop.
            outer.call_soon(outer.call_soon, done.set_result, "closed")

        outer.add_reader(a, close_inner)
        inner.call_soon(noop)
        b.send(b"x")
        assert run_outer(outer, done) == "closed"
    assert inner.is_closed()
    assert outer_errors == []


@pytest.mark.parametrize("outer_kind", OUTER_KINDS)
def test_closing_the_inner_loop_after_its_outer_loop_closed_is_clean(loops, outer_kind):
    outer = loops(outer_kind)
    inner = loops()
    inner.nest_in(outer)
    fd = inner.fileno()
    outer.close()
    inner.close()
    assert inner.is_closed()
    assert not _fd_is_open(fd)


@pytest.mark.parametrize("outer_kind", OUTER_KINDS)
def test_unnest_stops_the_outer_loop_stepping_the_inner_and_nest_in_works_again(loops, outer_kind):
    outer = loops(outer_kind, spy=True)
    inner = loops()
    inner.nest_in(outer)
    assert watches(outer, inner.fileno())
    inner.unnest()
    assert inner.statistics()["nested_in"] is None
    assert not watches(outer, inner.fileno())
    inner.unnest()  # unnesting a loop that is not nested does nothing
    ran: list[str] = []
    inner.call_soon(ran.append, "inner")

    async def spin() -> None:
        # Each outer iteration polls; had the reader stayed, the first one would step inner.
        for _ in range(20):
            await asyncio.sleep(0)

    outer.run_until_complete(spin())
    assert ran == []
    assert readable(inner.fileno())  # the work is still pending, and says so

    inner.nest_in(outer)
    assert watches(outer, inner.fileno())
    done = outer.create_future()
    inner.call_soon(inner.call_soon, done.set_result, None)
    run_outer(outer, done)
    assert ran == ["inner"]
