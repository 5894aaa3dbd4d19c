# SocketCore: the state a cq socket's hot paths touch (cqsock.pyx), the compiled base of
# cqloop._cqsocket.Socket. Every field is public: the Python half (set-up, TLS, the slow
# paths, configuration) reads and writes them as plain attributes.

from cqloop._core.cqbuf cimport InputBuffer
from cqloop._core.cqoutbuf cimport OutputBuffer


cdef class SocketCore:
    cdef public InputBuffer _ibuf
    cdef public OutputBuffer _obuf
    # The socket's fd while it has one, else -1.
    cdef public int _fd
    # A SocketState member (cqsock.pyx).
    cdef public object _state
    # The sticky errors of the input ("r") and output ("w") channels, or None (cqueues:
    # so->ibuf.error / so->obuf.error).
    cdef public object _rerror
    cdef public object _werror
    # The TLSChannel once TLS is on, else None, and the ciphertext the kernel has not
    # taken yet (nothing is sent past it: cqloop/_cqtls.py).
    cdef public object _tls
    cdef public bytearray _raw_out
    cdef public bint _autoflush
    # The socket's default timeout in seconds, or None.
    cdef public object _timeout
    # What the socket last waited for ("r" or "w"), for events().
    cdef public object _events
    # The loop the fd is subscribed in while receiving, else None, and the reads waiting
    # for input (see "Receiving" in cqsock.pyx).
    cdef public object _receiving
    cdef public list _input_waiters
    # Input arrived through the subscription since the last read looked (timeout()).
    cdef public bint _input_fresh
    # An error a receive met, kept for the reading task (the callback must not raise).
    cdef public object _recv_error
    cdef public bint _eof_in
    # Byte counts for stat().
    cdef public unsigned long long _sent
    cdef public unsigned long long _rcvd

    cdef int _wake(self) except -1
    cdef bint _tls_send_due(self, str op) except -1
    cdef bint _tls_send(
        self, str op, const char *data, Py_ssize_t n, OutputBuffer consumed
    ) except -1
    cdef int _tls_pull(self) except -2
    cdef int _at_eof(self) except -1
    cpdef _events_past_input(self)
