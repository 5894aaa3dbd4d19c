"""cqloop.auxlib: cqueues' auxlib in Python terms: turning errors into values and values
back into errors.

cqueues' C routines return errors as values (`nil, errno`), and auxlib bridges that to
Lua's idioms: `auxlib.assert` raises the error a failed call returned, `auxlib.fileresult`
turns it into Lua's `nil, message, errno` triple. Python reports errors by raising, so here
the bridge runs both ways:

- `assert_(value, *why)`: raise the error `why` describes unless `value` succeeded;
- `fileresult(value, *why)`: the `(value, message, errno)` triple of a result;
- `await result(aw)`: await `aw` and turn an OSError it raises (TimeoutError included)
  into that triple instead, e.g. `ok, why, code = await result(thread.join(5))`. A
  TimeoutError without an error number (asyncio's) counts as ETIMEDOUT, as every timeout
  does in cqueues.

As in Lua, only None and False mean failure: 0, "" and b"" are results like any other.
The error description is the first item of `why` that is neither None nor False: an int is
an error number (its message is strerror's), an exception is itself, anything else is a
message, followed optionally by an error number. Pure Python, no state, any loop.

Not carried over: `auxlib.resume`/`auxlib.wrap` (they let Lua coroutines nest inside
cqueues' own; asyncio tasks nest without help), `assert2`..`assert9` (a Lua error level
has no Python meaning: tracebacks show every frame) and `auxlib.tostring`.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Awaitable
from typing import Any, TypeVar

__all__ = ["assert_", "fileresult", "result"]

_T = TypeVar("_T")

# What assert_ raises for a failure described by a message alone (Lua's assert raises
# "assertion failed!" when given no message at all).
_NO_MESSAGE = "assertion failed!"


def _failed(value: object) -> bool:
    # Lua's falsy values are nil and false only.
    return value is None or value is False


def _is_errno(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _findwhy(why: tuple[Any, ...]) -> tuple[str | None, int | None, BaseException | None]:
    """(message, error number, exception) from the first item of `why` that is set."""
    for index, item in enumerate(why):
        if _failed(item):
            continue
        if isinstance(item, BaseException):
            code = getattr(item, "errno", None)
            message = getattr(item, "strerror", None) if code is not None else None
            if code is None and isinstance(item, TimeoutError):
                # asyncio's timeouts carry no errno; cqueues reports every one as ETIMEDOUT.
                code = errno.ETIMEDOUT
            message = message or str(item) or (os.strerror(code) if code else "")
            return (message or type(item).__name__, code, item)
        if _is_errno(item):
            return (os.strerror(item), item, None)
        message = str(item)
        # A message may be followed by its error number (the shape fileresult returns).
        for rest in why[index + 1 :]:
            if _is_errno(rest):
                return (message, rest, None)
        return (message, None, None)
    return (None, None, None)


def assert_(value: _T, *why: Any) -> _T:
    """Return `value` unless it is None or False; then raise the error `why` describes:
    the exception itself when it is one, OSError(code, message) when it carries an error
    number (OSError picks the subclass: TimeoutError for ETIMEDOUT, ...), else
    AssertionError(message)."""
    if not _failed(value):
        return value
    message, code, exc = _findwhy(why)
    if exc is not None:
        raise exc
    if code is not None:
        raise OSError(code, message or os.strerror(code))
    raise AssertionError(message or _NO_MESSAGE)


def fileresult(value: _T, *why: Any) -> tuple[_T, str | None, int | None]:
    """Lua's `value, message, errno` triple: (value, None, None) when value succeeded
    (is neither None nor False), else (value, message, error number or None)."""
    if not _failed(value):
        return (value, None, None)
    message, code, _ = _findwhy(why)
    return (value, message, code)


async def result(
    aw: Awaitable[_T],
    *,
    errors: type[BaseException] | tuple[type[BaseException], ...] = OSError,
) -> tuple[_T | None, str | None, int | None]:
    """Await `aw`; return (its result, None, None), or (None, message, error number) when
    it raises one of `errors` (OSError by default, which includes TimeoutError). Other
    exceptions, and cancellation, propagate: they are bugs or control flow, not results.
    Success is `message is None`, since the awaited result may itself be None."""
    try:
        value = await aw
    except errors as exc:
        message, code, _ = _findwhy((exc,))
        return (None, message, code)
    return (value, None, None)
