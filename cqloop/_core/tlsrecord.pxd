# TLSSession: one TLS session's record layer (tlsrecord.pyx), the base both TLS users
# build on: the transports' TLSRecordPump (tls.pyx) and the cq sockets' TLSChannel
# (cqtls.pyx). Owns the ssl.SSLObject's C object and its two MemoryBIOs.

cdef class TLSSession:
    # ssl's C object under the ssl.SSLObject (_ssl._SSLSocket): calling its methods
    # directly skips a Python frame of ssl.py per call.
    cdef object _ssl
    cdef object _incoming
    cdef object _outgoing
    # Bound methods, looked up once.
    cdef object _ssl_read
    cdef object _ssl_write
    cdef object _ssl_pending
    cdef object _incoming_write
    cdef object _outgoing_read

    cdef int _bind(self, object sslobj, object incoming, object outgoing) except -1
    # One SSLObject.read into buf: the count, 0 at the peer's close_notify, or -1 when the
    # session needs more ciphertext first.
    cdef Py_ssize_t _decrypt(self, Py_ssize_t n, object buf) except -2
    cdef bint _drained(self, Py_ssize_t got, Py_ssize_t asked) except -1
    # One SSLObject.write: the count of bytes TLS took (0 when it wants a read first).
    cdef Py_ssize_t _encrypt(self, object data) except -1
