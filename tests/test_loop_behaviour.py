"""The non-network asyncio loop API, checked on cqloop against stock asyncio (the oracle)
and uvloop: scheduling, timers, handles, running and stopping, fd watching, executors,
tasks and the task factory, async generators, the exception handler API and debug mode.

Each test runs once per loop kind through the `loop` fixture (sync tests) or pytest-asyncio's
loop factories (async tests); see conftest.py. Where asyncio's own behaviour is weaker than
cqloop's promise (fds closed and reused behind the loop's back), the test says so and runs
on cqloop only.

Past 800 lines: the handle, context and cyclic-GC tests are the next to move out
(test_handles_gc.py).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import gc
import logging
import os
import socket
import subprocess
import sys
import textwrap
import threading
import warnings
import weakref

import pytest

import cqloop
from tests.conftest import is_cqloop, is_uvloop, skip_where_uvloop_differs

PY312 = sys.version_info >= (3, 12)


# -- call_soon and the ready queue ---------------------------------------------------------


def test_call_soon_runs_callbacks_in_order_with_args(loop):
    calls = []
    for i in range(5):
        loop.call_soon(calls.append, i)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert calls == [0, 1, 2, 3, 4]


def test_callbacks_scheduled_while_running_run_in_a_later_iteration(loop):
    skip_where_uvloop_differs(loop, "it runs callbacks queued during an iteration in it")
    order = []

    def first():
        order.append("first")
        loop.call_soon(order.append, "scheduled-by-first")

    loop.call_soon(first)
    loop.call_soon(order.append, "second")
    loop.call_soon(loop.stop)
    loop.run_forever()
    # stop() ends run_forever after the iteration it was called in; the callback that
    # `first` scheduled belongs to the next iteration.
    assert order == ["first", "second"]
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert order == ["first", "second", "scheduled-by-first"]


def test_cancelled_handle_is_not_run(loop):
    calls = []
    handle = loop.call_soon(calls.append, "cancelled")
    loop.call_soon(calls.append, "kept")
    handle.cancel()
    assert handle.cancelled()
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert calls == ["kept"]


def test_callback_runs_in_given_context(loop):
    var = contextvars.ContextVar("var", default="default")
    ctx = contextvars.copy_context()
    ctx.run(var.set, "in-ctx")
    seen = []
    handle = loop.call_soon(lambda: seen.append(var.get()), context=ctx)
    loop.call_soon(lambda: seen.append(var.get()))
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == ["in-ctx", "default"]
    if hasattr(handle, "get_context"):  # asyncio's Handle has it from 3.12
        assert handle.get_context() is ctx


def test_callback_changes_to_context_stay_in_that_context(loop):
    var = contextvars.ContextVar("var", default=0)
    ctx = contextvars.copy_context()
    for _ in range(3):
        loop.call_soon(lambda: var.set(var.get() + 1), context=ctx)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert ctx[var] == 3
    assert var.get() == 0


SCHEDULERS = {
    "call_soon": lambda loop, fn: loop.call_soon(fn),
    "call_soon_threadsafe": lambda loop, fn: loop.call_soon_threadsafe(fn),
    "call_later": lambda loop, fn: loop.call_later(0, fn),
    "call_at": lambda loop, fn: loop.call_at(loop.time(), fn),
}


@pytest.mark.parametrize("schedule", SCHEDULERS.values(), ids=SCHEDULERS.keys())
def test_each_callback_gets_its_own_copy_of_the_callers_context(loop, schedule):
    # cqloop keeps the caller's variables and makes the Context when it is first needed
    # (cqcompat.h, "Lazy contexts"): what asyncio's eager copy guarantees must still hold.
    var = contextvars.ContextVar("var", default="default")
    seen = []

    def setter():
        seen.append(("setter", var.get()))
        var.set("set-by-setter")

    def reader():
        seen.append(("reader", var.get()))

    def scheduling_side():
        var.set("when-scheduled")
        handles = [schedule(loop, setter), schedule(loop, reader), schedule(loop, setter)]
        var.set("after-scheduling")
        return handles

    ctx = contextvars.copy_context()
    handles = ctx.run(scheduling_side)
    loop.call_later(0.001, loop.stop)
    loop.run_forever()
    assert seen == [
        ("setter", "when-scheduled"),
        ("reader", "when-scheduled"),
        ("setter", "when-scheduled"),
    ]
    assert ctx[var] == "after-scheduling"
    assert var.get() == "default"
    if hasattr(handles[0], "get_context"):  # asyncio's Handle has it from 3.12
        # The context each callback ran in, and its changes stayed there.
        contexts = [handle.get_context() for handle in handles]
        assert [c[var] for c in contexts] == ["set-by-setter", "when-scheduled", "set-by-setter"]
        assert len({id(c) for c in contexts} | {id(ctx)}) == 4
        assert all(handle.get_context() is c for handle, c in zip(handles, contexts, strict=True))


@pytest.mark.parametrize("schedule", SCHEDULERS.values(), ids=SCHEDULERS.keys())
def test_a_callback_never_sees_what_an_earlier_unreferenced_one_set(loop, schedule):
    # Nothing holds these handles: cqloop may hand a finished callback's Context to the
    # next one (cqcompat.h, cq_context_recycle), which must then hold only its own
    # variables.
    var = contextvars.ContextVar("var", default="default")
    seen = []

    def setter(value):
        def set_it():
            seen.append(var.get())
            var.set(value)

        return set_it

    for i in range(3):
        schedule(loop, setter(f"set-{i}"))
    schedule(loop, lambda: seen.append(var.get()))
    loop.call_later(0.001, loop.stop)
    loop.run_forever()
    assert seen == ["default"] * 4


def test_get_context_before_the_callback_runs_is_the_context_it_runs_in(loop):
    var = contextvars.ContextVar("var", default=0)
    handle = loop.call_later(0, lambda: var.set(var.get() + 1))
    if not hasattr(handle, "get_context"):
        pytest.skip("this loop's handles have no get_context (asyncio's from 3.12)")
    context = handle.get_context()
    assert context.get(var) is None and var not in context
    context.run(var.set, 41)
    loop.call_later(0.001, loop.stop)
    loop.run_forever()
    assert context[var] == 42
    assert handle.get_context() is context
    assert var.get() == 0


def test_a_thread_that_never_touched_contextvars_schedules_with_an_empty_context(loop):
    # A new thread starts with no Context at all: the first snapshot must make one.
    var = contextvars.ContextVar("var", default="default")
    var.set("main-thread")
    seen = []
    thread = threading.Thread(
        target=lambda: loop.call_soon_threadsafe(lambda: seen.append(var.get()))
    )
    thread.start()
    thread.join()
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == ["default"]


# cqloop keeps queued call_soon handles out of the GC's lists while they wait (kernel.pyx,
# "The ready queue, the timer heap and the cyclic GC"): cycles through them must still be
# collected.


def test_a_loop_dropped_unclosed_with_callbacks_queued_is_collected(loop_factory):
    if loop_factory.__module__.startswith("uvloop"):
        pytest.skip("uvloop collects the loop but leaves its fds open")

    class Holder:
        def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
            self.loop = loop

        def callback(self) -> None:
            pass

    loop = loop_factory()
    # A cycle through the queued handle: loop -> queue -> handle -> bound method -> loop.
    loop.call_soon(Holder(loop).callback)
    collected = weakref.ref(loop)
    del loop
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)  # "unclosed event loop"
        gc.collect()
    assert collected() is None


@pytest.mark.parametrize("cancel", [False, True], ids=["ran", "cancelled"])
def test_a_handle_kept_after_it_left_the_queue_is_collected_in_a_cycle(loop, cancel):
    class Owner:
        handle: asyncio.Handle

        def callback(self) -> None:
            pass

    owner = Owner()
    # owner -> handle -> bound method (and Context) -> owner; cancel() drops the method.
    context = contextvars.copy_context()
    context.run(contextvars.ContextVar("owner").set, owner)
    owner.handle = loop.call_soon(owner.callback, context=context)
    del context
    if cancel:
        owner.handle.cancel()
    collected = weakref.ref(owner)
    loop.call_soon(loop.stop)
    loop.run_forever()
    del owner
    gc.collect()
    assert collected() is None


# Timer handles leave the GC's lists in the heap too (timerheap.pyx's docstring), and go
# back when the caller kept them: cycles through either kind must still be collected.


class _Holder:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def callback(self) -> None:
        pass


def _one_iteration(loop: asyncio.AbstractEventLoop) -> None:
    loop.call_soon(loop.stop)
    loop.run_forever()


def _collect_quietly() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)  # "unclosed event loop"
        gc.collect()


@pytest.mark.parametrize("state", ["fresh", "settled", "cancelled"])
def test_a_loop_dropped_unclosed_with_timers_pending_is_collected(loop_factory, state):
    if loop_factory.__module__.startswith("uvloop"):
        pytest.skip("uvloop collects the loop but leaves its fds open")
    loop = loop_factory()
    # loop -> heap -> handle -> bound method -> holder -> loop; the handle is not kept.
    loop.call_later(3600, _Holder(loop).callback)
    if state == "cancelled":
        loop.call_later(3600, _Holder(loop).callback).cancel()
    if state != "fresh":
        _one_iteration(loop)
    collected = weakref.ref(loop)
    del loop
    _collect_quietly()
    assert collected() is None


def test_a_loop_dropped_unclosed_with_a_task_asleep_is_collected(loop_factory, caplog):
    # asyncio.sleep keeps its timer handle in the sleeping frame: a handle the caller
    # holds, in a cycle through the task, the future and the loop.
    if loop_factory.__module__.startswith("uvloop"):
        pytest.skip("uvloop collects the loop but leaves its fds open")
    loop = loop_factory()
    started = loop.create_future()

    async def sleeper(started: asyncio.Future[None]) -> None:
        started.set_result(None)
        await asyncio.sleep(3600)

    task = loop.create_task(sleeper(started))
    loop.run_until_complete(started)
    _one_iteration(loop)
    collected = weakref.ref(loop)
    del loop, task, started
    with caplog.at_level(logging.CRITICAL, logger="asyncio"):  # "destroyed but pending"
        _collect_quietly()
    assert collected() is None


@pytest.mark.parametrize("how", ["ran", "cancelled", "closed"])
def test_a_timer_handle_kept_is_collected_in_a_cycle(loop_factory, how):
    loop = loop_factory()
    try:
        holder = _Holder(loop)
        # holder -> handle -> bound method -> holder, through an iteration (when cqloop puts
        # a kept timer handle back in the GC's lists); then the timer runs, is cancelled and
        # leaves the heap, or is dropped with the heap when the loop closes.
        handle = loop.call_later(0 if how == "ran" else 3600, holder.callback)
        holder.handle = handle  # type: ignore[attr-defined]
        _one_iteration(loop)
        if how == "cancelled":
            handle.cancel()
            _one_iteration(loop)
        collected = weakref.ref(holder)
        del holder, handle
    finally:
        loop.close()
    gc.collect()
    assert collected() is None


def test_a_handle_only_weakly_referenced_dies_after_it_ran(loop):
    # cqloop reuses the handles nothing holds after they ran; one with a weak reference
    # to it must be freed instead, as on asyncio.
    try:
        dead = weakref.ref(loop.call_soon(lambda: None))
    except TypeError:
        pytest.skip("this loop's handles take no weak references")
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert dead() is None


def test_callbacks_run_with_their_own_arguments_when_handles_are_reused(loop):
    # Many rounds of callbacks whose handles nothing keeps (cqloop reuses them): each runs
    # once, with its own arguments and context, and none is left cancelled from before.
    var = contextvars.ContextVar("var", default=None)
    seen = []

    def record(i):
        seen.append((i, var.get()))
        var.set(i)

    def schedule(i):
        if i % 3 == 0:
            loop.call_soon(record, i).cancel()
        else:
            loop.call_soon(record, i)

    for round_ in range(4):
        for i in range(round_ * 50, round_ * 50 + 50):
            schedule(i)
        loop.call_soon(loop.stop)
        loop.run_forever()
    assert seen == [(i, None) for i in range(200) if i % 3]


def test_callback_that_cancels_its_own_handle_runs_to_completion(loop):
    done = []
    holder = {}

    def callback(value):
        holder["handle"].cancel()
        done.append(value)

    holder["handle"] = loop.call_soon(callback, "value")
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert done == ["value"]


def test_call_soon_threadsafe_from_another_thread_wakes_the_loop(loop):
    fut = loop.create_future()

    def from_thread():
        loop.call_soon_threadsafe(fut.set_result, threading.get_ident())

    thread = threading.Thread(target=from_thread)
    loop.call_soon(thread.start)
    ident = loop.run_until_complete(asyncio.wait_for(fut, 10))
    thread.join()
    assert ident == thread.ident


def test_closed_loop_refuses_new_callbacks(loop):
    loop.close()
    assert loop.is_closed()
    with pytest.raises(RuntimeError, match="closed"):
        loop.call_soon(print)
    with pytest.raises(RuntimeError, match="closed"):
        loop.call_later(1, print)
    coro = asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="closed"):
        loop.run_until_complete(coro)
    coro.close()
    loop.close()  # closing twice is allowed


# -- timers ---------------------------------------------------------------------------------


def test_timers_fire_in_deadline_order(loop):
    fired = []
    start = loop.time()
    for delay in (0.03, 0.01, 0.02, 0.0):
        loop.call_at(start + delay, fired.append, delay)
    loop.call_at(start + 0.04, loop.stop)
    loop.run_forever()
    assert fired == [0.0, 0.01, 0.02, 0.03]


def test_timer_fires_no_earlier_than_its_deadline(loop):
    delay = 0.05
    fired = loop.create_future()
    start = loop.time()
    handle = loop.call_later(delay, lambda: fired.set_result(loop.time()))
    assert handle.when() == pytest.approx(start + delay, abs=0.01)
    when_fired = loop.run_until_complete(asyncio.wait_for(fired, 10))
    # uvloop's when() is ms * 1e-3 but its time() is ms / 1000: for the same millisecond the
    # two can differ by one ulp, which is rounding, not an early timer.
    slack = 1e-9 if is_uvloop(loop) else 0.0
    assert when_fired >= handle.when() - slack


def test_cancelled_timer_does_not_fire(loop):
    fired = []
    handle = loop.call_later(0.01, fired.append, "cancelled")
    loop.call_later(0.02, loop.stop)
    handle.cancel()
    loop.run_forever()
    assert fired == []
    assert handle.cancelled()


def test_loop_time_is_the_monotonic_clock(loop):
    import time

    skip_where_uvloop_differs(loop, "its time() is libuv's millisecond-cached clock")

    before = time.monotonic()
    now = loop.time()
    after = time.monotonic()
    assert before <= now <= after


def test_call_later_and_call_at_refuse_none(loop):
    with pytest.raises(TypeError):
        loop.call_later(None, print)
    with pytest.raises(TypeError):
        loop.call_at(None, print)


def test_many_cancelled_timers_are_compacted_away():
    # asyncio rebuilds its heap when most timers are cancelled; so does cqloop.
    loop = cqloop.new_event_loop()
    try:
        handles = [loop.call_later(3600 + i, print) for i in range(1000)]
        for handle in handles[:900]:
            handle.cancel()
        loop.call_soon(loop.stop)
        loop.run_forever()
        stats = loop.statistics()
        assert stats["timers"] == 100
        assert stats["timers_cancelled"] == 0
    finally:
        loop.close()


def test_timers_due_together_run_in_scheduling_order():
    # asyncio's heap does not promise this order; cqloop does (and so does libuv).
    loop = cqloop.new_event_loop()
    try:
        fired = []
        when = loop.time() + 0.01
        for i in range(50):
            loop.call_at(when, fired.append, i)
        loop.call_at(when + 0.01, loop.stop)
        loop.run_forever()
        assert fired == list(range(50))
    finally:
        loop.close()


# -- handles ---------------------------------------------------------------------------------


def test_handle_repr_names_the_callback(loop):
    skip_where_uvloop_differs(loop, "its TimerHandle repr has no when=")

    def my_callback():
        pass

    handle = loop.call_soon(my_callback)
    assert "my_callback" in repr(handle)
    timer = loop.call_later(10, my_callback)
    assert "when=" in repr(timer)
    timer.cancel()
    assert "cancelled" in repr(timer)
    handle.cancel()


def test_handle_repr_in_debug_mode_names_where_it_was_created(loop):
    loop.set_debug(True)
    handle = loop.call_soon(print)
    line = sys._getframe().f_lineno - 1
    assert f"created at {__file__}:{line}" in repr(handle)
    handle.cancel()
    # A cancelled handle keeps its repr in debug mode.
    assert "created at" in repr(handle)


def test_timer_handles_compare_by_deadline(loop):
    skip_where_uvloop_differs(loop, "its TimerHandles are not orderable")
    early = loop.call_at(100.0, print)
    late = loop.call_at(200.0, print)
    assert early < late and late > early and early <= late
    assert early != late
    early.cancel()
    late.cancel()


# -- running and stopping -------------------------------------------------------------------


def test_run_until_complete_returns_the_result(loop):
    async def coro():
        await asyncio.sleep(0)
        return 42

    assert loop.run_until_complete(coro()) == 42


def test_run_until_complete_raises_the_exception(loop):
    async def coro():
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        loop.run_until_complete(coro())


def test_run_until_complete_stopped_early_raises(loop):
    fut = loop.create_future()
    loop.call_soon(loop.stop)
    with pytest.raises(RuntimeError, match="stopped before Future completed"):
        loop.run_until_complete(fut)


def test_is_running_only_while_running(loop):
    seen = []
    loop.call_soon(lambda: seen.append(loop.is_running()))
    loop.call_soon(loop.stop)
    assert not loop.is_running()
    loop.run_forever()
    assert seen == [True]
    assert not loop.is_running()


def test_running_loop_cannot_be_run_again_or_closed(loop):
    errors = []

    def inside():
        # close() first: asyncio 3.13.0 forgets that it is running after refusing a nested
        # run_forever(), and would then let close() through.
        for attempt in (loop.close, loop.run_forever):
            try:
                attempt()
            except RuntimeError as exc:
                errors.append(str(exc))
        loop.stop()

    loop.call_soon(inside)
    loop.run_forever()
    assert len(errors) == 2


def test_stop_before_run_forever_runs_one_iteration(loop):
    calls = []
    loop.call_soon(calls.append, 1)
    loop.stop()
    loop.run_forever()
    assert calls == [1]


def test_get_running_loop_inside_and_outside(loop):
    async def coro():
        return asyncio.get_running_loop()

    assert loop.run_until_complete(coro()) is loop
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()


def test_keyboard_interrupt_in_callback_propagates_and_keeps_the_rest():
    # KeyboardInterrupt behaviour is tested in a subprocess (the project's rule).
    script = textwrap.dedent(
        """
        import asyncio, sys
        import cqloop, uvloop
        kind = sys.argv[1]
        loop = {"cqloop": cqloop.new_event_loop, "asyncio": asyncio.new_event_loop,
                "uvloop": uvloop.new_event_loop}[kind]()
        calls = []
        def interrupt():
            raise KeyboardInterrupt
        loop.call_soon(calls.append, 1)
        loop.call_soon(interrupt)
        loop.call_soon(calls.append, 2)
        try:
            loop.run_forever()
        except KeyboardInterrupt:
            calls.append("interrupted")
        loop.call_soon(loop.stop)
        loop.run_forever()
        loop.close()
        print(calls)
        """
    )
    results = {}
    for kind in ("cqloop", "asyncio"):
        proc = subprocess.run(
            [sys.executable, "-c", script, kind],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        )
        assert proc.returncode == 0, proc.stderr
        results[kind] = proc.stdout.strip()
    assert results["cqloop"] == results["asyncio"] == "[1, 'interrupted', 2]"


# -- fd watching ----------------------------------------------------------------------------


@pytest.fixture
def sockpair():
    """A connected pair of Unix stream sockets (reader, writer), closed after the test."""
    rsock, wsock = socket.socketpair()
    try:
        yield rsock, wsock
    finally:
        rsock.close()
        wsock.close()


def test_add_reader_fires_when_readable_and_remove_reader_stops_it(loop, sockpair):
    rsock, wsock = sockpair
    received = loop.create_future()

    def on_readable():
        received.set_result(rsock.recv(100))

    loop.add_reader(rsock, on_readable)
    loop.call_soon(wsock.send, b"ping")
    assert loop.run_until_complete(asyncio.wait_for(received, 10)) == b"ping"
    removed = [loop.remove_reader(rsock), loop.remove_reader(rsock)]
    if not is_uvloop(loop):  # uvloop's remove_reader returns None
        assert removed == [True, False]


def test_add_writer_fires_when_writable(loop, sockpair):
    _, wsock = sockpair
    writable = loop.create_future()
    loop.add_writer(wsock.fileno(), writable.set_result, "writable")
    assert loop.run_until_complete(asyncio.wait_for(writable, 10)) == "writable"
    removed = loop.remove_writer(wsock.fileno())
    if not is_uvloop(loop):  # uvloop's remove_writer returns None
        assert removed is True


def test_add_reader_replaces_the_previous_reader(loop, sockpair):
    rsock, wsock = sockpair
    got = loop.create_future()
    loop.add_reader(rsock, got.set_result, "first")
    loop.add_reader(rsock, got.set_result, "second")
    wsock.send(b"x")
    assert loop.run_until_complete(asyncio.wait_for(got, 10)) == "second"
    loop.remove_reader(rsock)


def test_reader_and_writer_on_one_fd_are_independent(loop, sockpair):
    rsock, wsock = sockpair
    events = []
    done = loop.create_future()

    def on_writable():
        events.append("w")
        loop.remove_writer(rsock)
        wsock.send(b"x")

    def on_readable():
        events.append("r")
        rsock.recv(1)
        loop.remove_reader(rsock)
        done.set_result(None)

    loop.add_reader(rsock, on_readable)
    loop.add_writer(rsock, on_writable)
    loop.run_until_complete(asyncio.wait_for(done, 10))
    assert events == ["w", "r"]


def test_add_reader_refuses_negative_and_invalid_fds(loop):
    with pytest.raises(ValueError):
        loop.add_reader(-1, print)
    with pytest.raises(ValueError):
        loop.add_reader(object(), print)


def test_remove_reader_on_an_fd_closed_meanwhile_works(loop):
    rsock, wsock = socket.socketpair()
    fd = rsock.fileno()
    loop.add_reader(fd, print)
    rsock.close()
    wsock.close()
    removed = loop.remove_reader(fd)
    if not is_uvloop(loop):  # uvloop's remove_reader returns None
        assert removed is True
    loop.call_soon(loop.stop)
    loop.run_forever()


@pytest.mark.cqloop_only
def test_fd_reused_after_close_gets_only_its_own_events(loop):
    # A reader registered for an fd that was closed and whose number was reused: a new
    # registration for the new file must work, and only the new file's events reach it.
    old_r, old_w = socket.socketpair()
    fd = old_r.fileno()
    loop.add_reader(fd, print)
    old_r.close()
    new_r, new_w = socket.socketpair()
    try:
        if new_r.fileno() != fd:
            # Swap so that the new socket takes the old number.
            os.dup2(new_r.fileno(), fd)
            new_r.close()
            new_r = socket.socket(fileno=fd)
        got = loop.create_future()
        loop.add_reader(fd, lambda: got.set_result(new_r.recv(10)))
        new_w.send(b"new")
        assert loop.run_until_complete(asyncio.wait_for(got, 10)) == b"new"
        loop.remove_reader(fd)
    finally:
        for sock in (old_w, new_r, new_w):
            sock.close()


@pytest.mark.cqloop_only
def test_fd_reused_while_a_dup_keeps_the_old_file_open_gets_no_stale_events(loop):
    # epoll keys registrations by (file, fd): closing an fd whose file is still open through
    # a dup leaves the old registration alive under the old fd number. Stock asyncio hands
    # its events to whatever is registered under that number now; cqloop must not.
    old_r, old_w = socket.socketpair()
    fd = old_r.fileno()
    keeper = os.dup(fd)  # keeps the old file description alive
    loop.add_reader(fd, print)
    loop.remove_reader(fd)
    loop.add_reader(fd, lambda: None)  # a fresh registration on the old file...
    os.close(fd)  # ...whose fd number is now closed, the file kept open by `keeper`
    old_r.detach()
    new_r, new_w = socket.socketpair()
    try:
        if new_r.fileno() != fd:
            os.dup2(new_r.fileno(), fd)
            new_r.close()
            new_r = socket.socket(fileno=fd)
        calls = []
        got_new = loop.create_future()

        def on_readable():
            data = new_r.recv(10, socket.MSG_DONTWAIT)
            calls.append(data)
            if data == b"new":
                got_new.set_result(None)

        # The old file turns readable first; its stale registration must not reach us.
        old_w.send(b"old")
        loop.add_reader(fd, on_readable)
        new_w.send(b"new")
        loop.run_until_complete(asyncio.wait_for(got_new, 10))
        assert calls == [b"new"]
        loop.remove_reader(fd)
    finally:
        os.close(keeper)
        for sock in (old_w, new_r, new_w):
            sock.close()


# -- executors ------------------------------------------------------------------------------


def test_run_in_executor_returns_the_result(loop):
    result = loop.run_until_complete(loop.run_in_executor(None, sum, [1, 2, 3]))
    assert result == 6
    loop.run_until_complete(loop.shutdown_default_executor())


def test_run_in_executor_after_shutdown_is_refused(loop):
    loop.run_until_complete(loop.run_in_executor(None, int))
    loop.run_until_complete(loop.shutdown_default_executor())
    with pytest.raises(RuntimeError, match="shutdown"):
        loop.run_in_executor(None, int)


def test_set_default_executor_wants_a_thread_pool(loop):
    skip_where_uvloop_differs(loop, "set_default_executor accepts any executor")
    with pytest.raises(TypeError):
        loop.set_default_executor(object())
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    loop.set_default_executor(pool)
    name = loop.run_until_complete(
        loop.run_in_executor(None, lambda: threading.current_thread().name)
    )
    assert name.startswith("ThreadPoolExecutor")
    loop.run_until_complete(loop.shutdown_default_executor())
    pool.shutdown()


@pytest.mark.skipif(not PY312, reason="shutdown_default_executor takes timeout from 3.12")
def test_shutdown_default_executor_gives_up_after_its_timeout(loop):
    skip_where_uvloop_differs(loop, "its shutdown_default_executor ignores the timeout")
    if not is_cqloop(loop) and not is_uvloop(loop) and sys.version_info < (3, 13):
        pytest.skip("asyncio 3.12.1 awaits the executor before its timeout applies")
    release = threading.Event()
    started = threading.Event()

    def blocked():
        started.set()
        release.wait(30)

    loop.run_in_executor(None, blocked)
    assert started.wait(10)
    try:
        with pytest.warns(RuntimeWarning, match="did not finish"):
            loop.run_until_complete(loop.shutdown_default_executor(timeout=0.05))
    finally:
        release.set()


# -- tasks ----------------------------------------------------------------------------------


async def test_create_task_with_name_and_context():
    var = contextvars.ContextVar("var", default="default")
    ctx = contextvars.copy_context()
    ctx.run(var.set, "task-ctx")

    async def read_var():
        return var.get()

    task = asyncio.get_running_loop().create_task(read_var(), name="named", context=ctx)
    assert task.get_name() == "named"
    assert await task == "task-ctx"


async def test_task_factory_gets_the_task_arguments():
    loop = asyncio.get_running_loop()
    seen = {}

    def factory(loop, coro, **kwargs):
        seen.update(kwargs)
        return asyncio.Task(coro, loop=loop, **kwargs)

    loop.set_task_factory(factory)
    try:
        assert loop.get_task_factory() is factory
        ctx = contextvars.copy_context()
        task = loop.create_task(asyncio.sleep(0, "x"), name="by-factory", context=ctx)
        assert await task == "x"
        assert task.get_name() == "by-factory"
        assert seen["context"] is ctx
    finally:
        loop.set_task_factory(None)


def test_a_debug_mode_task_records_where_create_task_was_called(loop):
    async def nothing() -> None:
        pass

    loop.set_debug(True)
    line = sys._getframe().f_lineno + 1
    task = loop.create_task(nothing())
    try:
        frame = task._source_traceback[-1]  # type: ignore[attr-defined]
        assert (frame.filename, frame.lineno) == (__file__, line)
    finally:
        loop.run_until_complete(task)
        loop.set_debug(False)


def test_create_task_on_a_closed_loop_raises(loop_factory):
    loop = loop_factory()
    loop.close()

    async def never() -> None:
        raise AssertionError("ran on a closed loop")

    coro = never()
    with pytest.raises(RuntimeError, match="closed"):
        loop.create_task(coro)
    coro.close()


def test_set_task_factory_refuses_non_callables(loop):
    with pytest.raises(TypeError):
        loop.set_task_factory(42)


@pytest.mark.skipif(not PY312, reason="eager tasks are Python 3.12+")
async def test_eager_task_factory_starts_tasks_eagerly():
    loop = asyncio.get_running_loop()
    skip_where_uvloop_differs(loop, "on 3.13 its create_task hands task factories eager_start")
    started = []

    async def coro():
        started.append(True)
        return "eager"

    loop.set_task_factory(asyncio.eager_task_factory)
    try:
        task = loop.create_task(coro())
        # An eager task runs its first step inside create_task.
        assert started == [True]
        assert task.done()
        assert await task == "eager"
    finally:
        loop.set_task_factory(None)


@pytest.mark.skipif(not PY312, reason="eager_start is Python 3.12+")
async def test_create_task_passes_eager_start_to_the_task():
    loop = asyncio.get_running_loop()
    started = []

    async def coro():
        started.append(True)

    if not is_cqloop(loop):
        pytest.skip("asyncio's create_task takes eager_start only on 3.14+")
    task = loop.create_task(coro(), eager_start=True)
    assert started == [True]
    await task


async def test_current_task_inside_a_task():
    async def who():
        return asyncio.current_task()

    task = asyncio.get_running_loop().create_task(who())
    assert await task is task


# -- async generators -----------------------------------------------------------------------


def test_shutdown_asyncgens_closes_open_generators(loop):
    closed = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            closed.append(True)

    gen = agen()

    async def first():
        return await gen.__anext__()

    assert loop.run_until_complete(first()) == 1
    loop.run_until_complete(loop.shutdown_asyncgens())
    assert closed == [True]


def test_async_generator_dropped_unfinished_is_closed_by_the_loop(loop):
    closed = loop.create_future()

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            closed.set_result("closed")

    async def take_one_and_drop():
        gen = agen()
        assert await gen.__anext__() == 1
        del gen  # the finalizer hook schedules aclose() on the loop

    loop.run_until_complete(take_one_and_drop())
    gc.collect()
    assert loop.run_until_complete(asyncio.wait_for(closed, 10)) == "closed"


# -- errors and the exception handler -------------------------------------------------------


def test_exception_in_callback_goes_to_the_exception_handler(loop):
    contexts = []

    def handler(the_loop, context):
        contexts.append((the_loop, context))

    def bad():
        raise ZeroDivisionError("bad callback")

    loop.set_exception_handler(handler)
    assert loop.get_exception_handler() is handler
    handle = loop.call_soon(bad)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert len(contexts) == 1
    the_loop, context = contexts[0]
    assert the_loop is loop
    assert isinstance(context["exception"], ZeroDivisionError)
    assert context["message"].startswith("Exception in callback")
    assert context["handle"] is handle


def test_default_exception_handler_logs_to_the_asyncio_logger(loop, caplog):
    def bad():
        raise ZeroDivisionError("logged")

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.call_soon(bad)
        loop.call_soon(loop.stop)
        loop.run_forever()
    records = [r for r in caplog.records if r.name == "asyncio"]
    assert records, "nothing was logged"
    assert "Exception in callback" in records[0].getMessage()
    assert records[0].exc_info[0] is ZeroDivisionError


def test_error_in_the_exception_handler_is_logged_not_raised(loop, caplog):
    def broken_handler(the_loop, context):
        raise RuntimeError("handler broke")

    loop.set_exception_handler(broken_handler)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.call_exception_handler({"message": "original"})
    assert any("Unhandled error in exception handler" in r.getMessage() for r in caplog.records)


def test_set_exception_handler_refuses_non_callables(loop):
    with pytest.raises(TypeError):
        loop.set_exception_handler("not callable")


# -- debug mode -----------------------------------------------------------------------------


def test_debug_mode_warns_about_slow_callbacks(loop, caplog):
    import time

    loop.set_debug(True)
    assert loop.get_debug()
    loop.slow_callback_duration = 0.01

    def slow():
        time.sleep(0.05)

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        loop.call_soon(slow)
        loop.call_soon(loop.stop)
        loop.run_forever()
    messages = [r.getMessage() for r in caplog.records]
    assert any("Executing" in m and "took" in m and "slow" in m for m in messages), messages


def test_debug_mode_refuses_coroutines_as_callbacks(loop):
    skip_where_uvloop_differs(loop, "it does not check callbacks in debug mode")
    loop.set_debug(True)

    async def coro():
        pass

    with pytest.raises(TypeError):
        loop.call_soon(coro)


def test_debug_mode_refuses_non_threadsafe_call_from_another_thread(loop):
    loop.set_debug(True)
    errors = []

    def in_thread():
        try:
            loop.call_soon(print)
        except RuntimeError as exc:
            errors.append(exc)

    async def run_thread():
        thread = threading.Thread(target=in_thread)
        thread.start()
        await loop.run_in_executor(None, thread.join)

    loop.run_until_complete(run_thread())
    assert len(errors) == 1
    assert "Non-thread-safe operation" in str(errors[0])
