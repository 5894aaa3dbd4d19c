"""`inner.run_nested(coro)` and `inner.aclose()` (cqloop/nesting.py), from a task of an outer
loop of each kind (stock asyncio, uvloop, cqloop), with the inner loop nested in the outer
one (nest_in) or polled from it."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable

import pytest

import cqloop
from tests.loops import OUTER_FACTORIES, OUTER_KINDS

pytestmark = pytest.mark.cqloop_only

HOW = ["nested", "polled"]


def run_in_outer(kind: str, main: Callable[[], object]) -> object:
    outer = OUTER_FACTORIES[kind]()
    try:
        return outer.run_until_complete(main())  # type: ignore[arg-type]
    finally:
        outer.close()


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("kind", OUTER_KINDS)
def test_run_nested_returns_what_the_inner_task_returns(kind: str, how: str):
    inner = cqloop.new_event_loop()
    seen: list[object] = []

    async def on_inner(x: int) -> int:
        seen.append(asyncio.get_running_loop())
        await asyncio.sleep(0.001)
        return x * 2

    async def main() -> int:
        if how == "nested":
            inner.nest_in()
        result = await inner.run_nested(on_inner(21))
        await inner.aclose()
        return result

    assert run_in_outer(kind, main) == 42
    assert seen == [inner]
    assert inner.is_closed()


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("kind", OUTER_KINDS)
def test_run_nested_raises_what_the_inner_task_raises(kind: str, how: str):
    inner = cqloop.new_event_loop()

    async def fails() -> None:
        await asyncio.sleep(0)
        raise LookupError("inner")

    async def main() -> None:
        if how == "nested":
            inner.nest_in()
        try:
            with pytest.raises(LookupError, match="inner"):
                await inner.run_nested(fails())
        finally:
            await inner.aclose()

    run_in_outer(kind, main)


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("kind", OUTER_KINDS)
def test_cancelling_the_outer_task_cancels_the_inner_one_and_waits_for_it(kind: str, how: str):
    inner = cqloop.new_event_loop()
    events: list[str] = []

    async def slow() -> None:
        try:
            events.append("started")
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            events.append("cancelled")
            await asyncio.sleep(0)  # clean-up that takes an iteration
            events.append("cleaned up")
            raise

    async def main() -> None:
        if how == "nested":
            inner.nest_in()
        waiter = asyncio.ensure_future(inner.run_nested(slow()))
        while events != ["started"]:
            await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert events == ["started", "cancelled", "cleaned up"]
        await inner.aclose()

    run_in_outer(kind, main)


@pytest.mark.parametrize("kind", OUTER_KINDS)
def test_aclose_cancels_tasks_closes_generators_and_the_executor(kind: str):
    inner = cqloop.new_event_loop()
    log: list[str] = []
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="outer")

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            log.append("task finally")

    async def numbers():  # type: ignore[no-untyped-def]
        try:
            yield 1
            yield 2
        finally:
            log.append("generator finally")

    async def start() -> None:
        var.set("inner")
        inner.create_task(forever())
        generator = numbers()
        assert await generator.__anext__() == 1
        inner.generator = generator  # type: ignore[attr-defined]  # keep it alive, suspended
        await inner.run_in_executor(None, log.append, "in executor")

    async def main() -> None:
        inner.nest_in()
        await inner.run_nested(start())
        await inner.aclose()
        assert var.get() == "outer"

    run_in_outer(kind, main)
    assert inner.is_closed()
    assert log == ["in executor", "task finally", "generator finally"]
    assert inner._default_executor is None  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", OUTER_KINDS)
def test_aclose_reports_a_task_that_fails_on_cancellation(kind: str):
    inner = cqloop.new_event_loop()
    reported: list[dict[str, object]] = []
    inner.set_exception_handler(lambda loop, context: reported.append(context))

    async def bad() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise ValueError("failed while cancelled") from None

    async def main() -> None:
        inner.create_task(bad())
        await inner.run_nested(asyncio.sleep(0))
        await inner.aclose()

    run_in_outer(kind, main)
    assert [str(context["exception"]) for context in reported] == ["failed while cancelled"]


def test_a_loop_cannot_wait_for_itself():
    async def main() -> None:
        loop = asyncio.get_running_loop()
        coro = asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="cannot wait for itself"):
            await loop.run_nested(coro)  # type: ignore[attr-defined]
        coro.close()
        with pytest.raises(RuntimeError, match="cannot wait for itself"):
            await loop.aclose()  # type: ignore[attr-defined]

    cqloop.run(main())
