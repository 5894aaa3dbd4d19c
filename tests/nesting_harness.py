"""What the nesting tests share (test_nesting.py, test_nesting_step.py): the `loops` fixture
(inner cqloop loops made and closed for the test), outer loops that record their
add_reader/remove_reader calls, nest chains, running an outer loop until an inner future is
done, fd readability, a Watchdog that wakes a stepping loop, and the check whether a thread
is blocked in its poll (wchan). WAIT_S, TIMER_SLACK_S and PROMPT_S are the timing bounds."""

from __future__ import annotations

import asyncio
import os
import select
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import cqloop
from tests.loops import OUTER_FACTORIES

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is in the test extra
    uvloop = None


# The safety net of every wait: far longer than anything a working loop takes.
WAIT_S = 5.0
# How late a timer may fire on a noisy machine; far less than WAIT_S, the outer's idle timeout.
TIMER_SLACK_S = 0.05
# Upper bound for "returns at once" / "returns after its short timeout" on a noisy machine.
PROMPT_S = 0.3


# -- helpers ------------------------------------------------------------------------------


def _fd_of(fileobj: Any) -> int:
    return fileobj if isinstance(fileobj, int) else fileobj.fileno()


def _spying(base: type) -> type:
    """A subclass of loop class `base` that records which fds it has a reader for, through
    add_reader/remove_reader (the calls nest_in, unnest and close make). uvloop's
    remove_reader returns None whatever it did, so its return value can't tell."""

    class Spy(base):  # type: ignore[misc, valid-type]
        def add_reader(self, fd: Any, callback: Any, *args: Any) -> None:
            super().add_reader(fd, callback, *args)
            self.__dict__.setdefault("readers", set()).add(_fd_of(fd))

        def remove_reader(self, fd: Any) -> Any:
            self.__dict__.setdefault("readers", set()).discard(_fd_of(fd))
            return super().remove_reader(fd)

    Spy.__name__ = Spy.__qualname__ = f"Spying{base.__name__}"
    return Spy


SPY_FACTORIES: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": _spying(asyncio.SelectorEventLoop),
    "cqloop": _spying(cqloop.Loop),
}
if uvloop is not None:
    SPY_FACTORIES["uvloop"] = _spying(uvloop.Loop)


def watches(outer: Any, fd: int) -> bool:
    """Whether spying loop `outer` has a reader for fd."""
    return fd in outer.__dict__.get("readers", set())


@pytest.fixture
def loops() -> Iterator[Callable[..., Any]]:
    """make(kind="cqloop", spy=False) -> a new loop (with spy: one that records its
    readers, see _spying); every loop made is closed afterwards, newest first (so inner
    loops leave their outer loops before those close)."""
    made: list[asyncio.AbstractEventLoop] = []

    def make(kind: str = "cqloop", spy: bool = False) -> Any:
        new = (SPY_FACTORIES if spy else OUTER_FACTORIES)[kind]()
        made.append(new)
        return new

    try:
        yield make
    finally:
        for each in reversed(made):
            if not each.is_closed() and not each.is_running():
                each.close()


def nest_chain(make: Callable[..., Any], outer: asyncio.AbstractEventLoop, depth: int) -> list:
    """`depth` cqloop loops, each nested in the one before it, the first in `outer`."""
    chain = []
    parent = outer
    for _ in range(depth):
        child = make("cqloop")
        child.nest_in(parent)
        chain.append(child)
        parent = child
    return chain


def outer_future_of(outer: asyncio.AbstractEventLoop, inner_fut: asyncio.Future) -> Any:
    """A future of `outer` that copies the outcome of `inner_fut` (of another loop, same
    thread) once it is done."""
    fut = outer.create_future()

    def copy(done: asyncio.Future) -> None:
        if fut.done():
            return
        if done.cancelled():
            fut.cancel()
        elif done.exception() is not None:
            fut.set_exception(done.exception())
        else:
            fut.set_result(done.result())

    inner_fut.add_done_callback(copy)
    return fut


def run_outer(outer: asyncio.AbstractEventLoop, awaitable: Any, timeout: float = WAIT_S) -> Any:
    """Run `outer` until `awaitable` is done (at most `timeout` seconds); its result."""
    return outer.run_until_complete(asyncio.wait_for(awaitable, timeout))


def readable(fd: int, timeout: float = 0) -> bool:
    return bool(select.select([fd], [], [], timeout)[0])


def noop() -> None:
    pass


def _wchan(native_tid: int) -> str:
    try:
        with open(f"/proc/self/task/{native_tid}/wchan") as f:
            return f.read()
    except OSError:
        return ""


def wait_until_blocked_in_poll(native_tid: int, timeout: float = WAIT_S) -> bool:
    """From another thread: wait until thread `native_tid` sleeps in the kernel in a poll
    (epoll_wait, select, poll, or io_uring_enter's wait, io_cqring_wait; its wchan says
    so). False if not seen within `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        wchan = _wchan(native_tid)
        if "poll" in wchan or "select" in wchan or "io_cqring_wait" in wchan:
            return True
        os.sched_yield()
    return False


@pytest.fixture(scope="module")
def wchan_shows_poll() -> bool:
    """Whether /proc tells that a thread is blocked in a poll (some kernels hide wchan)."""
    main_tid = threading.get_native_id()
    r, w = os.pipe()
    seen: list[bool] = []

    def probe() -> None:
        seen.append(wait_until_blocked_in_poll(main_tid, timeout=2.0))
        os.write(w, b"x")

    thread = threading.Thread(target=probe)
    try:
        thread.start()
        select.select([r], [], [], WAIT_S)
        thread.join(WAIT_S)
    finally:
        os.close(r)
        os.close(w)
    return seen == [True]


class Watchdog:
    """Wakes `loop` from a thread after `after` seconds (a safety net for a step that is
    expected to return earlier); stopped and joined on exit."""

    def __init__(self, loop: Any, after: float = WAIT_S) -> None:
        self._timer = threading.Timer(after, loop.call_soon_threadsafe, (noop,))

    def __enter__(self) -> Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        self._timer.join()
