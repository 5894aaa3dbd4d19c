"""Working with a nested loop from the loop around it: `run_nested` and `aclose`.

A cqloop loop nests in another loop (any asyncio loop: stock, uvloop, cqloop) either by
`inner.nest_in(outer)`, after which the outer loop steps the inner one whenever it has work,
or by being polled from a task of the outer loop (`await inner`, `cqloop.poll(inner)`). This
mixin of `Loop` adds the two things a program around an inner loop needs:

- `await inner.run_nested(coro)`: run `coro` as a task of the inner loop and get its result
  (or exception) in a task of the outer loop; cancelling the outer task cancels the inner
  one and waits for it to finish.
- `await inner.aclose()`: shut the inner loop down as asyncio.Runner.close() shuts down a
  top-level one: cancel its tasks and wait for them, close its async generators, shut down
  its default executor, close it.

Both are called from a task of the outer loop (never of the inner one: a loop cannot wait
for itself) and drive the inner loop meanwhile: if it is nested in the awaiting loop the
outer loop already steps it, and they just wait; otherwise they poll its fd from the
awaiting loop and step it, as `await inner` does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar, cast

from cqloop import pollable

if TYPE_CHECKING:
    from cqloop.loop import Loop

_T = TypeVar("_T")

__all__ = ["NestingMixin"]


class NestingMixin:
    """The nested loop's side of nesting; mixed into Loop."""

    async def run_nested(self, coro: Coroutine[Any, Any, _T]) -> _T:
        """From a task of another loop: run `coro` as a task of this loop and return its
        result (or raise its exception). This loop is driven meanwhile (see the module
        docstring). Cancelling the awaiting task cancels this loop's task; the
        cancellation is raised once that task has finished."""
        loop = cast("Loop", self)
        outer = _awaiting_loop(loop, "run_nested")
        task = loop.create_task(coro)
        try:
            await _drive_until_done(loop, outer, task)
        except asyncio.CancelledError:
            task.cancel()
            await _drive_until_done(loop, outer, task)
            raise
        return task.result()

    async def aclose(self) -> None:
        """From a task of another loop: cancel this loop's tasks and wait for them (an
        exception other than the cancellation goes to this loop's exception handler, as
        asyncio.run reports them), close its async generators, shut down its default
        executor, then close it."""
        loop = cast("Loop", self)
        _awaiting_loop(loop, "aclose")
        if loop.is_closed():
            return
        tasks = asyncio.all_tasks(loop)
        for task in tasks:
            task.cancel()
        await self.run_nested(_finish(loop, tasks))
        loop.close()


async def _finish(loop: Loop, tasks: set[asyncio.Task[Any]]) -> None:
    """On `loop`: wait for its cancelled tasks, then close its generators and executor."""
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            loop.call_exception_handler(
                {
                    "message": "unhandled exception during aclose()",
                    "exception": task.exception(),
                    "task": task,
                }
            )
    await loop.shutdown_asyncgens()
    await loop.shutdown_default_executor()


def _awaiting_loop(loop: Loop, what: str) -> asyncio.AbstractEventLoop:
    outer = asyncio.get_running_loop()
    if outer is loop:
        raise RuntimeError(
            f"{what}() is for a task of another loop: a loop cannot wait for itself from "
            "one of its own tasks"
        )
    return outer


async def _drive_until_done(
    loop: Loop, outer: asyncio.AbstractEventLoop, task: asyncio.Task[Any]
) -> None:
    if loop._outer is outer:
        # The outer loop steps `loop` already: wait for the task's end to be signalled.
        finished: asyncio.Future[None] = outer.create_future()

        def signal(_: object) -> None:
            if not finished.done():
                finished.set_result(None)

        task.add_done_callback(signal)
        try:
            await finished
        finally:
            task.remove_done_callback(signal)
        return
    while not task.done():
        await pollable.poll(loop)
        loop.step(0)
