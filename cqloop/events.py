"""cqloop.events: in-process events, in the manner of Node's EventEmitter and Lua's event
libraries (lua-resty-worker-events).

Owns: `EventEmitter` (registration and dispatch of handlers), the process-wide pub-sub
(`subscribe` / `publish` on `process_bus()`), `event_list` (a typo-proof namespace of event
names) and `DeferredQueue` (post now, dispatch on the next tick).

Invariants:
- One dispatch calls handlers in registration order, from a snapshot taken when it starts:
  a handler added during a dispatch is not called in it; a handler removed during a dispatch
  that has not run yet is not called in it (each registration carries an `active` flag,
  checked just before the call).
- A `once` handler is deactivated before it is called, so it runs at most once, even when
  its own event is emitted again from inside it.
- With `Reentrancy.QUEUE` (the default) at most one dispatch per (emitter, event) is in
  progress. An emit of that event made meanwhile (by one of its handlers, or by another task
  while `emit_async` is suspended) is queued, returns at once, and is delivered, in order,
  by the dispatch in progress before that returns, in that dispatch's mode (sync or async).
- A handler's `Exception` never reaches the emitter's caller; it goes to the error hook.
  KeyboardInterrupt, SystemExit and the cancellation of the emitting task propagate.

Who calls in: user code on the thread that runs the loop (nothing here is thread-safe; from
another thread, go through `loop.call_soon_threadsafe`). Pure Python, independent of `_core`:
it works on any asyncio loop, and sync emits need no loop at all.
"""

from __future__ import annotations

import asyncio
import difflib
import enum
import inspect
import keyword
import logging
import types
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Any, NoReturn

__all__ = [
    "DeferredQueue",
    "DeferredQueueStatistics",
    "EmitterStatistics",
    "ErrorHook",
    "EventEmitter",
    "EventList",
    "Reentrancy",
    "event_list",
    "process_bus",
    "publish",
    "publish_async",
    "subscribe",
]

logger = logging.getLogger(__name__)

Handler = Callable[..., object]
Unsubscribe = Callable[[], None]
# Receives a context dict shaped like loop.call_exception_handler()'s.
ErrorHook = Callable[[dict[str, Any]], object]

# How many close matches a typo in an event list suggests.
MAX_NAME_SUGGESTIONS = 3


class Reentrancy(enum.Enum):
    """What an emit of an event does while that event is already being dispatched."""

    QUEUE = "queue"  # deliver it after the dispatch in progress (no recursion)
    RECURSE = "recurse"  # dispatch it at once, nested inside the current one (Node's way)


@dataclass(frozen=True)
class EmitterStatistics:
    events: int  # events with at least one live handler
    listeners: int  # live registrations over all events
    dispatches: int  # emits delivered (a queued emit counts when it is delivered)
    handler_calls: int
    handler_errors: int
    queued: int  # emits waiting for the dispatch in progress of their event


@dataclass(frozen=True)
class DeferredQueueStatistics:
    pending: int
    posted: int
    processed: int


# -- helpers -------------------------------------------------------------------------------


def _check_handler(handler: object) -> None:
    if not callable(handler):
        raise TypeError(f"an event handler must be callable, not {type(handler).__name__}")


def _is_being_cancelled() -> bool:
    """True when the current task itself is being cancelled (so a CancelledError is aimed at
    us and must propagate), as opposed to a handler's own work having been cancelled."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _discard_awaitable(awaitable: object) -> None:
    # Closing an unawaited coroutine avoids the "never awaited" RuntimeWarning; the error
    # hook already says what went wrong.
    close = getattr(awaitable, "close", None)
    if callable(close):
        close()


def _report_to_loop(context: dict[str, Any]) -> None:
    """The default error hook: the running loop's exception handler, or the log if none."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        logger.error(context["message"], exc_info=context.get("exception"))
        return
    loop.call_exception_handler(context)


class _Registration:
    """One on()/once() call. Holds the handler strongly, or weakly for weak=True."""

    __slots__ = ("_ref", "active", "once")

    def __init__(
        self, handler: Handler, *, once: bool, weak: bool, on_dead: Callable[[object], None]
    ) -> None:
        self.active = True
        self.once = once
        self._ref: Callable[[], Handler | None]
        if not weak:
            self._ref = lambda: handler
            return
        if isinstance(handler, types.BuiltinMethodType) and not isinstance(
            handler.__self__, types.ModuleType | None
        ):
            # `[].append` is made afresh on each access like a bound method, but WeakMethod
            # cannot follow it (it has no __func__): a weak reference to it would die at once.
            raise TypeError(
                f"weak=True cannot hold the built-in bound method {handler!r}; "
                f"register a function or method that calls it"
            )
        try:
            # A bound method object is created afresh on each attribute access, so a plain
            # weakref to it dies at once; WeakMethod follows its __self__ and __func__ instead.
            if inspect.ismethod(handler):
                self._ref = weakref.WeakMethod(handler, on_dead)
            else:
                self._ref = weakref.ref(handler, on_dead)
        except TypeError:
            raise TypeError(
                f"weak=True needs a handler that supports weak references; "
                f"{type(handler).__name__} {handler!r} does not"
            ) from None

    def handler(self) -> Handler | None:
        return self._ref()


# -- EventEmitter --------------------------------------------------------------------------


class EventEmitter:
    """Named events with ordered handlers. See the module docstring for the invariants."""

    def __init__(
        self,
        *,
        reentrancy: Reentrancy = Reentrancy.QUEUE,
        error_hook: ErrorHook | None = None,
    ) -> None:
        if not isinstance(reentrancy, Reentrancy):
            raise TypeError(f"reentrancy must be a Reentrancy, not {reentrancy!r}")
        if error_hook is not None and not callable(error_hook):
            raise TypeError(f"error_hook must be callable or None, not {error_hook!r}")
        self._reentrancy = reentrancy
        self._error_hook: ErrorHook = error_hook if error_hook is not None else _report_to_loop
        self._handlers: dict[Hashable, list[_Registration]] = {}
        self._dispatching: set[Hashable] = set()
        self._pending: dict[Hashable, deque[tuple[Any, ...]]] = {}
        self._dispatches = 0
        self._handler_calls = 0
        self._handler_errors = 0

    # -- registration --

    def on(self, event: Hashable, handler: Handler, *, weak: bool = False) -> Unsubscribe:
        """Call `handler(*args)` on each emit of `event`; returns a callable that removes
        this registration (idempotent). With weak=True the emitter does not keep the handler
        (or a bound method's object) alive; the registration goes when it is collected."""
        return self._add(event, handler, once=False, weak=weak)

    def once(self, event: Hashable, handler: Handler, *, weak: bool = False) -> Unsubscribe:
        """As on(), for the next emit of `event` only."""
        return self._add(event, handler, once=True, weak=weak)

    def off(self, event: Hashable, handler: Handler) -> bool:
        """Remove the most recent registration of `handler` (compared with ==, so a bound
        method matches a fresh one of the same object) for `event`; False if there is none."""
        for registration in reversed(self._handlers.get(event, ())):
            if registration.active and registration.handler() == handler:
                self._remove(event, registration)
                return True
        return False

    def remove_all(self, event: Hashable | None = None) -> None:
        """Remove every handler of `event`, or of every event when it is None."""
        events = list(self._handlers) if event is None else [event]
        for name in events:
            for registration in self._handlers.pop(name, ()):
                registration.active = False

    def listener_count(self, event: Hashable) -> int:
        """The live handlers of `event` (weak ones whose target is gone do not count)."""
        return len(self.listeners(event))

    def listeners(self, event: Hashable) -> list[Handler]:
        handlers = (r.handler() for r in self._handlers.get(event, ()) if r.active)
        return [h for h in handlers if h is not None]

    def event_names(self) -> list[Hashable]:
        return [event for event in self._handlers if self.listener_count(event)]

    # -- emitting --

    def emit(self, event: Hashable, *args: Any) -> bool:
        """Call the handlers of `event` with `args`, in registration order. A handler that
        returns an awaitable is an error (reported; use emit_async). Returns whether `event`
        had handlers."""
        had_handlers = self.listener_count(event) > 0
        if self._reentrancy is Reentrancy.RECURSE:
            self._dispatches += 1
            self._call_handlers(event, args)
            return had_handlers
        self._pending.setdefault(event, deque()).append(args)
        if event not in self._dispatching:
            self._drain(event)
        return had_handlers

    async def emit_async(self, event: Hashable, *args: Any, concurrent: bool = False) -> bool:
        """Call the handlers of `event` and await what they return: one after another in
        registration order, or (concurrent=True) all called in order, then awaited together.
        Returns whether `event` had handlers."""
        had_handlers = self.listener_count(event) > 0
        if self._reentrancy is Reentrancy.RECURSE:
            self._dispatches += 1
            await self._call_handlers_async(event, args, concurrent)
            return had_handlers
        self._pending.setdefault(event, deque()).append(args)
        if event not in self._dispatching:
            await self._drain_async(event, concurrent)
        return had_handlers

    def statistics(self) -> EmitterStatistics:
        counts = [self.listener_count(event) for event in self._handlers]
        return EmitterStatistics(
            events=sum(1 for count in counts if count),
            listeners=sum(counts),
            dispatches=self._dispatches,
            handler_calls=self._handler_calls,
            handler_errors=self._handler_errors,
            queued=sum(len(queue) for queue in self._pending.values()),
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} events={len(self._handlers)} {self._reentrancy.value}>"

    # -- private --

    def _add(self, event: Hashable, handler: Handler, *, once: bool, weak: bool) -> Unsubscribe:
        _check_handler(handler)
        hash(event)  # an unhashable event fails here, not at the first emit
        registration = _Registration(
            handler, once=once, weak=weak, on_dead=_pruner(weakref.ref(self), event)
        )
        self._handlers.setdefault(event, []).append(registration)

        def unsubscribe() -> None:
            self._remove(event, registration)

        return unsubscribe

    def _remove(self, event: Hashable, registration: _Registration) -> None:
        registration.active = False
        registrations = self._handlers.get(event)
        if registrations is None:
            return
        if registration in registrations:
            registrations.remove(registration)
        if not registrations:
            del self._handlers[event]

    def _prune(self, event: Hashable) -> None:
        for registration in list(self._handlers.get(event, ())):
            if registration.handler() is None:
                self._remove(event, registration)

    def _take(self, event: Hashable, registration: _Registration) -> Handler | None:
        """The handler to call now for this registration of a snapshot, or None to skip it."""
        if not registration.active:
            return None
        handler = registration.handler()
        if handler is None:
            self._remove(event, registration)
            return None
        if registration.once:
            self._remove(event, registration)
        self._handler_calls += 1
        return handler

    def _report(self, event: Hashable, handler: Handler, exc: BaseException) -> None:
        self._handler_errors += 1
        context = {
            "message": f"Exception in handler {handler!r} for event {event!r}",
            "exception": exc,
            "event": event,
            "handler": handler,
            "emitter": self,
        }
        try:
            self._error_hook(context)
        except Exception:
            logger.exception("error hook of %r failed on %s", self, context["message"])

    def _drain(self, event: Hashable) -> None:
        """The only place sync dispatches of a queued-reentrancy emitter run."""
        self._dispatching.add(event)
        try:
            queue = self._pending[event]
            while queue:
                args = queue.popleft()
                self._dispatches += 1
                self._call_handlers(event, args)
        finally:
            self._end_dispatch(event)

    async def _drain_async(self, event: Hashable, concurrent: bool) -> None:
        """As _drain, awaiting handlers. If the task is cancelled, emits still queued stay
        queued and go out, first, with the next emit of `event`."""
        self._dispatching.add(event)
        try:
            queue = self._pending[event]
            while queue:
                args = queue.popleft()
                self._dispatches += 1
                await self._call_handlers_async(event, args, concurrent)
        finally:
            self._end_dispatch(event)

    def _end_dispatch(self, event: Hashable) -> None:
        self._dispatching.discard(event)
        queue = self._pending.get(event)
        if queue is not None and not queue:
            del self._pending[event]

    def _call_handlers(self, event: Hashable, args: tuple[Any, ...]) -> None:
        for registration in list(self._handlers.get(event, ())):
            handler = self._take(event, registration)
            if handler is None:
                continue
            try:
                result = handler(*args)
            except Exception as exc:
                self._report(event, handler, exc)
                continue
            if inspect.isawaitable(result):
                _discard_awaitable(result)
                self._report(
                    event,
                    handler,
                    TypeError(
                        f"handler {handler!r} for event {event!r} returned an awaitable, "
                        f"which emit() cannot wait for; use 'await emitter.emit_async()'"
                    ),
                )

    async def _call_handlers_async(
        self, event: Hashable, args: tuple[Any, ...], concurrent: bool
    ) -> None:
        awaiting: list[tuple[Handler, Awaitable[object]]] = []
        for registration in list(self._handlers.get(event, ())):
            handler = self._take(event, registration)
            if handler is None:
                continue
            try:
                result = handler(*args)
                if not inspect.isawaitable(result):
                    continue
                if concurrent:
                    awaiting.append((handler, result))
                    continue
                await result
            except asyncio.CancelledError as exc:
                if _is_being_cancelled():
                    raise
                self._report(event, handler, exc)
            except Exception as exc:
                self._report(event, handler, exc)
        if not awaiting:
            return
        outcomes = await asyncio.gather(*(aw for _, aw in awaiting), return_exceptions=True)
        for (handler, _), outcome in zip(awaiting, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                self._report(event, handler, outcome)


def _pruner(emitter_ref: weakref.ref[EventEmitter], event: Hashable) -> Callable[[object], None]:
    # The weakref callback refers to the emitter weakly, so a weak registration makes no
    # reference cycle and does not keep its emitter alive.
    def on_dead(_ref: object) -> None:
        emitter = emitter_ref()
        if emitter is not None:
            emitter._prune(event)

    return on_dead


# -- the process-wide bus ------------------------------------------------------------------

_process_bus = EventEmitter()


def process_bus() -> EventEmitter:
    """The emitter behind subscribe()/publish(), shared by all code in the process."""
    return _process_bus


def subscribe(topic: Hashable, handler: Handler, *, weak: bool = False) -> Unsubscribe:
    """Call `handler(*args)` on each publish(topic, *args); returns the unsubscribe callable.
    A topic is any hashable: a string, or (source, event) with names from an event_list."""
    return _process_bus.on(topic, handler, weak=weak)


def publish(topic: Hashable, *args: Any) -> bool:
    """Deliver `args` to the subscribers of `topic` now; returns whether there were any."""
    return _process_bus.emit(topic, *args)


async def publish_async(topic: Hashable, *args: Any, concurrent: bool = False) -> bool:
    """As publish(), awaiting async subscribers (see EventEmitter.emit_async)."""
    return await _process_bus.emit_async(topic, *args, concurrent=concurrent)


# -- event lists ---------------------------------------------------------------------------


class EventList:
    """Event names of one source as attributes: `ev.started == "started"`, `ev._source`.
    Reading a name that is not in the list raises AttributeError (a typo fails loudly
    instead of subscribing to an event nobody emits). Read-only. Names cannot start with
    "_", so they never shadow `_source` or Python's own attributes."""

    __slots__ = ("_names", "_source")
    _source: str
    _names: tuple[str, ...]

    def __init__(self, source: str, names: tuple[str, ...]) -> None:
        object.__setattr__(self, "_source", source)
        object.__setattr__(self, "_names", names)

    def __getattr__(self, name: str) -> str:
        # Called only when ordinary lookup fails, i.e. for everything but the slots.
        if name in self._names:
            return name
        close = difflib.get_close_matches(name, self._names, n=MAX_NAME_SUGGESTIONS)
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise AttributeError(
            f"event list {self._source!r} has no event {name!r}{hint} "
            f"(its events: {', '.join(self._names)})"
        )

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError(f"event list {self._source!r} is read-only")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError(f"event list {self._source!r} is read-only")

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def __dir__(self) -> list[str]:
        return [*super().__dir__(), *self._names]

    def __repr__(self) -> str:
        return f"event_list({', '.join(map(repr, (self._source, *self._names)))})"


def event_list(source: str, *names: str) -> EventList:
    """The events of `source` as an EventList (lua-resty-worker-events' event_list)."""
    if not isinstance(source, str) or not source:
        raise TypeError(f"an event list's source must be a non-empty str, not {source!r}")
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"event names must be str, not {type(name).__name__}")
        if not name.isidentifier() or keyword.iskeyword(name) or name.startswith("_"):
            raise ValueError(
                f"event name {name!r} must be an identifier that is not a keyword and does "
                f"not start with '_' (it is read as an attribute)"
            )
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"event list {source!r} names {', '.join(duplicates)} more than once")
    return EventList(source, names)


# -- the deferred queue --------------------------------------------------------------------


class DeferredQueue:
    """Emits collected by post() and dispatched, in FIFO order, by process(): for programs
    that run in ticks. process() dispatches what was posted before it started; an item a
    handler posts during it waits for the next process(), so a handler that re-posts cannot
    keep one process() going forever. Posts to `target`, by default the process bus."""

    def __init__(self, target: EventEmitter | None = None) -> None:
        if target is not None and not isinstance(target, EventEmitter):
            raise TypeError(f"target must be an EventEmitter or None, not {target!r}")
        self._target = target if target is not None else _process_bus
        self._items: deque[tuple[Hashable, tuple[Any, ...]]] = deque()
        self._posted = 0
        self._processed = 0

    def post(self, event: Hashable, *args: Any) -> None:
        hash(event)
        self._items.append((event, args))
        self._posted += 1

    def process(self, max_items: int | None = None) -> int:
        """Emit up to `max_items` (default: all) of the items posted before this call, oldest
        first; returns how many were emitted. An item stays queued until its turn, so after
        a KeyboardInterrupt from a handler the rest are still there."""
        count = self._batch_size(max_items)
        for _ in range(count):
            event, args = self._items.popleft()
            self._processed += 1
            self._target.emit(event, *args)
        return count

    async def process_async(self, max_items: int | None = None, *, concurrent: bool = False) -> int:
        """As process(), with emit_async (async handlers are awaited)."""
        count = self._batch_size(max_items)
        for _ in range(count):
            event, args = self._items.popleft()
            self._processed += 1
            await self._target.emit_async(event, *args, concurrent=concurrent)
        return count

    def clear(self) -> int:
        """Drop every pending item; returns how many there were."""
        dropped = len(self._items)
        self._items.clear()
        return dropped

    def __len__(self) -> int:
        return len(self._items)

    def statistics(self) -> DeferredQueueStatistics:
        return DeferredQueueStatistics(
            pending=len(self._items), posted=self._posted, processed=self._processed
        )

    def _batch_size(self, max_items: int | None) -> int:
        if max_items is None:
            return len(self._items)
        if isinstance(max_items, bool) or not isinstance(max_items, int):
            raise TypeError(f"max_items must be an int or None, not {max_items!r}")
        if max_items < 0:
            raise ValueError(f"max_items must be >= 0, not {max_items}")
        return min(max_items, len(self._items))
