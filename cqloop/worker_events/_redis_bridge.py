"""cqloop.worker_events._redis_bridge: one host's broker, bridged to one Redis stream.

Owns `RedisBridge`, the broker's upstream (broker.Upstream) when worker_events spans hosts.
The local broker keeps serving its workers over the usual protocol; the bridge

- appends the posts it is handed to the stream STREAM, in post order, through one Lua
  script per batch (APPEND_SCRIPT). The script numbers each entry (field `n`, from the
  counter STREAM:count) and drops a post it has already appended for this bridge (the
  last post number of each bridge is kept in STREAM:poster:HOST_ID): a batch whose reply
  was lost to a broken connection is sent again, and appended once. Batches are
  pipelined on one connection of their own (up to APPEND_IN_FLIGHT script calls in
  flight): a post is sent as soon as it arrives, not after the previous batch's reply.
  Redis runs one connection's commands in order; a batch that does not follow on the
  last appended post (an earlier one failed) is refused by the script, and resent;
- reads the stream (XREAD BLOCK from the last id it delivered, on a connection of its
  own) and hands each entry to the broker, which numbers it for its workers. One
  stream, one order on every host. An
  entry whose `n` is not the next one means entries were trimmed (XADD MAXLEN ~) before
  this bridge read them: the broker delivers one gap event for them;
- appends unique posts to STREAM:unique instead, once per Limits.unique_window and key
  (SET NX PX on STREAM:key:KEY, in the same script), and reads that stream through the
  consumer group GROUP: each entry goes to one bridge, which gives it to one worker and
  acknowledges it (XACK) once that worker has handled it. While a worker holds it the
  bridge keeps the entry's idle time low (XCLAIM JUSTID); an entry idle for
  claim_timeout (its bridge is dead or cut off) is claimed by another (XAUTOCLAIM). So a
  unique event is handled once, and twice (never zero times) across a crash.

Connection loss: each of the three loops (append, read, unique) retries with a backoff
that doubles from backoff_min to backoff_max and resets on success. Reading resumes
from the last delivered id, so nothing is delivered twice; appending resends the batch in
flight, which the script appends once. Posts wait in a queue of at most `queue` bytes
meanwhile; past that the broker holds them (and then the workers, as under backpressure).

Latency: appending and reading each own a connection ("line"), outside the redis
package's pool: a command goes straight to its socket (no pool lock, no health check, no
timeout task per command; the pool serves the rare commands: positioning, unique events,
acknowledgements, claims). A blocked XREAD never holds a connection an append needs.

Invariants: script calls are only ever in flight on the one append line (two lines could
reorder them); only the read loop advances the delivered position; everything runs on the
supervisor's loop. The password is never printed (cluster.redact).

Who calls in: cqloop.workers' supervisor and the standalone broker (start(), close(),
fds()), and the broker (the Upstream methods).

Past 800 lines: the unique events' loops (unique, claim, ack) are what moves to a module of
their own next.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections import deque
from collections.abc import Awaitable, Callable, Sized
from dataclasses import dataclass
from typing import Any

from cqloop.worker_events.broker import Broker
from cqloop.worker_events.cluster import ClusterSettings, require_redis

__all__ = ["BridgeStatistics", "RedisBridge"]

logger = logging.getLogger("cqloop.worker_events.cluster")

GROUP = "cqloop"
# How long one XREAD / XREADGROUP blocks; the socket timeout is this plus a margin, so
# that a connection that went silent (a partition) is noticed.
READ_BLOCK_MS = 1000
SOCKET_TIMEOUT_MARGIN_S = 4.0
CONNECT_TIMEOUT_S = 5.0
# How long close() waits for a loop to return once its connections are closed.
CLOSE_TIMEOUT_S = 2.0
# Entries one XREAD returns at most: how far delivery may run past the broker's
# backpressure before it pauses.
READ_COUNT = 512
# One script call appends at most this many posts, or this many bytes of them.
APPEND_BATCH_POSTS = 512
APPEND_BATCH_BYTES = 512 * 1024
# Script calls in flight at once on the append line: a post arriving while a batch is
# in flight is sent at once (no wait for its reply), and a burst is not held to one
# round trip per batch.
APPEND_IN_FLIGHT = 4
# How long a reply may take on a line before it counts as lost (a partition): an XREAD
# blocks READ_BLOCK_MS on top of it.
REPLY_TIMEOUT_S = SOCKET_TIMEOUT_MARGIN_S
# Unique events one host holds unacknowledged at most (it reads no more until some are).
UNIQUE_IN_FLIGHT = 64
UNIQUE_CLAIM_COUNT = 64
# How long a host's last post number is kept, in ms: longer than any outage it rides out.
POSTER_TTL_MS = 7 * 24 * 3600 * 1000
MS_PER_S = 1000
# A blob that opens with this byte is no event but a bridge's marker (codec ids start at
# 1): "HOST_ID:NUMBER". Every bridge skips it; the one that appended it learns that every
# post it appended before has come back (see after_posts()).
MARKER = b"\x00"
# Error replies of a server that cannot serve us *now* (refusing a remote client, loading
# its data, out of memory, a replica, ...): retried with the backoff like a lost
# connection, with a warning. Any other error reply is a bug, and stops the loop loudly.
PASSING_ERRORS = frozenset(
    (
        "DENIED",
        "NOAUTH",
        "WRONGPASS",
        "NOPERM",
        "LOADING",
        "OOM",
        "READONLY",
        "MASTERDOWN",
        "BUSY",
        "TRYAGAIN",
        "CLUSTERDOWN",
        "NOREPLICAS",
    )
)

# KEYS: stream, counter, this bridge's poster key, unique stream.
# ARGV: maxlen, poster ttl ms, unique window ms, coalescing key prefix, the number of the
# last post the bridge knows appended (the poster key's value when Redis lost it), then
# per post its number, its unique key ("" for a broadcast) and its blob.
# Returns {appended, coalesced, refused}: refused is 1 when the batch does not follow on
# the last appended post (an earlier batch on the line failed): nothing of it is
# appended, and the bridge sends it again after the ones before it.
APPEND_SCRIPT = """
local last = tonumber(redis.call('GET', KEYS[3]) or ARGV[5])
local appended, coalesced = 0, 0
for i = 6, #ARGV, 3 do
  local number = tonumber(ARGV[i])
  if number > last + 1 then
    return {appended, coalesced, 1}
  end
  if number > last then
    last = number
    local key = ARGV[i + 1]
    if key == '' then
      local n = redis.call('INCR', KEYS[2])
      redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'n', n, 'b', ARGV[i + 2])
      appended = appended + 1
    elseif redis.call('SET', ARGV[4] .. key, '1', 'NX', 'PX', ARGV[3]) then
      redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[1], '*', 'k', key, 'b', ARGV[i + 2])
      appended = appended + 1
    else
      coalesced = coalesced + 1
    end
  end
end
redis.call('SET', KEYS[3], last, 'PX', ARGV[2])
return {appended, coalesced, 0}
"""


@dataclass(frozen=True)
class BridgeStatistics:
    connected: bool
    last_id: str | None  # the stream entry delivered last
    appended: int  # posts appended to the streams (unique ones included)
    coalesced: int  # unique posts dropped: their key was inside its window
    delivered: int  # stream entries delivered to the broker
    gaps: int
    missed: int  # entries lost to trimming
    queued_bytes: int  # posts waiting for Redis
    uniques_delivered: int  # unique events this host gave a worker
    uniques_acknowledged: int
    uniques_claimed: int  # ...of those, taken over from a silent host
    reconnects: int


_Post = tuple[int, str | None, bytes, int]  # number, unique key, blob, size


class _AppendRefused(Exception):
    """The append script refused a batch: an earlier one on the line failed."""


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    """Sleep `seconds`, or less if `stop` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


class _Backoff:
    """backoff_min, doubling up to backoff_max; reset() after a success. A wait ends
    early when the bridge closes."""

    def __init__(self, settings: ClusterSettings, stop: asyncio.Event) -> None:
        self.low = settings.backoff_min
        self.high = settings.backoff_max
        self.stop = stop
        self.delay = 0.0

    def reset(self) -> None:
        self.delay = 0.0

    async def wait(self) -> None:
        self.delay = min(self.high, self.delay * 2 if self.delay else self.low)
        await _sleep_unless(self.stop, self.delay)


class RedisBridge:
    """The upstream of one host's broker. See the module docstring."""

    def __init__(
        self, settings: ClusterSettings, broker: Broker, *, host_id: str | None = None
    ) -> None:
        redis_asyncio = require_redis()
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.settings = settings
        self.broker = broker
        self.host_id = host_id or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._errors: tuple[type[BaseException], ...] = (
            redis_asyncio.ConnectionError,
            redis_asyncio.TimeoutError,
            ConnectionError,
            OSError,
            TimeoutError,
        )
        self._response_error: type[BaseException] = redis_asyncio.ResponseError
        self._connection_error: type[BaseException] = redis_asyncio.ConnectionError
        # Our loops retry with their own backoff; the client's retries would hide the
        # outage from them (and resend a script call on their own).
        self._redis = redis_asyncio.Redis.from_url(
            settings.url,
            socket_timeout=READ_BLOCK_MS / MS_PER_S + SOCKET_TIMEOUT_MARGIN_S,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
            retry=Retry(NoBackoff(), 0),
            client_name=f"cqloop:{self.host_id}",
        )
        # The dedicated connections (see "Latency" above), open or being opened. Their
        # reads are bounded by our own timeouts (asyncio.timeout, no task per command).
        self._lines: set[Any] = set()
        self._line_settings = {
            **self._redis.connection_pool.connection_kwargs,
            "socket_timeout": None,
        }
        stream = settings.stream
        self._unique_stream = f"{stream}:unique"
        self._keys = [stream, f"{stream}:count", f"{stream}:poster:{self.host_id}"]
        self._keys.append(self._unique_stream)
        self._coalesce_prefix = f"{stream}:key:"
        self._loop = asyncio.get_running_loop()
        self._readers: list[asyncio.Task[None]] = []
        self._writers: list[asyncio.Task[None]] = []
        self._closing = False
        self._stop = asyncio.Event()  # set by close(): every wait of the loops ends
        # None until the first attempt: the first failure is logged too.
        self._connected: bool | None = None
        # Set once the read position is known: appends wait for it, so that a host
        # delivers its own first posts.
        self._positioned = asyncio.Event()
        self._flowing = asyncio.Event()
        self._flowing.set()
        # Posts not yet sent on the append line, in post order; then the batches sent on
        # it whose reply has not come (they go back to the outbox's front if the line
        # breaks). _outbox_bytes counts both.
        self._outbox: deque[_Post] = deque()
        self._batches: deque[list[_Post]] = deque()
        self._append_wake = asyncio.Event()  # a post, a reply, or the reply reader ended
        self._replies_wanted = asyncio.Event()  # a batch was sent
        self._outbox_bytes = 0
        self._outbox_ready = asyncio.Event()
        self._wants_room = False
        self._post_number = 0
        self._appended_through = 0  # the number of the last post Redis took
        self._marker_prefix = MARKER + f"{self.host_id}:".encode()
        # (post number of the marker, callback), in post order.
        self._markers: deque[tuple[int, Callable[[], None]]] = deque()
        self._last_id: str | None = None
        self._last_n: int | None = None
        # Unique events a worker here holds: entry id -> True once being handled.
        self._in_flight: set[str] = set()
        self._to_ack: list[str] = []
        self._acks_ready = asyncio.Event()
        self._unique_room = asyncio.Event()
        self._unique_room.set()
        self._appended = 0
        self._coalesced = 0
        self._delivered = 0
        self._gaps = 0
        self._missed = 0
        self._uniques_delivered = 0
        self._uniques_acknowledged = 0
        self._uniques_claimed = 0
        self._reconnects = 0

    # -- lifecycle --

    def start(self) -> None:
        """Start reading and appending (on the running loop); returns at once. Redis need
        not be reachable yet: posts queue until it is."""
        for tasks, name, work in (
            (self._readers, "read", self._read_loop()),
            (self._readers, "unique", self._unique_loop()),
            (self._readers, "claim", self._claim_loop()),
            (self._writers, "append", self._append_loop()),
            (self._writers, "ack", self._ack_loop()),
        ):
            task = self._loop.create_task(work, name=f"cqloop.worker_events bridge {name}")
            task.add_done_callback(self._on_task_done)
            tasks.append(task)

    async def close(self, timeout: float = 0.0) -> None:
        """Stop delivering; append what is queued (for up to `timeout` seconds) and send
        the acknowledgements owed; then close the connections. Unique events a worker
        here still held are claimed by another host after claim_timeout."""
        if self._closing:
            return
        self._closing = True
        # Every wait of the loops ends (the loops that waited for a read position, which
        # never came if Redis was never reached, see the bridge closing and return).
        for event in (
            self._stop,
            self._outbox_ready,
            self._acks_ready,
            self._flowing,
            self._append_wake,
            self._replies_wanted,
        ):
            event.set()
        self._unique_room.set()
        self._positioned.set()
        if self._writers and timeout > 0:
            await asyncio.wait(self._writers, timeout=timeout)
        # The loops are not cancelled while a command may be in flight: the redis
        # package's asyncio client can hang a task cancelled in a blocking read
        # (redis/redis-py#2579, #2028). Closing the connections ends those reads with
        # an error instead, and each loop, seeing the bridge closing, returns.
        with contextlib.suppress(*self._errors):
            await self._redis.connection_pool.disconnect(inuse_connections=True)
        for line in list(self._lines):
            await self._close_line(line)
        tasks = [*self._readers, *self._writers]
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=CLOSE_TIMEOUT_S)
            for task in stuck:
                task.cancel()
            if stuck:
                await asyncio.wait(stuck, timeout=CLOSE_TIMEOUT_S)
        self._requeue_batches()
        if self._outbox:
            logger.warning(
                "worker_events cluster: %d posts (%d bytes) were never appended to %s",
                len(self._outbox),
                self._outbox_bytes,
                self.settings.redacted,
            )
        logger.info("worker_events cluster: host %s closed: %s", self.host_id, self.statistics())
        with contextlib.suppress(*self._errors):
            await self._redis.aclose()

    def fds(self) -> list[int]:
        """The file descriptors of the open Redis connections (a forked worker closes
        them: the connections are the supervisor's)."""
        found: list[int] = []
        pool = self._redis.connection_pool
        connections = [
            *getattr(pool, "_available_connections", ()),
            *getattr(pool, "_in_use_connections", ()),
            *self._lines,
        ]
        for connection in connections:
            writer = getattr(connection, "_writer", None)
            if writer is None:
                continue
            sock = writer.transport.get_extra_info("socket")
            if sock is not None and sock.fileno() >= 0:
                found.append(sock.fileno())
        return found

    def statistics(self) -> BridgeStatistics:
        return BridgeStatistics(
            connected=bool(self._connected),
            last_id=self._last_id,
            appended=self._appended,
            coalesced=self._coalesced,
            delivered=self._delivered,
            gaps=self._gaps,
            missed=self._missed,
            queued_bytes=self._outbox_bytes,
            uniques_delivered=self._uniques_delivered,
            uniques_acknowledged=self._uniques_acknowledged,
            uniques_claimed=self._uniques_claimed,
            reconnects=self._reconnects,
        )

    def __repr__(self) -> str:
        state = "connected" if self._connected else "disconnected"
        return f"<worker_events RedisBridge {self.settings.redacted} {state} host={self.host_id}>"

    # -- the broker's upstream --

    def has_room(self, size: int) -> bool:
        if self._outbox_bytes + size <= self.settings.queue:
            return True
        self._wants_room = True
        return False

    def append(self, key: str | None, blob: bytes, size: int) -> None:
        self._post_number += 1
        self._outbox.append((self._post_number, key, blob, size))
        self._outbox_bytes += size
        self._outbox_ready.set()
        self._append_wake.set()

    def resume_delivery(self) -> None:
        self._flowing.set()

    def after_posts(self, callback: Callable[[], None]) -> None:
        marker = self._marker_prefix + str(self._post_number + 1).encode()
        self.append(None, marker, len(marker))
        self._markers.append((self._post_number, callback))

    # -- connection state (for the log: one line per change, not per retry) --

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._loop.call_exception_handler(
                {
                    "message": f"worker_events cluster: {task.get_name()} failed; "
                    f"this host no longer bridges {self.settings.redacted}",
                    "exception": task.exception(),
                }
            )

    def _on_success(self) -> None:
        if self._connected is not True:
            self._connected = True
            logger.info("worker_events cluster: connected to %s", self.settings.redacted)

    def _on_error(self, what: str, exc: BaseException) -> None:
        if self._connected is not False:
            if self._connected:
                self._reconnects += 1
            self._connected = False
            logger.warning(
                "worker_events cluster: no connection to %s while %s (%s: %s); "
                "retrying with backoff",
                self.settings.redacted,
                what,
                type(exc).__name__,
                exc,
            )
        else:
            logger.debug("worker_events cluster: %s failed: %r", what, exc)

    async def _attempt(
        self, what: str, backoff: _Backoff, command: Awaitable[Any]
    ) -> tuple[bool, Any]:
        """Run one Redis command: (True, its reply), or (False, None) after a connection
        error, logged (once per outage) and waited out (the backoff)."""
        try:
            reply = await command
        except self._errors as exc:
            if self._closing:
                return False, None  # close() closed the connection under the command
            self._on_error(what, exc)
            await backoff.wait()
            return False, None
        except self._response_error as exc:
            if str(exc).split(" ", 1)[0] not in PASSING_ERRORS:
                raise
            self._on_error(what, exc)
            await backoff.wait()
            return False, None
        self._on_success()
        backoff.reset()
        return True, reply

    async def _work_left(self, pending: Sized, ready: asyncio.Event) -> bool:
        """Wait until `pending` holds something (True), or the bridge is closing and it
        is empty (False): a writer's loop condition."""
        while not pending:
            if self._closing:
                return False
            ready.clear()
            await ready.wait()
        return True

    # -- the dedicated connections --

    async def _open_line(self) -> Any:
        """A connection of its own to Redis (see "Latency" above), connected."""
        line = self._redis.connection_pool.connection_class(**self._line_settings)
        self._lines.add(line)
        try:
            await line.connect()
        except BaseException:
            await self._close_line(line)
            raise
        return line

    async def _close_line(self, line: Any) -> None:
        self._lines.discard(line)
        with contextlib.suppress(*self._errors):
            await line.disconnect(nowait=True)

    async def _send(self, line: Any, command: list[Any]) -> None:
        if not line.is_connected:
            # The redis package would connect again on its own: a batch must not go out
            # on a new connection ahead of the ones that were in flight on the old one.
            raise self._connection_error("the connection was closed")
        await line.send_packed_command(line.pack_command(*command), False)

    async def _reply(self, line: Any, timeout: float) -> Any:
        """The next reply on `line`; TimeoutError (the line closed) past `timeout`."""
        async with asyncio.timeout(timeout):
            return await line.read_response()

    # -- appending --

    async def _append_loop(self) -> None:
        backoff = _Backoff(self.settings, self._stop)
        await self._positioned.wait()
        while await self._work_left(self._outbox, self._outbox_ready):
            ok, _ = await self._attempt("appending", backoff, self._pipeline_appends(backoff))
            if not ok and self._closing:
                return  # what is left is logged by close()

    async def _pipeline_appends(self, backoff: _Backoff) -> None:
        """Send batches on a new append line as posts come, up to APPEND_IN_FLIGHT in
        flight, while a task reads their replies in order. Returns once the bridge is
        closing and everything is appended, or the script refused a batch; raises when the
        line breaks. Either way the batches without a reply go back to the outbox."""
        line = await self._open_line()
        replies = self._loop.create_task(self._read_append_replies(line))
        try:
            while True:
                while self._outbox and len(self._batches) < APPEND_IN_FLIGHT:
                    if replies.done():
                        break
                    batch = self._next_batch()
                    self._batches.append(batch)
                    self._replies_wanted.set()
                    await self._send(line, self._batch_command(batch))
                if replies.done():
                    replies.result()  # raises what broke the line
                    return
                self._append_wake.clear()
                if not (self._outbox and len(self._batches) < APPEND_IN_FLIGHT):
                    await self._append_wake.wait()
        except _AppendRefused:
            # An earlier batch failed on the line (its error was seen first, so this is
            # rare): start again from the first post without a reply, after a pause.
            logger.debug("worker_events cluster: a batch was refused; sending again")
            await backoff.wait()
        finally:
            await self._close_line(line)  # ends the reply reader's read, if any
            if not replies.done():
                await asyncio.wait([replies])
            if not replies.cancelled():
                replies.exception()  # retrieved: it was raised above, or is moot
            self._requeue_batches()

    def _next_batch(self) -> list[_Post]:
        """Take the next batch from the outbox's front."""
        outbox = self._outbox
        batch = [outbox.popleft()]
        size = batch[0][3]
        while outbox and len(batch) < APPEND_BATCH_POSTS and size < APPEND_BATCH_BYTES:
            post = outbox.popleft()
            batch.append(post)
            size += post[3]
        return batch

    def _batch_command(self, batch: list[_Post]) -> list[Any]:
        args: list[Any] = [
            "EVAL",  # not EVALSHA: no NOSCRIPT to recover from with batches in flight behind it
            APPEND_SCRIPT,
            len(self._keys),
            *self._keys,
            self.settings.maxlen,
            POSTER_TTL_MS,
            max(1, round(self.broker.limits.unique_window * MS_PER_S)),  # PX must be >= 1
            self._coalesce_prefix,
            self._appended_through,
        ]
        for number, key, blob, _ in batch:
            args += [number, key or "", blob]
        return args

    async def _read_append_replies(self, line: Any) -> None:
        """The reply reader of one append line: each reply settles the oldest batch."""
        try:
            while True:
                while not self._batches:
                    if self._closing and not self._outbox:
                        return
                    self._replies_wanted.clear()
                    await self._replies_wanted.wait()
                appended, coalesced, refused = await self._reply(line, REPLY_TIMEOUT_S)
                if refused:
                    raise _AppendRefused
                batch = self._batches.popleft()
                self._appended += appended
                self._coalesced += coalesced
                self._outbox_bytes -= sum(post[3] for post in batch)
                self._appended_through = batch[-1][0]
                self._append_wake.set()  # room for another batch in flight
                if self._wants_room:
                    self._wants_room = False
                    self.broker.on_upstream_room()
        finally:
            self._append_wake.set()

    def _requeue_batches(self) -> None:
        """The batches without a reply go back to the outbox's front, in order."""
        while self._batches:
            self._outbox.extendleft(reversed(self._batches.pop()))

    # -- delivering the stream --

    async def _read_loop(self) -> None:
        backoff = _Backoff(self.settings, self._stop)
        line: Any = None
        try:
            while not self._closing:
                if self.broker.backpressure:
                    self._flowing.clear()
                    await self._flowing.wait()
                if self._last_id is None:
                    await self._attempt("reading the stream's end", backoff, self._position())
                    continue
                if line is None:
                    ok, line = await self._attempt("reading the stream", backoff, self._open_line())
                    if not ok:
                        continue
                ok, reply = await self._attempt("reading the stream", backoff, self._xread(line))
                if not ok:
                    # A read that failed or timed out may have left a reply coming: the
                    # next one is read on a new connection.
                    await self._close_line(line)
                    line = None
                    continue
                for entry_id, fields in reply:
                    self._deliver(entry_id.decode(), fields)
        finally:
            if line is not None:
                await self._close_line(line)

    async def _xread(self, line: Any) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """The next entries of the stream after the last delivered one (XREAD BLOCK)."""
        stream = self.settings.stream
        command = ["XREAD", "COUNT", READ_COUNT, "BLOCK", READ_BLOCK_MS, "STREAMS", stream]
        await self._send(line, [*command, self._last_id])
        reply = await self._reply(line, READ_BLOCK_MS / MS_PER_S + REPLY_TIMEOUT_S)
        if not reply:
            return []  # the block timed out
        # RESP3 answers a map {stream: entries}, RESP2 a list of [stream, entries].
        streams = reply.values() if isinstance(reply, dict) else [item[1] for item in reply]
        found = []
        for entries in streams:
            for entry_id, flat in entries:
                fields = iter(flat)
                found.append((entry_id, dict(zip(fields, fields, strict=True))))
        return found

    async def _position(self) -> None:
        """Start from the stream's newest entry (a host delivers what is appended after
        it started), and make sure the unique stream's group exists."""
        await self._ensure_group()
        newest = await self._redis.xrevrange(self.settings.stream, count=1)
        if newest:
            entry_id, fields = newest[0]
            self._last_id = entry_id.decode()
            self._last_n = int(fields[b"n"])
        else:
            self._last_id = "0-0"
            self._last_n = 0
        self._positioned.set()
        logger.info(
            "worker_events cluster: host %s delivers %s from after entry %s",
            self.host_id,
            self.settings.redacted,
            self._last_id,
        )

    def _deliver(self, entry_id: str, fields: dict[bytes, bytes]) -> None:
        n = int(fields[b"n"])
        last_n = self._last_n
        if last_n is not None and n > last_n + 1:
            missed = n - last_n - 1
            self._gaps += 1
            self._missed += missed
            logger.warning(
                "worker_events cluster: %d entries of %s were trimmed before this host "
                "read them (after entry %s); its workers get a gap event",
                missed,
                self.settings.redacted,
                self._last_id,
            )
            self.broker.deliver_gap(missed)
            # Our markers may have been in the trimmed part: the order is broken anyway.
            self._markers_reached(self._appended_through)
        elif last_n is not None and n <= last_n:
            logger.warning(
                "worker_events cluster: the stream %s was reset (entry %s is number %d, "
                "after number %d); delivering on from it",
                self.settings.redacted,
                entry_id,
                n,
                last_n,
            )
        self._last_id = entry_id
        self._last_n = n
        blob = fields[b"b"]
        if blob[:1] == MARKER:
            if blob.startswith(self._marker_prefix):
                self._markers_reached(int(blob[len(self._marker_prefix) :]))
            return
        if self._too_large(entry_id, blob):
            self._gaps += 1
            self._missed += 1
            self.broker.deliver_gap(1)
            return
        self._delivered += 1
        self.broker.deliver(blob)

    def _markers_reached(self, number: int) -> None:
        markers = self._markers
        while markers and markers[0][0] <= number:
            markers.popleft()[1]()

    def _too_large(self, entry_id: str, blob: bytes) -> bool:
        """An event posted on a host whose Limits.max_payload is larger than ours would
        break our workers' connections (their frame bound comes from our broker): it is
        lost to this host instead, loudly."""
        if len(blob) - 1 <= self.broker.limits.max_payload:
            return False
        logger.warning(
            "worker_events cluster: entry %s of %s holds %d bytes, over this host's "
            "max_payload of %d; its workers get a gap event in its place",
            entry_id,
            self.settings.redacted,
            len(blob) - 1,
            self.broker.limits.max_payload,
        )
        return True

    # -- unique events --

    async def _ensure_group(self) -> None:
        try:
            await self._redis.xgroup_create(self._unique_stream, GROUP, id="0", mkstream=True)
        except self._response_error as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _unique_loop(self) -> None:
        backoff = _Backoff(self.settings, self._stop)
        await self._positioned.wait()
        streams = {self._unique_stream: ">"}
        while not self._closing:
            if len(self._in_flight) >= UNIQUE_IN_FLIGHT or not self._has_workers():
                self._unique_room.clear()
                with contextlib.suppress(TimeoutError):
                    # Workers connecting is no event of ours: look again now and then.
                    await asyncio.wait_for(self._unique_room.wait(), READ_BLOCK_MS / MS_PER_S)
                continue
            _, reply = await self._attempt(
                "reading unique events", backoff, self._read_unique(streams)
            )
            for _, entries in reply or ():
                for entry_id, fields in entries:
                    self._deliver_unique(entry_id.decode(), fields)

    async def _read_unique(self, streams: dict[str, str]) -> Any:
        try:
            return await self._redis.xreadgroup(
                GROUP,
                self.host_id,
                streams,
                count=UNIQUE_IN_FLIGHT - len(self._in_flight),
                block=READ_BLOCK_MS,
            )
        except self._response_error as exc:
            # NOGROUP: Redis lost the group (restarted without its data); UNBLOCKED: the
            # stream was deleted under our blocked read.
            if not str(exc).startswith(("NOGROUP", "UNBLOCKED")):
                raise
            await self._ensure_group()
            return None

    def _has_workers(self) -> bool:
        return self.broker.statistics().clients > 0

    def _deliver_unique(self, entry_id: str, fields: dict[bytes, bytes] | None) -> None:
        if entry_id in self._in_flight:
            return  # a worker here has it already
        if not fields:
            # Trimmed from the stream while it was pending: it cannot be handled now.
            logger.warning(
                "worker_events cluster: unique event %s of %s was trimmed before a worker "
                "handled it",
                entry_id,
                self.settings.redacted,
            )
            self._to_ack.append(entry_id)
            self._acks_ready.set()
            return
        if self._too_large(entry_id, fields[b"b"]):
            self._to_ack.append(entry_id)  # no worker here can take it
            self._acks_ready.set()
            return
        key = fields[b"k"].decode()
        taken = self.broker.deliver_unique(
            key,
            fields[b"b"],
            handled=lambda: self._on_unique_handled(entry_id),
            lost=lambda: self._on_unique_lost(entry_id),
        )
        if taken:
            # Left pending otherwise: another host (or this one, later) claims it.
            self._in_flight.add(entry_id)
            self._uniques_delivered += 1

    def _on_unique_handled(self, entry_id: str) -> None:
        self._in_flight.discard(entry_id)
        self._uniques_acknowledged += 1
        self._to_ack.append(entry_id)
        self._acks_ready.set()
        self._unique_room.set()

    def _on_unique_lost(self, entry_id: str) -> None:
        # No worker here to give it to: stop keeping it fresh, so it is claimed.
        self._in_flight.discard(entry_id)
        self._unique_room.set()

    async def _ack_loop(self) -> None:
        backoff = _Backoff(self.settings, self._stop)
        while await self._work_left(self._to_ack, self._acks_ready):
            ids = self._to_ack[:UNIQUE_IN_FLIGHT]
            ok, _ = await self._attempt("acknowledging unique events", backoff, self._ack(ids))
            if ok:
                del self._to_ack[: len(ids)]
            elif self._closing:
                return

    async def _ack(self, ids: list[str]) -> None:
        try:
            await self._redis.xack(self._unique_stream, GROUP, *ids)
        except self._response_error as exc:
            if "NOGROUP" not in str(exc):
                raise
            # Redis lost the group (restarted without its data): nothing is pending.

    async def _claim_loop(self) -> None:
        """Every claim_timeout / 3: refresh the entries held here (so that nobody claims
        them), then claim those idle for claim_timeout (their host went silent)."""
        backoff = _Backoff(self.settings, self._stop)
        interval = self.settings.claim_timeout / 3
        idle_ms = int(self.settings.claim_timeout * MS_PER_S)
        await self._positioned.wait()
        while not self._closing:
            await _sleep_unless(self._stop, interval)
            if self._closing:
                return
            await self._attempt("claiming unique events", backoff, self._claim(idle_ms))

    async def _claim(self, idle_ms: int) -> None:
        try:
            if self._in_flight:
                await self._redis.xclaim(
                    self._unique_stream,
                    GROUP,
                    self.host_id,
                    0,
                    list(self._in_flight),
                    justid=True,
                )
            if self._has_workers() and len(self._in_flight) < UNIQUE_IN_FLIGHT:
                await self._claim_idle(idle_ms)
        except self._response_error as exc:
            if "NOGROUP" not in str(exc):
                raise  # (without its group, nothing is pending: the unique loop remakes it)

    async def _claim_idle(self, idle_ms: int) -> None:
        reply = await self._redis.xautoclaim(
            self._unique_stream,
            GROUP,
            self.host_id,
            idle_ms,
            start_id="0-0",
            count=UNIQUE_IN_FLIGHT - len(self._in_flight),
        )
        entries = reply[1]
        deleted = reply[2] if len(reply) > 2 else []
        for entry_id, fields in entries:
            entry = entry_id.decode()
            if entry not in self._in_flight:
                self._uniques_claimed += 1
                logger.info(
                    "worker_events cluster: claimed unique event %s, idle for %.1f s "
                    "at a silent host",
                    entry,
                    idle_ms / MS_PER_S,
                )
            self._deliver_unique(entry, fields)
        for entry_id in deleted:
            self._deliver_unique(entry_id.decode(), None)
