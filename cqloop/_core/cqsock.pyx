"""cqsock: the compiled half of a cq socket, what a line server does once per message.

Owns SocketCore, the base class of cqloop._cqsocket.Socket, and SocketState (the socket's
life cycle). SocketCore holds the state the hot paths touch (the cqbuf buffers, the fd,
the sticky errors, the receive subscription and the reads waiting on it; cqsock.pxd is
the map) and runs three things compiled:

- read() with one format on a ready socket: the format is answered from the input
  buffer, or the read waits for the receive subscription to bring more (one future);
- write() on a ready socket: the pieces go into the output buffer and what the output
  mode says is due is sent, straight from the buffer; under TLS it is encrypted straight
  from the buffer (or, unbuffered with nothing buffered, from the piece itself) and the
  ciphertext sent (_tls_send), when no earlier ciphertext waits in _raw_out;
- _on_readable(), the subscription's callback: one recv into the input buffer, or under
  TLS one recv decrypted record by record straight into it (_tls_pull, over
  TLSChannel.receive_into), and the waiting reads woken.

So an echoed line costs one task wake-up, one compiled read and one compiled write, with
no Python frame of ours in between, in the clear and under TLS alike. Everything else
(set-up, the TLS handshake and close, timeouts, several formats, input modes, errors
through the onerror handler, ciphertext the kernel did not take) is the Python half's,
reached through methods SocketCore calls by name and the Python half defines:
_read_formats, _write_pieces, _receive, _check_recv_error, _wait_input, _send_all,
_flush_nowait, _stop_receiving, _raise, _deadline, and cqloop/_cqtls.py's
_send_raw_out, _send_what_tls_made, _tls_read_error. The semantics are the Python
half's; this file only takes the common case's shortcut, and a path that is not common
falls through to it.

Invariants: an error leaves through the Python half's _raise (sticky errors, the onerror
handler and its _Handled value are its business); _on_readable never raises (it runs as
a loop callback: a receive's error is kept in _recv_error for the reading task); a
read's wait ends with the waiter out of _input_waiters, however it ends.

Receiving: once a read has had to wait, the socket keeps its fd subscribed in the loop's
poll registry (cqloop.pollable.subscribe) and reads whatever arrives into the input
buffer as it comes, the way a transport does: no failed recv per read, no re-arming per
wait. It stops at EOF, at an error, when the buffer passes INPUT_HIGH_WATER_BYTES with
nobody reading, and at close().
"""

import enum
import errno as _errno
from asyncio import Future, InvalidStateError, get_running_loop
from os import strerror

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE

from cqloop._core.cqbuf cimport InputBuffer
from cqloop._core.cqoutbuf cimport MODE_NONE, OutputBuffer
from cqloop._core.cqtls cimport TLSChannel
from cqloop._core.includes.sockets cimport MSG_NOSIGNAL, send
from cqloop._core.includes.system cimport errno
from cqloop._core.kernel cimport Kernel

from cqloop._core.cqbuf import NEED_MORE

# Receiving stops when this much input is buffered and nobody reads it (backpressure:
# the kernel's buffers then fill and the peer's sends block).
INPUT_HIGH_WATER_BYTES = 1 << 20
cdef Py_ssize_t _HIGH_WATER = INPUT_HIGH_WATER_BYTES

cdef int _EAGAIN = _errno.EAGAIN
cdef int _EINTR = _errno.EINTR
cdef int _EPIPE = _errno.EPIPE
cdef int _EBADF = _errno.EBADF


class SocketState(enum.Enum):
    NEW = "new"  # connect(): address not yet resolved or not yet connected
    CONNECTED = "connected"  # connected; a TLS handshake may still be due
    READY = "ready"
    LISTENING = "listening"
    CLOSED = "closed"


cdef object _READY = SocketState.READY
cdef object _CLOSED = SocketState.CLOSED
cdef object _NEED_MORE = NEED_MORE


class _Handled(Exception):
    """An onerror handler returned a value instead of raising: the failed operation
    returns it. Raised by Socket._raise, caught where the public method returns."""

    def __init__(self, value):
        self.value = value


# Which loop a read waits in
# ---------------------------
# A read waits on a future of the loop its socket is subscribed in. A Task refuses a
# future of another loop by throwing RuntimeError into the coroutine at its await, before
# waiting: read() takes that as "the socket is subscribed in another loop than the one
# running" and waits the general way, which moves the subscription. So the wait needs no
# get_running_loop() per read (on 3.11 that is a getpid() system call per message).
#
# (A Future-compatible object of our own instead of asyncio.Future was measured: cheaper
# to make and to wake, but a Task's path for such objects costs more than it saves, on
# 3.11: attribute lookups by C string, a bound method per call.)


# The formats cqueues reads by filling its buffer up to maxline (lso_getline,
# lso_getheader): such a fill ends when the kernel has no more, so a read of them that
# received reports "r" in events() even when the format was answered.
_MAXLINE_FILLS = frozenset(("*l", "l", "*L", "L", "*h", "h", "*H", "H"))


cpdef bint _fills_to_maxline(object fmt):
    return type(fmt) is str and fmt in _MAXLINE_FILLS


cdef inline bint _is_line_format(object fmt):
    # "*l" (or Lua 5.3's "l"): a line server's every read, answered without get()'s
    # dispatch on the format.
    return type(fmt) is str and (fmt == "*l" or fmt == "l")


cdef class SocketCore:
    """The compiled base of cqloop.socket.Socket (see the module docstring)."""

    def __cinit__(self):
        self._fd = -1
        self._input_waiters = []
        self._raw_out = bytearray()

    # -- sticky errors -----------------------------------------------------------------

    def _sticky(self, channel):
        """The sticky error of channel "r" or "w", or None."""
        if channel == "r":
            return self._rerror
        if channel == "w":
            return self._werror
        raise KeyError(channel)

    def _set_sticky(self, channel, error):
        if channel == "r":
            self._rerror = error
        elif channel == "w":
            self._werror = error
        else:
            raise KeyError(channel)

    # -- reading -----------------------------------------------------------------------

    async def read(self, *formats):
        """Read in each format given (default "*l"), stopping at the first that yields
        None (EOF, or the end of a header block). One format: its result; several: a
        tuple of results, shorter when one yielded None."""
        cdef InputBuffer ibuf
        cdef OutputBuffer obuf
        cdef bint line
        cdef bint waited = False
        if not formats:
            formats = ("*l",)
        self._events = ""  # every operation starts with none (see _cqcommon._operation)
        try:
            if len(formats) != 1 or self._state is not _READY or self._rerror is not None:
                return await self._read_formats(formats)
            fmt = formats[0]
            line = _is_line_format(fmt)
            obuf = self._obuf
            if self._autoflush and obuf._r.wr != obuf._r.rd:
                self._flush_nowait()
            ibuf = self._ibuf
            deadline = None
            self._input_fresh = False
            while True:
                if line:
                    value = ibuf._line(False, ibuf.text)
                else:
                    try:
                        value = ibuf.get(fmt)
                    except OSError as exc:
                        self._raise("read", exc)
                if value is not _NEED_MORE:
                    return value
                if self._receiving is None and self._receive():
                    self._check_recv_error("read")
                    self._events = "r" if not self._eof_in and _fills_to_maxline(fmt) else ""
                    continue
                if not waited:
                    if self._timeout is not None:
                        deadline = self._deadline(None)
                    waited = True
                loop = self._receiving
                moved = deadline is not None or loop is None
                if not moved:
                    # _wait_input without a timeout, inline (a line server's every wait):
                    # one future, woken by _on_readable.
                    self._events = "r"
                    if isinstance(loop, Kernel):
                        # What Kernel.create_future makes, without the method call.
                        waiter = Future(loop=loop)
                    else:
                        waiter = loop.create_future()
                    self._input_waiters.append(waiter)
                    try:
                        await waiter
                    except RuntimeError:
                        # The Task runs in another loop (see "Which loop a read waits
                        # in"), or the error is not ours to handle.
                        if get_running_loop() is loop:
                            raise
                        moved = True
                    finally:
                        if self._input_waiters and waiter in self._input_waiters:
                            self._input_waiters.remove(waiter)
                    if self._state is _CLOSED:
                        raise OSError(_EBADF, "socket:read: socket closed while waiting")
                if moved:
                    await self._wait_input(deadline, "read")
                if self._recv_error is not None:
                    self._check_recv_error("read")
                # (Socket._events_after_fill, for a stream.)
                self._events = "r" if not self._eof_in and _fills_to_maxline(fmt) else ""
        except _Handled as handled:
            return handled.value

    # -- writing -----------------------------------------------------------------------

    async def write(self, *data):
        """Buffer each piece and send what the output mode says is due."""
        cdef OutputBuffer obuf
        cdef Py_ssize_t sent
        cdef Py_ssize_t left = 0
        cdef bint tls = self._tls is not None
        self._events = ""  # every operation starts with none (see _cqcommon._operation)
        try:
            if (
                self._state is not _READY
                or self._werror is not None
                or (tls and (self._raw_out or (<TLSChannel>self._tls).close_notify_sent))
            ):
                await self._write_pieces(data)
                return self
            # Buffer, and send what is due at once; wait only for the part the kernel did
            # not take.
            obuf = self._obuf
            if (
                tls
                and len(data) == 1
                and type(data[0]) is bytes
                and obuf._mode == MODE_NONE
                and not obuf.text
                and obuf._r.wr == obuf._r.rd
            ):
                # Unbuffered binary output with nothing buffered: the piece is all due
                # as it is, encrypted from where it lies instead of through the buffer.
                piece = data[0]
                obuf._bytes_written += PyBytes_GET_SIZE(piece)
                obuf._bytes_due += PyBytes_GET_SIZE(piece)
                if self._tls_send(
                    "write", PyBytes_AS_STRING(piece), PyBytes_GET_SIZE(piece), None
                ):
                    await self._send_raw_out(self._deadline(None), "write")
                return self
            for piece in data:
                if type(piece) is not bytes:
                    piece = _to_bytes(piece)
                obuf._put(PyBytes_AS_STRING(piece), PyBytes_GET_SIZE(piece))
            if tls:
                if self._tls_send_due("write"):
                    await self._send_raw_out(self._deadline(None), "write")
                return self
            sent = obuf._send_due(self._fd, obuf._mode, &left)
            if sent < 0:
                self._raise("write", OSError(-sent, "socket:write: " + strerror(-sent)))
            self._sent += sent
            if left:
                await self._send_all(obuf.held(), self._deadline(None), "write")
            return self
        except _Handled as handled:
            return handled.value

    # -- TLS -------------------------------------------------------------------------

    cdef bint _tls_send_due(self, str op) except -1:
        # write()'s TLS branch (what the Python half's _send_all does with the output
        # buffer's due bytes, without copying them out): one decision in the socket's
        # mode, and what is due encrypted straight from the buffer and sent (_tls_send).
        cdef OutputBuffer obuf = self._obuf
        cdef Py_ssize_t n
        obuf._decide(obuf._mode)
        n = obuf._hold
        if n <= 0:
            return False
        return self._tls_send(op, obuf._r.base + obuf._r.rd, n, obuf)

    cdef bint _tls_send(
        self, str op, const char *data, Py_ssize_t n, OutputBuffer consumed
    ) except -1:
        # Encrypt data, then `consumed` (when not None) drops the n bytes from its front,
        # and the ciphertext goes to the kernel as far as it takes it; the rest waits in
        # _raw_out, and the caller then waits for it (True). Only with _raw_out empty:
        # nothing is sent past it.
        cdef TLSChannel tls = <TLSChannel>self._tls
        cdef Py_ssize_t size
        cdef ssize_t sent = 0
        cdef int err
        cdef bytes out
        try:
            tls._encrypt_from(data, n)
        except OSError as exc:  # ssl.SSLError: the session cannot send
            self._raise(op, exc)
        if consumed is not None:
            consumed._consume(n)
        out = tls._outgoing_read()
        size = PyBytes_GET_SIZE(out)
        while True:
            sent = send(self._fd, PyBytes_AS_STRING(out), size, MSG_NOSIGNAL)
            if sent >= 0:
                break
            err = errno
            if err == _EINTR:
                continue
            if err != _EAGAIN:
                self._raise(op, OSError(err, f"socket:{op}: " + strerror(err)))
            sent = 0
            break
        self._sent += n
        if sent < size:
            self._raw_out += memoryview(out)[sent:]
            return True
        return False

    cdef int _tls_pull(self) except -2:
        # The TLS half of receiving, for the receive callback and the Python half's
        # _tls_fill: every complete record that has arrived, into the input buffer. The
        # count (0 at the end of the stream), or -1 when nothing came. A failure raises
        # the read error (_tls_read_error: "socket:read: ...", the alert saying why sent
        # first).
        cdef TLSChannel tls = <TLSChannel>self._tls
        cdef Py_ssize_t got
        try:
            got = tls._receive_into(self._ibuf, self._fd)
        except OSError as exc:
            raise self._tls_read_error(exc) from exc
        if tls._outgoing.pending:
            self._send_what_tls_made()  # a key update's answer, say
        if got < 0:
            return -1
        self._rcvd += got
        if tls.peer_closed:
            self._at_eof()
        return got

    def _tls_fill(self):
        """Socket._receive's TLS branch (see _tls_pull): BlockingIOError when nothing
        came."""
        if self._tls_pull() < 0:
            raise BlockingIOError(_EAGAIN, "socket:read: no complete TLS record yet")

    # -- receiving ---------------------------------------------------------------------

    # Not a binding function: the loop calls the bound method with no arguments once per
    # message, and a plain C method takes that call without building an argument tuple.
    @cython.binding(False)
    def _on_readable(self):
        """The receive subscription's callback (see "Receiving"): what arrived goes into
        the input buffer and the waiting reads wake. Never raises."""
        cdef Py_ssize_t got
        if self._tls is None and not self._eof_in and self._recv_error is None:
            got = self._ibuf._recv(self._fd)
            if got > 0:
                self._rcvd += got
                self._input_fresh = True
                self._wake()
                if self._ibuf._r.wr - self._ibuf._r.rd >= _HIGH_WATER:
                    self._stop_receiving()
                return
            if got == -_EAGAIN or got == -_EINTR:
                return
            if got == 0 or got == -_EPIPE:
                # EOF (EPIPE on input is EOF, as in cqueues).
                self._at_eof()
            else:
                self._recv_error = OSError(-got, strerror(-got))
        elif self._tls is not None and not self._eof_in and self._recv_error is None:
            try:
                if self._tls_pull() < 0:
                    return
            except OSError as exc:
                # Socket._receive's handling of a failed receive: EPIPE on input is EOF,
                # as in cqueues; anything else is kept for the reading task.
                if exc.errno == _EPIPE:
                    self._at_eof()
                else:
                    self._recv_error = exc
        elif not self._receive():
            # A receive already finished: the Python half's general path.
            return
        self._input_fresh = True
        self._wake()
        if (
            self._eof_in
            or self._recv_error is not None
            or self._ibuf._r.wr - self._ibuf._r.rd >= _HIGH_WATER
        ):
            self._stop_receiving()

    def _wake_input_waiters(self):
        self._wake()

    cdef int _wake(self) except -1:
        cdef list waiters = self._input_waiters
        if waiters:
            self._input_waiters = []
            for waiter in waiters:
                # A waiter is done only when its read was cancelled and has not yet
                # resumed to take it out: rare, so asked after the fact, not each time.
                try:
                    waiter.set_result(True)
                except InvalidStateError:
                    pass
        return 0

    cdef int _at_eof(self) except -1:
        self._eof_in = True
        self._ibuf._eof = True
        self._events_past_input()
        return 0

    cpdef _events_past_input(self):
        # The end of input was read: nothing more to wait for there ("r" leaves events(),
        # as cqueues' read that meets EOF clears it).
        if self._events is not None and "r" in self._events:
            self._events = "w" if "w" in self._events else ""


def _to_bytes(data):
    """What write() takes: bytes, bytearray, memoryview, or str (sent as UTF-8)."""
    if isinstance(data, str):
        return (<str>data).encode()
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"cq sockets send bytes or str, not {data.__class__.__name__}")
