"""The non-network asyncio loop API past the callbacks (test_loop_callbacks.py), checked on
cqloop against stock asyncio (the oracle) and uvloop: timers, running and stopping, fd
watching, executors, tasks and the task factory, async generators, the exception handler API
and debug mode.

Each test runs once per loop kind through the `loop` fixture (sync tests) or pytest-asyncio's
loop factories (async tests); see conftest.py. Where asyncio's own behaviour is weaker than
cqloop's promise (fds closed and reused behind the loop's back), the test says so and runs
on cqloop only.
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

import pytest

import cqloop
from tests.conftest import is_cqloop, is_uvloop, skip_where_uvloop_differs

PY312 = sys.version_info >= (3, 12)

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


def test_readers_on_high_and_low_fd_numbers_each_get_their_own_events(loop, sockpair):
    # cqloop finds the watcher of each event in a table indexed by fd that grows with the
    # highest fd watched: a reader on a number past the table's first size gets the data,
    # and after it left, a reader on a low number gets the next.
    rsock, wsock = sockpair
    high = socket.socket(fileno=os.dup2(rsock.fileno(), 700))
    try:
        first = loop.create_future()
        loop.add_reader(high, lambda: first.set_result(high.recv(100)))
        loop.call_soon(wsock.send, b"one")
        assert loop.run_until_complete(asyncio.wait_for(first, 10)) == b"one"
        loop.remove_reader(high)
        high.close()
        second = loop.create_future()
        loop.add_reader(rsock, lambda: second.set_result(rsock.recv(100)))
        loop.call_soon(wsock.send, b"two")
        assert loop.run_until_complete(asyncio.wait_for(second, 10)) == b"two"
        loop.remove_reader(rsock)
    finally:
        high.close()


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
