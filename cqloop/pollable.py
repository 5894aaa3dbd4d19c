"""cqloop.pollable: cqueues' pollable protocol and the one wait primitive built on it.

Owns `Pollable` (the protocol), `poll(*objs, timeout=None)`, `sleep(secs)` and `cancel()`
(the controller's cancel goes through it). Every cqueues module (condition, promise,
signal, notify, thread, cq sockets) waits through `poll`, so this file is the only place
that turns "wait until this object is ready" into fd registrations and timers.

The protocol, as cqueues has it: an object is pollable when it has `pollfd()` (an int fd,
or a waitable object such as a `Condition`), `events()` ("r", "w", "rw" or None) and
`timeout()` (seconds, or None), each either a method or a plain attribute. An object is
ready when its fd is ready for one of its events, when the waitable it names is signalled,
or when its own timeout passes. A bare number among poll's arguments is a timeout, as in
cqueues' `poll(1.5)`.

Any asyncio loop allows one reader and one writer per fd, while several tasks may poll the
same fd. So each loop gets a registry (`_FdRegistry`, one per loop, held weakly) that owns
the loop's registration of a polled fd and fans its readiness out to every waiter. A
waiter is one-shot: readiness wakes it and removes it at once, in the callback, so a poll
that starts before the woken task has resumed registers afresh instead of finding a
registration that is about to go.

On cqloop the registry goes straight to the kernel's fd table (no argument parsing), and
readability waits are one-shot epoll registrations (EPOLLONESHOT) that are left disarmed
rather than deleted when a wait ends: a `poll(sock)` per message costs one epoll_ctl
instead of two. On other loops (asyncio, uvloop) it uses add_reader/add_writer and
remove_reader/remove_writer.

The application's own add_reader/add_writer on a polled fd are left alone: a loop has one
slot per fd and direction, so when the application holds it (or may: uvloop cannot say),
the registry watches a private dup of the fd instead (a second registration of the same
open file, so both are told of its readiness), closed when the last wait on it ends. It
removes only what it registered: if the application takes the slot over with add_reader
while a poll waits, the poll's end leaves the application's reader in place (that poll
then waits for its timeout, a cancel(), or the next poll's registration on a dup).
"""

from __future__ import annotations

import asyncio
import math
import os
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import Any, Protocol, Self, TypeVar, runtime_checkable

from cqloop._core.kernel import Kernel

__all__ = [
    "FdPollable",
    "Pollable",
    "cancel",
    "poll",
    "pollfd_of",
    "sleep",
    "subscribe",
    "unsubscribe",
    "wait_readable",
    "wait_writable",
]

T = TypeVar("T")

_EVENT_KINDS = {"r": (True, False), "w": (False, True), "rw": (True, True), "wr": (True, True)}


@runtime_checkable
class Pollable(Protocol):
    """cqueues' pollable protocol. Each member may be a method or a plain attribute."""

    def pollfd(self) -> Any: ...

    def events(self) -> str | None: ...

    def timeout(self) -> float | None: ...


# -- reading the protocol ---------------------------------------------------------------


def _member(obj: Any, name: str) -> Any:
    value = getattr(obj, name, None)
    return value() if callable(value) else value


def pollfd_of(obj: Any) -> Any:
    """What obj is polled through: an int fd, a waitable (a Condition), or None."""
    fd = _member(obj, "pollfd")
    if fd is None or _is_waitable(fd):
        return fd
    if isinstance(fd, int) and not isinstance(fd, bool):
        if fd < 0:
            raise ValueError(f"{obj!r}.pollfd() gave a negative fd: {fd}")
        return fd
    fileno = getattr(fd, "fileno", None)
    if fileno is not None:
        return int(fileno())
    raise TypeError(f"{obj!r}.pollfd() gave {fd!r}: expected an fd, a Condition or None")


def _events_of(obj: Any) -> tuple[bool, bool]:
    events = _member(obj, "events")
    if events is None or events == "":
        return (False, False)
    try:
        return _EVENT_KINDS[events]
    except KeyError:
        raise ValueError(
            f"{obj!r}.events() gave {events!r}: expected 'r', 'w', 'rw' or None"
        ) from None


def _timeout_of(obj: Any) -> float | None:
    timeout = _member(obj, "timeout")
    if timeout is None:
        return None
    timeout = float(timeout)
    if math.isnan(timeout):
        raise ValueError(f"{obj!r}.timeout() gave NaN")
    return max(0.0, timeout)


def _is_waitable(obj: Any) -> bool:
    # A Condition (or anything else that wakes pollers itself rather than through an fd).
    return hasattr(obj, "_attach_poller")


def _is_timeout(obj: Any) -> bool:
    return isinstance(obj, (int, float)) and not isinstance(obj, bool)


# -- one poll -------------------------------------------------------------------------


class _Waiter(Protocol):
    """What the registry wakes: a poll() or a wait_readable/wait_writable."""

    def fire(self, obj: Any) -> None: ...


class _Poll:
    """One call of poll(): the future its task waits on, what it registered, and which
    of its objects have turned ready. `fire` may be called from any thread."""

    __slots__ = (
        "_fds",
        "_future",
        "_loop",
        "_objects",
        "_ready",
        "_registry",
        "_thread",
        "_waitables",
    )

    def __init__(
        self, loop: asyncio.AbstractEventLoop, registry: _FdRegistry, objects: tuple[Any, ...]
    ) -> None:
        self._loop = loop
        self._registry = registry
        self._objects = objects
        registry._polls.add(self)
        self._future: asyncio.Future[None] = loop.create_future()
        self._thread = threading.get_ident()
        self._ready: dict[int, Any] = {}
        self._fds: list[tuple[int, bool, Any]] = []
        self._waitables: list[tuple[Any, Any]] = []

    def fire(self, obj: Any) -> None:
        """obj is ready: wake the poll (if it still waits) and report obj with the rest."""
        if threading.get_ident() != self._thread:
            self._loop.call_soon_threadsafe(self._fire_here, obj)
        else:
            self._fire_here(obj)

    def _fire_here(self, obj: Any) -> None:
        if self._registry is None:
            return  # finished: its registrations are gone
        self._ready[id(obj)] = obj
        if not self._future.done():
            self._future.set_result(None)

    def watch_fd(self, fd: int, reading: bool, obj: Any) -> None:
        self._registry.add(fd, reading, self, obj)
        self._fds.append((fd, reading, obj))

    def watch_waitable(self, waitable: Any, obj: Any) -> None:
        token = waitable._attach_poller(self, obj)
        self._waitables.append((waitable, token))

    def finish(self) -> None:
        """Drop every registration this poll still holds (it has returned or was
        cancelled)."""
        registry = self._registry
        self._registry = None  # type: ignore[assignment]
        registry._polls.discard(self)
        for fd, reading, obj in self._fds:
            registry.discard(fd, reading, self, obj)
        for waitable, token in self._waitables:
            waitable._detach_poller(token)


async def poll(*objs: Any, timeout: float | None = None) -> tuple[Any, ...]:
    """Wait until at least one of objs is ready; return the ready ones, in the order
    given, or () when `timeout` seconds pass first. A number among objs is a timeout too.
    Always yields to the loop at least once, as cqueues' poll does."""
    loop = asyncio.get_running_loop()
    if not objs and timeout is None:
        # Nothing to wait for: yield once, as cqueues' poll() does.
        await asyncio.sleep(0)
        return ()
    registry = _registry_for(loop)
    waiter = _Poll(loop, registry, objs)
    deadlines: list[tuple[float, Any]] = []
    try:
        # Attach first, then read the timeouts: an object resolved in between (a promise
        # set from another thread) then reports timeout() == 0 and is not missed.
        pollables = []
        for obj in objs:
            if _is_timeout(obj):
                timeout = obj if timeout is None else min(timeout, obj)
                continue
            pollables.append(obj)
            fd = pollfd_of(obj)
            if fd is None:
                pass
            elif isinstance(fd, int):
                reading, writing = _events_of(obj)
                if reading:
                    waiter.watch_fd(fd, True, obj)
                if writing:
                    waiter.watch_fd(fd, False, obj)
            else:
                waiter.watch_waitable(fd, obj)
        now = loop.time()
        for obj in pollables:
            obj_timeout = _timeout_of(obj)
            if obj_timeout is not None:
                deadlines.append((now + obj_timeout, obj))
        if timeout is not None:
            if math.isnan(timeout):
                raise ValueError("timeout is NaN")
            deadlines.append((now + max(0.0, timeout), None))
        timer = None
        if deadlines:
            first = min(when for when, _ in deadlines)
            timer = loop.call_at(first, _on_deadline, waiter, deadlines, first)
        try:
            await waiter._future
        finally:
            if timer is not None:
                timer.cancel()
    finally:
        ready = waiter._ready
        waiter.finish()
    return tuple(obj for obj in _unique(objs) if id(obj) in ready)


def _on_deadline(waiter: _Poll, deadlines: list[tuple[float, Any]], first: float) -> None:
    # Every object whose deadline is the earliest one is ready; so is any whose deadline
    # has passed meanwhile. poll's own timeout (obj None) just ends the wait.
    now = waiter._loop.time()
    for when, obj in deadlines:
        if when <= first or when <= now:
            if obj is None:
                if not waiter._future.done():
                    waiter._future.set_result(None)
            else:
                waiter.fire(obj)


def _unique(objs: Iterable[Any]) -> Iterable[Any]:
    seen: set[int] = set()
    for obj in objs:
        if not _is_timeout(obj) and id(obj) not in seen:
            seen.add(id(obj))
            yield obj


class _FdWaiter:
    """One wait_readable/wait_writable: a future and nothing else. Fired only in the
    loop's thread (fd readiness is; cancel() from elsewhere crosses over first)."""

    __slots__ = ("future",)

    def __init__(self, future: asyncio.Future[bool]) -> None:
        self.future = future

    def fire(self, obj: Any) -> None:
        if not self.future.done():
            self.future.set_result(True)

    def expire(self) -> None:
        if not self.future.done():
            self.future.set_result(False)


async def wait_readable(fd: int, timeout: float | None = None) -> bool:
    """Wait until fd is readable (True) or timeout seconds pass (False): poll() for one
    fd, without the protocol lookups, through the same registry (cq sockets' own waits)."""
    return await _wait_fd(fd, True, timeout)


async def wait_writable(fd: int, timeout: float | None = None) -> bool:
    """wait_readable's twin for writability."""
    return await _wait_fd(fd, False, timeout)


async def _wait_fd(fd: int, reading: bool, timeout: float | None) -> bool:
    loop = asyncio.get_running_loop()
    registry = _REGISTRIES.get(loop)
    if registry is None:
        registry = _registry_for(loop)
    waiter = _FdWaiter(loop.create_future())
    registry.add(fd, reading, waiter, None)
    timer = None if timeout is None else loop.call_later(timeout, waiter.expire)
    try:
        return await waiter.future
    finally:
        if timer is not None:
            timer.cancel()
        # A no-op when it fired: firing removed it.
        registry.discard(fd, reading, waiter, None)


async def poll_until(obj: Any, take: Callable[[], T | None], timeout: float | None) -> T | None:
    """take() until it gives something (not None), polling obj while it gives nothing; None
    once `timeout` seconds (None: no limit) pass first. The wait of the cqueues objects whose
    readiness is "take_nowait() would give something" (signal listeners, notify watchers)."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + max(0.0, timeout)
    while True:
        taken = take()
        if taken is not None:
            return taken
        if deadline is None:
            await poll(obj)
        else:
            remaining = deadline - loop.time()
            if remaining <= 0.0:
                return None
            await poll(obj, timeout=remaining)


async def sleep(secs: float) -> None:
    """Suspend the calling task for secs seconds (cqueues.sleep). Always a timer wait,
    even for 0 (asyncio.sleep(0) is a bare yield): on a controller it ends in the next
    step, as cqueues.sleep(0) does, and on any loop it lets one poll happen first."""
    if secs > 0:
        await asyncio.sleep(secs)
        return
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    timer = loop.call_later(0, _set_done, done)
    try:
        await done
    finally:
        timer.cancel()


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def cancel(*fds_or_objs: Any, loop: asyncio.AbstractEventLoop | None = None) -> int:
    """cqueues.cancel(): wake every poll waiting on these fds or objects, as if they were
    ready, and drop the loops' registrations of the fds, so that they can be closed
    safely. On every loop (loop None), or on `loop` alone (the controller's cancel).
    Returns how many waits were woken in this thread; loops of other threads are asked
    to do the same through call_soon_threadsafe."""
    if loop is not None:
        registry = _REGISTRIES.get(loop)
        registries = [] if registry is None else [registry]
    else:
        registries = list(_REGISTRIES.values())
    here = threading.get_ident()
    woken = 0
    for registry in registries:
        if registry._thread == here:
            woken += registry.cancel(fds_or_objs)
        elif not registry._loop.is_closed():
            registry._loop.call_soon_threadsafe(registry.cancel, fds_or_objs)
    return woken


# -- the per-loop registry --------------------------------------------------------------


class _FdRegistry:
    """The polled fds of one loop: fd -> the (poll, object) pairs waiting to read it and
    to write it, the persistent subscribers (a cq socket receiving, see subscribe()), and
    the loop registrations that serve them."""

    __slots__ = (
        "__weakref__",
        "_introspects",
        "_kernel",
        "_loop",
        "_polls",
        "_readers",
        "_subscribers",
        "_targets",
        "_thread",
        "_writers",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        # A loop is used from one thread: the one its first poll ran in.
        self._thread = threading.get_ident()
        self._kernel = isinstance(loop, Kernel)
        self._readers: dict[int, list[tuple[_Waiter, Any]]] = {}
        self._writers: dict[int, list[tuple[_Waiter, Any]]] = {}
        # The polls under way on this loop (cancel() finds waits on objects through it).
        self._polls: set[_Poll] = set()
        # (fd, reading) -> a callback run at every readiness until unsubscribed.
        self._subscribers: dict[tuple[int, bool], Callable[[], object]] = {}
        # (fd, reading) -> what this registry registered for it: the fd it registered
        # (fd itself, or a private dup when the application uses fd's slot) and the
        # loop's handle for it (None where the loop does not say).
        self._targets: dict[tuple[int, bool], tuple[int, Any]] = {}
        # Whether the loop tells which handle holds an fd's slot: cqloop and asyncio's
        # selector loops do; elsewhere (uvloop) the registry always watches a dup.
        self._introspects = self._kernel or hasattr(getattr(loop, "_selector", None), "get_key")

    def __del__(self) -> None:
        # A loop dropped while polls still waited: its dups are this registry's to close.
        for (fd, _reading), (target, _handle) in getattr(self, "_targets", {}).items():
            if target != fd:
                os.close(target)

    def add(self, fd: int, reading: bool, waiter: _Waiter, obj: Any) -> None:
        table = self._readers if reading else self._writers
        waiters = table.get(fd)
        if waiters is not None:
            waiters.append((waiter, obj))
            return
        table[fd] = [(waiter, obj)]
        self._register(fd, reading)

    def discard(self, fd: int, reading: bool, waiter: _Waiter, obj: Any) -> None:
        table = self._readers if reading else self._writers
        waiters = table.get(fd)
        if waiters is None:
            return
        for index, (other, other_obj) in enumerate(waiters):
            if other is waiter and other_obj is obj:
                del waiters[index]
                break
        if not waiters:
            del table[fd]
            self._settle(fd, reading)

    def subscribe(self, fd: int, reading: bool, callback: Callable[[], object]) -> None:
        """Run callback() at every readiness of fd until unsubscribe(): the registration
        stays (no re-arming per wait) while one-shot waiters come and go beside it. The
        subscriber must consume what makes the fd ready (level-triggered), or
        unsubscribe, or the loop spins."""
        key = (fd, reading)
        if key in self._subscribers:
            raise RuntimeError(f"fd {fd} already has a subscriber on this loop")
        self._subscribers[key] = callback
        self._register(fd, reading)

    def unsubscribe(self, fd: int, reading: bool) -> None:
        if self._subscribers.pop((fd, reading), None) is None:
            return
        table = self._readers if reading else self._writers
        if fd not in table:
            self._unregister(fd, reading)
        else:
            self._register(fd, reading)

    def cancel(self, fds_or_objs: tuple[Any, ...]) -> int:
        woken = 0
        for target in fds_or_objs:
            if isinstance(target, int) and not isinstance(target, bool):
                woken += self.cancel_fd(target)
                continue
            fd = pollfd_of(target) if hasattr(target, "pollfd") else None
            if fd is None and hasattr(target, "fileno"):
                fd = target.fileno()  # a socket or a file: cancel its fd
            if isinstance(fd, int):
                woken += self.cancel_fd(fd)
            woken += self.cancel_object(target)
        return woken

    def cancel_fd(self, fd: int) -> int:
        woken = 0
        for reading, table in ((True, self._readers), (False, self._writers)):
            waiters = table.pop(fd, None)
            if waiters is not None:
                self._settle(fd, reading)
                for waiter, obj in waiters:
                    waiter.fire(obj)
                woken += len(waiters)
        return woken

    def cancel_object(self, target: Any) -> int:
        woken = 0
        for waiter in list(self._polls):
            if any(obj is target for obj in waiter._objects):
                waiter.fire(target)
                woken += 1
        return woken

    # -- registrations --

    def _register(self, fd: int, reading: bool) -> None:
        """(Re-)register fd for the waiters and the subscriber it has now. A subscriber
        alone is called by the loop directly (one Python call per readiness on a busy cq
        socket); waiters go through _on_ready. Switching costs one epoll_ctl, and happens
        only when a poll starts or ends beside a subscriber."""
        loop: Any = self._loop
        key = (fd, reading)
        subscriber = self._subscribers.get(key)
        table = self._readers if reading else self._writers
        callback: Callable[..., object]
        args: tuple[Any, ...]
        if subscriber is not None and fd not in table:
            callback, args = subscriber, ()
        else:
            callback, args = self._on_ready, (fd, reading)
        entry = self._targets.get(key)
        if entry is None:
            target = fd if self._slot_holder(fd, reading) is None else os.dup(fd)
        elif entry[0] == fd and self._slot_holder(fd, reading) is not entry[1]:
            # The application took fd's slot over (add_reader replaces): leave it be.
            target = os.dup(fd)
        else:
            target = entry[0]
        try:
            if self._kernel:
                if reading and subscriber is None:
                    handle = loop._wait_readable(target, callback, args)
                elif reading:
                    handle = loop._add_reader(target, callback, args)
                else:
                    handle = loop._add_writer(target, callback, args)
            else:
                if reading:
                    loop.add_reader(target, callback, *args)
                else:
                    loop.add_writer(target, callback, *args)
                handle = self._slot_holder(target, reading)
        except BaseException:
            if target != fd and (entry is None or entry[0] != target):
                os.close(target)
            raise
        self._targets[key] = (target, handle)

    def _slot_holder(self, fd: int, reading: bool) -> Any:
        """The handle in the loop's slot for fd and direction (None: the slot is free),
        or a marker object where the loop does not say (then the slot counts as taken)."""
        loop: Any = self._loop
        if self._kernel:
            return loop._fd_handle(fd, reading)
        if not self._introspects:
            return _UNKNOWN
        try:
            key = loop._selector.get_key(fd)
        except (KeyError, ValueError):
            return None
        return key.data[0] if reading else key.data[1]

    def _settle(self, fd: int, reading: bool) -> None:
        """fd has no waiters left: back to the subscriber alone, or unwatched."""
        if (fd, reading) in self._subscribers:
            if not self._loop.is_closed():
                self._register(fd, reading)
        else:
            self._unregister(fd, reading)

    def _unregister(self, fd: int, reading: bool) -> None:
        """Drop this registry's registration for fd and direction, and only its own: a
        dup goes with it; on fd itself, a handle the application put in the slot
        meanwhile stays."""
        entry = self._targets.pop((fd, reading), None)
        if entry is None:
            return
        target, handle = entry
        loop: Any = self._loop
        try:
            if loop.is_closed():
                return
            if target == fd and self._slot_holder(fd, reading) is not handle:
                return
            if self._kernel:
                if reading:
                    loop._remove_reader(target)
                else:
                    loop._remove_writer(target)
            elif reading:
                loop.remove_reader(target)
            else:
                loop.remove_writer(target)
        finally:
            if target != fd:
                os.close(target)

    def _on_ready(self, fd: int, reading: bool) -> None:
        """The loop's callback: the fd is ready; every waiter on it wakes and leaves, and
        the subscriber, if any, runs (and keeps the registration)."""
        table = self._readers if reading else self._writers
        waiters = table.pop(fd, None)
        subscriber = self._subscribers.get((fd, reading))
        self._settle(fd, reading)
        if waiters is not None:
            for waiter, obj in waiters:
                waiter.fire(obj)
        if subscriber is not None:
            subscriber()


# What _slot_holder answers when the loop cannot say who holds an fd's slot.
_UNKNOWN = object()


_REGISTRIES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _FdRegistry] = (
    weakref.WeakKeyDictionary()
)


def _registry_for(loop: asyncio.AbstractEventLoop) -> _FdRegistry:
    registry = _REGISTRIES.get(loop)
    if registry is None:
        registry = _REGISTRIES[loop] = _FdRegistry(loop)
    return registry


def subscribe(
    loop: asyncio.AbstractEventLoop,
    fd: int,
    callback: Callable[[], object],
    *,
    reading: bool = True,
) -> None:
    """Run callback() in `loop` at every readiness of fd until unsubscribe(), sharing the
    loop's registration of fd with poll() and the wait_* functions (cq sockets receive
    this way). The callback must consume what makes fd ready, or unsubscribe."""
    _registry_for(loop).subscribe(fd, reading, callback)


def unsubscribe(loop: asyncio.AbstractEventLoop, fd: int, *, reading: bool = True) -> None:
    registry = _REGISTRIES.get(loop)
    if registry is not None:
        registry.unsubscribe(fd, reading)


def polled_fds(loop: asyncio.AbstractEventLoop) -> dict[str, int]:
    """How many fds `loop`'s registry watches for poll() (for statistics and tests)."""
    registry = _REGISTRIES.get(loop)
    if registry is None:
        return {"readers": 0, "writers": 0}
    return {"readers": len(registry._readers), "writers": len(registry._writers)}


class FdPollable:
    """Base of the pollables that own one fd their pollers watch for reading (cqloop.signal's
    Listener, cqloop.notify's Notifier): the pollable protocol on it, close() that wakes
    the pollers before the fd goes, the context manager, and closing an fd left open when
    the object is collected. A subclass sets `_fd` (-1 until it has one), names itself in
    `_WHAT` for errors, and drops its own buffered state in `_on_close()`."""

    __slots__ = ("__weakref__", "_fd")
    _fd: int
    _WHAT = "pollable"

    def pollfd(self) -> int:
        self._check_open()
        return self._fd

    def fileno(self) -> int:
        """The fd, for select()/poll() and loops that take fds."""
        return self.pollfd()

    def events(self) -> str:
        return "r"

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        """Close the fd. Waits in progress wake and raise ValueError (at once on this
        thread's loops, at their next iteration on other threads'). Idempotent."""
        fd, self._fd = self._fd, -1
        if fd < 0:
            return
        self._on_close()
        # Wake pollers before the fd goes: a registration must not outlive its fd.
        cancel(fd)
        os.close(fd)

    def _on_close(self) -> None:
        """Drop what the object buffered from its fd (close() calls it once)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_fd", -1) >= 0:
            os.close(self._fd)
            self._fd = -1

    def _check_open(self) -> None:
        if self._fd < 0:
            raise ValueError(f"the {self._WHAT} is closed")
