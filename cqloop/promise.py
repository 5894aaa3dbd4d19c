"""cqloop.promise: cqueues' promise, a value (or an error) that one side sets once and
any number of tasks, on any loops and threads, wait for.

`status()` is "pending", "fulfilled" or "rejected". `set(ok, *values)` resolves it once
(a second set raises RuntimeError). `await p.get()` returns the value (a tuple when set
with several, None with none) or raises the error; `await p.wait()` returns the promise
once it is resolved, or None on timeout; `await p` is `get()`.

A promise is pollable: while pending, `pollfd()` is its Condition, signalled on
resolution; once resolved, `timeout()` is 0, so a poll on it returns at once.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable, Generator
from typing import Any

from cqloop.condition import Condition

__all__ = ["Promise", "PromiseStatus", "new"]


class PromiseStatus(enum.StrEnum):
    PENDING = "pending"
    FULFILLED = "fulfilled"
    REJECTED = "rejected"


class Promise:
    """A value or an error, set once, awaited by anyone."""

    def __init__(self) -> None:
        self._status = PromiseStatus.PENDING
        self._values: tuple[Any, ...] = ()
        self._error: BaseException | None = None
        self._cond = Condition()
        # The task promise.new(fn) runs fn in, kept alive until it settles the promise.
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<cqloop.Promise {self._status}>"

    def status(self) -> str:
        return self._status.value

    # -- resolving --

    def set(self, ok: bool, *values: Any) -> None:
        """Fulfil with values (ok true) or reject with values[0] (ok false: an
        exception, or anything else, which is wrapped in RuntimeError)."""
        if self._status is not PromiseStatus.PENDING:
            raise RuntimeError(f"promise already {self._status}")
        if ok:
            self._values = values
            self._status = PromiseStatus.FULFILLED
        else:
            error = values[0] if values else None
            if not isinstance(error, BaseException):
                error = RuntimeError(*values) if values else RuntimeError("promise rejected")
            self._error = error
            self._status = PromiseStatus.REJECTED
        self._cond.signal()

    def set_result(self, value: Any) -> None:
        self.set(True, value)

    def set_exception(self, error: BaseException) -> None:
        self.set(False, error)

    # -- waiting --

    async def wait(self, timeout: float | None = None) -> Promise | None:
        """Wait until resolved; the promise itself, or None when timeout passes first."""
        if self._status is PromiseStatus.PENDING:
            await self._cond.wait(self, timeout=timeout)
        return None if self._status is PromiseStatus.PENDING else self

    async def get(self, timeout: float | None = None) -> Any:
        """The value (a tuple when set with several, None with none), or the error
        raised; TimeoutError when timeout passes first."""
        if await self.wait(timeout) is None:
            raise TimeoutError(f"promise still pending after {timeout} s")
        return self._result()

    def result(self) -> Any:
        """get() without waiting: raises asyncio.InvalidStateError while pending."""
        if self._status is PromiseStatus.PENDING:
            raise asyncio.InvalidStateError("promise is pending")
        return self._result()

    def __await__(self) -> Generator[Any, None, Any]:
        return self.get().__await__()

    def _result(self) -> Any:
        if self._error is not None:
            raise self._error
        if len(self._values) == 1:
            return self._values[0]
        return self._values or None

    # -- the pollable protocol --

    def pollfd(self) -> Condition | None:
        return self._cond if self._status is PromiseStatus.PENDING else None

    def events(self) -> None:
        return None

    def timeout(self) -> float | None:
        return None if self._status is PromiseStatus.PENDING else 0.0


def new(fn: Callable[..., Any] | None = None, *args: Any) -> Promise:
    """cqueues' promise.new(): a pending promise; with fn, a task of the running loop
    runs fn(*args) (a coroutine function or a plain one) and resolves the promise with
    its result or its error."""
    promise = Promise()
    if fn is None:
        return promise

    async def settle() -> None:
        try:
            value = fn(*args)
            if asyncio.iscoroutine(value):
                value = await value
        except asyncio.CancelledError as exc:
            promise.set(False, exc)
            raise
        except BaseException as exc:  # the error belongs to the promise
            promise.set(False, exc)
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
        else:
            promise.set(True, value)

    promise._task = asyncio.get_running_loop().create_task(settle())
    return promise
