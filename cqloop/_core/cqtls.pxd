# TLSChannel: a cq socket's TLS session (cqtls.pyx), on the record layer the transports
# use too (TLSSession, tlsrecord.pxd). The socket (cqloop/_cqtls.py) does all waiting.

from cqloop._core.cqbuf cimport InputBuffer
from cqloop._core.tlsrecord cimport TLSSession


cdef class TLSChannel(TLSSession):
    # The ssl.SSLObject (checktls(), the handshake, the close_notify exchange).
    cdef readonly object sslobj
    cdef public bint handshake_done
    # The peer ended its side: close_notify, or a FIN at a record boundary (then
    # close_notify_received stays False).
    cdef readonly bint peer_closed
    cdef readonly bint close_notify_received
    cdef readonly bint close_notify_sent
    # An error met after records that decrypted: raised by the next receive, so that the
    # data before it is read first.
    cdef object _pending_error
    # Where the ciphertext stream stands in TLS's record framing (a 5-byte header whose
    # last two bytes are the body's length): bytes of the current record's body still
    # to come, and how much of the next header has come. A FIN is at a record boundary
    # when both are 0. (OpenSSL takes a partial record out of the BIO into a buffer of its
    # own, so the BIO cannot tell.)
    cdef Py_ssize_t _body_left
    cdef int _header_have
    cdef unsigned char _header[5]

    cdef Py_ssize_t _decrypt_all(self, InputBuffer ibuf) except -1
    cdef Py_ssize_t _receive_into(self, InputBuffer ibuf, int fd) except -2
    cdef int _feed(self, const unsigned char *data, Py_ssize_t n) except -1
    cdef ssize_t _recv_and_feed(self, int fd) except -2
    # encrypt() of a C buffer (the compiled write: the output buffer's due bytes).
    cdef int _encrypt_from(self, const char *data, Py_ssize_t n) except -1
