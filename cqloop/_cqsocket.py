"""The cq socket object (cqloop.socket's Socket): reading, writing, errors, the ending.

Owns Socket: buffered reads in every cqueues format over the compiled buffers
(cqloop/_core/cqbuf.pyx, whose header gives each format's exact semantics), buffered
writes in cqueues' modes, timeouts, sticky errors and the onerror handler, descriptor
passing, and the close. Its bases own the rest: SocketSetup (cqloop/_cqsetup.py) the
lazy set-up (name lookup through cqloop.dns, connect, listen, accept) and the names;
SocketTLS (cqloop/_cqtls.py) the handshake, records and the close_notify exchange.
What they share (constants, defaults, options, the error builders) is in
cqloop/_cqcommon.py. cqloop/socket.py is the public module (its docstring says how
this differs from cqueues, and why); it holds the module functions and the defaults
they set, and is the only importer of this file besides tests.

Waiting goes through cqloop.pollable's registry, so a Socket works on cqloop (one-shot
epoll registrations and subscriptions straight in the kernel), stock asyncio and uvloop,
and is itself pollable (`pollfd()`, `events()`, `timeout()`).

Socket derives from SocketCore (cqloop/_core/cqsock.pyx), which holds the state the hot
paths touch and runs them compiled: read() with one format on a ready socket, write() on
a ready plain socket, and the receive callback. They fall through to the methods here
(_read_formats, _write_pieces, _receive, _wait_input, _send_all, _raise, ...) for
everything else, so the semantics live here; cqsock.pyx's header lists what it calls.
DatagramSocket (cqloop/_cqdgram.py) is the subclass for datagram sockets.

Size: past 800 lines. Next to split out: descriptor passing (sendfd, recvfd, fdopen).
"""

from __future__ import annotations

import asyncio
import copy
import errno
import os
import socket as _socket
import ssl
import time
from collections.abc import AsyncIterator
from typing import Any, NoReturn

from cqloop._core.cqbuf import NEED_MORE, InputBuffer
from cqloop._core.cqoutbuf import DEFAULT_BUFSIZ, OutputBuffer
from cqloop._core.cqsock import SocketCore, _fills_to_maxline, _Handled, _to_bytes
from cqloop._core.cqtls import TLSChannel
from cqloop._cqcommon import (
    _DEFAULTS,
    _STICKY_CHANNEL,
    RECV_CHUNK_BYTES,
    SOCK_DGRAM,
    ErrorHandler,
    _as_oserror,
    _channels_and_limit,
    _expire,
    _fd_of,
    _handled,
    _io_error,
    _operation,
    _Options,
    _oserror,
    _positive,
    _State,
    _timeout_error,
)
from cqloop._cqmodes import VBUF_FLAGS, VBUF_NAMES, call_mode, mode_strings, parse_mode_flags
from cqloop._cqsetup import SocketSetup
from cqloop._cqtls import SocketTLS
from cqloop.condition import Condition
from cqloop.pollable import subscribe, unsubscribe, wait_readable, wait_writable


class Socket(SocketSetup, SocketTLS, SocketCore):
    """A cqueues socket: buffered, pollable, awaitable. Make them with connect(),
    listen(), pair(), dup() or fdopen().

    read() with one format, write() on a plain socket and the receive callback are
    compiled (SocketCore, cqloop/_core/cqsock.pyx); they fall through to the methods
    here for everything but the common case."""

    def __init__(self, sock: _socket.socket | None, options: _Options, state: _State) -> None:
        self._sock = sock
        self._opts = options
        self._state = state
        self._server_side = False
        defaults = _DEFAULTS
        self._ibuf = InputBuffer(
            maxline=defaults.inmaxline, text=defaults.intext, bufsiz=defaults.inbufsiz
        )
        self._obuf = OutputBuffer(
            mode=defaults.outmode,
            bufsiz=defaults.outbufsiz,
            text=defaults.outtext,
            maxline=defaults.outmaxline,
        )
        self._autoflush = defaults.autoflush
        self._pushback = defaults.pushback
        self._timeout = defaults.timeout
        self._maxerrs = dict(defaults.maxerrs)
        self._errcount = {"r": 0, "w": 0}
        self._onerror = defaults.onerror
        self._setup_error: OSError | None = None
        self._tls: TLSChannel | None = None
        self._tls_pending = options.tls
        self._raw_out = bytearray()  # ciphertext waiting to be sent
        self._eof_out = False
        self._setting_up = False
        self._setup_done = Condition()
        # The rest of the state (byte counts, the receive subscription, the waiting reads,
        # the sticky errors) is SocketCore's: see cqsock.pxd.
        self._recv_bytes = max(defaults.inbufsiz, RECV_CHUNK_BYTES)
        if sock is not None:
            self._adopt(sock)

    def __repr__(self) -> str:
        fd = self._sock.fileno() if self._sock is not None else -1
        return f"<cqloop.socket.Socket fd={fd} {self._state.value}>"

    # -- the pollable protocol ---------------------------------------------------------

    def pollfd(self) -> int | None:
        return None if self._sock is None else self._sock.fileno()

    def events(self) -> str | None:
        """What the socket's last operation waited for or found the kernel not ready
        for: "r", "w", or "" when it needed neither (a read answered from the buffer, a
        finished connect or handshake), as cqueues reports it; a poll watches the fd
        for that. None before the first operation."""
        return self._events

    def timeout(self) -> float | None:
        """0 while input the socket received on its own (see "Receiving") waits to be
        read, so that a poll returns at once; else the socket's timeout."""
        if self._input_fresh or self._recv_error is not None:
            return 0.0
        return self._timeout

    def fileno(self) -> int:
        return -1 if self._sock is None else self._sock.fileno()

    # -- configuration ----------------------------------------------------------------

    def setmode(self, input: str | None = None, output: str | None = None) -> tuple[str, str]:
        """cqueues' setmode. Each mode string is a set of flags applied to cqueues'
        initial mode ("tla" out, "t-p" in), not to the current one: t/b (translation,
        both channels), n/l/f (output buffering), a/A (autoflush: output), p/P
        (pushback: input); "-" is a no-op. Returns the previous modes as getmode()."""
        previous = self.getmode()
        # Check both strings before changing anything: bad input loses nothing.
        parsed = [None if mode is None else parse_mode_flags(mode) for mode in (input, output)]
        if parsed[0] is not None:
            text, _, _, pushback = parsed[0]
            self._ibuf.text = text
            self._pushback = pushback
        if parsed[1] is not None:
            text, buffering, autoflush, _ = parsed[1]
            self._obuf.text = text
            self._obuf.mode = buffering
            self._autoflush = autoflush
        return previous

    def getmode(self) -> tuple[str, str]:
        """The (input, output) modes as cqueues' setmode() reports them: input
        "t-p" (translation, no buffering flag, pushback), output "tla" (translation,
        buffering, autoflush). cqueues has no getmode: its setmode(nil, nil) reads them."""
        return mode_strings(
            self._ibuf.text, self._pushback, self._obuf.text, self._obuf.mode, self._autoflush
        )

    def setvbuf(self, mode: str, size: int | None = None) -> tuple[str, int]:
        """Lua's file:setvbuf, as cqueues: "no" (or "nobuf"), "line" or "full" (or
        n/l/f); for "line" and "full" the output buffer size becomes `size`, or 4096
        when it is None. Returns the previous mode's name ("no", "line", "full") and
        the previous size."""
        previous = (VBUF_NAMES[self._obuf.mode], self._obuf.bufsiz)
        flag = VBUF_FLAGS.get(mode)
        if flag is None:
            raise ValueError(f"unknown buffering mode {mode!r} (expected 'no', 'line' or 'full')")
        bufsiz = _positive(size, "size") if size is not None else DEFAULT_BUFSIZ
        self._obuf.mode = flag
        if flag != "n":
            self._obuf.bufsiz = bufsiz
        return previous

    def setbufsiz(self, input: int | None = None, output: int | None = None) -> tuple[int, int]:
        """The input buffer size (the chunk size of MIME body reads; a floor for each
        recv) and the output buffer size (when full buffering flushes). Returns the
        previous sizes."""
        previous = (self._ibuf.bufsiz, self._obuf.bufsiz)
        if input is not None:
            self._ibuf.bufsiz = _positive(input, "input buffer size")
            self._recv_bytes = max(self._ibuf.bufsiz, RECV_CHUNK_BYTES)
        if output is not None:
            self._obuf.bufsiz = _positive(output, "output buffer size")
        return previous

    def setmaxline(self, input: int | None = None, output: int | None = None) -> tuple[int, int]:
        """Hard limits, as in cqueues: a line-oriented read that finds no LF within
        `input` bytes returns those bytes as if EOF came there (memory stays bounded;
        see cqbuf.pyx), and line-buffered output is cut every `output` bytes. Returns
        the previous limits."""
        previous = (self._ibuf.maxline, self._obuf.maxline)
        if input is not None:
            self._ibuf.maxline = _positive(input, "input maxline")
        if output is not None:
            self._obuf.maxline = _positive(output, "output maxline")
        return previous

    def settimeout(self, timeout: float | None = None) -> float | None:
        """The default timeout of every operation that waits (None: no limit)."""
        previous = self._timeout
        self._timeout = None if timeout is None else max(0.0, float(timeout))
        return previous

    def setmaxerrs(self, which: str | int = "rw", limit: int | None = None) -> tuple[int, ...]:
        """How many errors in a row an onerror handler may turn into return values on a
        channel before the error is raised regardless. Returns the previous limits."""
        channels, limit = _channels_and_limit(which, limit)
        previous = tuple(self._maxerrs[c] for c in channels)
        if limit is not None:
            for channel in channels:
                self._maxerrs[channel] = limit
        return previous

    def onerror(self, handler: ErrorHandler | None = None) -> ErrorHandler | None:
        """Set the error handler: handler(socket, op, error) raises, or returns the value
        the failed operation returns. Returns the previous handler."""
        previous = self._onerror
        self._onerror = handler
        return previous

    def error(self, which: str = "rw") -> tuple[OSError | None, ...]:
        return tuple(self._sticky(c) for c in which)

    def seterror(self, which: str = "rw", error: OSError | int | None = None) -> None:
        """Make `error` (an OSError or an errno) the sticky error of the channels."""
        if isinstance(error, int):
            error = _oserror(error, os.strerror(error))
        for channel in which:
            self._set_sticky(channel, error)

    def clearerr(self, which: str = "rw") -> tuple[OSError | None, ...]:
        """Clear the sticky errors and error counters; return the errors cleared."""
        previous = self.error(which)
        for channel in which:
            self._set_sticky(channel, None)
            self._errcount[channel] = 0
        return previous

    # -- reading -----------------------------------------------------------------------

    # read() is SocketCore's (compiled): one format on a ready socket is answered there;
    # everything else comes here.

    async def _read_formats(self, formats: tuple[str | int, ...]) -> Any:
        """read() in general: each format in turn, until one yields None, as cqueues'
        socket.lua reads (each format's timeout counted from its own start).

        A read never loses what it took: when a format fails after others have
        yielded values, the error raised carries them in `values_read` (a copy of
        the sticky error, so that later raises do not carry them), and when the
        onerror handler turns the error into a value, several formats return the
        values read, None, then that value (cqueues' `v1, ..., nil, value`)."""
        results: list[Any] = []
        for fmt in formats:
            try:
                value = await self._read1(fmt, None, self._deadline(None), "read")
            except _Handled as handled:
                if len(formats) == 1:
                    raise
                return (*results, None, handled.value)
            except OSError as exc:
                if not results:
                    raise
                error = copy.copy(exc)
                error.values_read = tuple(results)  # type: ignore[attr-defined]
                raise error from None
            if value is None:
                break
            results.append(value)
        if len(formats) == 1:
            return results[0] if results else None
        return tuple(results)

    @_operation
    async def xread(
        self, format: str | int = "*l", mode: str | None = None, timeout: float | None = None
    ) -> Any:
        """read() of one format, with an input mode and a timeout for this call only."""
        return await self._read1(format, mode, self._deadline(timeout), "read")

    async def lines(self, *formats: str | int) -> AsyncIterator[Any]:
        """Iterate read(*formats) until it yields None."""
        while True:
            value = await self.read(*formats)
            if value is None or value == ():
                return
            yield value

    async def xlines(
        self, format: str | int = "*l", mode: str | None = None, timeout: float | None = None
    ) -> AsyncIterator[Any]:
        """cqueues' xlines: iterate xread(format, mode, timeout) until it gives None (end
        of input). Like lines(), with one format, and an input mode ("t" or "b") and a
        timeout that apply to each read of this iteration only, not to the socket."""
        while True:
            value = await self.xread(format, mode, timeout)
            if value is None:
                return
            yield value

    @_operation
    async def fill(self, size: int, timeout: float | None = None) -> bool:
        """Read until at least size bytes are buffered; False at EOF before that."""
        deadline = self._deadline(timeout)
        await self._ready_for("fill", deadline)
        while self._ibuf.pending() < size:
            if self._ibuf.at_eof or self._eof_in:
                return False
            await self._fill_once(deadline, "fill")
            self._events_after_fill(None)
        return True

    def unget(self, data: bytes | str) -> None:
        """Put data back at the head of the input buffer."""
        self._ibuf.unget(_to_bytes(data))

    def pending(self) -> tuple[int, int]:
        """Bytes buffered for input and for output (not counting the kernel's)."""
        return (self._ibuf.pending(), self._obuf.pending())

    def recv(self, format: str | int = "*l", mode: str | None = None) -> Any:
        """One read without waiting: the result, None at EOF, or BlockingIOError when
        the format needs data not yet here. Bypasses the error handler."""
        self._check_sticky("r", "recv", use_handler=False)
        self._input_fresh = False
        self._events = ""
        saved = self._apply_input_mode(mode)
        try:
            while True:
                value = self._ibuf.get(format)
                if value is not NEED_MORE:
                    return value
                if self._state is not _State.READY:
                    raise BlockingIOError(errno.EAGAIN, "socket:recv: not connected yet")
                if not self._fill_nowait("recv"):
                    self._events = "r"
                    raise BlockingIOError(errno.EAGAIN, "socket:recv: would block")
                self._events_after_fill(format)
        finally:
            self._restore_input_mode(saved)

    async def _read1(
        self, fmt: str | int, mode: str | None, deadline: float | None, op: str
    ) -> Any:
        await self._ready_for(op, deadline)
        self._check_sticky("r", op)
        self._input_fresh = False
        if self._autoflush and self._obuf.pending():
            self._flush_nowait()
        saved = self._apply_input_mode(mode)
        try:
            while True:
                try:
                    value = self._ibuf.get(fmt)
                except OSError as exc:
                    return self._raise(op, exc)
                if value is not NEED_MORE:
                    return value
                await self._fill_once(deadline, op)
                self._events_after_fill(fmt)
        finally:
            self._restore_input_mode(saved)

    async def _fill_once(self, deadline: float | None, op: str) -> None:
        """Bring more input into the buffer (or EOF, or the error), waiting for it."""
        if self._receiving is None and self._receive():
            self._check_recv_error(op)
            return
        await self._wait_input(deadline, op)
        self._check_recv_error(op)

    def _fill_nowait(self, op: str) -> bool:
        """One non-blocking read into the input buffer; False when it would block."""
        got = self._receive()
        self._check_recv_error(op)
        return got

    def _receive(self) -> bool:
        """One non-blocking read of what the kernel has into the input buffer (through
        TLS when it is on). True when it brought data, EOF or an error (kept for the
        reading task in _recv_error: this also runs as a loop callback, which must not
        raise); False when there was nothing. EPIPE on input is EOF, as in cqueues."""
        if self._eof_in or self._recv_error is not None:
            return True
        try:
            if self._tls is None:
                got = self._ibuf.recv_from(self._fd)
                if got:
                    self._rcvd += got
                else:
                    self._received(b"")
            else:
                self._tls_fill()
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
            return False
        except (OSError, ssl.SSLError) as exc:
            error = _as_oserror(exc)
            if error.errno == errno.EPIPE:
                self._received(b"")
            else:
                self._recv_error = error
        return True

    def _events_after_fill(self, fmt: str | int | None) -> None:
        """What cqueues' events() says once a read's fill brought input (cqueues retries
        an operation after each wait, starting with no events): a line or header read of a
        stream fills to maxline, which ends on EAGAIN ("r"); any other fill stops once the
        format has its bytes (""). The compiled read does the same in line."""
        self._events = "r" if not self._eof_in and _fills_to_maxline(fmt) else ""

    def _check_recv_error(self, op: str) -> None:
        error = self._recv_error
        if error is not None:
            self._recv_error = None  # from here on it is the channel's sticky error
            if not (error.strerror or "").startswith("socket:"):
                # A bare system call error (the compiled receive path keeps errno only):
                # named after the operation, as every other error of the module is.
                error = _io_error(op, error)
            self._raise(op, error)

    def _received(self, data: bytes) -> None:
        if data:
            self._rcvd += len(data)
            self._ibuf.feed(data)
        else:
            self._eof_in = True
            self._ibuf.feed_eof()
            self._events_past_input()

    # Receiving (see cqsock.pyx): once a read has had to wait, the fd stays subscribed and
    # SocketCore._on_readable reads what arrives into the input buffer.

    async def _wait_input(self, deadline: float | None, op: str) -> None:
        self._events = "r"
        loop = asyncio.get_running_loop()
        if self._receiving is not loop:
            self._start_receiving(loop)
        waiter: asyncio.Future[bool] = loop.create_future()
        self._input_waiters.append(waiter)
        timer = None
        if deadline is not None:
            timer = loop.call_later(max(0.0, deadline - time.monotonic()), _expire, waiter)
        try:
            woke = await waiter
        finally:
            if timer is not None:
                timer.cancel()
            if waiter in self._input_waiters:
                self._input_waiters.remove(waiter)
        if self._state is _State.CLOSED:
            raise _oserror(errno.EBADF, f"socket:{op}: socket closed while waiting")
        if not woke:
            self._raise(op, _timeout_error(op))

    def _start_receiving(self, loop: asyncio.AbstractEventLoop) -> None:
        self._stop_receiving()
        sock = self._sock
        assert sock is not None
        subscribe(loop, sock.fileno(), self._on_readable)
        self._receiving = loop

    def _stop_receiving(self) -> None:
        loop, self._receiving = self._receiving, None
        if loop is not None and self._sock is not None:
            unsubscribe(loop, self._sock.fileno())

    def _apply_input_mode(self, mode: str | None) -> bool | None:
        if not mode:
            return None
        saved = self._ibuf.text
        for flag in mode:
            if flag in "tb":
                self._ibuf.text = flag == "t"
        return saved

    def _restore_input_mode(self, saved: bool | None) -> None:
        if saved is not None:
            self._ibuf.text = saved

    # -- writing -----------------------------------------------------------------------

    # write() is SocketCore's (compiled): a ready plain socket's write is done there;
    # everything else comes here.

    async def _write_pieces(self, data: tuple[bytes | bytearray | memoryview | str, ...]) -> None:
        """write() in general (set-up due, TLS, a sticky error), as cqueues' socket.lua
        writes: each piece buffered as a send in mode "f", then one flush decision in
        the socket's own mode (cqoutbuf.pyx)."""
        deadline = self._deadline(None)
        await self._ready_for("write", deadline)
        for piece in data:
            self._check_sticky("w", "write")
            self._obuf.append(_to_bytes(piece))
            due = self._obuf.held()
            if due:
                await self._send_all(due, deadline, "write")
        due = self._obuf.due()
        if due:
            await self._send_all(due, deadline, "write")

    def send(
        self,
        data: bytes | bytearray | memoryview | str,
        i: int = 1,
        j: int = -1,
        mode: str | None = None,
    ) -> int:
        """cqueues' send: write data[i..j] (1-based and inclusive, as in Lua's
        string.sub; negative counts from the end) without waiting; return how many of
        those bytes were taken (0 when nothing could go now). Bypasses the error
        handler."""
        self._check_sticky("w", "send", use_handler=False)
        self._events = ""
        if self._state is not _State.READY:
            raise BlockingIOError(errno.EAGAIN, "socket:send: not connected yet")
        whole = _to_bytes(data)
        n = len(whole)
        start = i - 1 if i > 0 else max(0, n + i)
        stop = j if j >= 0 else n + j + 1
        piece = whole[start : max(start, stop)]
        buffering, text = call_mode(mode)
        due = self._obuf.write(piece, buffering, text)
        if due:
            try:
                sent = self._send_nowait(memoryview(due))
            except OSError as exc:
                self._werror = exc
                raise
            if sent < len(due):
                self._obuf.unflush(due[sent:])
                self._events = "w"
        return len(piece)

    @_operation
    async def xwrite(
        self,
        data: bytes | bytearray | memoryview | str,
        mode: str | None = None,
        timeout: float | None = None,
    ) -> Socket:
        """write() of one piece, with an output mode and a timeout for this call only."""
        await self._write1(data, mode, self._deadline(timeout))
        return self

    @_handled
    async def flush(self, mode: str | None = None, timeout: float | None = None) -> Socket:
        """cqueues' flush: send everything (mode None, or a mode whose last buffering
        flag is "n"), or what one decision in "l"/"f" makes due ("": the socket's own
        mode; see cqoutbuf.pyx)."""
        deadline = self._deadline(timeout)
        await self._ready_for("flush", deadline)
        self._check_sticky("w", "flush")
        buffering, _ = call_mode("n" if mode is None else mode)
        due = self._obuf.due(buffering)
        if due or self._raw_out:
            # A flush clears only what writing waited for, and only when it writes
            # (cqueues' flush does not start as the other operations do).
            self._events = "r" if self._events and "r" in self._events else ""
        if due:
            await self._send_all(due, deadline, "flush")
        await self._send_raw_out(deadline, "flush")
        return self

    async def _write1(self, piece: Any, mode: str | None, deadline: float | None) -> None:
        """xwrite(): cqueues' send(data, mode) and then flush(mode): two decisions in
        the call's buffering mode (the socket's own when mode names none)."""
        await self._ready_for("write", deadline)
        self._check_sticky("w", "write")
        data = _to_bytes(piece)
        buffering, text = call_mode(mode)
        due = self._obuf.write(data, buffering, text)
        due += self._obuf.due(buffering)
        if due:
            await self._send_all(due, deadline, "write")

    async def _flush_all(self, deadline: float | None, op: str) -> None:
        data = self._obuf.flush()
        if data:
            await self._send_all(data, deadline, op)
        await self._send_raw_out(deadline, op)

    def _flush_nowait(self) -> None:
        """Autoflush before a read: send what goes without waiting, keep the rest."""
        data = self._obuf.flush()
        if not data:
            return
        try:
            sent = self._send_nowait(memoryview(data))
        except OSError:
            sent = 0  # the write side reports it at its next operation
        if sent < len(data):
            self._obuf.unflush(data[sent:])

    async def _send_all(self, data: bytes, deadline: float | None, op: str) -> None:
        view = memoryview(data)
        while view:
            try:
                sent = self._send_nowait(view)
            except (OSError, ssl.SSLError) as exc:
                self._raise(op, _io_error(op, exc))
                return
            view = view[sent:]
            if view:
                await self._wait(False, deadline, op)
        await self._send_raw_out(deadline, op)

    def _send_nowait(self, view: memoryview) -> int:
        """Send what the kernel takes now (for TLS: encrypt it all and queue the
        ciphertext). Raises OSError on failure; 0 when it would block."""
        if self._tls is not None:
            return self._send_tls_nowait(view)
        try:
            sent = self._sock.send(view, _socket.MSG_NOSIGNAL)  # type: ignore[union-attr]
        except (BlockingIOError, InterruptedError):
            return 0
        self._count_sent(sent)
        return sent

    def _count_sent(self, n: int) -> None:
        self._sent += n

    # -- bits ------------------------------------------------------------------------

    @_operation
    async def pack(self, value: int, nbits: int, mode: str | None = None) -> Socket:
        """cqueues' socket:pack: append nbits of value (big-endian bit order) to the
        output buffer; full bytes are sent as `mode`'s buffering flag says for this call
        (n, l or f; the socket's own output mode when mode names none). Packed bytes are
        never translated."""
        buffering, _ = call_mode(mode)  # checked first: bad input loses nothing
        deadline = self._deadline(None)
        await self._ready_for("pack", deadline)
        self._check_sticky("w", "pack")
        due = self._obuf.pack(value, nbits, buffering)
        if due:
            await self._send_all(due, deadline, "pack")
        return self

    @_operation
    async def unpack(self, nbits: int, mode: str | None = None) -> int:
        """cqueues' socket:unpack: the next nbits of input as an unsigned integer."""
        deadline = self._deadline(None)
        await self._ready_for("unpack", deadline)
        self._check_sticky("r", "unpack")
        while True:
            value = self._ibuf.unpack(nbits)
            if value is not NEED_MORE:
                if value is None:
                    return self._raise("unpack", _oserror(errno.EPIPE, "unpack: end of input"))
                return value
            await self._fill_once(deadline, "unpack")
            self._events_after_fill(None)

    # -- descriptor passing and names ------------------------------------------------------

    @_operation
    async def sendfd(self, msg: bytes | str, fd: Any, timeout: float | None = None) -> None:
        """Send msg (non-empty) with a descriptor (an int, a socket, a Socket, a file)
        over a Unix socket, bypassing the buffers."""
        data = _to_bytes(msg)
        if not data:
            raise ValueError("sendfd needs a non-empty message")
        fds = [] if fd is None else [_fd_of(fd)]
        deadline = self._deadline(timeout)
        await self._ready_for("sendfd", deadline)
        self._check_sticky("w", "sendfd")
        await self._flush_all(deadline, "sendfd")
        sock = self._sock
        assert sock is not None
        while True:
            try:
                _socket.send_fds(sock, [data], fds, _socket.MSG_NOSIGNAL)
                return
            except (BlockingIOError, InterruptedError):
                await self._wait(False, deadline, "sendfd")
            except OSError as exc:
                self._raise("sendfd", exc)
                return

    @_operation
    async def recvfd(
        self, prepbufsiz: int = 4096, timeout: float | None = None
    ) -> tuple[bytes | None, Socket | None]:
        """Receive a message and the descriptor sent with it (as a Socket), bypassing
        the buffers; (None, None) at EOF. A truncated message is an error (EMSGSIZE)."""
        deadline = self._deadline(timeout)
        await self._ready_for("recvfd", deadline)
        self._check_sticky("r", "recvfd")
        # A buffered recv would take the message and drop its descriptor: stop them.
        self._stop_receiving()
        sock = self._sock
        assert sock is not None
        while True:
            try:
                msg, fds, flags, _ = _socket.recv_fds(sock, prepbufsiz, 1)
                break
            except (BlockingIOError, InterruptedError):
                await self._wait(True, deadline, "recvfd")
            except OSError as exc:
                return self._raise("recvfd", exc)
        extra = fds[1:]
        for stray in extra:
            os.close(stray)
        if flags & (_socket.MSG_TRUNC | _socket.MSG_CTRUNC):
            for received in fds[:1]:
                os.close(received)
            return self._raise("recvfd", _oserror(errno.EMSGSIZE, "recvfd: message truncated"))
        if not msg and not fds:
            return (None, None)
        return (msg, fdopen(fds[0]) if fds else None)

    def stat(self) -> dict[str, dict[str, Any]]:
        return {
            "sent": {"count": self._sent, "eof": self._eof_out},
            "rcvd": {"count": self._rcvd, "eof": self._eof_in},
        }

    # -- ending --------------------------------------------------------------------------

    def eof(self, which: str = "rw") -> tuple[bool, ...]:
        """Whether EOF was received on input ("r") and whether output was found closed
        (EPIPE) ("w"), as seen by I/O so far."""
        state = {"r": self._eof_in, "w": self._eof_out}
        return tuple(state[c] for c in which)

    def shutdown(self, how: str = "rw") -> None:
        """shutdown(2): "r", "w" or "rw". It does not flush (nor does cqueues'): output
        still buffered is not sent after a "w" shutdown, so call flush() first."""
        flags = {"r": _socket.SHUT_RD, "w": _socket.SHUT_WR, "rw": _socket.SHUT_RDWR}
        if how not in flags and how != "wr":
            raise ValueError(f"shutdown how must be 'r', 'w' or 'rw', not {how!r}")
        if self._sock is not None:
            self._sock.shutdown(flags.get(how, _socket.SHUT_RDWR))

    def close(self) -> None:
        """Close now: wake every poll on the fd (they see it ready and fail), drop
        buffered data, close the fd. Idempotent. On TLS, our close_notify goes first
        when the kernel takes it at once; close() never waits (aclose() does)."""
        if self._state is _State.CLOSED:
            return
        self._tls_close_nowait()
        self._state = _State.CLOSED
        self._stop_receiving()
        self._wake_input_waiters()
        self._drop_sock()

    async def __aenter__(self) -> Socket:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close gracefully: flush the output and, on TLS, send close_notify and wait
        for the peer's (the rest of its data is dropped), all within the socket's
        timeout; then close(). `async with` ends with it."""
        try:
            if self._state is _State.READY and self._werror is None:
                await self._flush_all(self._deadline(None), "flush")
                await self._tls_close()
        finally:
            self.close()

    def __del__(self) -> None:
        if self._sock is not None and self._state is not _State.CLOSED:
            self._sock.close()

    # -- waiting and errors ----------------------------------------------------------------

    def _deadline(self, timeout: float | None) -> float | None:
        if timeout is None:
            timeout = self._timeout
        return None if timeout is None else time.monotonic() + timeout

    async def _ready_for(self, op: str, deadline: float | None) -> None:
        if self._state is not _State.READY:
            await self._establish(deadline, op)

    async def _wait(self, reading: bool, deadline: float | None, op: str) -> None:
        """Wait until the fd is ready for reading or writing; TimeoutError (through the
        error handler) at the deadline."""
        sock = self._sock
        assert sock is not None
        self._events = "r" if reading else "w"
        wait = wait_readable if reading else wait_writable
        if deadline is None:
            await wait(sock.fileno())
        else:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not await wait(sock.fileno(), remaining):
                self._raise(op, _timeout_error(op))
        if self._state is _State.CLOSED:
            # close() from another task woke this wait (cqueues' cancel): the fd is gone.
            raise _oserror(errno.EBADF, f"socket:{op}: socket closed while waiting")

    def _check_sticky(self, channel: str, op: str, *, use_handler: bool = True) -> None:
        error = self._sticky(channel)
        if error is not None:
            if not use_handler:
                raise error
            self._raise(op, error, sticky=False)

    def _raise(self, op: str, error: OSError, *, sticky: bool = True) -> NoReturn:
        """The one way errors leave a Socket: remembered on its channel (sticky), passed
        to the onerror handler (which may return a value for the caller), raised."""
        channel = _STICKY_CHANNEL.get(op)
        if sticky and channel is not None:
            self._set_sticky(channel, error)
            if error.errno == errno.EPIPE and channel == "w":
                self._eof_out = True
        handler = self._onerror
        if handler is not None and channel is not None:
            self._errcount[channel] += 1
            if self._errcount[channel] <= self._maxerrs[channel]:
                raise _Handled(handler(self, op, error))
        elif handler is not None:
            raise _Handled(handler(self, op, error))
        raise error


def fdopen(fd: int) -> Socket:
    """A Socket that owns fd (a listening socket passed by systemd or recvfd, say)."""
    sock = _socket.socket(fileno=fd)
    sock.setblocking(False)
    listening = bool(sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_ACCEPTCONN))
    options = _Options(family=sock.family, type=sock.type)
    return socket_class(sock.type)(sock, options, _State.LISTENING if listening else _State.READY)


def socket_class(socktype: int) -> type[Socket]:
    """The Socket class for a socket type: DatagramSocket for SOCK_DGRAM."""
    if socktype == SOCK_DGRAM:
        from cqloop._cqdgram import DatagramSocket  # a subclass: it imports this module

        return DatagramSocket
    return Socket
