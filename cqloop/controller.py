"""cqloop.controller: cqueues' controller API on cqloop's Loop, and its module functions.

A cqueues controller *is* a cqloop loop (one scheduler, not two): `ControllerMixin` adds
cqueues' methods to `Loop` and keeps the only state they need, the set of wrapped
coroutines (tasks made by wrap/attach) and the queue of their errors.

- wrap/attach make tasks the controller tracks; `count()`/`empty()` are about them alone
  (other tasks and callbacks on the loop do not keep a controller busy, as in cqueues).
- `loop(timeout)` steps the loop until no wrapped coroutine is left, raising the first
  error one of them raised; `errors(timeout)` steps it the same way but yields each error
  (a `CoroutineError`: the exception, its coroutine, its task, its formatted traceback)
  and carries on. A wrapped coroutine's error is retrieved by the controller, so asyncio
  never logs it as "never retrieved"; one nobody collected is reported through the
  loop's exception handler when the loop closes.
- Both have an async form for stacking, cqueues style: `await inner` (and `async for err
  in inner.errors()`) from a task of another loop runs `inner` until it is empty by
  polling its fd from the awaiting loop and stepping it, so the awaiting loop keeps
  running its own work meanwhile. The sync forms block the calling thread in `step`.
- `pause(*signals)` is one blocking step during which those signals are unblocked, set
  atomically with the wait (epoll_pwait), so a signal that arrives just before the wait
  still ends it.
"""

from __future__ import annotations

import asyncio
import builtins
import signal as _signal
import time
import traceback
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

from cqloop import pollable
from cqloop._core.kernel import Kernel

__all__ = ["ControllerMixin", "CoroutineError", "monotime", "new", "running", "type"]


def _noop() -> None:
    pass


@dataclass(frozen=True)
class CoroutineError:
    """An error raised by a wrapped coroutine, as errors() reports it. A record, not an
    exception: `error` is the exception, with its traceback."""

    error: BaseException
    coroutine: Any
    task: asyncio.Task[Any]
    traceback: str = field(repr=False)

    def __str__(self) -> str:
        name = getattr(self.coroutine, "__qualname__", repr(self.coroutine))
        return f"{name}: {builtins.type(self.error).__name__}: {self.error}"


class ControllerMixin:
    """cqueues' controller methods; mixed into Loop (which provides the kernel)."""

    _wrapped: set[asyncio.Task[Any]]
    _wrapped_errors: deque[CoroutineError]

    if False:  # pragma: no cover - for type checkers: what Loop provides
        create_task: Callable[..., asyncio.Task[Any]]
        step: Callable[..., None]
        time: Callable[[], float]
        call_soon_threadsafe: Callable[..., Any]
        call_exception_handler: Callable[[dict[str, Any]], None]
        timeout: Callable[[], float | None]
        is_closed: Callable[[], bool]
        _set_wait_sigmask: Callable[[Any], None]

    # -- wrapping coroutines --

    def wrap(self, fn: Callable[..., Any] | Coroutine[Any, Any, Any], *args: Any) -> Any:
        """Run fn(*args) (an async function) or fn (a coroutine) as a task of this
        controller; return the controller, for chaining."""
        if asyncio.iscoroutine(fn):
            if args:
                raise TypeError("wrap() takes arguments only with a function, not a coroutine")
            coro = fn
        elif callable(fn):
            coro = fn(*args)
            if not asyncio.iscoroutine(coro):
                if hasattr(coro, "close"):
                    coro.close()
                raise TypeError(
                    f"wrap() needs an async function or a coroutine; {fn!r} returned {coro!r}"
                )
        else:
            raise TypeError(f"wrap() needs an async function or a coroutine, not {fn!r}")
        return self.attach(coro)

    def attach(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run an existing coroutine as a task of this controller; return the controller."""
        if not asyncio.iscoroutine(coro):
            raise TypeError(f"attach() needs a coroutine, not {coro!r}")
        task = self.create_task(coro)
        self._wrapped.add(task)
        task.add_done_callback(self._on_wrapped_done)
        return self

    def count(self) -> int:
        """How many wrapped coroutines have not finished."""
        return len(self._wrapped)

    def empty(self) -> bool:
        """True when no wrapped coroutine is left."""
        return not self._wrapped

    # -- running --

    def loop(self, timeout: float | None = None) -> bool:
        """Step until no wrapped coroutine is left (True) or `timeout` seconds pass
        (False). The first error a wrapped coroutine raises is raised here."""
        for report in self._drive(timeout):
            raise report.error
        return not self._wrapped

    def errors(self, timeout: float | None = None) -> _Errors:
        """Step like loop(), yielding each wrapped coroutine's error (a CoroutineError)
        instead of raising it. `for` blocks in step(); `async for` from a task of another
        loop polls this loop's fd instead."""
        return _Errors(self, timeout)

    def __await__(self) -> Generator[Any, None, bool]:
        """`await inner` from a task of another loop: run inner until it is empty (or
        raise the first error of its wrapped coroutines), polling its fd meanwhile."""
        return self._loop_async().__await__()

    async def _loop_async(self, timeout: float | None = None) -> bool:
        reports = self._drive_async(timeout)
        try:
            async for report in reports:
                raise report.error
        finally:
            # Closed here, not left to the async generator hooks: the loop it would be
            # finalized on may be closed by then.
            await reports.aclose()  # type: ignore[attr-defined]
        return not self._wrapped

    def _drive(self, timeout: float | None) -> Iterator[CoroutineError]:
        deadline = None if timeout is None else self.time() + timeout
        while True:
            while self._wrapped_errors:
                yield self._wrapped_errors.popleft()
            if not self._wrapped:
                return
            remaining = None if deadline is None else deadline - self.time()
            if remaining is not None and not remaining > 0:  # (a NaN timeout has passed)
                return
            self.step(remaining)

    async def _drive_async(self, timeout: float | None) -> AsyncIterator[CoroutineError]:
        if asyncio.get_running_loop() is self:
            raise RuntimeError(
                "a controller cannot wait for itself from one of its own tasks; "
                "await it from a task of another loop"
            )
        deadline = None if timeout is None else self.time() + timeout
        while True:
            while self._wrapped_errors:
                yield self._wrapped_errors.popleft()
            if not self._wrapped:
                return
            remaining = None if deadline is None else deadline - self.time()
            if remaining is not None and not remaining > 0:  # (a NaN timeout has passed)
                return
            # This loop is pollable (its fd and timeout()): wait on the awaiting loop
            # until it has work, then run one step of it.
            await pollable.poll(self, timeout=remaining)
            self.step(0)

    # -- cancelling, waking, pausing --

    def cancel(self, *fds_or_objs: Any) -> int:
        """Wake every poll of this controller's tasks that waits on these fds or objects,
        as if they were ready, and drop the loop's registrations of them, so the fds can
        then be closed safely. Returns how many waits were woken."""
        return pollable.cancel(*fds_or_objs, loop=self)  # type: ignore[arg-type]

    def alert(self) -> Any:
        """Wake the controller: a step blocked in the kernel returns. Safe from any
        thread."""
        self.call_soon_threadsafe(_noop)
        return self

    def pause(self, *signals: int) -> None:
        """One step that waits until there is work or one of `signals` is delivered:
        those signals are unblocked for the wait alone, atomically with it (epoll_pwait),
        so one already pending ends the wait at once. Handlers run as usual."""
        blocked = _signal.pthread_sigmask(_signal.SIG_BLOCK, [])
        self._set_wait_sigmask(sorted(set(blocked) - set(signals)))
        try:
            self.step(None)
        finally:
            self._set_wait_sigmask(None)

    # -- callbacks --

    def _on_wrapped_done(self, task: asyncio.Task[Any]) -> None:
        self._wrapped.discard(task)
        if task.cancelled():
            return
        error = task.exception()  # also marks the error retrieved
        if error is not None:
            text = "".join(traceback.format_exception(error))
            self._wrapped_errors.append(CoroutineError(error, task.get_coro(), task, text))

    def _report_uncollected_errors(self) -> None:
        """At close: errors of wrapped coroutines that nobody collected go to the
        exception handler instead of vanishing."""
        while self._wrapped_errors:
            report = self._wrapped_errors.popleft()
            self.call_exception_handler(
                {
                    "message": "error of a wrapped coroutine never collected by "
                    "loop(), errors() or await",
                    "exception": report.error,
                    "task": report.task,
                }
            )


class _Errors:
    """What errors() returns: iterable both ways (see ControllerMixin.errors)."""

    __slots__ = ("_controller", "_timeout")

    def __init__(self, controller: ControllerMixin, timeout: float | None) -> None:
        self._controller = controller
        self._timeout = timeout

    def __iter__(self) -> Iterator[CoroutineError]:
        return self._controller._drive(self._timeout)

    def __aiter__(self) -> AsyncIterator[CoroutineError]:
        return self._controller._drive_async(self._timeout)


# -- module functions ----------------------------------------------------------------


def new() -> Any:
    """cqueues.new(): a new controller, that is, a new cqloop loop."""
    from cqloop.policy import new_event_loop

    return new_event_loop()


def running() -> tuple[asyncio.AbstractEventLoop | None, bool]:
    """(the loop running in this thread, or None; whether the caller is inside a task of
    it), as cqueues.running() answers (controller, yieldable)."""
    loop = asyncio.events._get_running_loop()
    if loop is None:
        return (None, False)
    return (loop, asyncio.current_task(loop) is not None)


def monotime() -> float:
    """The monotonic clock every cqloop loop's time() reads (CLOCK_MONOTONIC)."""
    return time.monotonic()


def type(obj: Any) -> str | None:  # cqueues' name; shadows the builtin in this module only
    """cqueues.type(): "controller" for an open cqloop loop, "closed controller" for a
    closed one, None for anything else."""
    if isinstance(obj, Kernel):
        return "closed controller" if obj.is_closed() else "controller"
    return None
