"""cqueues' controller API on cqloop loops: wrap/attach, loop, errors, stacking three deep,
cancel, alert, pause, and the module functions. Plus the cases of cqueues' regress/ suite
that apply, named after what they guard (the cqueues file each comes from is cited).

Controllers are cqloop loops, so these tests build their loops themselves (sync tests);
where an outer loop is involved it is each of asyncio, uvloop and cqloop.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import textwrap

import pytest

import cqloop
from cqloop.condition import Condition
from cqloop.controller import CoroutineError
from cqloop.pollable import poll, polled_fds
from tests.loops import OUTER_FACTORIES, OUTER_KINDS


@pytest.fixture
def cq():
    controller = cqloop.new()
    yield controller
    controller.close()


class FdPollable:
    def __init__(self, fd: int, events: str = "r") -> None:
        self.pollfd = fd
        self.events = events
        self.timeout = None


# -- wrap, attach, count, empty, loop ----------------------------------------------------


def test_new_gives_a_controller_that_is_a_cqloop_loop(cq):
    assert isinstance(cq, cqloop.Controller)
    assert isinstance(cq, asyncio.AbstractEventLoop)
    assert cqloop.type(cq) == "controller"
    assert cqloop.type(object()) is None


def test_wrap_runs_an_async_function_and_chains(cq):
    results = []

    async def job(x):
        await cqloop.sleep(0)
        results.append(x)

    assert cq.wrap(job, 1).wrap(job, 2) is cq
    assert cq.count() == 2 and not cq.empty()
    assert cq.loop() is True
    assert results == [1, 2]
    assert cq.empty() and cq.count() == 0


def test_attach_takes_a_coroutine(cq):
    done = []

    async def job():
        done.append(True)

    assert cq.attach(job()) is cq
    cq.loop()
    assert done == [True]


def test_wrap_refuses_a_plain_function(cq):
    with pytest.raises(TypeError, match="async function or a coroutine"):
        cq.wrap(lambda: 1)
    with pytest.raises(TypeError, match="coroutine"):
        cq.attach(42)


def test_wrap_on_a_closed_controller_raises():
    # cqueues regress/174-cq-close.lua: no new coroutines on a closed controller, and a
    # second close is harmless.
    cq = cqloop.new()
    cq.close()
    assert cqloop.type(cq) == "closed controller"

    async def job():
        pass

    coro = job()
    with pytest.raises(RuntimeError, match="closed"):
        cq.attach(coro)
    coro.close()
    cq.close()


def test_loop_on_an_empty_controller_returns_at_once(cq):
    # cqueues regress/71-empty-cqueue.lua (71A): loop() on an empty queue returns
    # immediately instead of waiting forever.
    assert cq.loop() is True


def test_loop_timeout_returns_false_while_coroutines_remain(cq):
    async def forever():
        await asyncio.Event().wait()

    cq.wrap(forever)
    start = cq.time()
    assert cq.loop(timeout=0.02) is False
    assert cq.time() - start >= 0.02 - 0.005
    assert cq.count() == 1
    for task in list(cq._wrapped):
        task.cancel()
    cq.loop()


def test_loop_raises_the_first_error_of_a_wrapped_coroutine(cq):
    async def fails():
        await cqloop.sleep(0)
        raise ValueError("inner failure")

    cq.wrap(fails)
    with pytest.raises(ValueError, match="inner failure"):
        cq.loop()
    assert cq.empty()


def test_errors_yields_each_error_with_coroutine_and_traceback(cq):
    async def first():
        raise KeyError("one")

    async def second():
        await cqloop.sleep(0.001)
        raise OSError("two")

    async def fine():
        pass

    cq.wrap(first).wrap(second).wrap(fine)
    reports = list(cq.errors())
    assert [type(r.error) for r in reports] == [KeyError, OSError]
    assert all(isinstance(r, CoroutineError) for r in reports)
    assert reports[0].coroutine.__qualname__.endswith("first")
    assert "raise KeyError" in reports[0].traceback
    assert "first" in str(reports[0])
    assert cq.empty()


def test_uncollected_error_goes_to_the_exception_handler_at_close():
    cq = cqloop.new()
    seen = []
    cq.set_exception_handler(lambda loop, context: seen.append(context))

    async def fails():
        raise RuntimeError("nobody looked")

    cq.wrap(fails)
    while not cq.empty():
        cq.step(0)
    cq.close()
    assert len(seen) == 1
    assert isinstance(seen[0]["exception"], RuntimeError)


def test_step_with_a_positive_timeout_waits_for_work(cq):
    start = cq.time()
    cq.step(0.02)
    assert cq.time() - start >= 0.02 - 0.005


# -- stacking ------------------------------------------------------------------------------


@pytest.mark.parametrize("outer_kind", OUTER_KINDS)
def test_stacking_three_deep_runs_timers_sockets_and_conditions_at_every_level(outer_kind):
    """cqueues-style stacking: `await inner` from a task of the middle controller, itself
    awaited from a task of the outer loop. Each level's timers, sockets and conditions
    run; an error at the innermost level surfaces through errors() at its own level."""
    outer = OUTER_FACTORIES[outer_kind]()
    middle = cqloop.new()
    inner = cqloop.new()
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    log = []
    cond = Condition()
    inner_errors = []

    async def inner_timer():
        await cqloop.sleep(0.001)
        log.append("inner timer")

    async def inner_socket():
        await poll(FdPollable(a.fileno()))
        log.append(("inner socket", a.recv(10)))
        cond.signal()

    async def inner_fails():
        await cqloop.sleep(0)
        raise ZeroDivisionError("innermost")

    async def middle_task():
        await cqloop.sleep(0.001)
        log.append("middle timer")
        inner.wrap(inner_timer).wrap(inner_socket).wrap(inner_fails)
        b.send(b"ping")
        async for report in inner.errors():
            inner_errors.append(report)
        log.append("inner empty")

    async def middle_waits_condition():
        assert await cond.wait(timeout=10)
        log.append("middle condition")

    async def outer_main():
        middle.wrap(middle_task).wrap(middle_waits_condition)
        await middle
        log.append("middle empty")

    try:
        outer.run_until_complete(outer_main())
    finally:
        a.close()
        b.close()
        inner.close()
        middle.close()
        outer.close()
    assert set(log) == {
        "middle timer",
        "inner timer",
        ("inner socket", b"ping"),
        "middle condition",
        "inner empty",
        "middle empty",
    }
    assert log.index("inner empty") < log.index("middle empty")
    assert len(inner_errors) == 1
    assert isinstance(inner_errors[0].error, ZeroDivisionError)
    assert "inner_fails" in inner_errors[0].traceback


@pytest.mark.parametrize("outer_kind", OUTER_KINDS)
def test_await_inner_raises_the_error_of_its_coroutine(outer_kind):
    outer = OUTER_FACTORIES[outer_kind]()
    inner = cqloop.new()

    async def fails():
        raise LookupError("deep")

    async def main():
        inner.wrap(fails)
        with pytest.raises(LookupError, match="deep"):
            await inner
        return asyncio.get_running_loop()

    try:
        assert outer.run_until_complete(main()) is outer
    finally:
        inner.close()
        outer.close()


def test_a_controller_cannot_await_itself(cq):
    async def selfish():
        with pytest.raises(RuntimeError, match="cannot wait for itself"):
            await cq

    cq.wrap(selfish)
    cq.loop()


def test_condition_wakes_a_task_of_another_controller():
    one, two = cqloop.new(), cqloop.new()
    cond = Condition()
    woke = []

    async def sleeper():
        woke.append(await cond.wait(timeout=10))

    async def signaller():
        cond.signal()

    try:
        one.wrap(sleeper)
        one.step(0)  # the sleeper now waits on the condition
        two.wrap(signaller).loop()
        assert one.loop(timeout=5) is True
    finally:
        one.close()
        two.close()
    assert woke == [True]


def test_nested_step_yields_to_the_outer_loop():
    # A controller driven by an outer loop with `outer.add_reader(fd, inner.step)`: one
    # step per readiness, the outer loop's own tasks interleave with the inner one's.
    # (asyncio.sleep(0) is a bare yield, which a step resumes within itself; cqloop.sleep
    # is a wait, as in cqueues.)
    outer, inner = cqloop.new(), cqloop.new()
    order = []

    async def inner_job():
        for i in range(3):
            order.append(f"inner {i}")
            await cqloop.sleep(0)  # a wait: it ends in the inner loop's next step

    async def outer_main():
        inner.nest_in()
        for i in range(3):
            order.append(f"outer {i}")
            await asyncio.sleep(0)
        while not inner.empty():
            await asyncio.sleep(0)

    try:
        inner.wrap(inner_job)
        outer.run_until_complete(outer_main())
    finally:
        inner.close()
        outer.close()
    assert order.index("inner 0") < order.index("outer 2")
    assert order.index("outer 1") < order.index("inner 2")


# -- cancel, alert -------------------------------------------------------------------------


def test_cancelling_a_polled_fd_wakes_its_poll_as_ready():
    # cqueues regress/185-pollset.lua: a poll on a quiet fd does not advance until the fd
    # is cancelled; then it does, in the next steps.
    cq = cqloop.new()
    rd, wr = socket.socketpair()
    state = []

    async def waiter():
        state.append("pre")
        ready = await poll(FdPollable(rd.fileno()))
        state.append(("post", len(ready)))

    try:
        cq.wrap(waiter)
        cq.step(0)
        assert state == ["pre"]
        assert polled_fds(cq) == {"readers": 1, "writers": 0}
        cq.step(0)
        assert state == ["pre"]
        assert cq.cancel(rd) == 1
        assert polled_fds(cq) == {"readers": 0, "writers": 0}
        assert cq.loop(timeout=5)
        assert state == ["pre", ("post", 1)]
    finally:
        cq.close()
        rd.close()
        wr.close()


def test_cancel_across_controllers_wakes_the_subloop_poll():
    # cqueues regress/85-cancel-issues.lua: cqloop.cancel(sock) from a task of the main
    # controller wakes a poll in a controller stacked under it, which reports the
    # cancelled object ready.
    main = cqloop.new()
    a, b = socket.socketpair()
    cond = Condition()
    event = FdPollable(a.fileno())
    seen = []

    async def subloop_runner():
        subloop = cqloop.new()

        async def polls():
            cond.signal()
            seen.append(await poll(event))
            cond.signal()

        try:
            subloop.wrap(polls)
            await subloop
        finally:
            subloop.close()

    async def canceller():
        await cond.wait()
        cqloop.cancel(a)
        assert await cond.wait(timeout=3), "timeout before the cancelled event polled ready"

    try:
        main.wrap(subloop_runner).wrap(canceller)
        assert main.loop(timeout=10)
    finally:
        main.close()
        a.close()
        b.close()
    assert seen == [(event,)]


def test_step_clears_an_alert():
    # cqueues regress/71-empty-cqueue.lua (71B): after alert() and one step, the
    # controller does not keep polling ready.
    outer, inner = cqloop.new(), cqloop.new()

    async def check():
        assert inner.alert() is inner
        assert await poll(inner, 0) == (inner,)
        inner.step(0)
        assert await poll(inner, 0) == ()

    try:
        outer.run_until_complete(check())
    finally:
        inner.close()
        outer.close()


def test_alert_from_another_thread_ends_a_blocking_step(cq):
    import threading

    thread = threading.Thread(target=cq.alert)
    thread.start()
    cq.step(None)  # returns only because of the alert
    thread.join()


# -- timeouts --------------------------------------------------------------------------------


def test_step_does_not_wake_before_a_timer_is_due():
    # cqueues regress/63-timeouts-early.lua: with one coroutine sleeping, blocking steps
    # return only when there is work: the first runs the coroutine up to its sleep, the
    # next ones happen at or after the deadline (no early, empty wake-ups).
    cq = cqloop.new()
    delay = 0.05
    deadlines = []

    async def sleeper():
        deadlines.append(cq.time() + delay)
        await cqloop.sleep(delay)

    try:
        cq.wrap(sleeper)
        cq.step(None)
        early_steps = 0
        while not cq.empty():
            cq.step(None)
            if cq.time() < deadlines[0] - 0.001:
                early_steps += 1
        assert early_steps == 0
    finally:
        cq.close()


@pytest.mark.parametrize("delay", [0.0001, 0.0004, 0.0015])
def test_sub_millisecond_timeouts_round_up_not_down(delay):
    # A poll timeout shorter than epoll's millisecond must not become a zero-timeout
    # spin: the wait ends after the deadline, in one or two blocking steps.
    cq = cqloop.new()

    async def short_wait():
        assert await poll(delay) == ()

    try:
        # Read before the poll starts, so that the poll's own deadline is not before it
        # (read after the first step, it could be later than the poll's by any delay).
        earliest = cq.time() + delay
        cq.wrap(short_wait)
        cq.step(None)
        steps = 0
        while not cq.empty():
            cq.step(None)
            steps += 1
        assert cq.time() >= earliest
        assert steps <= 3
    finally:
        cq.close()


# -- pause ---------------------------------------------------------------------------------


def test_pause_unblocks_signals_for_one_wait():
    # In a subprocess: signal masks are process and thread state.
    code = textwrap.dedent(
        """
        import os, signal, threading, cqloop
        got = []
        signal.signal(signal.SIGUSR1, lambda *a: got.append("handler"))
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
        os.kill(os.getpid(), signal.SIGUSR1)  # pending while blocked
        cq = cqloop.new()
        cq.step(0)
        assert got == [], got
        cq.pause(signal.SIGUSR1)  # unblocked atomically with the wait: ends it
        assert got == ["handler"], got
        assert signal.SIGUSR1 in signal.pthread_sigmask(signal.SIG_BLOCK, [])
        cq.close()
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


# -- module functions ----------------------------------------------------------------------


def test_running_monotime_and_type(cq):
    assert cqloop.running() == (None, False)

    async def inside():
        return cqloop.running()

    assert cq.run_until_complete(inside()) == (cq, True)
    before = cqloop.monotime()
    assert cq.time() >= before - 1e-3
    assert cqloop.monotime() >= before
