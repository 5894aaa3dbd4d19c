"""cqloop.condition: cqueues' condition variable, awaitable on any asyncio loop.

A Condition has no lock and no predicate: `await cond.wait()` suspends until some other
code calls `cond.signal()`, which wakes waiting tasks in FIFO order (LIFO with
`lifo=True`) and says how many it woke. A signal with nobody waiting is not remembered
by waiters (cqueues' semantics, not threading.Condition's).

A Condition is pollable: `pollfd()` returns the condition itself, so `cqloop.poll(cond,
sock)` wakes on whichever comes first, and `cond.wait(*also)` is that poll. Waiters may
belong to different loops, in this thread or others; each is woken through its own loop
(see pollable._Poll.fire), so a condition can wake a task of another controller.

For pollers outside any loop (select, a GUI toolkit), `fileno()` creates an eventfd that
every signal() from then on makes readable; it stays readable until `clear()` reads it.
The eventfd is created only when asked for and closed by close().
"""

from __future__ import annotations

import itertools
import os
import threading
from typing import Any

from cqloop.pollable import poll

__all__ = ["Condition", "new"]


class Condition:
    """cqueues' condition variable: wait() until signal()."""

    def __init__(self, lifo: bool = False) -> None:
        self._lifo = lifo
        # token -> (poll, the object it polls for): insertion order is arrival order.
        self._waiters: dict[int, tuple[Any, Any]] = {}
        self._tokens = itertools.count()
        # signal() may come from another thread; pollers attach from their loops' threads.
        self._lock = threading.Lock()
        self._efd = -1
        self._signals = 0

    def __repr__(self) -> str:
        order = "lifo" if self._lifo else "fifo"
        return f"<cqloop.Condition {order} waiters={len(self._waiters)}>"

    # -- the pollable protocol --

    def pollfd(self) -> Condition:
        return self

    def events(self) -> None:
        return None

    def timeout(self) -> None:
        return None

    # -- waiting and signalling --

    async def wait(self, *also: Any, timeout: float | None = None) -> bool:
        """Wait for a signal, or until one of `also` is ready or `timeout` seconds pass.
        True when the condition was signalled."""
        ready = await poll(self, *also, timeout=timeout)
        return any(obj is self for obj in ready)

    def signal(self, n: int | None = None) -> int:
        """Wake n waiters (all when n is None), oldest first (newest with lifo=True);
        return how many were woken. Safe to call from any thread."""
        if n is not None and n < 0:
            raise ValueError("n must be None or >= 0")
        with self._lock:
            self._signals += 1
            count = len(self._waiters) if n is None else min(n, len(self._waiters))
            tokens = list(self._waiters)
            chosen = tokens[-count:][::-1] if self._lifo else tokens[:count]
            woken = [self._waiters.pop(token) for token in chosen] if count else []
            efd = self._efd
        if efd >= 0:
            os.eventfd_write(efd, 1)
        for waiter, obj in woken:
            waiter.fire(obj)
        return len(woken)

    def count(self) -> int:
        """How many polls wait on this condition now."""
        return len(self._waiters)

    # -- outside any loop --

    def fileno(self) -> int:
        """An eventfd that every signal() from now on makes readable, for select/epoll
        outside any loop; clear() reads it back."""
        with self._lock:
            if self._efd < 0:
                self._efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            return self._efd

    def clear(self) -> int:
        """Read the eventfd back to not-readable; return how many signals it counted."""
        efd = self._efd
        if efd < 0:
            return 0
        try:
            return os.eventfd_read(efd)
        except BlockingIOError:
            return 0

    def close(self) -> None:
        """Close the eventfd, if fileno() made one. The condition stays usable."""
        with self._lock:
            efd, self._efd = self._efd, -1
        if efd >= 0:
            os.close(efd)

    def __enter__(self) -> Condition:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        if self._efd >= 0:
            os.close(self._efd)

    def statistics(self) -> dict[str, Any]:
        return {"waiters": len(self._waiters), "signals": self._signals, "fd": self._efd}

    # -- called by pollable.poll --

    def _attach_poller(self, waiter: Any, obj: Any) -> int:
        with self._lock:
            token = next(self._tokens)
            self._waiters[token] = (waiter, obj)
        return token

    def _detach_poller(self, token: int) -> None:
        with self._lock:
            self._waiters.pop(token, None)


def new(lifo: bool = False) -> Condition:
    """cqueues' condition.new()."""
    return Condition(lifo)
