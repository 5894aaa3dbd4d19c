"""Nesting: a cqloop loop is a pollable object that another event loop (or select()) drives.

Checks the promises of DESIGN-BRIEF.md, "Nesting semantics":
- an inner cqloop loop nested (nest_in, or add_reader(inner.fileno(), inner.step)) in stock
  asyncio, uvloop or cqloop runs its tasks, timers and fd callbacks while only the outer loop
  runs, also several levels deep and under a hand-written select() loop;
- its fd turns readable exactly when it has work: ready callbacks, a due timer (timerfd), a
  watched fd, a call_soon_threadsafe from another thread; so an idle outer loop blocked in
  its poll is woken on time;
- step() runs one cqueues step (one poll, then the callbacks made ready, bounded), never
  blocks past its timeout, and makes the inner loop the running loop (and its task the
  current task) only while it runs; timeout() tells an outside poller how long it may
  sleep;
- closing a nested loop unregisters it from the outer loop, and misuse raises.

Every inner loop here is cqloop, so every test is `cqloop_only`; outer loops are created
explicitly and parametrised over OUTER_KINDS. Waits are on futures, bounded by WAIT_S only
as a safety net so a broken loop fails instead of hanging.

Size: past 1,000 lines. Next to split out: the step()/timeout()/fd-readability semantics
(items 8 and 9) into test_step.py, leaving this file to loops nested in loops.
"""

from __future__ import annotations

import asyncio
import errno
import os
import select
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import cqloop

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is in the test extra
    uvloop = None

from tests.loops import OUTER_FACTORIES, OUTER_KINDS

pytestmark = pytest.mark.cqloop_only

# The safety net of every wait: far longer than anything a working loop takes.
WAIT_S = 5.0
# How late a timer may fire on a noisy machine; far less than WAIT_S, the outer's idle timeout.
TIMER_SLACK_S = 0.05
# Upper bound for "returns at once" / "returns after its short timeout" on a noisy machine.
PROMPT_S = 0.3


# -- helpers ------------------------------------------------------------------------------


def _fd_of(fileobj: Any) -> int:
    return fileobj if isinstance(fileobj, int) else fileobj.fileno()


def _spying(base: type) -> type:
    """A subclass of loop class `base` that records which fds it has a reader for, through
    add_reader/remove_reader (the calls nest_in, unnest and close make). uvloop's
    remove_reader returns None whatever it did, so its return value can't tell."""

    class Spy(base):  # type: ignore[misc, valid-type]
        def add_reader(self, fd: Any, callback: Any, *args: Any) -> None:
            super().add_reader(fd, callback, *args)
            self.__dict__.setdefault("readers", set()).add(_fd_of(fd))

        def remove_reader(self, fd: Any) -> Any:
            self.__dict__.setdefault("readers", set()).discard(_fd_of(fd))
            return super().remove_reader(fd)

    Spy.__name__ = Spy.__qualname__ = f"Spying{base.__name__}"
    return Spy


SPY_FACTORIES: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": _spying(asyncio.SelectorEventLoop),
    "cqloop": _spying(cqloop.Loop),
}
if uvloop is not None:
    SPY_FACTORIES["uvloop"] = _spying(uvloop.Loop)


def watches(outer: Any, fd: int) -> bool:
    """Whether spying loop `outer` has a reader for fd."""
    return fd in outer.__dict__.get("readers", set())


@pytest.fixture
def loops() -> Iterator[Callable[..., Any]]:
    """make(kind="cqloop", spy=False) -> a new loop (with spy: one that records its
    readers, see _spying); every loop made is closed afterwards, newest first (so inner
    loops leave their outer loops before those close)."""
    made: list[asyncio.AbstractEventLoop] = []

    def make(kind: str = "cqloop", spy: bool = False) -> Any:
        new = (SPY_FACTORIES if spy else OUTER_FACTORIES)[kind]()
        made.append(new)
        return new

    try:
        yield make
    finally:
        for each in reversed(made):
            if not each.is_closed() and not each.is_running():
                each.close()


def nest_chain(make: Callable[..., Any], outer: asyncio.AbstractEventLoop, depth: int) -> list:
    """`depth` cqloop loops, each nested in the one before it, the first in `outer`."""
    chain = []
    parent = outer
    for _ in range(depth):
        child = make("cqloop")
        child.nest_in(parent)
        chain.append(child)
        parent = child
    return chain


def outer_future_of(outer: asyncio.AbstractEventLoop, inner_fut: asyncio.Future) -> Any:
    """A future of `outer` that copies the outcome of `inner_fut` (of another loop, same
    thread) once it is done."""
    fut = outer.create_future()

    def copy(done: asyncio.Future) -> None:
        if fut.done():
            return
        if done.cancelled():
            fut.cancel()
        elif done.exception() is not None:
            fut.set_exception(done.exception())
        else:
            fut.set_result(done.result())

    inner_fut.add_done_callback(copy)
    return fut


def run_outer(outer: asyncio.AbstractEventLoop, awaitable: Any, timeout: float = WAIT_S) -> Any:
    """Run `outer` until `awaitable` is done (at most `timeout` seconds); its result."""
    return outer.run_until_complete(asyncio.wait_for(awaitable, timeout))


def readable(fd: int, timeout: float = 0) -> bool:
    return bool(select.select([fd], [], [], timeout)[0])


def noop() -> None:
    pass


def _wchan(native_tid: int) -> str:
    try:
        with open(f"/proc/self/task/{native_tid}/wchan") as f:
            return f.read()
    except OSError:
        return ""


def wait_until_blocked_in_poll(native_tid: int, timeout: float = WAIT_S) -> bool:
    """From another thread: wait until thread `native_tid` sleeps in the kernel in a poll
    (epoll_wait, select, poll; its wchan says so). False if not seen within `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        wchan = _wchan(native_tid)
        if "poll" in wchan or "select" in wchan:
            return True
        os.sched_yield()
    return False


@pytest.fixture(scope="module")
def wchan_shows_poll() -> bool:
    """Whether /proc tells that a thread is blocked in a poll (some kernels hide wchan)."""
    main_tid = threading.get_native_id()
    r, w = os.pipe()
    seen: list[bool] = []

    def probe() -> None:
        seen.append(wait_until_blocked_in_poll(main_tid, timeout=2.0))
        os.write(w, b"x")

    thread = threading.Thread(target=probe)
    try:
        thread.start()
        select.select([r], [], [], WAIT_S)
        thread.join(WAIT_S)
    finally:
        os.close(r)
        os.close(w)
    return seen == [True]


class Watchdog:
    """Wakes `loop` from a thread after `after` seconds (a safety net for a step that is
    expected to return earlier); stopped and joined on exit."""

    def __init__(self, loop: Any, after: float = WAIT_S) -> None:
        self._timer = threading.Timer(after, loop.call_soon_threadsafe, (noop,))

    def __enter__(self) -> Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        self._timer.join()


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
