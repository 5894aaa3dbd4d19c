# cython: freethreading_compatible=False
"""StreamTransport: the hot half of cqloop's TCP and Unix stream transports.

Owns one connected, non-blocking stream socket for its transport's life: the epoll interest
for it (as a persistent FdWatcher in the kernel's table), the read path (recv into a shared
buffer, or straight into a bytes object once reads are large, and data_received; or
recv_into a BufferedProtocol's buffer), the write path (send at
once while nothing is queued; otherwise queue and send with sendmsg when the fd turns
writable), write flow control, and the orderly and forced shutdowns that end in
connection_lost. cqloop.transports.socket_transport.SocketTransport holds one as its engine
(asyncio.Transport's fixed layout rules out subclassing); loop methods in
cqloop.transports create transports, nothing in _core does.

Semantics follow asyncio's _SelectorSocketTransport, callback for callback:
- connection_made, the start of reading and the waiter's result are three call_soon
  callbacks, in that order, as asyncio schedules them; data_received never runs before
  connection_made.
- Readiness queues the transport's read or write handle on the ready queue (it does not
  call the protocol from the epoll dispatch), so protocol callbacks interleave with other
  callbacks exactly as asyncio's reader and writer handles do.
- connection_lost runs from the ready queue, once, after which the socket is closed and the
  fd leaves the kernel's table; nothing touches the fd afterwards.

Invariants: `_write_pending > 0` exactly when `_write_buf` is non-empty (it is None until
something is first queued); epoll interest is
EPOLLIN while reading is started, not paused and not closing, plus EPOLLOUT while bytes are
queued (`wanted()`); `_sync_interest` brings the registration in line after every change.

Size: past 800 lines. Next to split out: the write path (the queue, sendmsg, write flow
control and the empty waiter) into a base class of its own.
"""

import logging
import warnings
from asyncio import BufferedProtocol, constants, format_helpers

from libc.string cimport memcpy, strerror

from cpython.buffer cimport PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.object cimport PyObject
from libc.stdint cimport uint32_t

from cqloop._core.contexts cimport call_in_context
from cqloop._core.handles cimport Handle

from cqloop._core.includes.pyapi cimport (
    PyContext_CopyCurrent,
    PyContext_Enter,
    PyContext_Exit,
)
from cqloop._core.includes.rawbytes cimport (
    cq_bytes_data,
    cq_bytes_new,
    cq_bytes_resize,
    cq_decref,
)
from cqloop._core.includes.sockets cimport (
    MSG_DONTWAIT,
    MSG_NOSIGNAL,
    SHUT_WR,
    recv,
    send,
    iovec,
    msghdr,
    sendmsg,
    shutdown,
)
from cqloop._core.includes.system cimport EAGAIN, EINTR, EPOLLIN, EPOLLOUT, errno
from cqloop._core.kernel cimport Kernel
from cqloop._core.ringread cimport TAKE_DELIVER, TAKE_FALLBACK, TAKE_RESYNC

logger = logging.getLogger("asyncio")
cdef object _format_callback_source = format_helpers._format_callback_source
cdef object _warn = warnings.warn

cdef enum:
    # asyncio reads at most this much per readiness event (selector_events' max_size).
    READ_BUFFER_SIZE = 256 * 1024
    # A read of more than this many bytes makes the next read receive straight into a new
    # bytes object instead of the shared buffer (see _read_data).
    LARGE_READ_BYTES = 16 * 1024
    # sendmsg takes at most this many buffers (Linux's UIO_MAXIOV).
    MAX_IOV = 1024
    # A BufferedProtocol's reads per readiness event while each fills its buffer (libuv
    # makes up to 32): bounds what one busy connection takes before others get a turn.
    MAX_READS_PER_EVENT = 16
    # _read_data's second read: made after every large read while one of the last
    # REREAD_MISSES_MAX found data, else after one large read in REREAD_PROBE_EVERY.
    REREAD_MISSES_MAX = 4
    REREAD_PROBE_EVERY = 16
# asyncio's default write buffer high-water mark; the low one is a quarter of it.
cdef Py_ssize_t DEFAULT_HIGH_WATER = 64 * 1024
# After the connection is lost, writes are dropped; this many are dropped silently before
# each further one logs a warning (asyncio's constant).
cdef int LOG_THRESHOLD_FOR_CONNLOST_WRITES = constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES

# One read buffer for every transport: recv fills it and data_received gets a bytes copy
# before any Python code runs, so no two reads can be using it at once (the GIL is held from
# recv to copy).
cdef char _read_buffer[READ_BUFFER_SIZE]
# Likewise the iovec array a gathered send fills, used between gathering and sendmsg only.
cdef iovec _iov[MAX_IOV]


cdef inline object _os_error(int err):
    # OSError(errno, message) gives the errno's subclass (ConnectionResetError, ...).
    return OSError(err, strerror(err).decode("utf-8", "replace"))


cdef inline bint _would_block(int err) noexcept:
    # EWOULDBLOCK is EAGAIN on Linux.
    return err == EAGAIN or err == EINTR


def water_marks(high=None, low=None):
    """asyncio's write buffer limits from set_write_buffer_limits' arguments: (high, low).
    Every cqloop transport with a write buffer takes its limits through here."""
    if high is None:
        high = DEFAULT_HIGH_WATER if low is None else 4 * low
    if low is None:
        low = high // 4
    if not high >= low >= 0:
        raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
    return high, low


cdef class _ReadyHandle(Handle):
    """The handle the kernel queues when a transport's fd is ready: runs its read or write
    path in the transport's context. Its repr and error reports name the transport's
    _read_ready or _write_ready as its callback, as asyncio's reader and writer handles
    would; the bound method is made only for them (`_callback` stays None): held by every
    connection's read handle, it cost 72 bytes per idle connection."""

    cdef StreamTransport transport
    cdef bint writing

    cdef object _bound_callback(self):
        if self.transport is None:
            return None
        return self.transport._write_ready if self.writing else self.transport._read_ready

    cdef list _repr_info(self):
        info = Handle._repr_info(self)
        callback = None if self._cancelled else self._bound_callback()
        if callback is not None:
            info.insert(1, _format_callback_source(callback, ()))
        return info

    cdef int _run(self) except -1:
        cdef StreamTransport transport = self.transport
        # The field, not the `_context` property: always set here (_ready_handle), and a
        # property read is an attribute lookup per readiness event.
        cdef object context = self._ctx
        if PyContext_Enter(context) < 0:
            # The report names the callback (see the class docstring).
            self._callback = self._bound_callback()
            return self._on_callback_error()
        try:
            if self.writing:
                transport._on_writable()
            else:
                transport._on_readable()
        except (SystemExit, KeyboardInterrupt):
            PyContext_Exit(context)
            raise
        except BaseException as exc:
            # The read and write paths hand protocol errors to _fatal_error themselves;
            # what gets here is unexpected.
            PyContext_Exit(context)
            self._loop.call_exception_handler({
                "message": f"Exception in callback {self._bound_callback()!r}",
                "exception": exc,
                "handle": self,
            })
            return 0
        if PyContext_Exit(context) < 0:
            return self._on_callback_error()
        return 0


cdef _ReadyHandle _ready_handle(StreamTransport transport, bint writing):
    cdef _ReadyHandle handle = _ReadyHandle.__new__(_ReadyHandle)
    handle._args = ()
    handle._ctx = transport._context
    handle._loop = transport._loop
    handle.transport = transport
    handle.writing = writing
    return handle


cdef class StreamTransport(RingReader):
    """The read and write paths of a stream socket transport (see the module docstring)."""

    def __init__(self, Kernel loop not None, owner not None, sock, protocol, extra=None,
                 server=None, peername=None):
        self._sock = sock
        # The address accept() gave, kept out of the dict until asked for (see
        # fill_socket_info): a one-entry dict costs its key table, 104 bytes.
        self._peername = peername
        # Taken as given, not copied: the public transport builds it for this engine.
        self._setup(loop, owner, sock.fileno(), protocol, {} if extra is None else extra,
                    server)

    cdef int _setup(self, Kernel loop, object owner, int fd, object protocol, dict extra,
                    object server) except -1:
        self._owner = owner
        self.fd = fd
        self.persistent = True
        self._loop = loop
        self._context = PyContext_CopyCurrent()
        self._extra = extra
        self._server = server
        # The write queue is made when something is first queued (_buffer_item): most
        # writes go out at once, and an idle connection never writes (72 bytes each).
        self._write_buf = None
        self._write_offset = 0
        self._write_pending = 0
        self._high_water = DEFAULT_HIGH_WATER
        self._low_water = DEFAULT_HIGH_WATER // 4
        self._ring_read = loop._poller.stream_reads
        self._set_protocol(protocol)
        # The read and write handles are made when the socket first reports readable or
        # writable (_on_events): a connection that has not yet received anything carries
        # no read handle (128 bytes), most connections never fill the socket's buffer,
        # and an idle one never writes.
        loop._install_watcher(self)
        self._open = True
        return 0

    def __repr__(self):
        # What error messages about the fd (add_reader refused, say) should name.
        if self._owner is not None:
            return repr(self._owner)
        return f"<{type(self).__name__} fd={self.fd} closed>"

    # -- the FdWatcher protocol ---------------------------------------------------------

    cdef uint32_t wanted(self) noexcept:
        cdef uint32_t mask = 0
        if self._read_started and not self._paused and not self._closing and not self._ring_read:
            mask |= EPOLLIN
        if self._write_pending:
            mask |= EPOLLOUT
        return mask

    cdef int _on_events(self, uint32_t events, list ready) except -1:
        # As for add_reader/add_writer (watchers.pyx): a hang-up or error wakes both
        # directions, and the read or write that follows meets the error.
        if events & ~EPOLLOUT and self.registered & EPOLLIN:
            # (Readiness: EPOLLIN is registered only while the engine does not receive,
            # so the read handle needs no _ring_queued guard here.)
            if self._read_handle is None:
                self._read_handle = _ready_handle(self, False)
            ready.append(self._read_handle)
        if events & ~EPOLLIN and self.registered & EPOLLOUT:
            if self._write_handle is None:
                self._write_handle = _ready_handle(self, True)
            ready.append(self._write_handle)
        return 0

    cdef int _sync_interest(self) except -1:
        if self._loop is None or self._loop._closed:
            return 0
        if self.wanted() != self.registered:
            self._loop._update_watcher(self, True)
        if self._ring_read and self._ring_sync(self._loop._poller, self._read_started and not (
                self._paused or self._closing or self._conn_lost)):
            self._sync_interest()  # (the engine cannot receive here: EPOLLIN from now on)
        return 0

    # -- public API: reading -------------------------------------------------------------

    def is_reading(self):
        return not self._paused and not self._closing

    def pause_reading(self):
        self._pause_reading()

    def resume_reading(self):
        self._resume_reading()

    cdef int _pause_reading(self) except -1:
        if self._closing or self._paused:
            return 0
        self._paused = True
        self._sync_interest()
        if self._loop._debug:
            logger.debug("%r pauses reading", self._owner)
        return 0

    cdef int _resume_reading(self) except -1:
        if self._closing or not self._paused:
            return 0
        self._paused = False
        self._sync_interest()
        if self._ring_input:  # (received before the pause: delivered before what comes next)
            self._queue_delivery(self._loop._ready)
        if self._loop._debug:
            logger.debug("%r resumes reading", self._owner)
        return 0

    # -- public API: writing -------------------------------------------------------------

    def write(self, data):
        self._write(data)

    def writelines(self, list_of_data):
        self._writelines(list_of_data)

    cdef int _write(self, object data) except -1:
        cdef Py_buffer view
        cdef const char *ptr
        cdef Py_ssize_t size
        cdef Py_ssize_t sent
        cdef int err
        cdef bint is_bytes = type(data) is bytes
        if not is_bytes and not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(
                f"data argument must be a bytes-like object, not {type(data).__name__!r}"
            )
        if self._eof:
            raise RuntimeError("Cannot call write() after write_eof()")
        if self._empty_waiter is not None:
            raise RuntimeError("unable to write; sendfile is in progress")
        if self._conn_lost:
            if not data:
                return 0
            if self._conn_lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES:
                logger.warning("socket.send() raised exception.")
            self._conn_lost += 1
            return 0
        if self._write_pending:
            if data:
                self._buffer_item(data, 0)
                self._maybe_pause_protocol()
            return 0
        # Nothing queued: send at once.
        if is_bytes:
            ptr = PyBytes_AS_STRING(data)
            size = PyBytes_GET_SIZE(data)
            if size == 0:
                return 0
            sent = send(self.fd, ptr, size, MSG_NOSIGNAL)
            err = errno
        else:
            PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
            size = view.len
            if size == 0:
                PyBuffer_Release(&view)
                return 0
            sent = send(self.fd, view.buf, size, MSG_NOSIGNAL)
            err = errno
            PyBuffer_Release(&view)
        if sent == size:
            return 0
        if sent < 0:
            if not _would_block(err):
                self._fatal_error(_os_error(err), "Fatal write error on socket transport")
                return 0
            sent = 0
        self._buffer_item(data, sent)
        self._sync_interest()
        self._maybe_pause_protocol()
        return 0

    cdef int _writelines(self, object list_of_data) except -1:
        if self._eof:
            raise RuntimeError("Cannot call writelines() after write_eof()")
        if self._empty_waiter is not None:
            raise RuntimeError("unable to writelines; sendfile is in progress")
        items = list(list_of_data)
        for data in items:
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise TypeError(
                    f"data argument must be a bytes-like object, not {type(data).__name__!r}"
                )
        if self._conn_lost:
            if any(items):
                if self._conn_lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES:
                    logger.warning("socket.send() raised exception.")
                self._conn_lost += 1
            return 0
        was_idle = self._write_pending == 0
        for data in items:
            if data:
                self._buffer_item(data, 0)
        if not self._write_pending:
            return 0
        if was_idle:
            # One gathered send for the lot, as asyncio 3.12+ does.
            self._on_writable()
            if self._conn_lost:
                return 0
            self._sync_interest()
        self._maybe_pause_protocol()
        return 0

    def write_eof(self):
        if self._closing or self._eof:
            return
        self._eof = True
        if not self._write_pending and shutdown(self.fd, SHUT_WR) < 0:
            raise _os_error(errno)

    def get_write_buffer_size(self):
        return self._write_pending

    def get_write_buffer_limits(self):
        return (self._low_water, self._high_water)

    def set_write_buffer_limits(self, high=None, low=None):
        self._high_water, self._low_water = water_marks(high, low)
        self._maybe_pause_protocol()

    # -- public API: the rest ------------------------------------------------------------

    def get_protocol(self):
        return self._protocol

    def set_protocol(self, protocol):
        self._set_protocol(protocol)

    def is_closing(self):
        return self._closing

    def close(self):
        self._close()

    cdef int _close(self) except -1:
        if self._closing:
            return 0
        self._closing = True
        self._sync_interest()
        if not self._write_pending:
            self._conn_lost += 1
            self._loop._call_soon(self._call_connection_lost, (None,), self._context)
        return 0

    def abort(self):
        self._force_close(None)

    def __del__(self):
        # asyncio's warning for a transport dropped unclosed, here rather than on the
        # public class: a Python __del__ there cost every connection a Python call when it
        # went (1,200 instructions of a short connection's life), closed or not. While
        # the socket is open the kernel's table holds this engine and the engine its
        # public transport, so the two go together (collected as a cycle once the loop
        # dropped its table), and the public one is still whole here.
        owner = self._owner
        if self._open and owner is not None:
            _warn(f"unclosed transport {owner!r}", ResourceWarning, source=owner)
            self._close_socket()

    # -- for the Python half and for asyncio's names -------------------------------------

    def _read_ready(self):
        self._on_readable()

    def _write_ready(self):
        self._on_writable()

    def _start_reading(self):
        """Scheduled after connection_made: from now on readable data is delivered."""
        if self._conn_lost:
            return
        self._read_started = True
        self._sync_interest()

    def _connection_made(self):
        self._protocol_connected = True
        self._protocol.connection_made(self._owner)

    def _call_connection_lost(self, exc):
        cdef set clients
        try:
            if self._protocol_connected:
                self._protocol.connection_lost(exc)
        finally:
            if self._loop is not None:
                self._loop._remove_watcher(self)
            if self._open:
                self._keep_socket_info()
                self._close_socket()
            self._protocol = None
            self._data_received = self._get_buffer = self._buffer_updated = None
            self._read_handle = None
            self._write_handle = None
            server = self._server
            owner = self._owner
            self._owner = None
            if server is not None:
                self._server = None
                # The server's connection accounting (Server._detach) costs a Python call;
                # it has something to do only once its last connection is gone.
                clients = server._clients
                clients.discard(owner)
                if not clients:
                    server._detach(owner)

    def _make_empty_waiter(self):
        if self._empty_waiter is not None:
            raise RuntimeError("Empty waiter is already set")
        self._empty_waiter = self._loop.create_future()
        if not self._write_pending:
            self._empty_waiter.set_result(None)
        return self._empty_waiter

    def _reset_empty_waiter(self):
        self._empty_waiter = None

    def _lend_fd(self):
        """Leave the kernel's table so that loop.sock_* calls may watch the socket (native
        sendfile, with reading paused and the buffer empty). _reclaim_fd undoes it."""
        self._loop._remove_watcher(self)

    def _reclaim_fd(self):
        if self._open and not self._loop._closed:
            self._loop._install_watcher(self)

    def _is_polling(self, bint writing):
        """Whether epoll watches the fd for writing (or reading): for reprs."""
        return bool(self.registered & (EPOLLOUT if writing else EPOLLIN))

    # -- the read path ------------------------------------------------------------------

    cdef int _on_readable(self) except -1:
        if self._ring_read or self._ring_input is not None:
            return self._on_ring_readable()
        if self._closing or self._paused or self._conn_lost:
            return 0
        if self._buffered:
            return self._read_into_buffer()
        return self._read_data()

    cdef int _read_data(self) except -1:
        # Two ways to get the bytes data_received wants. Small reads (a request, a line)
        # receive into the shared buffer and copy what came into a bytes object of that
        # size: one small allocation. Once a read was large, the next ones receive into a
        # new bytes object of READ_BUFFER_SIZE that is then shrunk to what came (realloc
        # shrinks in place): no copy of what may be hundreds of KiB, which was a third of
        # the user-space copying per message of a 100 KiB echo through asyncio's streams.
        cdef Py_ssize_t n
        cdef Py_ssize_t more
        cdef int more_err = 0
        cdef int err
        cdef object data
        cdef PyObject *raw = NULL
        cdef char *buffer
        if self._large_reads:
            raw = cq_bytes_new(NULL, READ_BUFFER_SIZE)
            buffer = cq_bytes_data(raw)
        else:
            buffer = _read_buffer
        n = recv(self.fd, buffer, READ_BUFFER_SIZE, 0)
        if n > LARGE_READ_BYTES and n < READ_BUFFER_SIZE and self._want_reread():
            # A large read that did not fill the buffer is often the first part of a bulk
            # write still arriving (loopback TCP hands a 100 KiB write over as a 64 KiB
            # segment and the rest moments later): one more read takes what came since, so
            # that the protocol gets one data_received, and the peer one send, instead of
            # two. Worth a system call only after a large read; after a small one it would
            # mostly find nothing (asyncio and libuv read once).
            # An end of file it meets stays to be read next time; an error it meets is
            # consumed by the kernel (the next recv would say end of file instead), so it
            # is reported once the data before it was delivered.
            # When whole messages arrive at once the second read finds nothing: after
            # REREAD_MISSES_MAX such reads in a row it is made only as a probe, once in
            # REREAD_PROBE_EVERY large reads, until one finds data again (an echo of 100
            # KiB over loopback TCP, delivered whole, made 2.0 recv calls per message).
            more = recv(self.fd, buffer + n, READ_BUFFER_SIZE - n, MSG_DONTWAIT)
            if more > 0:
                n += more
                self._reread_misses = 0
            elif more < 0 and not _would_block(errno):
                more_err = errno
        if n <= 0:
            err = errno
            if raw != NULL:
                cq_decref(raw)
            if n == 0:
                return self._read_eof()
            if not _would_block(err):
                self._fatal_error(_os_error(err), "Fatal read error on socket transport")
            return 0
        if raw == NULL:
            data = PyBytes_FromStringAndSize(_read_buffer, n)
        else:
            if n != READ_BUFFER_SIZE:
                # Its sole reference: shrunk where it is (on failure it is released).
                cq_bytes_resize(&raw, n)
            data = <object>raw
            cq_decref(raw)
        self._large_reads = n > LARGE_READ_BYTES
        # _call_data_received's body, in line: the readiness read path's every message
        # (a call here cost the 1 KiB echo 40 instructions a message under callgrind).
        try:
            if self._data_received is not None:
                self._data_received(data)
            else:
                self._protocol.data_received(data)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal error: protocol.data_received() call failed.")
            return 0
        if more_err and not self._conn_lost:
            self._fatal_error(_os_error(more_err), "Fatal read error on socket transport")
        return 0

    cdef bint _want_reread(self) noexcept:
        """Whether to follow this large read with a second (see _read_data); counts it."""
        # Unsigned: wrapping round to 0 after 2**32 large reads only starts a new run.
        cdef unsigned int misses = self._reread_misses
        self._reread_misses = misses + 1
        return misses < REREAD_MISSES_MAX or misses % REREAD_PROBE_EVERY == 0

    cdef int _read_into_buffer(self) except -1:
        # A read that fills the protocol's buffer leaves more to read, as likely as not:
        # read again at once (as libuv does, for uvloop) instead of after another poll,
        # while the protocol still wants data. A BufferedProtocol's buffer is often smaller
        # than a message (asyncio's streams and the echo benchmark use 64 KiB), and the
        # extra poll per message was a tenth of a 100 KiB echo's cost.
        # A protocol may replace itself from buffer_updated (set_protocol): a plain
        # Protocol has no get_buffer, so the chain ends there and the rest waits for the
        # next readiness event (the registration is level-triggered), read the new way.
        cdef int reads = 0
        while self._read_into_buffer_once():
            reads += 1
            if (
                reads == MAX_READS_PER_EVENT or self._closing or self._paused
                or self._conn_lost or not self._buffered
            ):
                break
        return 0

    cdef bint _read_into_buffer_once(self) except -1:
        """One get_buffer/recv_into/buffer_updated; True when the read filled the buffer."""
        cdef Py_buffer view
        cdef Py_ssize_t n
        cdef Py_ssize_t size
        cdef int err
        buf = self._call_get_buffer()
        if buf is None:
            return False
        PyObject_GetBuffer(buf, &view, PyBUF_WRITABLE)
        size = view.len
        n = recv(self.fd, view.buf, size, 0)
        err = errno
        PyBuffer_Release(&view)
        if n < 0:
            if not _would_block(err):
                self._fatal_error(_os_error(err), "Fatal read error on socket transport")
            return False
        if n == 0:
            self._read_eof()
            return False
        return self._call_buffer_updated(n) and n == size

    cdef bint _call_data_received(self, object data) except -1:
        """The protocol's data_received(data): True, or False after a failure (fatal)."""
        try:
            if self._data_received is not None:
                self._data_received(data)
            else:
                self._protocol.data_received(data)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal error: protocol.data_received() call failed.")
            return False
        return True

    cdef object _call_get_buffer(self):
        """The protocol's get_buffer(-1), or None after a failure (fatal)."""
        try:
            buf = (
                self._get_buffer(-1) if self._get_buffer is not None
                else self._protocol.get_buffer(-1)
            )
            if not len(buf):
                raise RuntimeError("get_buffer() returned an empty buffer")
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal error: protocol.get_buffer() call failed.")
            return None
        return buf

    cdef bint _call_buffer_updated(self, Py_ssize_t n) except -1:
        """The protocol's buffer_updated(n): True, or False after a failure (fatal)."""
        try:
            if self._buffer_updated is not None:
                self._buffer_updated(n)
            else:
                self._protocol.buffer_updated(n)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal error: protocol.buffer_updated() call failed.")
            return False
        return True

    cdef int _read_eof(self) except -1:
        if self._loop._debug:
            logger.debug("%r received EOF", self._owner)
        try:
            keep_open = self._protocol.eof_received()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal error: protocol.eof_received() call failed.")
            return 0
        if keep_open:
            # The peer sent all it will; stop reading, keep writing (asyncio removes the
            # reader without marking the transport paused).
            self._read_started = False
            self._sync_interest()
        else:
            self.close()
        return 0

    # -- the read path through the loop's ring (the receive itself: ringread.pyx) ---------
    # The read handle delivers what came in order, as the readiness path would.

    cdef int _on_received(self, int res, const char *data, bint more, list ready) except -1:
        cdef int todo = self._ring_take(res, data, more)
        if todo & TAKE_DELIVER:
            self._queue_delivery(ready)
        return self._sync_interest() if todo & (TAKE_RESYNC | TAKE_FALLBACK) else 0

    cdef int _queue_delivery(self, list ready) except -1:
        if not self._ring_queued:  # (the read handle: made on the first event or completion)
            if self._read_handle is None:
                self._read_handle = _ready_handle(self, False)
            ready.append(self._read_handle)
            self._ring_queued = True
        return 0

    cdef int _on_ring_readable(self) except -1:
        # The read handle of a transport the engine receives for (or did: what it
        # received is delivered before the socket is read by readiness again).
        self._ring_queued = False
        if self._closing or self._paused or self._conn_lost:
            return 0
        if self._ring_input or self._ring_read:
            return self._deliver_received()
        if self._buffered:
            return self._read_into_buffer()
        return self._read_data()

    cdef int _deliver_received(self) except -1:
        cdef object item
        while self._ring_input and not (self._closing or self._paused or self._conn_lost):
            item = self._ring_pop()
            if item is None:
                self._read_eof()
            elif type(item) is not bytes:
                self._fatal_error(item, "Fatal read error on socket transport")
            elif self._buffered:
                self._deliver_into_buffer(item)
            else:
                self._call_data_received(item)
        return 0

    cdef int _deliver_into_buffer(self, object data) except -1:
        """Copy `data` into get_buffer()'s buffers, as many as it takes; what is left when
        the protocol stops reading goes back to the front of _ring_input."""
        cdef Py_buffer view
        cdef Py_ssize_t size = PyBytes_GET_SIZE(data)
        cdef Py_ssize_t offset = 0
        cdef Py_ssize_t n
        while offset < size:
            buf = self._call_get_buffer()
            if buf is None:
                return 0
            PyObject_GetBuffer(buf, &view, PyBUF_WRITABLE)
            n = min(view.len, size - offset)
            memcpy(view.buf, PyBytes_AS_STRING(data) + offset, n)
            PyBuffer_Release(&view)
            offset += n
            if not self._call_buffer_updated(n):
                return 0
            if offset < size and (
                self._closing or self._paused or self._conn_lost or not self._buffered
            ):
                self._ring_input.insert(0, data[offset:])
                return 0
        return 0

    # -- the write path -----------------------------------------------------------------

    cdef int _buffer_item(self, object data, Py_ssize_t offset) except -1:
        """Queue `data` from `offset` on. bytes are kept as they are; other buffers are
        copied, since the caller may change them after write() returns."""
        cdef Py_ssize_t size
        if type(data) is not bytes:
            data = bytes(memoryview(data).cast("B")[offset:])
            offset = 0
        size = PyBytes_GET_SIZE(data)
        if self._write_buf is None:
            self._write_buf = []
        if not self._write_buf:
            self._write_offset = offset
        elif offset:
            data = data[offset:]
            offset = 0
        self._write_buf.append(data)
        self._write_pending += size - offset
        return 0

    cdef Py_ssize_t _send_buffered(self) except -2:
        """One send of as much of the queue as sendmsg takes; the bytes sent, or -1 with
        errno set."""
        cdef list buf = self._write_buf
        cdef Py_ssize_t count = len(buf)
        cdef Py_ssize_t i
        cdef msghdr msg
        cdef object item
        if count == 1:
            item = buf[0]
            return send(self.fd, PyBytes_AS_STRING(item) + self._write_offset,
                        PyBytes_GET_SIZE(item) - self._write_offset, MSG_NOSIGNAL)
        if count > MAX_IOV:
            count = MAX_IOV
        for i in range(count):
            item = buf[i]
            _iov[i].iov_base = PyBytes_AS_STRING(item)
            _iov[i].iov_len = PyBytes_GET_SIZE(item)
        _iov[0].iov_base = <char *>_iov[0].iov_base + self._write_offset
        _iov[0].iov_len -= self._write_offset
        msg.msg_name = NULL
        msg.msg_namelen = 0
        msg.msg_iov = _iov
        msg.msg_iovlen = count
        msg.msg_control = NULL
        msg.msg_controllen = 0
        msg.msg_flags = 0
        return sendmsg(self.fd, &msg, MSG_NOSIGNAL)

    cdef int _consume(self, Py_ssize_t sent) except -1:
        """Drop `sent` bytes from the front of the queue."""
        cdef list buf = self._write_buf
        cdef Py_ssize_t done = 0
        cdef Py_ssize_t left = sent + self._write_offset
        cdef Py_ssize_t size
        self._write_pending -= sent
        while done < len(buf):
            size = PyBytes_GET_SIZE(buf[done])
            if left < size:
                break
            left -= size
            done += 1
        if done:
            del buf[:done]
        self._write_offset = left
        return 0

    cdef int _on_writable(self) except -1:
        cdef Py_ssize_t sent
        cdef int err
        if self._conn_lost or not self._write_pending:
            return 0
        sent = self._send_buffered()
        if sent < 0:
            err = errno
            if _would_block(err):
                return 0
            self._write_buf.clear()
            self._write_pending = 0
            self._write_offset = 0
            self._sync_interest()
            exc = _os_error(err)
            if self._empty_waiter is not None:
                self._empty_waiter.set_exception(exc)
            self._fatal_error(exc, "Fatal write error on socket transport")
            return 0
        self._consume(sent)
        self._maybe_resume_protocol()
        if not self._write_pending:
            self._after_drain()
        return 0

    cdef int _after_drain(self) except -1:
        self._sync_interest()
        if self._empty_waiter is not None:
            self._empty_waiter.set_result(None)
        if self._closing:
            self._conn_lost += 1
            self._loop._call_soon(self._call_connection_lost, (None,), self._context)
        elif self._eof and shutdown(self.fd, SHUT_WR) < 0:
            raise _os_error(errno)
        return 0

    # -- flow control -------------------------------------------------------------------

    cdef int _maybe_pause_protocol(self) except -1:
        if self._write_pending <= self._high_water or self._protocol_paused:
            return 0
        self._protocol_paused = True
        return self._call_flow_control("pause_writing")

    cdef int _maybe_resume_protocol(self) except -1:
        if not self._protocol_paused or self._write_pending > self._low_water:
            return 0
        self._protocol_paused = False
        return self._call_flow_control("resume_writing")

    cdef int _call_flow_control(self, str name) except -1:
        # A failing pause_writing/resume_writing is reported, never fatal (asyncio's rule).
        # In the transport's context: write() may come from any task.
        try:
            call_in_context(self._context, getattr(self._protocol, name), ())
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._loop.call_exception_handler({
                "message": f"protocol.{name}() failed",
                "exception": exc,
                "transport": self._owner,
                "protocol": self._protocol,
            })
        return 0

    # -- shutdown ------------------------------------------------------------------------

    cdef int _fatal_error(self, object exc, str message) except -1:
        # An OSError is the peer's doing (reset, broken pipe): asyncio logs it only in
        # debug mode. Anything else is a bug worth the exception handler.
        if isinstance(exc, OSError):
            if self._loop._debug:
                logger.debug("%r: %s", self._owner, message, exc_info=True)
        else:
            self._loop.call_exception_handler({
                "message": message,
                "exception": exc,
                "transport": self._owner,
                "protocol": self._protocol,
            })
        return self._force_close(exc)

    cdef int _force_close(self, object exc) except -1:
        if self._conn_lost:
            return 0
        if self._write_pending:
            self._write_buf.clear()
            self._write_pending = 0
            self._write_offset = 0
        self._closing = True
        self._sync_interest()
        self._conn_lost += 1
        self._loop._call_soon(self._call_connection_lost, (exc,), self._context)
        return 0

    cdef int _set_protocol(self, object protocol) except -1:
        self._protocol = protocol
        # asyncio's test: a BufferedProtocol subclass reads with get_buffer/buffer_updated.
        self._buffered = isinstance(protocol, BufferedProtocol)
        # The per-message methods, bound once here (as uvloop does) rather than looked up
        # by name per message: the lookup was about 150 instructions of a 1 KiB echo's
        # ~2,900 (callgrind). One the protocol lacks stays None and is called by name, so
        # that its AttributeError reaches the fatal-error path as asyncio's would.
        self._data_received = self._get_buffer = self._buffer_updated = None
        if self._buffered:
            self._get_buffer = getattr(protocol, "get_buffer", None)
            self._buffer_updated = getattr(protocol, "buffer_updated", None)
        else:
            self._data_received = getattr(protocol, "data_received", None)
        return 0
