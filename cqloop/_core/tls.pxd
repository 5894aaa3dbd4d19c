# TLSRecordPump: the record path of a TLS connection (ciphertext in, plaintext to the
# application; application writes in, ciphertext out). The policy half, the handshake and
# shutdown state machine, is its Python subclass cqloop.transports.tls.SSLProtocol.

from cqloop._core.tlsrecord cimport TLSSession


# The TLS session itself (the SSLObject's C object, the BIOs, the rule for reading
# records) is TLSSession's (tlsrecord.pxd).
cdef class TLSRecordPump(TLSSession):
    # TLSState as an int (STATE_* in tls.pyx); the subclass keeps the transitions.
    cdef public int _state
    cdef public object _loop
    # The contextvars.Context the application protocol's callbacks run in.
    cdef public object _context

    # -- below: the socket transport ----------------------------------------------------
    cdef readonly object _transport
    cdef object _transport_write
    # What get_buffer hands the socket transport to recv into.
    cdef bytearray _recv_buf
    cdef object _recv_view

    # -- above: the application protocol ------------------------------------------------
    cdef readonly object _app_protocol
    cdef bint _app_buffered
    # Decrypted bytes land here before they are copied out for data_received.
    cdef bytearray _plain_buf

    # -- flow control ----------------------------------------------------------------------
    # The application paused reading: plaintext stays in the TLS buffers meanwhile.
    cdef public bint _app_reading_paused
    # We paused the socket transport: the incoming BIO is over its high-water mark.
    cdef bint _ssl_reading_paused
    # The socket transport paused us: ciphertext waits in the outgoing BIO.
    cdef bint _ssl_writing_paused
    # We paused the application's writing.
    cdef readonly bint _app_writing_paused
    cdef public bint _eof_received
    # start_tls() has not returned the transport yet: plaintext waits in the session.
    cdef public bint _holding
    # The application closed its transport: plaintext is dropped, flow control is off.
    cdef public bint _app_closed
    cdef Py_ssize_t _incoming_high_water
    cdef Py_ssize_t _incoming_low_water
    cdef Py_ssize_t _outgoing_high_water
    cdef Py_ssize_t _outgoing_low_water
    # Plaintext the application wrote that TLS has not taken yet (during the handshake,
    # or when a write wants a read first), oldest first, and its size in bytes.
    cdef list _write_backlog
    cdef Py_ssize_t _write_buffer_size
    # Inside the read pump: application writes are encrypted at once but sent in one
    # transport write when the pump ends.
    cdef bint _pumping

    # -- methods ----------------------------------------------------------------------
    cdef int _read_records(self) except -1
    cdef int _read_copied(self) except -1
    cdef int _read_buffered(self) except -1
    cdef int _write_backlogged(self) except -1
    cdef int _flush_outgoing(self) except -1
    cdef int _write_one(self, object data) except -1
    cdef int _backlog(self, object data, Py_ssize_t offset) except -1
    cdef int _app_writing_control(self) except -1
    cdef int _ssl_reading_control(self) except -1
    cdef int _call_flow_control(self, str name) except -1
