"""Datagram cq sockets: cqueues' buffered socket over SOCK_DGRAM (UDP, Unix datagrams).

Owns DatagramSocket, the Socket that cqloop.socket's connect(), listen(), pair(), dup()
and fdopen() make for a datagram type. cqueues' model (src/socket.c, lso_fill), which
the differential cases in tests/test_cq_oracle_dgram.py hold this to:

- Reading. One datagram at a time enters the input buffer, whole, and marks the end of
  a message there (cqueues' `eom`): every read format sees that mark as it sees EOF on a
  stream, so no read ever returns bytes of two datagrams ("*a" is the rest of the
  datagram, "*l" a line of it or its unterminated rest, n up to n of its bytes). The
  read that empties the buffer clears the mark, and the next read takes the next
  datagram, waiting for it. Bytes given back with unget() stay in front of the next
  datagram (as in cqueues). A zero-length datagram is read once as None (cqueues: EOF).
- Writing. The output buffer and its modes are a stream socket's; each flush decision
  (cqoutbuf.pyx) sends what it made due as one datagram. So in mode "n" one write() is
  one datagram (all its pieces), in "l" the lines up to the last LF are, in "f" whole
  multiples of the buffer size are; flush() sends the rest as one more.

The kernel's queue is the only queue: the input buffer holds at most one datagram, and
while it does the socket stops receiving (the receive subscription ends), so no datagram
waits anywhere the kernel cannot drop it under pressure, as UDP may.

Where this differs from cqueues on purpose (docs/cqueues-differences.md): a datagram is
never cut short or split (cqueues reads into the contiguous free part of its ring buffer,
so a datagram larger than that is truncated and one that straddles its end is returned in
two reads; and its write() buffers each piece in mode "f", so a write longer than the
buffer size leaves as two datagrams); a zero-length datagram does not leave a sticky
EOF behind; a datagram too long to send raises EMSGSIZE without sticking, and the error
carries it (`unsent`).

Bad input and failures: EMSGSIZE as above; an error the kernel reports for an earlier
datagram (ECONNREFUSED on a connected UDP socket whose peer is gone) is raised by the
read or write that meets it, and sticks to that channel as every I/O error does (a write
that fails sent nothing: its datagram is in the raised error's `unsent`); TLS
(DTLS) is not supported and says so; accept() raises EOPNOTSUPP, as cqueues.
"""

from __future__ import annotations

import copy
import errno
import socket as _socket
from typing import Any, NoReturn

from cqloop._core.cqsock import _Handled, _to_bytes
from cqloop._cqcommon import _io_error, _operation, _oserror
from cqloop._cqsocket import Socket


def dtls_unsupported(what: str) -> NoReturn:
    raise NotImplementedError(
        f"{what}: TLS over a datagram socket (DTLS) is not supported by cqloop.socket"
    )


class DatagramSocket(Socket):
    """A cqueues socket over datagrams (see the module docstring). Made by
    cqloop.socket's connect(), listen(), pair(), dup() and fdopen() for SOCK_DGRAM."""

    # -- reading ----------------------------------------------------------------------

    @_operation
    async def read(self, *formats: str | int) -> Any:
        """As a stream socket's read(): each format in turn, each within the datagram
        in the buffer (the compiled fast path is a stream's, so this is the general
        one)."""
        return await self._read_formats(formats or ("*l",))

    async def _read1(
        self, fmt: str | int, mode: str | None, deadline: float | None, op: str
    ) -> Any:
        try:
            return await super()._read1(fmt, mode, deadline, op)
        finally:
            self._end_of_message()

    def recv(self, format: str | int = "*l", mode: str | None = None) -> Any:
        try:
            return super().recv(format, mode)
        finally:
            self._end_of_message()

    async def unpack(self, nbits: int, mode: str | None = None) -> int:
        try:
            return await super().unpack(nbits, mode)
        finally:
            self._end_of_message()

    async def fill(self, size: int, timeout: float | None = None) -> bool:
        """True once `size` bytes are buffered or a whole datagram is (as in cqueues: a
        datagram is all there is to fill with); False for a zero-length datagram."""
        try:
            deadline = self._deadline(timeout)
            await self._ready_for("fill", deadline)
            ibuf = self._ibuf
            while ibuf.pending() < size:
                if ibuf.eof:
                    return ibuf.pending() > 0
                await self._fill_once(deadline, "fill")
            return True
        except _Handled as handled:
            return handled.value

    def unget(self, data: bytes | str) -> None:
        """Put data back in front of the buffer. The end-of-message mark stays where it
        was (cqueues' unget clears EOF only), so data and the datagram it went back into
        are read as one."""
        ibuf = self._ibuf
        marked = ibuf.eof
        super().unget(data)
        if marked:
            ibuf.feed_eof()

    def _events_after_fill(self, fmt: object) -> None:
        # A datagram ends every fill (cqueues' lso_fill stops at the message's end): a read
        # that brought one waits for nothing more.
        self._events = ""

    def _end_of_message(self) -> None:
        # The read that empties the buffer clears the mark (cqueues' lso_recv3 does it
        # at the end of every read), so the next read takes the next datagram.
        ibuf = self._ibuf
        if ibuf.eof and not ibuf.pending():
            ibuf.unget(b"")

    def _receive(self) -> bool:
        """Take the next datagram from the kernel into the buffer, whole, and mark its
        end. True when it did, when the buffer still holds one (nothing to take), or on
        an error (kept in _recv_error for the reading task); False when there is none."""
        if self._recv_error is not None or self._ibuf.eof:
            return True
        sock = self._sock
        assert sock is not None
        try:
            data = _recv_datagram(sock)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            self._recv_error = exc
            return True
        self._rcvd += len(data)
        self._ibuf.feed(data)
        self._ibuf.feed_eof()
        return True

    def _on_readable(self) -> None:
        """The receive subscription's callback: one datagram into a free buffer, the
        waiting reads woken. With a datagram still unread, receiving stops: the kernel
        keeps the rest. Never raises."""
        if self._ibuf.eof or self._recv_error is not None:
            self._stop_receiving()
            return
        if not self._receive():
            return
        self._input_fresh = True
        self._wake_input_waiters()
        self._stop_receiving()

    # -- writing ----------------------------------------------------------------------

    @_operation
    async def write(self, *data: bytes | bytearray | memoryview | str) -> Any:
        """As a stream socket's write(); what each flush decision makes due goes as one
        datagram."""
        await self._write_pieces(data)
        return self

    async def _write_pieces(self, data: tuple[bytes | bytearray | memoryview | str, ...]) -> None:
        """All pieces into the output buffer, then one flush decision in the socket's
        mode, whose due bytes go as one datagram. (A stream socket's write, as cqueues'
        socket.lua, buffers each piece as a send in mode "f", which would cut a write
        longer than the buffer size into several datagrams.)"""
        pieces = [_to_bytes(piece) for piece in data]  # checked first: bad input loses nothing
        deadline = self._deadline(None)
        await self._ready_for("write", deadline)
        self._check_sticky("w", "write")
        for piece in pieces:
            self._obuf.append(piece)
        due = self._obuf.due()
        if due:
            await self._send_all(due, deadline, "write")

    def send(self, *args: Any, **kwargs: Any) -> int:
        """As a stream socket's send(): what this call makes due goes as one datagram,
        if the kernel takes it now. A datagram too long to send raises EMSGSIZE (with
        it in `unsent`) without sticking."""
        try:
            return super().send(*args, **kwargs)
        except OSError as exc:
            if exc.errno == errno.EMSGSIZE:
                self._set_sticky("w", None)  # the datagram's fault, not the socket's
            raise

    def _send_nowait(self, view: memoryview) -> int:
        try:
            return super()._send_nowait(view)
        except OSError as exc:
            if exc.errno == errno.EMSGSIZE:
                raise _too_long("send", bytes(view)) from None
            raise

    async def _send_all(self, data: bytes, deadline: float | None, op: str) -> None:
        """Send data as one datagram, waiting while the kernel has no room for it."""
        view = memoryview(data)
        while True:
            try:
                sent = self._send_nowait(view)
            except OSError as exc:
                if exc.errno == errno.EMSGSIZE:
                    self._raise(op, _too_long(op, data), sticky=False)
                # A failed send sent nothing (ECONNREFUSED here reports an earlier
                # datagram's fate): this one goes back to the caller in `unsent`; the
                # channel's sticky error is the same error without it.
                error = _io_error(op, exc)
                self._set_sticky("w", error)
                carried = copy.copy(error)
                carried.unsent = bytes(data)  # type: ignore[attr-defined]
                self._raise(op, carried, sticky=False)
            if sent:
                return
            await self._wait(False, deadline, op)

    # -- what a datagram socket does not do ---------------------------------------------

    async def accept(self, timeout: float | None = None) -> Socket:
        raise _oserror(
            errno.EOPNOTSUPP, "socket:accept: a datagram socket has no connections to accept"
        )

    async def starttls(self, *args: Any, **kwargs: Any) -> Socket:
        dtls_unsupported("starttls")


# The length of the next datagram without taking it (MSG_TRUNC reports the whole length
# on Linux for UDP and Unix datagram sockets), so that it is then taken whole.
_PEEK_FLAGS = _socket.MSG_PEEK | _socket.MSG_TRUNC


def _recv_datagram(sock: _socket.socket) -> bytes:
    size = sock.recv_into(bytearray(1), 1, _PEEK_FLAGS)
    # A zero-length datagram is taken with a 1-byte recv: a 0-byte one might be refused.
    return sock.recv(max(size, 1))


def _too_long(op: str, data: bytes) -> OSError:
    error = _oserror(
        errno.EMSGSIZE,
        f"socket:{op}: a datagram of {len(data)} bytes is longer than this socket can "
        "send; it was not sent (it is in this error's `unsent`)",
    )
    error.unsent = bytes(data)  # type: ignore[attr-defined]
    return error
