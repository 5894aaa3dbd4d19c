"""cqloop.worker_events: events broadcast to every worker process, in one total order
(lua-resty-worker-events, with delivery guarantees).

    from cqloop import worker_events

    def on_config(data, event, source, pid):
        ...

    worker_events.register(on_config, "config", "changed")
    worker_events.post("config", "changed", {"version": 7})        # to every worker
    worker_events.post("cache", "purge", None, unique="purge")      # handled by one worker
    worker_events.post_local("config", "changed", {...})            # to this worker only

Guarantees (tested in tests/test_worker_events.py):
- Every connected process receives every broadcast event, and all of them receive the same
  events in the same order: one broker (in the cqloop.workers supervisor, or the standalone
  `python -m cqloop.worker_events --socket PATH`) numbers them, and a client checks that
  each frame carries the next number.
- Delivery is guaranteed from the moment the broker has sequenced a post. Posts a process
  made that had not left it when it died die with it; "exited" marks the point.
- Nothing is dropped silently. Flow control is credit-based both ways (see broker.py): a
  slow worker slows the posters instead of losing events. A worker that handles nothing
  for Limits.stall_timeout while its backlog is past Limits.backlog_high is evicted: the
  events it missed are replaced by one ("cqloop.worker_events", "gap") event carrying
  {"first", "last", "missed"}, and both the broker and the worker log a warning.
- A post with `unique=KEY` is handled by exactly one worker, and later posts of KEY within
  Limits.unique_window are coalesced into it. If the chosen worker dies or is evicted
  before it has acknowledged it (at once after its callbacks return), another worker is
  given it: so a worker that dies between the two makes it run twice, never zero times.
- A payload whose encoded form exceeds Limits.max_payload is refused by post() with
  PayloadTooLarge, and data that does not encode raises TypeError, both at post time. An
  event that reaches a process and does not decode there (pickle of a class it lacks) is
  reported to the loop's exception handler, and the stream goes on.
- JSON is the codec. Pickle is opt-in (cqloop.workers.serve(..., codec="pickle")) and only
  ever spoken between the processes of one supervisor: the standalone broker refuses it.
- post() never blocks: it sends, or queues in this process (bounded by Limits.max_queued;
  past it PostQueueFull is raised). `await post_async()` waits for room instead; awaited
  from inside a handler it raises RuntimeError (the handler holds up the very credit it
  would wait for).

When to register: before cqloop.workers.serve() (every worker inherits the registry
through fork), or in `app` before its first await (a worker's client connects only after
app's first step, so no event reaches a worker before then). Events a process receives
before it has a callback for them are handled by nobody there, as in any pub-sub.

Callbacks: `callback(data, event, source, pid)` where pid is the poster's. Those
registered for everything run first, then those for the source, then for the source and
event. A callback's exception goes to the loop's exception handler. Callbacks are plain
functions (an async one's coroutine is reported as an error, as EventEmitter.emit does);
start a task for async work. The worker's own broadcast posts come back to it too.

Events the system posts: ("cqloop.workers", "started") when a worker's client connects,
("cqloop.workers", "stopping") when the supervisor is about to stop a worker, and
("cqloop.workers", "exited") when it has gone (after every event it posted); data is
{"pid", "worker", ...}.

Across hosts: cqloop.workers.serve(app, ..., events="redis://HOST:PORT/DB?stream=NAME")
bridges each supervisor's broker to one Redis stream (cluster.py, _redis_bridge.py; the
extra cqloop[cluster]): the same guarantees among every worker of every host, the stream
being the one order (docs/cluster.md).

Who calls in: user code on the worker's loop. This module holds the process's default
client (set by cqloop.workers in each worker, or by `await connect(path)`) and the
process's callback registry.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

from cqloop.events import event_list
from cqloop.worker_events.broker import Broker, BrokerStatistics
from cqloop.worker_events.client import (
    Client,
    ClientState,
    ClientStatistics,
    Registry,
    open_client,
)
from cqloop.worker_events.codec import Codec
from cqloop.worker_events.limits import (
    Limits,
    PayloadTooLarge,
    PostQueueFull,
    WorkerEventsError,
)

__all__ = [
    "Broker",
    "BrokerStatistics",
    "Client",
    "ClientState",
    "ClientStatistics",
    "Codec",
    "Limits",
    "PayloadTooLarge",
    "PostQueueFull",
    "WorkerEventsError",
    "client",
    "connect",
    "delivery_events",
    "disconnect",
    "post",
    "post_async",
    "post_local",
    "register",
    "register_weak",
    "unregister",
    "worker_lifecycle",
]

Callback = Callable[[Any, str, str, int], object]

# The events cqloop itself posts, as typo-proof names (cqloop.events.event_list).
worker_lifecycle = event_list("cqloop.workers", "started", "stopping", "exited")
delivery_events = event_list("cqloop.worker_events", "gap")

_registry = Registry()
_client: Client | None = None


def client() -> Client:
    """This process's connection to the broker; WorkerEventsError if there is none."""
    if _client is None:
        raise WorkerEventsError(
            "worker_events is not connected in this process: run under "
            "cqloop.workers.serve(), or `await worker_events.connect(path)` to a "
            "standalone broker (python -m cqloop.worker_events --socket PATH)"
        )
    return _client


def post(source: str, event: str, data: Any = None, unique: str | None = None) -> None:
    """Broadcast an event to every worker (this one included), or with `unique` to exactly
    one. Never blocks: see the module docstring for what it raises."""
    client().post(source, event, data, unique)


async def post_async(source: str, event: str, data: Any = None, unique: str | None = None) -> None:
    """As post(), waiting while this process already queues Limits.max_queued bytes, and
    until the post has been handed to the broker. RuntimeError inside a handler."""
    await client().post_async(source, event, data, unique)


def post_local(source: str, event: str, data: Any = None) -> None:
    """Deliver an event to this process's callbacks only, on the next loop iteration (in
    the order of post_local calls; not part of the broker's order). `data` is passed as
    it is, not encoded. Needs a running loop, not a connection."""
    if not isinstance(source, str) or not source:
        raise TypeError(f"source must be a non-empty str, not {source!r}")
    if not isinstance(event, str) or not event:
        raise TypeError(f"event must be a non-empty str, not {event!r}")
    loop = asyncio.get_running_loop()
    loop.call_soon(_registry.dispatch, source, event, data, os.getpid())


def register(callback: Callback, source: str | None = None, *events: str) -> None:
    """Call `callback(data, event, source, pid)` for every event (no source), every event
    of `source` (no events), or the named events of `source`."""
    _registry.register(callback, source, events, weak=False)


def register_weak(callback: Callback, source: str | None = None, *events: str) -> None:
    """As register(), without keeping the callback (or a bound method's object) alive."""
    _registry.register(callback, source, events, weak=True)


def unregister(callback: Callback, source: str | None = None, *events: str) -> bool:
    """Undo register()/register_weak() with the same source and events; returns whether a
    registration was removed."""
    return _registry.unregister(callback, source, events)


async def connect(
    path: str, *, codec: Codec | str = Codec.JSON, limits: Limits | None = None
) -> Client:
    """Connect this process to the standalone broker at `path` and make it the default
    client. The broker must run as the same user."""
    global _client
    if _client is not None and _client.state is not ClientState.CLOSED:
        raise WorkerEventsError("worker_events is already connected in this process")
    _client = await open_client(
        path=path,
        codec=Codec(codec),
        limits=limits if limits is not None else Limits(),
        registry=_registry,
    )
    return _client


async def disconnect() -> None:
    """Send what is queued, then close the default client."""
    global _client
    current, _client = _client, None
    if current is not None:
        await current.close()


def _set_client(new: Client | None) -> None:
    """cqloop.workers installs each worker's client here."""
    global _client
    _client = new


def _registry_for_workers() -> Registry:
    return _registry
