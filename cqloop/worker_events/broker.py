"""cqloop.worker_events.broker: the sequencer every worker's events go through.

Owns the total order. Each client (a worker of cqloop.workers, over a socketpair; or any
process of the same user, over the standalone broker's Unix socket) sends POST frames; the
broker gives each post the next sequence number and sends it, as one EVENT frame, to every
client. Nothing else assigns sequence numbers, so every client sees the same events in the
same order. A client that joins later starts at the `next_seq` its WELCOME names.

Flow control, both ways, in bytes of frames:
- broker -> client: the client grants a receive window (HELLO "window") and returns credit
  as it *handles* events. The broker writes a client's events only while it has credit;
  the rest wait in that client's backlog here. A client's memory for unhandled events is
  thus bounded by its window, and a slow client cannot make the broker's socket buffers or
  the client's own read buffer grow.
- client -> broker: a client may have `post_window` bytes of POST frames unsequenced. The
  broker sequences a post at once unless some client's backlog is past `backlog_high`
  (backpressure is engaged); then it holds the post (at most post_window per client) and
  withholds the POST_CREDIT, so posters queue in their own process (where post_async
  waits) until every backlog is back under `backlog_low`. So the broker's memory is
  bounded by backlog_high + one read's worth of frames + clients x post_window, shared by
  all clients (a frame object is queued to each of them, not copied).
- Eviction, the one way an event is not delivered: a client past backlog_high that has
  handled nothing for `stall_timeout` seconds holds every other process back. Its backlog
  is dropped, a warning is logged here, and its next frame is a GAP naming the first and
  last sequence numbers it lost, which its client turns into a "gap" event (and a warning
  there). Never silent.

Unique events: a post with a `unique` key is sequenced once per `unique_window`; later posts
of that key within the window are coalesced (counted, not sequenced). The sequenced one is
sent as an EVENT to one client (round robin) and as a SKIP (sequence number only) to the
others, so every client's sequence stays gap-free. The chosen client acknowledges at once
after handling it; if it disconnects or is evicted before that, the event is sequenced
again for another client (so across a crash it is handled at least once, and otherwise
exactly once).

System events: the broker itself posts "started" (a client said HELLO), "stopping" (the
supervisor asks a worker to stop) and "exited" (a worker's connection closed and, under a
supervisor, its process was reaped), from source "cqloop.workers", in the same total order.
"exited" comes after every event that worker posted.

Across hosts (cluster.py, _redis_bridge.py): with an upstream set (set_upstream()), the
broker sequences no post itself. Posts go to the upstream (a bridge to one Redis stream),
which takes them while its bounded queue has room (the POST_CREDIT waits otherwise, so
posters queue in their own processes, as under backpressure), and the upstream delivers
the stream's entries back through deliver(), deliver_unique() and deliver_gap(), which
number them here like any post. Backpressure then pauses the upstream's reading instead
of the posters' sequencing. System events stay local to the host; "exited" waits until
the worker's posts have come back through the upstream (post_system_after_posts()).

Who calls in: cqloop.workers (one Broker on the supervisor's loop, add_peer() per worker),
the standalone broker (__main__.py, serve_unix()) and an upstream bridge. Runs on any
asyncio loop; its callbacks are the only code that touches its state (single-threaded).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import socket
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

from cqloop.worker_events.codec import (
    CREDIT,
    GAP_RANGE,
    KEY_LENGTH,
    PROTOCOL_VERSION,
    SEQ,
    Codec,
    FrameKind,
    FrameReader,
    ProtocolError,
    append_credit,
    decode_json,
    encode_blob,
    frame,
    json_frame,
)
from cqloop.worker_events.limits import Limits

__all__ = ["Broker", "BrokerStatistics", "PeerState", "Upstream"]

logger = logging.getLogger("cqloop.worker_events")

WORKERS_SOURCE = "cqloop.workers"
# How often, while backpressure is engaged, the broker looks for stalled clients, as a
# fraction of stall_timeout (a stall is noticed at most this much late).
STALL_CHECKS_PER_TIMEOUT = 4
# SO_PEERCRED's struct ucred: pid, uid, gid.
UCRED = struct.Struct("3i")


class PeerState(enum.Enum):
    HANDSHAKE = "handshake"  # connected, no HELLO yet
    ACTIVE = "active"  # receives every event sequenced from its WELCOME on
    CLOSED = "closed"


class Upstream(Protocol):
    """Where a broker with an upstream sends its posts (the Redis bridge)."""

    def has_room(self, size: int) -> bool:
        """Whether a post of `size` bytes may be taken now; when not, the upstream calls
        Broker.on_upstream_room() once it has room again."""

    def append(self, key: str | None, blob: bytes, size: int) -> None:
        """Take a post (in post order), whether or not it has room."""

    def resume_delivery(self) -> None:
        """The broker's backpressure is released: deliver again."""

    def after_posts(self, callback: Callable[[], None]) -> None:
        """Call `callback` once every post taken so far has been delivered back."""


@dataclass(frozen=True)
class BrokerStatistics:
    clients: int
    next_seq: int
    posts: int  # POST frames received
    sequenced: int  # events given a sequence number (posts, re-sequenced uniques, system)
    coalesced: int  # unique posts dropped because their key was inside its window
    unique_reassigned: int
    evictions: int
    events_evicted: int  # sequence numbers dropped from evicted backlogs (all clients)
    backlog_bytes: int  # the largest client backlog now
    peak_backlog_bytes: int
    held_bytes: int  # posts received but not yet sequenced (backpressure)
    backpressure: bool


@dataclass
class _Queued:
    """One frame in a client's backlog."""

    __slots__ = ("data", "seq", "unique")
    seq: int
    data: bytes
    unique: _UniquePost | None  # set when this client is the one to handle it


@dataclass
class _UniquePost:
    __slots__ = ("blob", "handled", "key", "lost")
    key: str
    blob: bytes
    # Set for a unique event of an upstream: called once a worker has acknowledged it,
    # or once no worker of this broker is left to give it to.
    handled: Callable[[], None] | None
    lost: Callable[[], None] | None


class _Peer(asyncio.Protocol):
    """The broker's end of one client connection."""

    def __init__(self, broker: Broker, *, worker: int | None, check_peer_uid: bool) -> None:
        self.broker = broker
        self.worker = worker
        self.check_peer_uid = check_peer_uid
        self.state = PeerState.HANDSHAKE
        self.transport: asyncio.Transport | None = None
        self.reader = FrameReader(broker.limits.max_post_frame)
        self.pid = 0
        self.credit = 0  # bytes the broker may still write to this client
        self.sent_bytes = 0  # written to this client, cumulative
        self.acked_bytes = 0  # credited back by this client, cumulative
        self.backlog: deque[_Queued] = deque()
        self.backlog_bytes = 0
        self.gap: list[int] | None = None  # [first, last] owed to this client
        self.out: list[bytes] = []  # frames to write at the next flush
        self.flush_pending = False
        # Unique events written to this client and not yet acknowledged: (end offset, post).
        self.unique_unacked: deque[tuple[int, _UniquePost]] = deque()
        self.held: deque[tuple[str | None, bytes, int]] = deque()  # (key, blob, frame size)
        self.held_bytes = 0
        self.post_credit_owed = 0
        self.progress_time = 0.0  # last credit, or when the backlog last became non-empty
        self.details: dict[str, Any] = {}  # more data for its "started" event
        self.started: asyncio.Future[None] = broker._loop.create_future()
        self.lost: asyncio.Future[None] = broker._loop.create_future()

    # -- asyncio.Protocol --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; duck typing it is.
        self.transport = cast(asyncio.Transport, transport)
        if self.check_peer_uid and not self._peer_uid_allowed(self.transport):
            return
        self.broker._peers.append(self)

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.reader.feed(data)
            for kind, body in frames:
                self._on_frame(kind, body)
        except ProtocolError as exc:
            self.refuse(f"protocol error: {exc}")
            return
        self.broker._after_input(self)

    def eof_received(self) -> bool | None:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.broker._on_peer_lost(self)

    # -- frames --

    def _on_frame(self, kind: int, body: memoryview) -> None:
        if kind == FrameKind.POST:
            if self.state is not PeerState.ACTIVE:
                raise ProtocolError("POST before HELLO")
            self._on_post(body)
        elif kind == FrameKind.CREDIT:
            (amount,) = CREDIT.unpack(body)
            self.broker._on_credit(self, amount)
        elif kind == FrameKind.HELLO:
            if self.state is not PeerState.HANDSHAKE:
                raise ProtocolError("a second HELLO")
            self.broker._on_hello(self, decode_json(body))
        else:
            raise ProtocolError(f"unexpected frame kind {kind} from a client")

    def _on_post(self, body: memoryview) -> None:
        broker = self.broker
        broker._posts += 1
        (key_length,) = KEY_LENGTH.unpack_from(body)
        start = KEY_LENGTH.size
        key = None
        if key_length:
            key = bytes(body[start : start + key_length]).decode()
            start += key_length
        blob = bytes(body[start:])
        if len(blob) > broker.limits.max_payload + 1:
            raise ProtocolError(f"a post of {len(blob)} bytes is over max_payload")
        size = len(body) + 5
        if not (broker._backpressure or self.held) and broker._take_post(key, blob, size):
            self.post_credit_owed += size
            return
        self.held.append((key, blob, size))
        self.held_bytes += size
        broker._held_bytes += size

    # -- output --

    def enqueue(self, seq: int, data: bytes, unique: _UniquePost | None) -> None:
        if not self.backlog and self.gap is None and self.credit >= len(data):
            self._write(data, unique)
            return
        if not self.backlog:
            self.progress_time = self.broker._loop.time()
        self.backlog.append(_Queued(seq, data, unique))
        self.backlog_bytes += len(data)
        broker = self.broker
        if self.backlog_bytes > broker._peak_backlog:
            broker._peak_backlog = self.backlog_bytes
        if self.backlog_bytes > broker.limits.backlog_high and not broker._backpressure:
            broker._engage_backpressure()

    def _write(self, data: bytes, unique: _UniquePost | None) -> None:
        self.credit -= len(data)
        self.sent_bytes += len(data)
        if unique is not None:
            self.unique_unacked.append((self.sent_bytes, unique))
        self.out.append(data)
        self.broker._schedule_flush(self)

    def drain_backlog(self) -> None:
        """Write what the credit allows: the owed GAP first, then the backlog in order."""
        if self.gap is not None:
            gap_frame = frame(FrameKind.GAP, GAP_RANGE.pack(*self.gap))
            if self.credit < len(gap_frame):
                return
            self.gap = None
            self._write(gap_frame, None)
        backlog = self.backlog
        while backlog and self.credit >= len(backlog[0].data):
            queued = backlog.popleft()
            self.backlog_bytes -= len(queued.data)
            self._write(queued.data, queued.unique)

    def flush(self) -> None:
        if self.post_credit_owed:
            append_credit(self.out, FrameKind.POST_CREDIT, self.post_credit_owed)
            self.post_credit_owed = 0
        if self.out and self.transport is not None and not self.transport.is_closing():
            data = b"".join(self.out) if len(self.out) > 1 else self.out[0]
            self.transport.write(data)
        self.out.clear()

    def refuse(self, reason: str) -> None:
        logger.warning("worker_events broker: refusing client pid %s: %s", self.pid, reason)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(json_frame(FrameKind.REFUSED, {"reason": reason}))
            self.transport.close()

    def _peer_uid_allowed(self, transport: asyncio.Transport) -> bool:
        # SO_PEERCRED is the kernel's word for who connected (set at connect(), cannot be
        # forged by the peer): only our own user (or root) may post, because a client's
        # events reach every other client's handlers.
        sock = transport.get_extra_info("socket")
        try:
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, UCRED.size)
        except OSError as exc:
            self.refuse(f"cannot read peer credentials: {exc}")
            return False
        pid, uid, _gid = UCRED.unpack(creds)
        self.pid = pid
        if uid not in (os.getuid(), 0):
            self.refuse(f"peer uid {uid} is not this broker's uid {os.getuid()}")
            return False
        return True


class Broker:
    """Sequences the events of its clients. See the module docstring."""

    def __init__(
        self,
        *,
        codec: Codec | str = Codec.JSON,
        limits: Limits | None = None,
        allow_pickle: bool = False,
    ) -> None:
        codec = Codec(codec)
        if codec is Codec.PICKLE and not allow_pickle:
            raise ValueError(
                "the pickle codec is only for the workers of one supervisor "
                "(cqloop.workers.serve(..., codec='pickle')); a standalone broker speaks JSON"
            )
        self.codec = codec
        self.limits = limits if limits is not None else Limits()
        self._loop: asyncio.AbstractEventLoop = asyncio.get_running_loop()
        self._peers: list[_Peer] = []
        self._next_seq = 1
        self._posts = 0
        self._sequenced = 0
        self._coalesced = 0
        self._unique_reassigned = 0
        self._evictions = 0
        self._events_evicted = 0
        self._peak_backlog = 0
        self._held_bytes = 0
        self._backpressure = False
        self._stall_timer: asyncio.TimerHandle | None = None
        self._unique_expiry: dict[str, float] = {}
        self._unique_order: deque[tuple[float, str]] = deque()
        self._round_robin = 0
        self._to_flush: list[_Peer] = []
        self._flush_scheduled = False
        self._closed = False
        self._upstream: Upstream | None = None

    # -- clients --

    async def add_peer(
        self, sock: socket.socket, *, worker: int, pid: int, details: dict[str, Any] | None = None
    ) -> _Peer:
        """Serve the client of worker process `pid` on `sock` (the supervisor's end of the
        worker's socketpair; its SO_PEERCRED would name the supervisor, who made the
        pair, so the pid comes from the supervisor). Its `started` and `lost` futures say
        when it said HELLO and when its connection was read to the end. `details` go into
        the data of its "started" event."""
        self._check_open()
        peer = _Peer(self, worker=worker, check_peer_uid=False)
        peer.pid = pid
        peer.details = details or {}
        await self._loop.create_unix_connection(lambda: peer, sock=sock)
        return peer

    def protocol_factory(self) -> _Peer:
        """For loop.create_unix_server(): a client that must be of this user."""
        self._check_open()
        return _Peer(self, worker=None, check_peer_uid=True)

    def post_system_after_posts(self, event: str, data: dict[str, Any]) -> None:
        """post_system(), once every post taken so far is sequenced: at once here, or,
        with an upstream, once those posts have come back through it (so that a worker's
        "exited" follows its posts on every host's order, as on one)."""
        if self._upstream is None:
            self.post_system(event, data)
            return

        def post() -> None:
            if not self._closed:
                self.post_system(event, data)

        self._upstream.after_posts(post)

    def post_system(self, event: str, data: dict[str, Any]) -> int:
        """Post a "cqloop.workers" event from the broker itself; returns its seq."""
        blob = encode_blob(self.codec, WORKERS_SOURCE, event, data, os.getpid())
        seq = self._next_seq
        self._broadcast(blob)
        self._flush_soon()
        return seq

    # -- an upstream (worker_events across hosts) --

    def set_upstream(self, upstream: Upstream) -> None:
        """Send every post to `upstream` from now on, instead of sequencing it here."""
        self._upstream = upstream

    def on_upstream_room(self) -> None:
        """The upstream has room again: hand it the posts held for it."""
        if not self._backpressure:
            self._release_held()

    def deliver(self, blob: bytes) -> None:
        """Sequence an event the upstream delivers (in its order), for every client."""
        self._broadcast(blob)
        self._flush_soon()

    def deliver_unique(
        self,
        key: str,
        blob: bytes,
        handled: Callable[[], None],
        lost: Callable[[], None],
    ) -> bool:
        """Sequence a unique event of the upstream for one client; False (and nothing
        sequenced) when there is no client to handle it. `handled` is called once a
        client has acknowledged it, `lost` if every client that could take it is gone."""
        active = [p for p in self._peers if p.state is PeerState.ACTIVE]
        target = self._pick_target(active)
        if target is None:
            return False
        seq = self._next_seq
        self._next_seq += 1
        self._sequenced += 1
        self._send_unique(active, target, seq, blob, _UniquePost(key, blob, handled, lost))
        self._flush_soon()
        return True

    def deliver_gap(self, missed: int) -> None:
        """`missed` events of the upstream are lost to this broker (trimmed from the
        stream before it read them): every client gets one gap event covering them, in
        order, and they use up as many sequence numbers."""
        first = self._next_seq
        last = first + missed - 1
        self._next_seq = last + 1
        self._sequenced += missed
        data = frame(FrameKind.GAP, GAP_RANGE.pack(first, last))
        for peer in self._peers:
            if peer.state is PeerState.ACTIVE:
                peer.enqueue(first, data, None)
        self._flush_soon()

    @property
    def backpressure(self) -> bool:
        """Some client's backlog is past Limits.backlog_high (not yet back under low)."""
        return self._backpressure

    def close(self) -> None:
        """Close every client connection (the clients see the connection end)."""
        self._closed = True
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        for peer in list(self._peers):
            if peer.transport is not None:
                peer.flush()
                peer.transport.close()

    def statistics(self) -> BrokerStatistics:
        return BrokerStatistics(
            clients=sum(1 for p in self._peers if p.state is PeerState.ACTIVE),
            next_seq=self._next_seq,
            posts=self._posts,
            sequenced=self._sequenced,
            coalesced=self._coalesced,
            unique_reassigned=self._unique_reassigned,
            evictions=self._evictions,
            events_evicted=self._events_evicted,
            backlog_bytes=max((p.backlog_bytes for p in self._peers), default=0),
            peak_backlog_bytes=self._peak_backlog,
            held_bytes=self._held_bytes,
            backpressure=self._backpressure,
        )

    # -- sequencing (the only place seq numbers are assigned) --

    def _broadcast(self, blob: bytes, unique: _UniquePost | None = None) -> None:
        seq = self._next_seq
        self._next_seq += 1
        self._sequenced += 1
        active = [p for p in self._peers if p.state is PeerState.ACTIVE]
        if unique is None:
            data = frame(FrameKind.EVENT, SEQ.pack(seq) + blob)
            for peer in active:
                peer.enqueue(seq, data, None)
            return
        target = self._pick_target(active)
        if target is None:
            logger.warning(
                "worker_events broker: no client to handle unique event %r; dropped", unique.key
            )
            # The seq stays used: every client gets a SKIP, so sequences stay gap-free.
        self._send_unique(active, target, seq, blob, unique)

    def _take_post(self, key: str | None, blob: bytes, size: int) -> bool:
        """Sequence a post, or hand it to the upstream; False when the upstream has no
        room for it (the caller holds it)."""
        upstream = self._upstream
        if upstream is None:
            self._sequence_post(key, blob)
            return True
        if not upstream.has_room(size):
            return False
        upstream.append(key, blob, size)
        return True

    def _sequence_post(self, key: str | None, blob: bytes) -> None:
        if key is None:
            self._broadcast(blob)
            return
        now = self._loop.time()
        self._expire_unique(now)
        expiry = self._unique_expiry.get(key)
        if expiry is not None and expiry > now:
            self._coalesced += 1
            return
        expiry = now + self.limits.unique_window
        self._unique_expiry[key] = expiry
        self._unique_order.append((expiry, key))
        self._broadcast(blob, _UniquePost(key, blob, None, None))

    def _expire_unique(self, now: float) -> None:
        order = self._unique_order
        while order and order[0][0] <= now:
            expiry, key = order.popleft()
            if self._unique_expiry.get(key) == expiry:
                del self._unique_expiry[key]

    def _pick_target(self, active: list[_Peer], exclude: _Peer | None = None) -> _Peer | None:
        candidates = [p for p in active if p is not exclude]
        if not candidates:
            return None
        self._round_robin += 1
        return candidates[self._round_robin % len(candidates)]

    def _reassign(self, lost: list[_UniquePost], exclude: _Peer) -> None:
        for post in lost:
            self._unique_reassigned += 1
            active = [p for p in self._peers if p.state is PeerState.ACTIVE and p is not exclude]
            if not active:
                if post.lost is not None:
                    post.lost()  # the upstream gives it to another host
                    continue
                logger.warning(
                    "worker_events broker: unique event %r lost its worker and no other "
                    "client is left to handle it",
                    post.key,
                )
                continue
            # A fresh seq, handled by another client, with the same key and blob.
            seq = self._next_seq
            self._next_seq += 1
            self._sequenced += 1
            self._send_unique(active, self._pick_target(active), seq, post.blob, post)
        self._flush_soon()

    def _send_unique(
        self,
        active: list[_Peer],
        target: _Peer | None,
        seq: int,
        blob: bytes,
        unique: _UniquePost,
    ) -> None:
        """The unique event `seq` to `target` and a SKIP of it to every other active client
        (to all of them when target is None)."""
        event_frame = frame(FrameKind.UNIQUE, SEQ.pack(seq) + blob)
        skip_frame = frame(FrameKind.SKIP, SEQ.pack(seq))
        for peer in active:
            if peer is target:
                peer.enqueue(seq, event_frame, unique)
            else:
                peer.enqueue(seq, skip_frame, None)

    # -- flow control --

    def _on_credit(self, peer: _Peer, amount: int) -> None:
        peer.credit += amount
        peer.acked_bytes += amount
        peer.progress_time = self._loop.time()
        unacked = peer.unique_unacked
        while unacked and unacked[0][0] <= peer.acked_bytes:
            _, post = unacked.popleft()
            if post.handled is not None:
                post.handled()
        peer.drain_backlog()
        if self._backpressure:
            self._maybe_release_backpressure()

    def _engage_backpressure(self) -> None:
        self._backpressure = True
        if self._stall_timer is None:
            self._schedule_stall_check()

    def _maybe_release_backpressure(self) -> None:
        low = self.limits.backlog_low
        if any(p.backlog_bytes > low for p in self._peers):
            return
        self._backpressure = False
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        self._release_held()
        if self._upstream is not None:
            self._upstream.resume_delivery()

    def _release_held(self) -> None:
        """Sequence held posts, one per client in turn (so no poster starves the others),
        until they are gone or backpressure engages again."""
        while not self._backpressure:
            progressed = False
            for peer in self._peers:
                if not peer.held or self._backpressure:
                    continue
                key, blob, size = peer.held[0]
                if not self._take_post(key, blob, size):
                    self._flush_soon()
                    return  # the upstream is full: it calls on_upstream_room()
                peer.held.popleft()
                peer.held_bytes -= size
                self._held_bytes -= size
                peer.post_credit_owed += size
                self._schedule_flush(peer)
                progressed = True
            if not progressed:
                break
        self._flush_soon()

    def _schedule_stall_check(self) -> None:
        delay = self.limits.stall_timeout / STALL_CHECKS_PER_TIMEOUT
        self._stall_timer = self._loop.call_later(delay, self._on_stall_check)

    def _on_stall_check(self) -> None:
        self._stall_timer = None
        if not self._backpressure or self._closed:
            return
        now = self._loop.time()
        for peer in list(self._peers):
            if (
                peer.state is PeerState.ACTIVE
                and peer.backlog_bytes > self.limits.backlog_high
                and now - peer.progress_time >= self.limits.stall_timeout
            ):
                self._evict(peer, now)
        self._maybe_release_backpressure()
        if self._backpressure:
            self._schedule_stall_check()

    def _evict(self, peer: _Peer, now: float) -> None:
        dropped = peer.backlog
        # A backlog runs to the newest seq (every later event queues behind it); its last
        # entry may be an upstream's gap, which covers more than its own seq.
        first, last = dropped[0].seq, self._next_seq - 1
        lost_uniques = [q.unique for q in dropped if q.unique is not None]
        count = len(dropped)
        size = peer.backlog_bytes
        peer.backlog = deque()
        peer.backlog_bytes = 0
        if peer.gap is None:
            peer.gap = [first, last]
        else:
            peer.gap[1] = last
        self._evictions += 1
        self._events_evicted += count
        logger.warning(
            "worker_events broker: evicted the backlog of client pid %s (worker %s): it "
            "handled nothing for %.1f s while %d bytes waited; events %d..%d (%d events) "
            "are dropped for it and it gets a gap event",
            peer.pid,
            peer.worker,
            now - peer.progress_time,
            size,
            first,
            last,
            count,
        )
        peer.progress_time = now
        if lost_uniques:
            self._reassign(lost_uniques, exclude=peer)

    # -- handshake and loss --

    def _on_hello(self, peer: _Peer, hello: dict[str, Any]) -> None:
        if hello.get("version") != PROTOCOL_VERSION:
            raise ProtocolError(f"protocol version {hello.get('version')!r} is not supported")
        if hello.get("codec") != self.codec.value:
            peer.refuse(f"this broker speaks {self.codec.value}, not {hello.get('codec')!r}")
            return
        window = hello.get("window")
        if not isinstance(window, int) or window < 4 * self.limits.max_frame:
            peer.refuse(f"a receive window of {window!r} cannot hold 4 frames of max_payload")
            return
        if not peer.pid:
            pid = hello.get("pid")
            peer.pid = pid if isinstance(pid, int) else 0
        peer.credit = window
        peer.state = PeerState.ACTIVE
        peer.progress_time = self._loop.time()
        welcome = {
            "next_seq": self._next_seq,
            "post_window": self.limits.effective_post_window,
            "max_payload": self.limits.max_payload,
            "unique_window": self.limits.unique_window,
            "broker_pid": os.getpid(),
        }
        peer.out.append(json_frame(FrameKind.WELCOME, welcome))
        self._schedule_flush(peer)
        self.post_system("started", {"pid": peer.pid, "worker": peer.worker, **peer.details})
        if not peer.started.done():
            peer.started.set_result(None)

    def _on_peer_lost(self, peer: _Peer) -> None:
        was_active = peer.state is PeerState.ACTIVE
        peer.state = PeerState.CLOSED
        if peer in self._peers:
            self._peers.remove(peer)
        if peer in self._to_flush:
            self._to_flush.remove(peer)
            peer.flush_pending = False
        # Its last posts reached us: they are sequenced now, whatever the backpressure
        # (at most post_window bytes), so that "exited" follows them.
        while peer.held:
            key, blob, size = peer.held.popleft()
            self._held_bytes -= size
            if self._upstream is not None:
                self._upstream.append(key, blob, size)
            else:
                self._sequence_post(key, blob)
        lost = [post for _, post in peer.unique_unacked]
        lost += [q.unique for q in peer.backlog if q.unique is not None]
        peer.unique_unacked.clear()
        peer.backlog.clear()
        peer.backlog_bytes = 0
        if lost and not self._closed:
            self._reassign(lost, exclude=peer)
        if self._backpressure:
            self._maybe_release_backpressure()
        if not peer.lost.done():
            peer.lost.set_result(None)
        if was_active and peer.worker is None and not self._closed:
            # A standalone client: its connection is all there is of it.
            self.post_system_after_posts("exited", {"pid": peer.pid, "worker": None})
        self._flush_soon()

    # -- output scheduling --

    def _after_input(self, peer: _Peer) -> None:
        if peer.post_credit_owed:
            self._schedule_flush(peer)
        self._flush_soon()

    def _schedule_flush(self, peer: _Peer) -> None:
        if not peer.flush_pending:
            peer.flush_pending = True
            self._to_flush.append(peer)

    def _flush_soon(self) -> None:
        # One write per client per loop iteration, however many posts arrived in it.
        if self._to_flush and not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._on_flush)

    def _on_flush(self) -> None:
        self._flush_scheduled = False
        peers, self._to_flush = self._to_flush, []
        for peer in peers:
            peer.flush_pending = False
            peer.flush()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the worker_events broker is closed")
