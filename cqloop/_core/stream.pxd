# StreamTransport: the read and write paths of a TCP or Unix stream socket transport. The
# public class (cqloop.transports.socket_transport.SocketTransport) holds one as its engine
# and adds the policy half (repr, sendfile, warnings on drop).

from cqloop._core.handles cimport Handle
from cqloop._core.kernel cimport Kernel
from cqloop._core.ringread cimport RingReader


cdef class StreamTransport(RingReader):
    # -- who we serve -----------------------------------------------------------------
    cdef readonly Kernel _loop
    # The public transport this is the engine of (an asyncio.Transport): what protocol
    # callbacks, the exception handler and the server see.
    cdef readonly object _owner
    cdef object _protocol
    # Its per-message methods, bound by _set_protocol (None when it lacks one, or for the
    # other kind of protocol).
    cdef object _data_received
    cdef object _get_buffer
    cdef object _buffer_updated
    # The protocol is a BufferedProtocol: read with get_buffer/buffer_updated.
    cdef bint _buffered
    # The last read was large: the next one receives straight into a new bytes object (see
    # _read_data).
    cdef bint _large_reads
    # Large reads since a second read last found data (see _read_data's re-read).
    cdef unsigned int _reread_misses
    # Protocol callbacks run in this context: the one current when the transport was made.
    cdef readonly object _context
    cdef object _server

    # -- state ------------------------------------------------------------------------
    # connection_made has run (so connection_lost is due), and reading was started.
    cdef bint _protocol_connected
    cdef bint _read_started
    # pause_reading() is in effect.
    cdef bint _paused
    # close() or a fatal error began the shutdown; no more reading.
    cdef bint _closing
    # write_eof() was called; shutdown(SHUT_WR) is done once the buffer drains.
    cdef bint _eof
    # How many times the connection was found lost (asyncio's _conn_lost): after the first,
    # writes are dropped with a warning.
    cdef int _conn_lost

    # -- the write buffer ---------------------------------------------------------------
    # bytes objects not yet sent, oldest first; the first is sent from _write_offset on.
    cdef list _write_buf
    cdef Py_ssize_t _write_offset
    # Bytes still to send (the sum over _write_buf, less _write_offset).
    cdef Py_ssize_t _write_pending
    cdef Py_ssize_t _high_water
    cdef Py_ssize_t _low_water
    cdef readonly bint _protocol_paused
    # A future loop.sendfile waits on until the buffer drains (asyncio's _empty_waiter).
    cdef object _empty_waiter

    # (RingReader, ringread.pxd: the state of reading through the loop's ring.)

    # -- the handles the kernel queues when the fd is ready ------------------------------
    # Each made on the first readable or writable event (see _on_events).
    cdef Handle _read_handle
    cdef Handle _write_handle

    # -- methods ----------------------------------------------------------------------
    cdef int _setup(self, Kernel loop, object owner, int fd, object protocol, dict extra,
                    object server) except -1
    cdef int _sync_interest(self) except -1
    cdef int _close(self) except -1
    cdef int _pause_reading(self) except -1
    cdef int _resume_reading(self) except -1
    cdef int _write(self, object data) except -1
    cdef int _writelines(self, object list_of_data) except -1
    cdef int _on_readable(self) except -1
    cdef int _on_ring_readable(self) except -1
    cdef int _on_writable(self) except -1
    cdef int _read_data(self) except -1
    cdef bint _want_reread(self) noexcept
    cdef int _read_into_buffer(self) except -1
    cdef bint _read_into_buffer_once(self) except -1
    cdef int _read_eof(self) except -1
    cdef int _queue_delivery(self, list ready) except -1
    cdef int _deliver_received(self) except -1
    cdef int _deliver_into_buffer(self, object data) except -1
    cdef bint _call_data_received(self, object data) except -1
    cdef object _call_get_buffer(self)
    cdef bint _call_buffer_updated(self, Py_ssize_t n) except -1
    cdef Py_ssize_t _send_buffered(self) except -2
    cdef int _consume(self, Py_ssize_t sent) except -1
    cdef int _after_drain(self) except -1
    cdef int _buffer_item(self, object data, Py_ssize_t offset) except -1
    cdef int _maybe_pause_protocol(self) except -1
    cdef int _maybe_resume_protocol(self) except -1
    cdef int _call_flow_control(self, str name) except -1
    cdef int _fatal_error(self, object exc, str message) except -1
    cdef int _force_close(self, object exc) except -1
    cdef int _set_protocol(self, object protocol) except -1
