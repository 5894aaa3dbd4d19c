"""cqloop.worker_events.client: one process's connection to the broker, and its handlers.

Owns `Client` (the protocol on the worker's end of its socketpair, or on a connection to a
standalone broker) and `Registry` (who is called for which (source, event)).

Invariants:
- Events are handled in the broker's sequence order; each EVENT, UNIQUE, SKIP and GAP frame
  carries or covers the next sequence number, and a frame that does not is a protocol
  error (the connection is closed and the error logged), never a silent skip.
- Handlers run inside the transport's data_received, one event at a time; credit goes back
  to the broker only after the events it covers were handled (in quarters of the receive
  window, and at once after a unique event, so that the broker knows it was handled).
- A post leaves this process in the order post() was called. At most `post_window` bytes
  of posts are unsequenced at the broker; the rest wait here, in `_queue`, bounded by
  Limits.max_queued (post() raises PostQueueFull past it; post_async() waits instead).
- post_async() raises when called from inside a handler: the handler holds up the credit
  that would let the broker take more posts, so waiting there could wait forever.

Who calls in: cqloop.worker_events' module functions (post, register, ...), and
cqloop.workers, which opens the client of each worker. Everything runs on the loop of the
process's client; nothing here is thread-safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import socket
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, cast

from cqloop.events import EventEmitter, Reentrancy
from cqloop.worker_events.codec import (
    BLOB_OVERHEAD_BYTES,
    CREDIT,
    GAP_RANGE,
    KEY_LENGTH,
    MAX_UNIQUE_KEY_BYTES,
    PROTOCOL_VERSION,
    SEQ,
    Codec,
    FrameKind,
    FrameReader,
    ProtocolError,
    append_credit,
    decode_blob,
    decode_json,
    encode_blob,
    frame,
    json_frame,
)
from cqloop.worker_events.limits import (
    Limits,
    PayloadTooLarge,
    PostQueueFull,
    WorkerEventsError,
)

__all__ = ["Client", "ClientState", "ClientStatistics", "Registry"]

logger = logging.getLogger("cqloop.worker_events")

DELIVERY_SOURCE = "cqloop.worker_events"
# A client returns credit once it has handled this fraction of its receive window.
CREDIT_FRACTION = 4
# post_async() writes out and lets the loop run once this much is waiting to be written,
# even when the post window has room: a loop of `await post_async()` would otherwise
# never suspend until the window (megabytes) fills, starving the process's own handlers
# and holding every post back from the broker until then.
POST_ASYNC_YIELD_BYTES = 16 * 1024
# How long close() reads on after its EOF for the broker to close its end.
CLOSE_DRAIN_TIMEOUT_S = 5.0

Callback = Callable[[Any, str, str, int], object]


class ClientState(enum.Enum):
    CONNECTING = "connecting"  # waiting for the broker's WELCOME
    READY = "ready"
    CLOSING = "closing"  # close() is sending what is queued
    CLOSED = "closed"


@dataclass(frozen=True)
class ClientStatistics:
    state: ClientState
    next_seq: int  # the sequence number the next event will carry
    events: int  # events handled here (broadcast and unique)
    unique_events: int  # of those, unique events this process was chosen for
    skipped: int  # unique events another process handled
    gaps: int
    missed: int  # sequence numbers lost to gaps
    posted: int
    queued_bytes: int  # posts waiting here for post_window
    unsequenced_bytes: int  # posts sent to the broker, not yet sequenced
    undecodable: int  # events that reached this process and could not be decoded


# -- who is called for what -----------------------------------------------------------------

_ALL: Hashable = ("*", "*")


class Registry:
    """Callbacks by (source, event): those registered for every event run first, then
    those for the event's source, then those for the source and event (the order of
    lua-resty-worker-events), each group in registration order. Errors in callbacks go
    to the running loop's exception handler."""

    def __init__(self) -> None:
        # RECURSE: dispatch is already serial (one frame at a time), so the queueing mode
        # would only add a deque per event.
        self._emitter = EventEmitter(reentrancy=Reentrancy.RECURSE)
        # Registrations per key, so that dispatch emits only the keys someone listens to
        # (an emit costs a snapshot of its handlers even when there are none). A weak
        # registration whose target died still counts here: its emit finds no handler.
        self._registered: dict[Hashable, int] = {}
        self.depth = 0  # > 0 while a callback runs

    def register(
        self, callback: Callback, source: str | None, events: tuple[str, ...], *, weak: bool
    ) -> None:
        for key in self._keys(source, events):
            self._emitter.on(key, callback, weak=weak)
            self._registered[key] = self._registered.get(key, 0) + 1

    def unregister(self, callback: Callback, source: str | None, events: tuple[str, ...]) -> bool:
        removed = False
        for key in self._keys(source, events):
            if self._emitter.off(key, callback):
                removed = True
                left = self._registered[key] - 1
                if left:
                    self._registered[key] = left
                else:
                    del self._registered[key]
        return removed

    def dispatch(self, source: str, event: str, data: Any, pid: int) -> None:
        emitter = self._emitter
        registered = self._registered
        self.depth += 1
        try:
            if _ALL in registered:
                emitter.emit(_ALL, data, event, source, pid)
            key: Hashable = (source, None)
            if key in registered:
                emitter.emit(key, data, event, source, pid)
            key = (source, event)
            if key in registered:
                emitter.emit(key, data, event, source, pid)
        finally:
            self.depth -= 1

    @staticmethod
    def _keys(source: str | None, events: tuple[str, ...]) -> list[Hashable]:
        if source is None:
            if events:
                raise TypeError("events were named without a source")
            return [_ALL]
        if not isinstance(source, str):
            raise TypeError(f"source must be a str or None, not {type(source).__name__}")
        for event in events:
            if not isinstance(event, str):
                raise TypeError(f"events must be str, not {type(event).__name__}")
        if not events:
            return [(source, None)]
        return [(source, event) for event in events]


# -- the connection ------------------------------------------------------------------------


class Client(asyncio.Protocol):
    """This process's end of the broker connection. Made by open_client()."""

    def __init__(self, *, codec: Codec, limits: Limits, registry: Registry) -> None:
        self.codec = codec
        self.limits = limits
        self.registry = registry
        self.state = ClientState.CONNECTING
        self._loop = asyncio.get_running_loop()
        self._pid = os.getpid()
        self._transport: asyncio.Transport | None = None
        # The hard ceiling until the WELCOME names the broker's max_payload.
        self._reader = FrameReader()
        self._welcomed: asyncio.Future[None] = self._loop.create_future()
        self._closed: asyncio.Future[None] = self._loop.create_future()
        self._error: BaseException | None = None
        self._window = limits.effective_receive_window
        self._max_payload = limits.max_payload
        self._post_window = limits.effective_post_window
        self.broker_pid = 0
        self._next_seq = 0
        self._unacked = 0  # bytes of frames handled, credit not yet returned
        self._out: list[bytes] = []
        self._out_bytes = 0  # posts in _out (what post_async counts before it yields)
        self._flush_scheduled = False
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0
        self._enqueued_total = 0  # bytes ever queued here
        self._dequeued_total = 0  # bytes ever sent from the queue
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._room_waiters: deque[asyncio.Future[None]] = deque()
        self._unsequenced = 0
        self._events = 0
        self._unique_events = 0
        self._skipped = 0
        self._gaps = 0
        self._missed = 0
        self._posted = 0
        self._undecoded = 0
        self._eof_sent = False  # close() half-closed: nothing more is handled or sent

    # -- posting --

    def post(self, source: str, event: str, data: Any = None, unique: str | None = None) -> None:
        data_frame = self._encode_post(source, event, data, unique)
        size = len(data_frame)
        if self._queue or not self._sendable(size):
            if self._queued_bytes + size > self.limits.max_queued:
                raise PostQueueFull(
                    f"{self._queued_bytes} bytes of posts already wait for the broker "
                    f"(Limits.max_queued is {self.limits.max_queued}); await post_async(), "
                    f"which waits for room"
                )
            self._enqueue(data_frame)
        else:
            self._send_post(data_frame)
        self._posted += 1

    async def post_async(
        self, source: str, event: str, data: Any = None, unique: str | None = None
    ) -> None:
        if self.registry.depth:
            raise RuntimeError(
                "post_async() cannot be awaited inside a worker_events handler: the handler "
                "holds up the credit the broker needs to take more posts, so it could wait "
                "forever; call post() there, or start a task that awaits post_async()"
            )
        data_frame = self._encode_post(source, event, data, unique)
        size = len(data_frame)
        while self._queued_bytes and self._queued_bytes + size > self.limits.max_queued:
            room: asyncio.Future[None] = self._loop.create_future()
            self._room_waiters.append(room)
            await room
            self._check_usable()
        if self._queue or not self._sendable(size):
            self._enqueue(data_frame)
            self._posted += 1
            done: asyncio.Future[None] = self._loop.create_future()
            self._waiters.append((self._enqueued_total, done))
            await done
        else:
            self._send_post(data_frame)
            self._posted += 1
            if self._out_bytes >= POST_ASYNC_YIELD_BYTES:
                self._flush()
                await asyncio.sleep(0)

    # -- lifecycle --

    async def connect(self, *, sock: socket.socket | None = None, path: str | None = None) -> None:
        """Connect over `sock` (a connected Unix stream socket) or to `path`, and return
        once the broker has welcomed this client. Posts made before then are queued."""
        if self._transport is not None or self.state is not ClientState.CONNECTING:
            raise WorkerEventsError("this client is already connected")
        if sock is not None:
            await self._loop.create_unix_connection(lambda: self, sock=sock)
        else:
            await self._loop.create_unix_connection(lambda: self, path=path)
        try:
            await self._welcomed
        except BaseException:
            self.abort()
            raise

    async def close(self) -> None:
        """Send the posts still queued here, then close the connection."""
        if self.state is ClientState.CLOSED:
            return
        if self._transport is None:
            # Never connected (or the connection attempt failed before it was made).
            if self._queue:
                logger.warning(
                    "worker_events: %d posts (%d bytes) were never sent: no broker connection",
                    len(self._queue),
                    self._queued_bytes,
                )
            self.state = ClientState.CLOSED
            if not self._closed.done():
                self._closed.set_result(None)
            return
        if self.state in (ClientState.READY, ClientState.CONNECTING):
            if self.state is ClientState.CONNECTING and self._transport is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._welcomed)
            self.state = ClientState.CLOSING
            while self._queue and self._transport is not None:
                done: asyncio.Future[None] = self._loop.create_future()
                self._waiters.append((self._enqueued_total, done))
                try:
                    await done
                except (ConnectionError, WorkerEventsError):
                    break
            self._flush()
        transport = self._transport
        if transport is not None and transport.can_write_eof():
            # Half-close, and read on (handling nothing) until the broker closes too. A
            # socket closed with unread data in it makes the kernel reset the
            # connection, and a broker writing to us just then would drop our last
            # posts unread; after our EOF it reads them all, then closes its end.
            self._eof_sent = True
            transport.write_eof()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._closed), CLOSE_DRAIN_TIMEOUT_S)
        if self._transport is not None:
            self._transport.close()
        await asyncio.shield(self._closed)

    def abort(self) -> None:
        """Close the connection now; queued posts are dropped (and logged)."""
        if self.state is not ClientState.CLOSED:
            self.state = ClientState.CLOSING
        if self._transport is not None:
            self._transport.abort()

    def statistics(self) -> ClientStatistics:
        return ClientStatistics(
            state=self.state,
            next_seq=self._next_seq,
            events=self._events,
            unique_events=self._unique_events,
            skipped=self._skipped,
            gaps=self._gaps,
            missed=self._missed,
            posted=self._posted,
            queued_bytes=self._queued_bytes,
            unsequenced_bytes=self._unsequenced,
            undecodable=self._undecoded,
        )

    def __repr__(self) -> str:
        return f"<worker_events.Client {self.state.value} next_seq={self._next_seq}>"

    # -- asyncio.Protocol --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; duck typing it is.
        self._transport = cast(asyncio.Transport, transport)
        hello: dict[str, Any] = {
            "version": PROTOCOL_VERSION,
            "pid": self._pid,
            "codec": self.codec.value,
            "window": self._window,
        }
        self._transport.write(json_frame(FrameKind.HELLO, hello))

    def data_received(self, data: bytes) -> None:
        if self._eof_sent:
            return  # closing: what the broker still sends is for nobody here
        ack_now = False
        try:
            for kind, body in self._reader.feed(data):
                if kind == FrameKind.EVENT or kind == FrameKind.UNIQUE:
                    self._check_seq(body)
                    self._unacked += len(body) + 5
                    try:
                        source, event, value, pid = decode_blob(body[SEQ.size :], self.codec)
                    except ProtocolError:
                        raise
                    except Exception as exc:
                        self._undecodable(body, exc)
                        continue
                    self._events += 1
                    if kind == FrameKind.UNIQUE:
                        self._unique_events += 1
                        ack_now = True
                    self.registry.dispatch(source, event, value, pid)
                elif kind == FrameKind.SKIP:
                    self._check_seq(body)
                    self._unacked += len(body) + 5
                    self._skipped += 1
                elif kind == FrameKind.POST_CREDIT:
                    (amount,) = CREDIT.unpack(body)
                    self._on_post_credit(amount)
                elif kind == FrameKind.GAP:
                    self._unacked += len(body) + 5
                    self._on_gap(*GAP_RANGE.unpack(body))
                elif kind == FrameKind.WELCOME:
                    self._on_welcome(decode_json(body))
                elif kind == FrameKind.REFUSED:
                    reason = decode_json(body).get("reason", "?")
                    self._fail(WorkerEventsError(f"the worker_events broker refused: {reason}"))
                    return
                else:
                    raise ProtocolError(f"unexpected frame kind {kind} from the broker")
        except ProtocolError as exc:
            logger.error("worker_events: broken stream from the broker: %s", exc)
            self._fail(WorkerEventsError(f"protocol error: {exc}"))
            return
        finally:
            if self._unacked and (ack_now or self._unacked * CREDIT_FRACTION >= self._window):
                self._send_credit()
        if self._out:
            self._flush()

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        was = self.state
        self.state = ClientState.CLOSED
        self._transport = None
        error: BaseException = self._error or ConnectionError(
            "the connection to the worker_events broker is closed"
        )
        if not self._welcomed.done():
            self._welcomed.set_exception(error)
        if was is ClientState.READY and self._error is None:
            logger.warning("worker_events: the broker closed the connection (pid %d)", self._pid)
        if self._queue:
            logger.warning(
                "worker_events: %d posts (%d bytes) were never sent: the broker is gone",
                len(self._queue),
                self._queued_bytes,
            )
            self._queue.clear()
            self._queued_bytes = 0
        for _, waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(error)
        for waiter in self._room_waiters:
            if not waiter.done():
                waiter.set_exception(error)
        self._waiters.clear()
        self._room_waiters.clear()
        if not self._closed.done():
            self._closed.set_result(None)

    # -- private --

    def _encode_post(self, source: str, event: str, data: Any, unique: str | None) -> bytes:
        self._check_usable()
        if not isinstance(source, str) or not source:
            raise TypeError(f"source must be a non-empty str, not {source!r}")
        if not isinstance(event, str) or not event:
            raise TypeError(f"event must be a non-empty str, not {event!r}")
        blob = encode_blob(self.codec, source, event, data, self._pid)
        if len(blob) - 1 > self._max_payload:
            raise PayloadTooLarge(
                f"event {source!r}/{event!r} encodes to {len(blob) - 1} bytes, over the "
                f"broker's max_payload of {self._max_payload} bytes"
            )
        if unique is None:
            key = b""
        else:
            if not isinstance(unique, str) or not unique:
                raise TypeError(f"unique must be a non-empty str or None, not {unique!r}")
            key = unique.encode()
            if len(key) > MAX_UNIQUE_KEY_BYTES:
                raise ValueError(f"a unique key is at most {MAX_UNIQUE_KEY_BYTES} bytes")
        return frame(FrameKind.POST, KEY_LENGTH.pack(len(key)) + key + blob)

    def _sendable(self, size: int) -> bool:
        return self.state is ClientState.READY and self._unsequenced + size <= self._post_window

    def _check_usable(self) -> None:
        if self.state not in (ClientState.READY, ClientState.CONNECTING):
            if self._error is not None:
                raise WorkerEventsError(f"worker_events cannot post: {self._error}")
            raise WorkerEventsError(f"worker_events cannot post: the client is {self.state.value}")

    def _check_seq(self, body: memoryview) -> None:
        (seq,) = SEQ.unpack_from(body)
        if seq != self._next_seq:
            raise ProtocolError(f"event {seq} arrived where {self._next_seq} was due")
        self._next_seq = seq + 1

    def _enqueue(self, data_frame: bytes) -> None:
        self._queue.append(data_frame)
        self._queued_bytes += len(data_frame)
        self._enqueued_total += len(data_frame)

    def _send_post(self, data_frame: bytes) -> None:
        self._unsequenced += len(data_frame)
        self._out.append(data_frame)
        self._out_bytes += len(data_frame)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _on_post_credit(self, amount: int) -> None:
        self._unsequenced -= amount
        self._pump()

    def _pump(self) -> None:
        """Send queued posts while the post window has room."""
        queue = self._queue
        sent = 0
        while queue and self._unsequenced + len(queue[0]) <= self._post_window:
            data_frame = queue.popleft()
            sent += len(data_frame)
            self._unsequenced += len(data_frame)
            self._out.append(data_frame)
        if not sent:
            return
        self._queued_bytes -= sent
        self._dequeued_total += sent
        waiters = self._waiters
        while waiters and waiters[0][0] <= self._dequeued_total:
            _, waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
        while self._room_waiters:
            room = self._room_waiters.popleft()
            if not room.done():
                room.set_result(None)

    def _undecodable(self, body: memoryview, exc: Exception) -> None:
        """An event this process cannot decode (a pickled class it cannot import, say) is
        lost to it, loudly: the loop's exception handler hears of it."""
        (seq,) = SEQ.unpack_from(body)
        self._undecoded += 1
        self._loop.call_exception_handler(
            {
                "message": f"worker_events: event {seq} cannot be decoded here; it is lost "
                f"to this process (pid {self._pid})",
                "exception": exc,
            }
        )

    def _on_gap(self, first: int, last: int) -> None:
        if first != self._next_seq or last < first:
            raise ProtocolError(f"gap {first}..{last} arrived where {self._next_seq} was due")
        missed = last - first + 1
        self._next_seq = last + 1
        self._gaps += 1
        self._missed += missed
        logger.warning(
            "worker_events: this process (pid %d) fell behind and was evicted: events "
            "%d..%d (%d) are lost to it; handlers get a %r 'gap' event",
            self._pid,
            first,
            last,
            missed,
            DELIVERY_SOURCE,
        )
        data = {"first": first, "last": last, "missed": missed}
        self.registry.dispatch(DELIVERY_SOURCE, "gap", data, self.broker_pid)

    def _on_welcome(self, welcome: dict[str, Any]) -> None:
        try:
            self._next_seq = int(welcome["next_seq"])
            self._post_window = int(welcome["post_window"])
            self._max_payload = int(welcome["max_payload"])
            self._reader.set_max_frame(self._max_payload + BLOB_OVERHEAD_BYTES)
            self.broker_pid = int(welcome.get("broker_pid", 0))
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"malformed WELCOME: {exc!r}") from None
        self.state = ClientState.READY
        self._pump()  # posts made while connecting
        if not self._welcomed.done():
            self._welcomed.set_result(None)

    def _send_credit(self) -> None:
        append_credit(self._out, FrameKind.CREDIT, self._unacked)
        self._unacked = 0

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._out:
            return
        out = self._out
        self._out = []
        self._out_bytes = 0
        if self._transport is None or self._transport.is_closing():
            return
        self._transport.write(b"".join(out) if len(out) > 1 else out[0])

    def _fail(self, error: BaseException) -> None:
        self._error = error
        self.state = ClientState.CLOSED
        if not self._welcomed.done():
            self._welcomed.set_exception(error)
        if self._transport is not None:
            self._transport.close()


async def open_client(
    *,
    sock: socket.socket | None = None,
    path: str | None = None,
    codec: Codec,
    limits: Limits,
    registry: Registry,
) -> Client:
    """Connect to a broker over `sock` (a connected Unix stream socket) or at `path`, and
    return the client once the broker has welcomed it."""
    client = Client(codec=codec, limits=limits, registry=registry)
    await client.connect(sock=sock, path=path)
    return client
