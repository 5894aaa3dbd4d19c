# cython: freethreading_compatible=False
"""TLSRecordPump: the record path of cqloop's TLS connections, compiled.

Owns, for one connection: the bytes between the socket transport and the TLS session
(the buffer the socket transport recvs into, the incoming and outgoing ssl.MemoryBIOs),
the plaintext between the session and the application (a reusable buffer that
SSLObject.read fills, the backlog of application writes TLS has not taken yet), and the
flow control of both directions. Its Python subclass, cqloop.transports.tls.SSLProtocol,
owns the rest: the handshake and shutdown, timeouts, errors, extra info. The pump calls back
into the subclass by name for those (`_on_bytes_unwrapped`, `_call_eof_received`,
`_start_shutdown`, `_fatal_error`).

Why compiled: per record, asyncio's sslproto (and uvloop's) runs Python frames of ssl.py's
SSLObject wrapper for each read and write, and ends every read loop by catching an
SSLWantReadError. The pump calls the C object under the wrapper directly through its base,
TLSSession (tlsrecord.pyx, the record layer it shares with the cq sockets' TLS), stops
reading when neither the incoming BIO nor the session holds bytes (so the usual record
costs no exception), reads into one preallocated buffer, and sends what the application wrote while
the pump delivered data in one transport write when the pump ends.

Invariants: `_write_buffer_size` is the sum of the lengths in `_write_backlog`; plaintext is
delivered only in STATE_WRAPPED and STATE_FLUSHING, only while the application has not
paused reading, never while start_tls() has yet to return the transport (`_holding`), and
never after the application closed its transport (`_app_closed`: what arrives then is read
and dropped); the socket transport is paused exactly while `_ssl_reading_paused`. Protocol
callbacks run in `_context` (the socket transport's, adopted by the subclass); the ones an
application call sets off (pause_writing from write()) enter it.
"""

import logging
from asyncio import BufferedProtocol, constants

from cpython.buffer cimport PyBUF_READ
from cpython.bytearray cimport PyByteArray_AS_STRING
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.memoryview cimport PyMemoryView_FromMemory

from cqloop._core.contexts cimport call_in_context

logger = logging.getLogger("asyncio")

# TLSState's values (cqloop.transports.tls names them).
STATE_UNWRAPPED = 0
STATE_DO_HANDSHAKE = 1
STATE_WRAPPED = 2
STATE_FLUSHING = 3
STATE_SHUTDOWN = 4
cdef enum:
    _UNWRAPPED = 0
    _DO_HANDSHAKE = 1
    _WRAPPED = 2
    _FLUSHING = 3
    _SHUTDOWN = 4

cdef enum:
    # Ciphertext the socket transport may recv at once (asyncio's sslproto max_size).
    RECV_BUFFER_SIZE = 256 * 1024
    # Plaintext read out of the session per SSLObject.read (a TLS record carries at most
    # 16 KiB, so one read may gather several).
    PLAIN_BUFFER_SIZE = 256 * 1024
    KIB = 1024

# asyncio's defaults for the TLS buffers, in KiB.
cdef Py_ssize_t DEFAULT_READ_HIGH_KIB = constants.FLOW_CONTROL_HIGH_WATER_SSL_READ
cdef Py_ssize_t DEFAULT_WRITE_HIGH_KIB = constants.FLOW_CONTROL_HIGH_WATER_SSL_WRITE
cdef int LOG_THRESHOLD_FOR_CONNLOST_WRITES = constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES


def flow_control_limits(high, low, Py_ssize_t default_high_kib):
    """(high, low) for the TLS buffers, with asyncio's defaults and checks."""
    if high is None:
        high = default_high_kib * KIB if low is None else 4 * low
    if low is None:
        low = high // 4
    if not high >= low >= 0:
        raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
    return high, low


cdef class TLSRecordPump(TLSSession):
    """The record path of one TLS connection (see the module docstring)."""

    def _init_pump(self, sslobj not None, incoming not None, outgoing not None, loop):
        """Set up from the subclass's constructor: `sslobj` is an ssl.SSLObject over the two
        MemoryBIOs."""
        self._bind(sslobj, incoming, outgoing)
        self._loop = loop
        self._context = None
        self._state = _UNWRAPPED
        self._recv_buf = bytearray(RECV_BUFFER_SIZE)
        self._recv_view = memoryview(self._recv_buf)
        self._plain_buf = bytearray(PLAIN_BUFFER_SIZE)
        self._write_backlog = []
        self._write_buffer_size = 0
        self._set_read_buffer_limits(None, None)
        self._set_write_buffer_limits(None, None)

    # -- wiring ---------------------------------------------------------------------------

    def _set_transport(self, transport):
        self._transport = transport
        self._transport_write = None if transport is None else transport.write

    def _set_app_protocol(self, protocol):
        self._app_protocol = protocol
        self._app_buffered = isinstance(protocol, BufferedProtocol)

    def _clear_app_protocol(self):
        self._app_protocol = None

    def _discard_buffers(self):
        """The connection is gone: what was waiting to be sent never will be."""
        self._write_backlog.clear()
        self._write_buffer_size = 0
        if self._outgoing is not None:
            self._outgoing_read()

    # -- toward the socket transport: asyncio.BufferedProtocol ----------------------------

    def get_buffer(self, Py_ssize_t n):
        return self._recv_view

    def buffer_updated(self, Py_ssize_t nbytes):
        if nbytes < 0 or nbytes > RECV_BUFFER_SIZE:
            raise ValueError(f"buffer_updated({nbytes}): more than get_buffer handed out")
        # A view of exactly the bytes received (no slice object, no sub-view of
        # _recv_view); the buffer it points into lives as long as the pump.
        self._incoming_write(
            PyMemoryView_FromMemory(PyByteArray_AS_STRING(self._recv_buf), nbytes, PyBUF_READ)
        )
        if self._state == _WRAPPED:
            self._read_records()
        elif self._state != _UNWRAPPED:
            try:
                self._on_bytes_unwrapped()
            except Exception:
                if self._transport is not None:
                    self._transport.close()
                raise

    def pause_writing(self):
        """The socket transport's buffer is full: keep ciphertext in the outgoing BIO."""
        self._ssl_writing_paused = True

    def resume_writing(self):
        self._ssl_writing_paused = False
        self._flush_outgoing()

    # -- for the subclass -------------------------------------------------------------------

    def _do_read(self):
        self._read_records()

    def _do_write(self):
        self._write_backlogged()

    def _process_outgoing(self):
        self._flush_outgoing()

    def _pause_reading(self):
        self._app_reading_paused = True

    def _control_app_writing(self):
        self._app_writing_control()

    def _control_ssl_reading(self):
        self._ssl_reading_control()

    def _get_read_buffer_size(self):
        return self._incoming.pending

    def _read_buffer_limits(self):
        return (self._incoming_low_water, self._incoming_high_water)

    def _set_read_buffer_limits(self, high=None, low=None):
        self._incoming_high_water, self._incoming_low_water = flow_control_limits(
            high, low, DEFAULT_READ_HIGH_KIB)

    def _write_buffer_limits(self):
        return (self._outgoing_low_water, self._outgoing_high_water)

    def _set_write_buffer_limits(self, high=None, low=None):
        self._outgoing_high_water, self._outgoing_low_water = flow_control_limits(
            high, low, DEFAULT_WRITE_HIGH_KIB)

    def _append_write_backlog(self, data):
        self._backlog(data, 0)

    def _drop_plaintext(self):
        """After the application closed: decrypt what the incoming BIO holds and drop it,
        so that the session meets only the peer's close_notify when the shutdown reads
        (OpenSSL fails a shutdown that meets application data with
        APPLICATION_DATA_AFTER_CLOSE_NOTIFY). True once the close_notify was read."""
        cdef Py_ssize_t count
        while True:
            count = self._decrypt(PLAIN_BUFFER_SIZE, self._plain_buf)
            if count <= 0:
                return count == 0

    # -- the application transport's hot methods (bound onto SSLTransport instances) -------

    def _app_write(self, data):
        if type(data) is not bytes and not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(
                f"data: expecting a bytes-like instance, got {type(data).__name__}"
            )
        if not data:
            return
        if self._state == _WRAPPED and not self._write_backlog:
            try:
                self._write_one(data)
                if not self._pumping:
                    self._flush_outgoing()
            except Exception as exc:
                self._fatal_error(exc, "Fatal error on SSL protocol")
            return
        self._app_writelines((data,))

    def _app_writelines(self, list_of_data):
        cdef int state = self._state
        if state != _WRAPPED and state != _DO_HANDSHAKE:
            # Closing or closed: dropped, as asyncio drops them (with a warning after a while).
            if self._conn_lost_writes():
                logger.warning("SSL connection is closed")
            return
        for data in list_of_data:
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise TypeError(
                    f"data: expecting a bytes-like instance, got {type(data).__name__}"
                )
            if data:
                self._backlog(data, 0)
        try:
            if self._state == _WRAPPED:
                self._write_backlogged()
        except Exception as exc:
            self._fatal_error(exc, "Fatal error on SSL protocol")

    def _app_get_write_buffer_size(self):
        return self._outgoing.pending + self._write_buffer_size

    def _conn_lost_writes(self):
        """Count a write made after the connection closed; True when it should be logged."""
        self._conn_lost += 1
        return self._conn_lost > LOG_THRESHOLD_FOR_CONNLOST_WRITES

    # -- the read path ----------------------------------------------------------------------

    cdef int _read_records(self) except -1:
        """Decrypt what the incoming BIO holds and deliver it; then send what that made
        (application writes, TLS's own messages) and adjust reading from the socket."""
        cdef bint drained = False
        if (self._state != _WRAPPED and self._state != _FLUSHING) or self._app_closed:
            return 0
        try:
            if not self._app_reading_paused and not self._holding:
                self._pumping = True
                try:
                    if self._app_buffered:
                        drained = self._read_buffered()
                    else:
                        drained = self._read_copied()
                finally:
                    self._pumping = False
                if self._write_backlog:
                    self._write_backlogged()
                else:
                    self._flush_outgoing()
            # With the incoming BIO found empty, reading from the socket needs a change
            # only if it was paused.
            if not drained or self._ssl_reading_paused:
                self._ssl_reading_control()
        except Exception as exc:
            self._fatal_error(exc, "Fatal error on SSL protocol")
        return 0

    cdef int _read_copied(self) except -1:
        """Deliver the plaintext the session holds in one data_received; 1 if the incoming
        BIO was left empty, else 0."""
        cdef Py_ssize_t count
        cdef bint drained = False
        cdef bint eof = False
        cdef char *plain = PyByteArray_AS_STRING(self._plain_buf)
        cdef object first = None
        cdef list chunks = None
        while True:
            count = self._decrypt(PLAIN_BUFFER_SIZE, self._plain_buf)
            if count < 0:
                break  # the session wants more ciphertext
            if count == 0:
                eof = True  # close_notify
                break
            data = PyBytes_FromStringAndSize(plain, count)
            if first is None:
                first = data
            else:
                if chunks is None:
                    chunks = [first]
                chunks.append(data)
            if self._drained(count, PLAIN_BUFFER_SIZE):
                drained = True
                break
        if first is not None:
            self._app_protocol.data_received(first if chunks is None else b"".join(chunks))
        if eof:
            self._call_eof_received()
            self._start_shutdown()
        return drained

    cdef int _read_buffered(self) except -1:
        """As _read_copied, into the application's buffer."""
        cdef bint drained = False
        cdef Py_ssize_t offset = 0
        cdef Py_ssize_t count = 1
        cdef Py_ssize_t wants
        protocol = self._app_protocol
        buf = protocol.get_buffer(self._incoming.pending)
        view = memoryview(buf).cast("B")
        wants = len(view)
        if wants == 0:
            raise RuntimeError("get_buffer() returned an empty buffer")
        while offset < wants:
            count = self._decrypt(wants - offset, view[offset:] if offset else view)
            if count <= 0:
                break  # close_notify (0), or the session wants more ciphertext (-1)
            offset += count
            if self._drained(count, wants - offset + count):
                drained = True
                break
        else:
            # The application's buffer is full and more may be waiting: next iteration.
            self._loop.call_soon(self._do_read, context=self._context)
        view.release()
        if offset:
            protocol.buffer_updated(offset)
        if count == 0:
            self._call_eof_received()
            self._start_shutdown()
        return drained

    cdef int _ssl_reading_control(self) except -1:
        cdef Py_ssize_t size = self._incoming.pending
        if size >= self._incoming_high_water and not self._ssl_reading_paused:
            self._ssl_reading_paused = True
            self._transport.pause_reading()
        elif size <= self._incoming_low_water and self._ssl_reading_paused:
            self._ssl_reading_paused = False
            self._transport.resume_reading()
        return 0

    # -- the write path ---------------------------------------------------------------------

    cdef int _write_one(self, object data) except -1:
        """Encrypt one buffer; what TLS does not take goes to the backlog."""
        cdef Py_ssize_t count
        cdef Py_ssize_t size
        count = self._encrypt(data)
        size = data.nbytes if type(data) is memoryview else len(data)
        if count < size:
            self._backlog(data, count)
        return 0

    cdef int _backlog(self, object data, Py_ssize_t offset) except -1:
        # Copied unless bytes: the caller may change its buffer after write() returns.
        if type(data) is not bytes or offset:
            data = bytes(memoryview(data).cast("B")[offset:])
        self._write_backlog.append(data)
        self._write_buffer_size += len(data)
        return 0

    cdef int _write_backlogged(self) except -1:
        cdef list backlog = self._write_backlog
        cdef Py_ssize_t count
        cdef Py_ssize_t size
        while backlog:
            data = backlog[0]
            count = self._encrypt(data)
            if count == 0:
                break  # TLS wants a read first
            size = len(data)
            if count < size:
                backlog[0] = data[count:]
                self._write_buffer_size -= count
            else:
                del backlog[0]
                self._write_buffer_size -= size
        return self._flush_outgoing()

    cdef int _flush_outgoing(self) except -1:
        """Hand what TLS produced to the socket transport, in one write."""
        if not self._ssl_writing_paused and self._transport_write is not None:
            data = self._outgoing_read()
            if data:
                self._transport_write(data)
        if self._ssl_writing_paused or self._app_writing_paused or self._write_buffer_size:
            self._app_writing_control()
        return 0

    cdef int _app_writing_control(self) except -1:
        cdef Py_ssize_t size = self._outgoing.pending + self._write_buffer_size
        if self._app_closed:
            # Writes are refused from now on: neither call means anything to the protocol
            # (and close() must not call it).
            return 0
        if size >= self._outgoing_high_water and not self._app_writing_paused:
            self._app_writing_paused = True
            self._call_flow_control("pause_writing")
        elif size <= self._outgoing_low_water and self._app_writing_paused:
            self._app_writing_paused = False
            self._call_flow_control("resume_writing")
        return 0

    cdef int _call_flow_control(self, str name) except -1:
        # A failing pause_writing/resume_writing is reported, never fatal (asyncio's rule).
        # In the connection's context: the write() that set it off may come from any task.
        try:
            if self._context is None:
                getattr(self._app_protocol, name)()
            else:
                call_in_context(self._context, getattr(self._app_protocol, name), ())
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._loop.call_exception_handler({
                "message": f"protocol.{name}() failed",
                "exception": exc,
                "transport": getattr(self, "_app_transport", None),
                "protocol": self,
            })
        return 0
