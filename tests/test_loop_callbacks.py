"""Callbacks and their handles, checked on cqloop against stock asyncio (the oracle) and
uvloop: call_soon and the ready queue, the context each callback runs in, handle reprs and
ordering, and the cyclic GC of loops, handles and timers that are dropped or kept (cqloop
keeps queued handles out of the GC's lists, so the cycles through them are checked here).

Each test runs once per loop kind through the `loop` fixture (sync tests) or pytest-asyncio's
loop factories (async tests); see conftest.py.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import logging
import socket
import sys
import threading
import warnings
import weakref

import pytest

from tests.conftest import skip_where_uvloop_differs

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


def test_a_loop_dropped_unclosed_with_a_reader_and_a_connection_is_collected(loop_factory):
    # cqloop's fd table is a C array the collector learns of through the kernel's
    # traversal: the cycles loop -> table -> reader's handle -> loop and loop -> table ->
    # transport -> loop must be seen whole.
    if loop_factory.__module__.startswith("uvloop"):
        pytest.skip("uvloop collects the loop but leaves its fds open")
    loop = loop_factory()
    reader_end, writer_end = socket.socketpair()
    ours, peer = socket.socketpair()
    try:
        loop.add_reader(reader_end.fileno(), _Holder(loop).callback)
        transport, _ = loop.run_until_complete(loop.create_connection(asyncio.Protocol, sock=ours))
        _one_iteration(loop)
        collected = weakref.ref(loop)
        dropped = weakref.ref(transport)
        del loop, transport
        _collect_quietly()
        assert collected() is None
        assert dropped() is None
    finally:
        for sock in (reader_end, writer_end, ours, peer):
            sock.close()


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
