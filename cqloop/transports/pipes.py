"""cqloop.transports.pipes: read and write pipe transports, connect_read_pipe/connect_write_pipe.

PipesMixin is a base of cqloop.loop.Loop and gives it connect_read_pipe and
connect_write_pipe. ReadPipeTransport and WritePipeTransport are the transports they return;
the subprocess transports (cqloop.transports.subprocess) use them for a child's stdin, stdout
and stderr. Everything here is written against the loop's public API (add_reader/add_writer,
remove_reader/remove_writer, call_soon, create_future, call_exception_handler). Pipes are not
a hot path, so they are Python; their instances take attributes.

What a pipe transport accepts: a pipe, a FIFO, a socket or a character device (a pty, a
terminal, /dev/null...), as asyncio does; anything else is refused with asyncio's ValueError.

Ownership, the rule that matters most here: the transport owns the *pipe object* it was given
(a file object, a socket, anything with fileno() and close()) and closes it exactly once, by
calling its close(), right after protocol.connection_lost(). It never closes the fd number
itself. uvloop's pipe transports closed the fd behind the file object's back; the file object
then closed the same number again when it was collected, by then another file's (uvloop issue
"pipe fd closed twice"). Closing only through the object means the number is closed once,
by its owner, and the object knows it is closed.

Invariants:
- A ReadPipeTransport watches its fd for reading exactly while it is reading (connection_made
  has run, not paused, not closing).
- A WritePipeTransport buffers only what the pipe refused, writes at once while nothing is
  buffered, and watches its fd for writing exactly while its buffer holds data. It also
  watches its fd for *reading*, as asyncio does: the write end of a pipe never turns readable,
  but epoll reports EPOLLERR on it once the read end is closed, and the loop hands that to the
  reader callback, which is how the transport learns its reader went away without writing.
- connection_lost is called once; the pipe is closed right after it; then the transport drops
  its loop and protocol.

asyncio is the oracle (unix_events._UnixReadPipeTransport and _UnixWritePipeTransport):
callbacks, error handling and flow control follow them call for call.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import stat
import warnings
from asyncio import constants
from collections.abc import Callable
from typing import Any, TypeVar, cast

from cqloop._core.stream import water_marks
from cqloop.transports.flow import (
    CallbackContext,
    ReadFlowMixin,
    WriteFlowMixin,
    report_fatal_error,
    set_result_unless_cancelled,
)

__all__ = ["PipesMixin", "ReadPipeTransport", "WritePipeTransport"]

logger = logging.getLogger("asyncio")

_ProtocolT = TypeVar("_ProtocolT", bound=asyncio.BaseProtocol)
_TransportT = TypeVar("_TransportT", "ReadPipeTransport", "WritePipeTransport")

# The most one data_received() gets from one read (asyncio's max_size for pipes).
MAX_READ_BYTES = 256 * 1024
# After this many writes to a closed pipe, each further one logs a warning.
LOG_THRESHOLD_FOR_CONNLOST_WRITES: int = constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES


def _pipe_kind(fd: int) -> tuple[bool, bool, bool]:
    """(is a FIFO, is a socket, is a character device) for the file behind fd."""
    mode = os.fstat(fd).st_mode
    return stat.S_ISFIFO(mode), stat.S_ISSOCK(mode), stat.S_ISCHR(mode)


class _PipeTransport(CallbackContext):
    """What the read and write pipe transports share: the pipe object they own (checked,
    made non-blocking), their repr, the unclosed-transport warning, the protocol
    accessors and the end (connection_lost, then the pipe closed)."""

    _extra: dict[str, Any]  # set by BaseTransport.__init__ (a slot there)
    # Read by __del__, which may run on an instance whose __init__ failed.
    _pipe: Any = None
    _loop: Any
    _protocol: Any
    _fileno: int
    _closing: bool

    def _adopt_pipe(
        self, loop: asyncio.AbstractEventLoop, pipe: Any, protocol: Any, refusal: str
    ) -> tuple[bool, bool, bool]:
        """Take `pipe` (refused with asyncio's ValueError `refusal` when it is none of the
        kinds accepted); return its kind, as _pipe_kind gives it."""
        self._extra["pipe"] = pipe
        fileno = pipe.fileno()
        kind = _pipe_kind(fileno)
        if not any(kind):
            raise ValueError(refusal)
        os.set_blocking(fileno, False)
        self._loop = loop
        self._pipe = pipe
        self._fileno = fileno
        self._protocol = protocol
        self._closing = False
        self._capture_context()
        return kind

    def _repr_activity(self) -> list[str]:
        """What the repr says of an open transport's fd watching."""
        raise NotImplementedError

    def __repr__(self) -> str:
        info = [type(self).__name__]
        if self._pipe is None:
            info.append("closed")
        elif self._closing:
            info.append("closing")
        info.append(f"fd={self._fileno}")
        if self._pipe is None:
            info.append("closed")
        elif self._loop is None or self._loop.is_closed():
            info.append("open")
        else:
            info.extend(self._repr_activity())
        return "<{}>".format(" ".join(info))

    def __del__(self, _warn: Callable[..., Any] = warnings.warn) -> None:
        if self._pipe is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            self._pipe.close()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> Any:
        return self._protocol

    def is_closing(self) -> bool:
        return self._closing

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        if self._pipe is None:
            return
        try:
            self._protocol.connection_lost(exc)
        finally:
            # The one place the pipe is closed: through its object, once (see the module
            # docstring on ownership).
            self._pipe.close()
            self._pipe = None
            self._protocol = None
            self._loop = None


class ReadPipeTransport(_PipeTransport, ReadFlowMixin, asyncio.ReadTransport):
    """The read end of a pipe (or a FIFO, socket, pty or character device) as an asyncio
    ReadTransport. Made by connect_read_pipe."""

    # A class attribute under asyncio's name, so it can be changed as on asyncio's transport.
    max_size = MAX_READ_BYTES

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        pipe: Any,
        protocol: asyncio.BaseProtocol,
        waiter: asyncio.Future[None] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(extra)
        self._adopt_pipe(loop, pipe, protocol, "Pipe transport is for pipes/sockets only.")
        self._paused = False
        self._watching = False

        self._soon(protocol.connection_made, self)
        # Read only once connection_made() has run, and wake the waiter after both.
        self._soon(self._start_reading)
        if waiter is not None:
            self._soon(set_result_unless_cancelled, waiter, None)

    def _repr_activity(self) -> list[str]:
        return ["polling" if self._watching else "idle"]

    # -- public API -----------------------------------------------------------------------

    def close(self) -> None:
        """Stop reading; connection_lost(None) follows, then the pipe is closed."""
        if not self._closing:
            self._close(None)

    # -- private ----------------------------------------------------------------------------

    def _start_reading(self) -> None:
        if self.is_reading() and not self._watching:
            self._in_context(self._loop.add_reader, self._fileno, self._on_readable)
            self._watching = True

    def _stop_reading(self) -> None:
        if self._watching:
            self._loop.remove_reader(self._fileno)
            self._watching = False

    def _fatal_error(self, exc: BaseException, message: str) -> None:
        # EIO is how a pty master reports that the slave side closed: the end, not a bug.
        eio = isinstance(exc, OSError) and exc.errno == errno.EIO
        report_fatal_error(self, exc, message, expected=eio)
        self._close(exc)

    def _close(self, exc: BaseException | None) -> None:
        self._closing = True
        self._stop_reading()
        self._soon(self._call_connection_lost, exc)

    # -- callbacks fired by the loop's fd dispatch --------------------------------------

    def _on_readable(self) -> None:
        try:
            data = os.read(self._fileno, self.max_size)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fatal_error(exc, "Fatal read error on pipe transport")
            return
        if data:
            self._protocol.data_received(data)
            return
        if self._loop.get_debug():
            logger.info("%r was closed by peer", self)
        self._closing = True
        self._stop_reading()
        self._soon(self._protocol.eof_received)
        self._soon(self._call_connection_lost, None)


class WritePipeTransport(_PipeTransport, WriteFlowMixin, asyncio.Transport):
    """The write end of a pipe (or a FIFO, socket, pty or character device) as an asyncio
    WriteTransport with flow control. Made by connect_write_pipe.

    An asyncio.Transport, as asyncio's own write pipe transport is (through its flow
    control mixin): pause_reading, resume_reading and is_reading raise
    NotImplementedError, where a bare WriteTransport would have no such methods."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        pipe: Any,
        protocol: asyncio.BaseProtocol,
        waiter: asyncio.Future[None] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(extra)
        is_fifo, is_socket, _ = self._adopt_pipe(
            loop, pipe, protocol, "Pipe transport is only for pipes, sockets and character devices"
        )
        self._buffer = bytearray()
        # Non-zero once the pipe is known lost; then counts writes made since.
        self._conn_lost = 0
        # (_closing, set by close() and write_eof(), means nothing more is accepted.)
        self._high_water, self._low_water = water_marks()
        self._protocol_paused = False
        # Watching for "readable", which on a write end means the reader closed (EPOLLERR).
        self._watching_peer = False
        self._watching_writes = False
        # connection_lost is scheduled (or done): it happens once.
        self._lost_scheduled = False

        self._soon(protocol.connection_made, self)
        if is_fifo or is_socket:
            # A pty or other character device gives no such news; asyncio does not ask.
            self._soon(self._watch_peer)
        if waiter is not None:
            self._soon(set_result_unless_cancelled, waiter, None)

    def _repr_activity(self) -> list[str]:
        return [
            "polling" if self._watching_writes else "idle",
            f"bufsize={self.get_write_buffer_size()}",
        ]

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Write `data`: at once as far as the pipe takes it, the rest buffered and written
        when the pipe is writable. pause_writing() is called past the high-water mark."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(
                f"data argument must be a bytes-like object, not {type(data).__name__!r}"
            )
        if not data:
            return
        if self._conn_lost or self._closing:
            if self._conn_lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES:
                logger.warning("pipe closed by peer or os.write(pipe, data) raised exception.")
            self._conn_lost += 1
            return

        if not self._buffer:
            try:
                written = os.write(self._fileno, data)
            except (BlockingIOError, InterruptedError):
                written = 0
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._conn_lost += 1
                self._fatal_error(exc, "Fatal write error on pipe transport")
                return
            if written == len(data):
                return
            if written:
                data = memoryview(data)[written:]
            self._in_context(self._loop.add_writer, self._fileno, self._on_writable)
            self._watching_writes = True

        # A copy: the caller may change a bytearray or memoryview's memory afterwards.
        self._buffer += data
        self._maybe_pause_protocol()

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        """Close the pipe once the buffer is written: the reader sees end of file."""
        if self._closing:
            return
        assert self._pipe is not None
        self._closing = True
        if not self._buffer:
            self._unwatch_peer()
            self._schedule_connection_lost(None)

    def close(self) -> None:
        """write_eof(): for a write pipe, closing is sending end of file."""
        if self._pipe is not None and not self._closing:
            self.write_eof()

    def abort(self) -> None:
        """Close at once, dropping buffered data; connection_lost(None) follows."""
        self._close(None)

    def get_write_buffer_size(self) -> int:
        return len(self._buffer)

    # -- private ----------------------------------------------------------------------------

    def _watch_peer(self) -> None:
        if not self._closing and not self._watching_peer:
            self._in_context(self._loop.add_reader, self._fileno, self._on_peer_closed)
            self._watching_peer = True

    def _unwatch_peer(self) -> None:
        if self._watching_peer:
            self._loop.remove_reader(self._fileno)
            self._watching_peer = False

    def _stop_writing(self) -> None:
        if self._watching_writes:
            self._loop.remove_writer(self._fileno)
            self._watching_writes = False

    def _fatal_error(self, exc: BaseException, message: str) -> None:
        # An OSError (EPIPE and friends) is the pipe's news, logged only in debug mode.
        report_fatal_error(self, exc, message, expected=isinstance(exc, OSError))
        self._close(exc)

    def _close(self, exc: BaseException | None) -> None:
        self._closing = True
        self._stop_writing()
        self._buffer.clear()
        self._unwatch_peer()
        self._schedule_connection_lost(exc)

    def _schedule_connection_lost(self, exc: BaseException | None) -> None:
        # Once: write_eof() may have scheduled it before an abort() or a peer's close.
        if self._lost_scheduled:
            return
        self._lost_scheduled = True
        self._conn_lost += 1
        self._soon(self._call_connection_lost, exc)

    # -- callbacks fired by the loop's fd dispatch --------------------------------------

    def _on_peer_closed(self) -> None:
        # The write end turned "readable": the read end is closed (EPOLLERR).
        if self._loop.get_debug():
            logger.info("%r was closed by peer", self)
        self._close(BrokenPipeError() if self._buffer else None)

    def _on_writable(self) -> None:
        if not self._buffer:
            self._stop_writing()
            return
        try:
            written = os.write(self._fileno, self._buffer)
        except (BlockingIOError, InterruptedError):
            return
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._buffer.clear()
            self._stop_writing()
            self._fatal_error(exc, "Fatal write error on pipe transport")
            return
        if written < len(self._buffer):
            del self._buffer[:written]
            return
        self._buffer.clear()
        self._stop_writing()
        self._maybe_resume_protocol()  # resume_writing() may write, and fill the buffer again
        if self._closing and not self._buffer and not self._lost_scheduled:
            self._unwatch_peer()
            self._lost_scheduled = True
            self._call_connection_lost(None)


# -- the loop's methods -------------------------------------------------------------------------


class PipesMixin:
    """connect_read_pipe and connect_write_pipe, for cqloop.loop.Loop."""

    async def connect_read_pipe(
        self, protocol_factory: Callable[[], _ProtocolT], pipe: Any
    ) -> tuple[ReadPipeTransport, _ProtocolT]:
        """Make `pipe` (a file-like object with fileno(): a pipe, FIFO, socket, pty or
        character device) a read transport for a protocol from `protocol_factory`. The
        transport owns `pipe` from now on and closes it after connection_lost."""
        return await self._connect_pipe(ReadPipeTransport, protocol_factory, pipe, "Read")

    async def connect_write_pipe(
        self, protocol_factory: Callable[[], _ProtocolT], pipe: Any
    ) -> tuple[WritePipeTransport, _ProtocolT]:
        """Make `pipe` a write transport for a protocol from `protocol_factory`; as
        connect_read_pipe, the transport owns `pipe` from now on."""
        return await self._connect_pipe(WritePipeTransport, protocol_factory, pipe, "Write")

    async def _connect_pipe(
        self,
        transport_class: Callable[..., _TransportT],
        protocol_factory: Callable[[], _ProtocolT],
        pipe: Any,
        which: str,
    ) -> tuple[_TransportT, _ProtocolT]:
        loop = cast(asyncio.AbstractEventLoop, self)
        protocol = protocol_factory()
        waiter = loop.create_future()
        transport = transport_class(loop, pipe, protocol, waiter)
        try:
            await waiter
        except BaseException:
            transport.close()
            raise
        if loop.get_debug():
            logger.debug(
                "%s pipe %r connected: (%r, %r)", which, pipe.fileno(), transport, protocol
            )
        return transport, protocol
