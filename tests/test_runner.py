"""cqloop.runner: Runner (Prosody's util.async runner) and waiter, on every loop kind."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from cqloop.runner import Runner, RunnerState, Waiter, waiter

READY, RUNNING, WAITING, ERROR = (
    RunnerState.READY,
    RunnerState.RUNNING,
    RunnerState.WAITING,
    RunnerState.ERROR,
)


def recording_watchers(trace: list[Any]) -> dict[RunnerState | str, Any]:
    """Watchers that append each state entered (and the error, for ERROR) to `trace`."""
    return {
        "ready": lambda runner: trace.append(READY),
        RunnerState.RUNNING: lambda runner: trace.append(RUNNING),
        "waiting": lambda runner: trace.append(WAITING),
        "error": lambda runner, exc: trace.append((ERROR, str(exc))),
    }


def runner_task(runner: Runner[Any]) -> asyncio.Task[Any]:
    [task] = [t for t in asyncio.all_tasks() if t.get_name().startswith("cqloop.Runner(")]
    return task


# -- processing ----------------------------------------------------------------------------


async def test_sync_func_processes_items_in_order() -> None:
    done: list[int] = []
    trace: list[Any] = []
    runner = Runner(done.append, recording_watchers(trace))
    for n in range(3):
        runner.run(n)
    assert runner.state is READY  # run() only schedules
    await runner.wait_idle()
    assert done == [0, 1, 2]
    assert trace == [RUNNING, READY]  # watchers fire on changes of state, not per item
    stats = runner.statistics()
    assert (stats.state, stats.queued, stats.completed, stats.failed) == (READY, 0, 3, 0)


async def test_async_item_suspended_on_an_await_is_waiting() -> None:
    trace: list[Any] = []
    gate = asyncio.get_running_loop().create_future()
    entered = asyncio.Event()

    async def func(item: str) -> None:
        entered.set()
        await gate
        trace.append(f"done {item}")

    runner: Runner[str] = Runner(func, recording_watchers(trace))
    runner.run("x")
    await entered.wait()
    assert runner.state is WAITING
    gate.set_result(None)
    await runner.wait_idle()
    assert trace == [RUNNING, WAITING, RUNNING, "done x", READY]


async def test_one_item_at_a_time() -> None:
    trace: list[str] = []
    gates = {n: asyncio.get_running_loop().create_future() for n in (1, 2)}
    started = {n: asyncio.Event() for n in (1, 2)}

    async def func(n: int) -> None:
        trace.append(f"start {n}")
        started[n].set()
        await gates[n]
        trace.append(f"end {n}")

    runner = Runner(func)
    runner.run(1)
    runner.run(2)
    await started[1].wait()
    for _ in range(3):
        await asyncio.sleep(0)
    assert trace == ["start 1"]
    assert runner.queued == 1
    gates[1].set_result(None)
    await started[2].wait()
    gates[2].set_result(None)
    await runner.wait_idle()
    assert trace == ["start 1", "end 1", "start 2", "end 2"]


async def test_func_returning_an_awaitable_is_awaited() -> None:
    done: list[int] = []

    async def work(n: int) -> None:
        await asyncio.sleep(0)
        done.append(n)

    runner: Runner[int] = Runner(lambda n: work(n))
    runner.run(1)
    await runner.wait_idle()
    assert done == [1]


async def test_item_awaiting_a_future_gets_its_result() -> None:
    results: list[Any] = []
    loop = asyncio.get_running_loop()

    async def func(n: int) -> None:
        future = loop.create_future()
        loop.call_soon(future.set_result, n * 10)
        results.append(await future)
        task = asyncio.ensure_future(asyncio.sleep(0, result="slept"))
        results.append(await task)

    runner = Runner(func)
    runner.run(4)
    await runner.wait_idle()
    assert results == [40, "slept"]


# -- errors --------------------------------------------------------------------------------


async def test_error_watcher_gets_the_exception_then_the_next_item_runs() -> None:
    trace: list[Any] = []

    async def func(n: int) -> None:
        await asyncio.sleep(0)
        if n == 1:
            raise ValueError("bad item 1")
        trace.append(f"ok {n}")

    runner = Runner(func, recording_watchers(trace))
    for n in range(3):
        runner.run(n)
    await runner.wait_idle()
    assert trace == [
        RUNNING,
        WAITING,
        RUNNING,
        "ok 0",
        WAITING,
        RUNNING,
        (ERROR, "bad item 1"),
        RUNNING,
        WAITING,
        RUNNING,
        "ok 2",
        READY,
    ]
    assert runner.statistics().failed == 1
    assert runner.statistics().completed == 2


async def test_error_on_the_last_item_goes_error_then_ready() -> None:
    trace: list[Any] = []

    def func(item: int) -> None:
        raise KeyError(item)

    runner = Runner(func, recording_watchers(trace))
    runner.run(1)
    await runner.wait_idle()
    assert trace == [RUNNING, (ERROR, "1"), READY]


async def test_without_an_error_watcher_errors_go_to_the_loops_exception_handler() -> None:
    contexts: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, c: contexts.append(c))
    done: list[int] = []

    def func(n: int) -> None:
        if n == 0:
            raise ValueError("no watcher")
        done.append(n)

    runner = Runner(func)
    runner.run(0)
    runner.run(1)
    await runner.wait_idle()
    assert done == [1]
    [context] = contexts
    assert str(context["exception"]) == "no watcher"
    assert context["runner"] is runner


async def test_a_failing_watcher_is_reported_and_changes_nothing() -> None:
    contexts: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, c: contexts.append(c))
    done: list[int] = []

    def bad_watcher(runner: Runner[Any]) -> None:
        raise RuntimeError("watcher broke")

    runner = Runner(done.append, {"running": bad_watcher})
    runner.run(1)
    await runner.wait_idle()
    assert done == [1]
    assert [str(c["exception"]) for c in contexts] == ["watcher broke"]
    assert "'running' watcher" in contexts[0]["message"]


async def test_an_items_own_cancelled_error_is_an_item_error() -> None:
    errors: list[BaseException] = []
    done: list[int] = []

    async def func(n: int) -> None:
        if n == 0:
            future = asyncio.get_running_loop().create_future()
            future.cancel()
            await future
        done.append(n)

    runner = Runner(func, {"error": lambda runner, exc: errors.append(exc)})
    runner.run(0)
    runner.run(1)
    await runner.wait_idle()
    assert done == [1]
    assert [type(e) for e in errors] == [asyncio.CancelledError]


async def test_cancelling_the_runner_task_keeps_the_rest_queued_and_cancels_waiters() -> None:
    entered = asyncio.Event()
    done: list[int] = []

    async def func(n: int) -> None:
        if n == 0:
            entered.set()
            await asyncio.get_running_loop().create_future()
        done.append(n)

    runner = Runner(func)
    runner.run(0)
    runner.run(1)
    await entered.wait()
    idle = asyncio.create_task(runner.wait_idle())
    await asyncio.sleep(0)
    task = runner_task(runner)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(asyncio.CancelledError):
        await idle
    assert (runner.state, runner.queued, done) == (READY, 1, [])
    runner.run()  # resumes the queue
    await runner.wait_idle()
    assert done == [1]


class Abort(BaseException):
    """A BaseException a Task stores like any other (unlike KeyboardInterrupt/SystemExit,
    which asyncio re-raises out of the loop)."""


async def test_a_base_exception_from_an_item_stops_the_runner_and_cancels_waiters() -> None:
    done: list[int] = []
    release = asyncio.Event()

    async def func(n: int) -> None:
        if n == 0:
            await release.wait()
            raise Abort  # not an Exception: not the error watcher's business
        done.append(n)

    runner = Runner(func, {"error": lambda runner, exc: done.append(-1)})
    runner.run(0)
    runner.run(1)
    idle = asyncio.create_task(runner.wait_idle())
    await asyncio.sleep(0)  # item 0 is waiting and wait_idle() has registered
    release.set()
    task = runner_task(runner)
    with pytest.raises(Abort):
        await task
    with pytest.raises(asyncio.CancelledError):
        await idle
    assert (runner.state, runner.queued, done) == (READY, 1, [])
    runner.run()
    await runner.wait_idle()
    assert done == [1]


# -- queueing and waiting ------------------------------------------------------------------


async def test_enqueue_does_not_start_and_run_without_data_starts() -> None:
    done: list[Any] = []
    runner = Runner(done.append)
    runner.enqueue(None)  # None is an item like any other
    runner.enqueue(2)
    for _ in range(3):
        await asyncio.sleep(0)
    assert done == [] and runner.queued == 2
    runner.run()
    await runner.wait_idle()
    assert done == [None, 2]


async def test_enqueue_during_processing_runs_after_the_current_item() -> None:
    done: list[int] = []
    runner: Runner[int]

    def func(n: int) -> None:
        done.append(n)
        if n == 0:
            runner.enqueue(1)

    runner = Runner(func)
    runner.run(0)
    await runner.wait_idle()
    assert done == [0, 1]


async def test_run_from_a_sync_callback_inside_the_loop() -> None:
    done: list[int] = []
    runner = Runner(done.append)
    scheduled = asyncio.Event()

    def callback() -> None:
        runner.run(5)
        scheduled.set()

    asyncio.get_running_loop().call_soon(callback)
    await scheduled.wait()
    await runner.wait_idle()
    assert done == [5]


async def test_ready_watcher_may_run_more_items() -> None:
    done: list[int] = []
    more = [2, 3]

    def on_ready(runner: Runner[int]) -> None:
        if more:
            runner.run(more.pop(0))

    runner = Runner(done.append, {"ready": on_ready})
    runner.run(1)
    while done != [1, 2, 3]:
        await runner.wait_idle()
    assert runner.state is READY


async def test_wait_idle_returns_at_once_when_idle() -> None:
    await Runner(print).wait_idle()


async def test_wait_idle_from_the_runners_own_item_is_an_error() -> None:
    errors: list[BaseException] = []
    runner: Runner[int]

    async def func(n: int) -> None:
        await runner.wait_idle()

    runner = Runner(func, {"error": lambda runner, exc: errors.append(exc)})
    runner.run(1)
    await runner.wait_idle()
    assert [type(e) for e in errors] == [RuntimeError]


def test_run_without_a_running_loop_is_a_clear_error() -> None:
    runner = Runner(print)
    with pytest.raises(RuntimeError, match="needs a running event loop"):
        runner.run(1)
    assert runner.queued == 0
    runner.enqueue(1)  # works anywhere
    assert runner.queued == 1


def test_runner_rejects_bad_arguments() -> None:
    with pytest.raises(TypeError, match="callable"):
        Runner(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown runner state 'finished'"):
        Runner(print, {"finished": print})
    with pytest.raises(TypeError, match="'error' watcher must be callable"):
        Runner(print, {"error": None})  # type: ignore[dict-item]


def test_runner_run_in_a_sync_test_loop(loop: asyncio.AbstractEventLoop) -> None:
    done: list[int] = []
    runner = Runner(done.append)

    async def main() -> None:
        runner.run(1)
        runner.run(2)
        await runner.wait_idle()

    loop.run_until_complete(main())
    assert done == [1, 2]
    assert "ready" in repr(runner)


# -- waiter --------------------------------------------------------------------------------


async def test_waiter_resumes_after_done() -> None:
    wait, done = waiter()
    task = asyncio.create_task(wait())
    await asyncio.sleep(0)
    assert not task.done()
    asyncio.get_running_loop().call_soon(done)
    await task


async def test_waiter_counts_done_calls_made_before_wait() -> None:
    wait, done = waiter(2)
    done()
    done()
    for _ in range(2):  # both calls already counted: wait() returns without suspending
        task = asyncio.create_task(wait())
        await asyncio.sleep(0)
        assert task.done()


async def test_waiter_needs_n_calls() -> None:
    w = Waiter(3)
    task = asyncio.create_task(w.wait())
    w.done()
    w.done()
    await asyncio.sleep(0)
    assert not task.done()
    assert w.remaining == 1
    assert w.statistics().tasks_waiting == 1
    w.done()
    await task
    assert w.statistics() == type(w.statistics())(expected=3, done=3, tasks_waiting=0)


async def test_waiter_cancelling_one_wait_leaves_the_others() -> None:
    w = Waiter()
    first = asyncio.create_task(w.wait())
    second = asyncio.create_task(w.wait())
    await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    w.done()
    await second


async def test_waiter_inside_a_runner_item() -> None:
    loop = asyncio.get_running_loop()
    results: list[str] = []

    async def func(item: str) -> None:
        wait, done = waiter(2)
        loop.call_soon(done)
        loop.call_soon(done)
        await wait()
        results.append(item)

    trace: list[Any] = []
    runner = Runner(func, recording_watchers(trace))
    runner.run("a")
    await runner.wait_idle()
    assert results == ["a"]
    assert trace == [RUNNING, WAITING, RUNNING, READY]


def test_waiter_done_more_than_n_times_is_an_error() -> None:
    _wait, done = waiter(1)
    done()
    with pytest.raises(RuntimeError, match="more than the 1 time"):
        done()


async def test_waiter_of_zero_is_already_done() -> None:
    wait, done = waiter(0)
    await wait()
    with pytest.raises(RuntimeError):
        done()


@pytest.mark.parametrize(("n", "error"), [(-1, ValueError), (1.5, TypeError), (True, TypeError)])
def test_waiter_rejects_bad_n(n: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        waiter(n)
