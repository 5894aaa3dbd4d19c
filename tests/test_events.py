"""cqloop.events: EventEmitter, the process bus, event lists and the deferred queue.

Sync tests need no loop (sync emits never touch one); async tests run on every loop kind
through conftest's pytest-asyncio hook.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import operator
import warnings
from typing import Any

import pytest

from cqloop.events import (
    DeferredQueue,
    EventEmitter,
    Reentrancy,
    event_list,
    process_bus,
    publish,
    publish_async,
    subscribe,
)


class Collector:
    """Records (event-ish label, args) from any number of handlers."""

    def __init__(self) -> None:
        self.calls: list[Any] = []

    def handler(self, label: str):
        def record(*args: Any) -> None:
            self.calls.append((label, *args))

        return record


def collecting_hook() -> tuple[list[dict[str, Any]], EventEmitter]:
    contexts: list[dict[str, Any]] = []
    return contexts, EventEmitter(error_hook=contexts.append)


# -- registration and sync emit ------------------------------------------------------------


def test_emit_calls_handlers_in_registration_order_with_args() -> None:
    got = Collector()
    emitter = EventEmitter()
    emitter.on("e", got.handler("a"))
    emitter.on("e", got.handler("b"))
    emitter.on("other", got.handler("x"))
    assert emitter.emit("e", 1, 2) is True
    assert got.calls == [("a", 1, 2), ("b", 1, 2)]
    assert emitter.emit("nobody") is False


def test_unsubscribe_removes_the_handler_and_is_idempotent() -> None:
    got = Collector()
    emitter = EventEmitter()
    unsubscribe = emitter.on("e", got.handler("a"))
    unsubscribe()
    unsubscribe()
    emitter.emit("e")
    assert (got.calls, emitter.listener_count("e"), emitter.event_names()) == ([], 0, [])


@pytest.mark.parametrize("reentrancy", list(Reentrancy))
def test_once_runs_once_even_when_it_reemits_its_event(reentrancy: Reentrancy) -> None:
    emitter = EventEmitter(reentrancy=reentrancy)
    calls: list[int] = []

    def handler(n: int) -> None:
        calls.append(n)
        emitter.emit("e", n + 1)

    emitter.once("e", handler)
    emitter.emit("e", 0)
    emitter.emit("e", 10)
    assert calls == [0]


def test_off_removes_the_most_recent_registration() -> None:
    calls: list[str] = []
    emitter = EventEmitter()

    def handler() -> None:
        calls.append("h")

    emitter.on("e", handler)
    emitter.on("e", handler)
    assert emitter.listener_count("e") == 2
    assert emitter.off("e", handler) is True
    emitter.emit("e")
    assert calls == ["h"]
    assert emitter.off("e", handler) is True
    assert emitter.off("e", handler) is False
    assert emitter.off("never", handler) is False
    got = Collector()
    emitter.on("e", got.calls.append)
    assert emitter.off("e", got.calls.append) is True  # a fresh, equal bound method matches
    assert emitter.listener_count("e") == 0


@pytest.mark.parametrize("bad", [None, 42, "name"])
def test_non_callable_handler_is_a_type_error(bad: Any) -> None:
    emitter = EventEmitter()
    for register in (emitter.on, emitter.once):
        with pytest.raises(TypeError, match="must be callable"):
            register("e", bad)
    with pytest.raises(TypeError, match="must be callable"):
        subscribe("topic", bad)
    assert emitter.listener_count("e") == 0


def test_bad_constructor_arguments_and_unhashable_events() -> None:
    with pytest.raises(TypeError, match="Reentrancy"):
        EventEmitter(reentrancy="queue")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="error_hook"):
        EventEmitter(error_hook=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="unhashable"):
        EventEmitter().on([], print)  # type: ignore[arg-type]


def test_listener_counts_and_statistics() -> None:
    emitter = EventEmitter()
    emitter.on("a", print)
    emitter.on("a", repr)
    emitter.once("b", str)
    assert emitter.listener_count("a") == 2
    assert emitter.listeners("a") == [print, repr]
    assert emitter.event_names() == ["a", "b"]
    emitter.emit("b", "x")
    stats = emitter.statistics()
    assert (stats.events, stats.listeners, stats.dispatches, stats.handler_calls) == (1, 2, 1, 1)
    assert (stats.handler_errors, stats.queued) == (0, 0)
    emitter.remove_all("a")
    emitter.on("c", print)
    assert emitter.event_names() == ["c"]
    emitter.remove_all()
    assert emitter.event_names() == []


# -- removal and addition during an emit ---------------------------------------------------


def test_handler_removed_during_emit_is_not_called_later_in_that_emit() -> None:
    got = Collector()
    emitter = EventEmitter()
    unsubscribe_b: list[Any] = []

    def a() -> None:
        got.calls.append("a")
        unsubscribe_b[0]()

    emitter.on("e", a)
    unsubscribe_b.append(emitter.on("e", got.handler("b")))
    emitter.emit("e")
    assert got.calls == ["a"]


def test_handler_removing_itself_and_an_earlier_one_during_emit() -> None:
    got = Collector()
    emitter = EventEmitter()
    first = got.handler("first")
    emitter.on("e", first)

    def second() -> None:
        got.calls.append(("second",))
        emitter.off("e", second)
        emitter.off("e", first)

    emitter.on("e", second)
    emitter.on("e", got.handler("third"))
    emitter.emit("e")
    emitter.emit("e")
    assert got.calls == [("first",), ("second",), ("third",), ("third",)]


def test_handler_added_during_emit_is_called_from_the_next_emit() -> None:
    got = Collector()
    emitter = EventEmitter()
    late = got.handler("late")

    def adder(n: int) -> None:
        got.calls.append(("adder", n))
        if n == 1:
            emitter.on("e", late)

    emitter.on("e", adder)
    emitter.emit("e", 1)
    emitter.emit("e", 2)
    assert got.calls == [("adder", 1), ("adder", 2), ("late", 2)]


# -- weak registrations --------------------------------------------------------------------


class Owner:
    def __init__(self, calls: list[Any]) -> None:
        self.calls = calls

    def on_event(self, *args: Any) -> None:
        self.calls.append(args)


def test_weak_bound_method_is_dropped_when_its_owner_is_collected() -> None:
    calls: list[Any] = []
    emitter = EventEmitter()
    owner = Owner(calls)
    emitter.on("e", owner.on_event, weak=True)
    emitter.emit("e", 1)  # a bound method made afresh per access stays registered
    assert calls == [(1,)]
    del owner
    gc.collect()
    assert emitter.listener_count("e") == 0
    assert emitter.event_names() == []
    assert "e" not in emitter._handlers  # removed at collection, not merely skipped later
    emitter.emit("e", 2)
    assert calls == [(1,)]


def test_weak_function_is_dropped_when_collected() -> None:
    calls: list[Any] = []
    emitter = EventEmitter()

    def handler(*args: Any) -> None:
        calls.append(args)

    emitter.on("e", handler, weak=True)
    emitter.once("e", handler, weak=True)
    assert emitter.listener_count("e") == 2
    emitter.emit("e", 1)
    del handler
    gc.collect()
    assert emitter.listener_count("e") == 0
    emitter.emit("e", 2)
    assert calls == [(1,), (1,)]


def test_strong_registration_keeps_the_owner_alive_weak_keeps_nothing_alive() -> None:
    calls: list[Any] = []
    emitter = EventEmitter()
    emitter.on("e", Owner(calls).on_event)
    gc.collect()
    emitter.emit("e", 1)
    assert calls == [(1,)]
    owner = Owner([])
    emitter.on("e", owner.on_event, weak=True)
    del emitter
    gc.collect()
    del owner  # the weakref callback finds no emitter: nothing to do, nothing raised
    gc.collect()


def test_weak_needs_a_handler_it_can_follow() -> None:
    with pytest.raises(TypeError, match="weak references"):
        EventEmitter().on("e", operator.itemgetter(0), weak=True)
    emitter = EventEmitter()
    with pytest.raises(TypeError, match="built-in bound method"):
        emitter.on("e", [].append, weak=True)
    emitter.on("e", len, weak=True)  # a built-in function lives as long as its module
    assert emitter.listener_count("e") == 1


# -- error isolation -----------------------------------------------------------------------


def test_failing_handler_does_not_stop_the_others_and_reaches_the_error_hook() -> None:
    got = Collector()
    contexts, emitter = collecting_hook()
    boom = ValueError("boom")

    def failing(*args: Any) -> None:
        raise boom

    emitter.on("e", got.handler("a"))
    emitter.on("e", failing)
    emitter.on("e", got.handler("c"))
    emitter.emit("e", 1)
    assert got.calls == [("a", 1), ("c", 1)]
    [context] = contexts
    assert context["exception"] is boom
    assert context["event"] == "e"
    assert context["handler"] is failing
    assert context["emitter"] is emitter
    assert "'e'" in context["message"]
    assert emitter.statistics().handler_errors == 1


async def test_default_error_hook_is_the_running_loops_exception_handler() -> None:
    loop = asyncio.get_running_loop()
    contexts: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: contexts.append(context))
    emitter = EventEmitter()

    def failing() -> None:
        raise KeyError("k")

    emitter.on("started", failing)
    emitter.emit("started")
    [context] = contexts
    assert isinstance(context["exception"], KeyError)
    assert (context["event"], context["handler"]) == ("started", failing)


def test_default_error_hook_without_a_loop_logs_as_does_a_failing_hook(
    caplog: pytest.LogCaptureFixture,
) -> None:
    emitter = EventEmitter()
    emitter.on("e", lambda: 1 / 0)
    with caplog.at_level(logging.ERROR, logger="cqloop.events"):
        emitter.emit("e")
    [record] = caplog.records
    assert "for event 'e'" in record.getMessage()
    assert record.exc_info is not None and record.exc_info[0] is ZeroDivisionError
    caplog.clear()

    def bad_hook(context: dict[str, Any]) -> None:
        raise RuntimeError("hook")

    emitter = EventEmitter(error_hook=bad_hook)
    emitter.on("e", lambda: 1 / 0)
    with caplog.at_level(logging.ERROR, logger="cqloop.events"):
        emitter.emit("e")  # a failing error hook is logged too
    assert "error hook" in caplog.records[0].getMessage()


def test_keyboard_interrupt_from_a_handler_propagates_and_the_emitter_recovers() -> None:
    got = Collector()
    emitter = EventEmitter()

    def interrupt() -> None:
        raise KeyboardInterrupt

    unsubscribe = emitter.on("e", interrupt)
    with pytest.raises(KeyboardInterrupt):
        emitter.emit("e")
    unsubscribe()
    emitter.on("e", got.handler("a"))
    emitter.emit("e")
    assert got.calls == [("a",)]


def test_sync_emit_reports_a_handler_that_returns_a_coroutine() -> None:
    contexts, emitter = collecting_hook()

    async def handler() -> None:
        pass

    emitter.on("e", handler)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "coroutine was never awaited"
        emitter.emit("e")
        gc.collect()
    [context] = contexts
    assert isinstance(context["exception"], TypeError)
    assert "emit_async" in str(context["exception"])


# -- re-entrancy ---------------------------------------------------------------------------


def test_recursive_emit_is_queued_not_recursed_and_keeps_order() -> None:
    trace: list[str] = []
    emitter = EventEmitter()

    def first(n: int) -> None:
        trace.append(f"first {n}")
        if n == 1:
            emitter.emit("e", 2)
            emitter.emit("e", 3)
            trace.append("first 1 emitted")

    emitter.on("e", first)
    emitter.on("e", lambda n: trace.append(f"second {n}"))
    emitter.emit("e", 1)
    assert trace == [
        "first 1",
        "first 1 emitted",
        "second 1",
        "first 2",
        "second 2",
        "first 3",
        "second 3",
    ]
    assert emitter.statistics().queued == 0


@pytest.mark.parametrize(
    ("reentrancy", "inner_event"),
    [(Reentrancy.QUEUE, "other"), (Reentrancy.RECURSE, "e")],
    ids=["another-event", "recurse-mode"],
)
async def test_nested_emit_runs_at_once(reentrancy: Reentrancy, inner_event: str) -> None:
    """An emit of another event, or of the same one in RECURSE mode, nests (sync and async)."""
    trace: list[str] = []
    emitter = EventEmitter(reentrancy=reentrancy)

    def handler(n: int) -> None:
        trace.append(f"in {n}")
        if n == 0:
            emitter.emit(inner_event, 1)
        trace.append(f"out {n}")

    async def async_handler(n: int) -> None:
        trace.append(f"in {n}")
        if n == 0:
            await emitter.emit_async(inner_event, 1)
        trace.append(f"out {n}")

    emitter.on("e", handler)
    emitter.on("other", handler)
    emitter.emit("e", 0)
    assert trace == ["in 0", "in 1", "out 1", "out 0"]
    trace.clear()
    emitter.remove_all()
    emitter.on("e", async_handler)
    emitter.on("other", async_handler)
    await emitter.emit_async("e", 0)
    assert trace == ["in 0", "in 1", "out 1", "out 0"]


# -- emit_async ----------------------------------------------------------------------------


async def test_emit_async_awaits_handlers_one_after_another() -> None:
    trace: list[str] = []
    release = asyncio.get_running_loop().create_future()
    emitter = EventEmitter()

    async def slow(x: int) -> None:
        trace.append("slow start")
        await release
        trace.append("slow end")

    emitter.on("e", slow)
    emitter.on("e", lambda x: trace.append(f"sync {x}"))

    async def fast(x: int) -> None:
        trace.append("fast")

    emitter.on("e", fast)
    task = asyncio.create_task(emitter.emit_async("e", 7))
    for _ in range(3):
        await asyncio.sleep(0)
    assert trace == ["slow start"]
    release.set_result(None)
    assert await task is True
    assert trace == ["slow start", "slow end", "sync 7", "fast"]


async def test_emit_async_concurrent_runs_handlers_together() -> None:
    emitter = EventEmitter()
    second_started = asyncio.Event()
    trace: list[str] = []

    async def first() -> None:
        trace.append("first start")
        await second_started.wait()  # would deadlock if the handlers ran one by one
        trace.append("first end")

    async def second() -> None:
        trace.append("second start")
        second_started.set()

    emitter.on("e", first)
    emitter.on("e", second)
    await emitter.emit_async("e", concurrent=True)
    assert trace == ["first start", "second start", "first end"]


@pytest.mark.parametrize("concurrent", [False, True])
async def test_emit_async_isolates_errors_and_a_handlers_own_cancellation(concurrent: bool) -> None:
    contexts, emitter = collecting_hook()
    got = Collector()

    async def failing() -> None:
        await asyncio.sleep(0)
        raise ValueError("async boom")

    def failing_sync() -> None:
        raise ValueError("sync boom")

    async def cancelled_inside() -> None:
        # The handler's own work was cancelled, not the emitting task: an error like any other.
        future = asyncio.get_running_loop().create_future()
        future.cancel()
        await future

    for handler in (failing, failing_sync, cancelled_inside, got.handler("ok")):
        emitter.on("e", handler)
    await emitter.emit_async("e", concurrent=concurrent)
    assert got.calls == [("ok",)]
    errors = sorted(f"{type(c['exception']).__name__} {c['exception']}" for c in contexts)
    assert errors == ["CancelledError ", "ValueError async boom", "ValueError sync boom"]


async def test_cancelling_emit_async_propagates_and_keeps_queued_emits() -> None:
    got = Collector()
    emitter = EventEmitter()
    started = asyncio.Event()

    async def blocking(n: int) -> None:
        got.calls.append(("blocking", n))
        if n == 1:
            started.set()
            await asyncio.get_running_loop().create_future()

    unsubscribe = emitter.on("e", blocking)
    task = asyncio.create_task(emitter.emit_async("e", 1))
    await started.wait()
    emitter.emit("e", 2)  # queued behind the suspended dispatch
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert emitter.statistics().queued == 1
    unsubscribe()
    emitter.on("e", got.handler("h"))
    emitter.emit("e", 3)  # delivers the backlog first
    assert got.calls == [("blocking", 1), ("h", 2), ("h", 3)]


async def test_recursive_emit_async_is_queued_and_delivered_in_order() -> None:
    trace: list[str] = []
    emitter = EventEmitter()

    async def handler(n: int) -> None:
        trace.append(f"in {n}")
        if n == 1:
            assert await emitter.emit_async("e", 2) is True  # queued: returns at once
            emitter.emit("e", 3)
        await asyncio.sleep(0)
        trace.append(f"out {n}")

    emitter.on("e", handler)
    await emitter.emit_async("e", 1)
    assert trace == ["in 1", "out 1", "in 2", "out 2", "in 3", "out 3"]


async def test_emit_from_another_task_during_emit_async_is_serialised() -> None:
    trace: list[int] = []
    emitter = EventEmitter()
    release = asyncio.get_running_loop().create_future()

    async def handler(n: int) -> None:
        trace.append(n)
        if n == 1:
            await release

    emitter.on("e", handler)
    first = asyncio.create_task(emitter.emit_async("e", 1))
    await asyncio.sleep(0)
    await emitter.emit_async("e", 2)  # queued behind the dispatch in progress
    assert trace == [1]
    release.set_result(None)
    await first
    assert trace == [1, 2]


# -- process bus ---------------------------------------------------------------------------


def test_subscribe_and_publish_on_the_process_bus() -> None:
    got = Collector()
    ev = event_list("test.bus", "started")
    unsubscribe = subscribe((ev._source, ev.started), got.handler("s"))
    try:
        assert process_bus().listener_count((ev._source, ev.started)) == 1
        assert publish((ev._source, ev.started), 1) is True
        assert publish((ev._source, "other"), 2) is False
    finally:
        unsubscribe()
    publish((ev._source, ev.started), 3)
    assert got.calls == [("s", 1)]


async def test_publish_async_awaits_subscribers() -> None:
    got: list[int] = []

    async def handler(n: int) -> None:
        await asyncio.sleep(0)
        got.append(n)

    unsubscribe = subscribe("test.publish_async", handler)
    try:
        assert await publish_async("test.publish_async", 5) is True
    finally:
        unsubscribe()
    assert got == [5]


# -- event lists ---------------------------------------------------------------------------


def test_event_list_gives_read_only_names_as_attributes_and_catches_typos() -> None:
    ev = event_list("my.source", "started", "stopped")
    assert ev.started == "started"
    assert ev.stopped == "stopped"
    assert ev._source == "my.source"
    assert list(ev) == ["started", "stopped"]
    assert len(ev) == 2
    assert "started" in ev and "strated" not in ev
    assert "started" in dir(ev)
    assert repr(ev) == "event_list('my.source', 'started', 'stopped')"
    with pytest.raises(AttributeError, match="read-only"):
        ev.started = "b"
    with pytest.raises(AttributeError, match="read-only"):
        del ev.started
    # A typo fails loudly, with a suggestion.
    with pytest.raises(AttributeError, match="no event 'strated'; did you mean 'started'"):
        ev.strated  # noqa: B018
    with pytest.raises(AttributeError, match="its events: started, stopped"):
        ev.zzz  # noqa: B018
    assert getattr(ev, "missing", None) is None


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("",), TypeError),
        ((3, "a"), TypeError),
        (("s", 3), TypeError),
        (("s", "_private"), ValueError),
        (("s", "not-an-identifier"), ValueError),
        (("s", "class"), ValueError),
        (("s", "a", "a"), ValueError),
    ],
)
def test_event_list_rejects_bad_input(args: tuple[Any, ...], error: type[Exception]) -> None:
    with pytest.raises(error):
        event_list(*args)


# -- deferred queue ------------------------------------------------------------------------


def test_deferred_queue_dispatches_in_fifo_order_on_process_up_to_max_items() -> None:
    got = Collector()
    emitter = EventEmitter()
    emitter.on("a", got.handler("a"))
    emitter.on("b", got.handler("b"))
    queue = DeferredQueue(emitter)
    queue.post("a", 1)
    queue.post("b", 2)
    queue.post("a", 3)
    assert got.calls == []
    assert len(queue) == 3
    assert queue.process() == 3
    assert got.calls == [("a", 1), ("b", 2), ("a", 3)]
    assert queue.process() == 0
    for n in range(3):
        queue.post("b", n)
    assert queue.process(2) == 2
    assert queue.process(5) == 1
    assert got.calls[3:] == [("b", 0), ("b", 1), ("b", 2)]


def test_deferred_queue_posts_made_while_processing_wait_for_the_next_process() -> None:
    got = Collector()
    emitter = EventEmitter()
    queue = DeferredQueue(emitter)

    def repost(n: int) -> None:
        got.calls.append(n)
        queue.post("tick", n + 1)

    emitter.on("tick", repost)
    queue.post("tick", 0)
    assert queue.process() == 1
    assert queue.process() == 1
    assert got.calls == [0, 1]
    assert queue.statistics() == type(queue.statistics())(pending=1, posted=3, processed=2)
    assert queue.clear() == 1
    assert len(queue) == 0


def test_deferred_queue_rejects_bad_input() -> None:
    queue = DeferredQueue(EventEmitter())
    with pytest.raises(ValueError):
        queue.process(-1)
    with pytest.raises(TypeError):
        queue.process(1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        DeferredQueue(object())  # type: ignore[arg-type]


async def test_deferred_queue_defaults_to_the_process_bus_and_can_await() -> None:
    got: list[Any] = []

    async def handler(n: int) -> None:
        await asyncio.sleep(0)
        got.append(n)

    unsubscribe = subscribe("test.deferred", handler)
    try:
        queue = DeferredQueue()
        queue.post("test.deferred", 1)
        queue.post("test.deferred", 2)
        assert got == []
        assert await queue.process_async() == 2
    finally:
        unsubscribe()
    assert got == [1, 2]
