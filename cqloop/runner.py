"""cqloop.runner: Prosody's util.async on asyncio: a `Runner` that feeds queued items, one
at a time and in order, to a function, and `waiter(n)` for "resume after n callbacks".

Owns: the runner's queue, its state machine and the task that drains the queue; a waiter's
count and the futures of the tasks waiting on it.

Runner states (`RunnerState`) and their transitions; a watcher fires on each change of
state, not on every item:

    READY --run()--> RUNNING <--> WAITING      (WAITING: the item's coroutine is suspended
                       |  ^                      on an await; RUNNING again when resumed)
           item raised v  | next item
                     ERROR
    RUNNING or ERROR --queue empty--> READY

Invariants:
- At most one item is in progress; items start in the order they were queued.
- At most one drain task per runner exists (`_task`); it is the only place `func` is called.
- An item's Exception does not stop the runner: the error watcher gets it (or, without one,
  the loop's exception handler), then the next item runs. A watcher's own exception goes to
  the loop's exception handler and changes nothing.
- When the drain task is cancelled (for instance at loop shutdown), or a BaseException such
  as KeyboardInterrupt escapes an item, the item in progress is abandoned, the rest stay
  queued for a later run(), the state is READY and wait_idle() callers are cancelled
  (nothing would otherwise finish the work they wait for).

Who calls in: user code on the loop's thread. run() needs a running loop (it creates the
drain task); enqueue() and Waiter.done() work anywhere on that thread. Not thread-safe.
Pure Python, independent of `_core`; works on any asyncio loop.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import types
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Generator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from cqloop.events import _is_being_cancelled

__all__ = ["Runner", "RunnerState", "RunnerStatistics", "Waiter", "WaiterStatistics", "waiter"]

T = TypeVar("T")

Watcher = Callable[..., object]


class RunnerState(enum.Enum):
    READY = "ready"  # nothing in progress
    RUNNING = "running"  # an item's code is executing
    WAITING = "waiting"  # an item's coroutine is suspended on an await
    ERROR = "error"  # the last item raised; the next one (or READY) follows at once


class _NoData(enum.Enum):
    # run() without an argument starts the queue without adding to it (Prosody's
    # runner:run(nil)); a sentinel, because None is a valid item.
    NO_DATA = enum.auto()


_NO_DATA = _NoData.NO_DATA


@dataclass(frozen=True)
class RunnerStatistics:
    state: RunnerState
    queued: int  # items not yet started
    completed: int  # items that returned
    failed: int  # items that raised


@dataclass(frozen=True)
class WaiterStatistics:
    expected: int
    done: int
    tasks_waiting: int


def _watchers_by_state(
    watchers: Mapping[RunnerState | str, Watcher] | None,
) -> dict[RunnerState, Watcher]:
    by_state: dict[RunnerState, Watcher] = {}
    for key, watcher in (watchers or {}).items():
        try:
            state = key if isinstance(key, RunnerState) else RunnerState(key)
        except ValueError:
            names = ", ".join(repr(s.value) for s in RunnerState)
            raise ValueError(
                f"unknown runner state {key!r} in watchers; use one of {names}"
            ) from None
        if not callable(watcher):
            raise TypeError(f"the {state.value!r} watcher must be callable, not {watcher!r}")
        by_state[state] = watcher
    return by_state


class Runner(Generic[T]):
    """Calls `func(item)` for each queued item, one at a time, in order. `func` may be sync
    or async (or return an awaitable). `watchers` maps a state (RunnerState or its name) to
    a callback: `watcher(runner)`, except the error watcher: `watcher(runner, exception)`."""

    def __init__(
        self,
        func: Callable[[T], object],
        watchers: Mapping[RunnerState | str, Watcher] | None = None,
    ) -> None:
        if not callable(func):
            raise TypeError(f"a Runner's func must be callable, not {func!r}")
        self._func = func
        self._watchers = _watchers_by_state(watchers)
        self._state = RunnerState.READY
        self._queue: deque[T] = deque()
        self._task: asyncio.Task[None] | None = None
        self._idle_waiters: list[asyncio.Future[None]] = []
        self._completed = 0
        self._failed = 0

    # -- public API --

    @property
    def state(self) -> RunnerState:
        return self._state

    @property
    def queued(self) -> int:
        return len(self._queue)

    def run(self, data: T | _NoData = _NO_DATA) -> None:
        """Queue `data` (if given) and start processing the queue if it is not already being
        processed. Returns at once: processing happens in a task of the running loop."""
        if self._task is None:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                raise RuntimeError(
                    "Runner.run() starts a task, so it needs a running event loop "
                    "(enqueue() queues without one)"
                ) from None
        if not isinstance(data, _NoData):
            self._queue.append(data)
        if self._task is None and self._queue:
            name = getattr(self._func, "__qualname__", repr(self._func))
            self._task = asyncio.get_running_loop().create_task(
                self._drain(), name=f"cqloop.Runner({name})"
            )

    def enqueue(self, data: T) -> None:
        """Queue `data` without starting: it runs after the item in progress if there is one,
        else at the next run()."""
        self._queue.append(data)

    async def wait_idle(self) -> None:
        """Return once the queue is empty and no item is in progress (at once if so now)."""
        if self._is_idle():
            return
        if self._task is not None and self._task is asyncio.current_task():
            raise RuntimeError("an item of a Runner cannot wait for its own runner to be idle")
        future = asyncio.get_running_loop().create_future()
        self._idle_waiters.append(future)
        try:
            await future
        finally:
            if future in self._idle_waiters:
                self._idle_waiters.remove(future)

    def statistics(self) -> RunnerStatistics:
        return RunnerStatistics(
            state=self._state,
            queued=len(self._queue),
            completed=self._completed,
            failed=self._failed,
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._state.value} queued={len(self._queue)}>"

    # -- private --

    def _is_idle(self) -> bool:
        return self._task is None and not self._queue

    async def _drain(self) -> None:
        """The drain task: the only place func is called."""
        stopped_early = True
        try:
            while self._queue:
                item = self._queue.popleft()
                self._set_state(RunnerState.RUNNING)
                try:
                    result = self._func(item)
                    if inspect.isawaitable(result):
                        await _watch_suspensions(result, self)
                except asyncio.CancelledError as exc:
                    if _is_being_cancelled():
                        raise
                    self._fail(exc)  # the item's own work was cancelled, not the runner
                except Exception as exc:
                    self._fail(exc)
                else:
                    self._completed += 1
            stopped_early = False
        finally:
            self._task = None
            self._set_state(RunnerState.READY)
            self._wake_idle_waiters(stopped_early)

    def _wake_idle_waiters(self, stopped_early: bool) -> None:
        # A READY watcher may have called run() again; then the waiters keep waiting.
        if not (stopped_early or self._is_idle()):
            return
        waiters, self._idle_waiters = self._idle_waiters, []
        for future in waiters:
            if future.done():
                continue
            if stopped_early:
                future.cancel()
            else:
                future.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        self._failed += 1
        if RunnerState.ERROR not in self._watchers:
            self._report(f"Exception in {self!r} while processing an item", exc)
        self._set_state(RunnerState.ERROR, exc)

    def _set_state(self, state: RunnerState, exc: BaseException | None = None) -> None:
        if state is self._state:
            return
        self._state = state
        watcher = self._watchers.get(state)
        if watcher is None:
            return
        try:
            if state is RunnerState.ERROR:
                watcher(self, exc)
            else:
                watcher(self)
        except Exception as watcher_exc:
            self._report(f"Exception in the {state.value!r} watcher of {self!r}", watcher_exc)

    def _report(self, message: str, exc: BaseException) -> None:
        asyncio.get_running_loop().call_exception_handler(
            {"message": message, "exception": exc, "runner": self}
        )

    # Callbacks fired by _watch_suspensions.
    def _on_suspended(self) -> None:
        self._set_state(RunnerState.WAITING)

    def _on_resumed(self) -> None:
        self._set_state(RunnerState.RUNNING)


@types.coroutine
def _watch_suspensions(awaitable: Awaitable[Any], runner: Runner[Any]) -> Generator[Any, Any, Any]:
    """`await awaitable`, telling `runner` each time it suspends and resumes. This is
    `yield from awaitable.__await__()` written out, with the two calls in between; an
    asyncio Task drives it exactly as it would the awaitable itself."""
    iterator = awaitable.__await__()
    sent: Any = None
    thrown: BaseException | None = None
    while True:
        try:
            if thrown is None:
                # A plain iterator from a hand-written __await__ may have no send().
                send = getattr(iterator, "send", None)
                yielded = next(iterator) if sent is None or send is None else send(sent)
            else:
                throw = getattr(iterator, "throw", None)
                if throw is None:
                    raise thrown
                yielded = throw(thrown)
        except StopIteration as stop:
            return stop.value
        finally:
            thrown = None
        runner._on_suspended()
        try:
            sent = yield yielded
        except GeneratorExit:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
            raise
        except BaseException as exc:
            thrown, sent = exc, None
        runner._on_resumed()


class Waiter:
    """Counts done() calls; wait() returns once there have been `n` of them, counting those
    made before wait(). A done() beyond the n-th raises RuntimeError: it means a callback
    fired more often than the code waiting on it was told to expect."""

    def __init__(self, n: int = 1) -> None:
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"n must be an int, not {n!r}")
        if n < 0:
            raise ValueError(f"n must be >= 0, not {n}")
        self._expected = n
        self._done = 0
        self._futures: list[asyncio.Future[None]] = []

    @property
    def remaining(self) -> int:
        return self._expected - self._done

    async def wait(self) -> None:
        """Suspend until done() has been called n times (return at once if it has been).
        Any number of tasks may wait; cancelling one does not disturb the others."""
        if self._done >= self._expected:
            return
        future = asyncio.get_running_loop().create_future()
        self._futures.append(future)
        try:
            await future
        finally:
            if future in self._futures:
                self._futures.remove(future)

    def done(self) -> None:
        """Count one completion; the n-th wakes the tasks in wait()."""
        if self._done >= self._expected:
            raise RuntimeError(
                f"done() called more than the {self._expected} time(s) this waiter expects"
            )
        self._done += 1
        if self._done < self._expected:
            return
        futures, self._futures = self._futures, []
        for future in futures:
            if not future.done():
                future.set_result(None)

    def statistics(self) -> WaiterStatistics:
        return WaiterStatistics(
            expected=self._expected, done=self._done, tasks_waiting=len(self._futures)
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} done={self._done}/{self._expected}>"


def waiter(n: int = 1) -> tuple[Callable[[], Coroutine[Any, Any, None]], Callable[[], None]]:
    """Prosody's async.waiter: `wait, done = waiter(n)`; `await wait()` resumes once done()
    has been called n times (calls before wait() count)."""
    w = Waiter(n)
    return w.wait, w.done
