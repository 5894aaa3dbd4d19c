# The cq socket's output buffer (cqoutbuf.pyx): bytes to send and cqueues' output
# buffering modes. The byte region it keeps them in is byteregion.pxd's.

from cqloop._core.byteregion cimport ByteRegion


cdef enum BufMode:
    MODE_NONE = 0       # "n": unbuffered
    MODE_LINE = 1       # "l": line-buffered
    MODE_FULL = 2       # "f": fully buffered


cdef class OutputBuffer:
    cdef ByteRegion _r
    # Offset (from _r.rd) just past the last LF a line-wise write put in; 0: none.
    cdef Py_ssize_t _eol
    # Bytes at the front that decisions made due and nobody has sent yet.
    cdef Py_ssize_t _hold
    # Buffering mode: one of MODE_NONE, MODE_LINE, MODE_FULL (cqueues "n", "l", "f").
    cdef int _mode
    cdef Py_ssize_t _bufsiz
    cdef Py_ssize_t _maxline
    cdef public bint text
    # cqueues' bit writer: the low _wbits bits of _wbyte are packed, not yet a byte.
    cdef unsigned char _wbyte
    cdef unsigned char _wbits
    # statistics()
    cdef unsigned long long _bytes_written
    cdef unsigned long long _bytes_due

    # append() and send_due() for compiled callers (send_due: the count sent or -errno,
    # what stays due in *left).
    cdef int _put(self, const char *src, Py_ssize_t n) except -1
    cdef Py_ssize_t _send_due(self, int fd, int mode, Py_ssize_t *left) except? -1
    cdef int _write(self, const char *src, Py_ssize_t n, int mode, bint text) except -1
    cdef int _copy(self, const char *src, Py_ssize_t k) except -1
    cdef void _decide(self, int mode) noexcept
    cdef void _consume(self, Py_ssize_t n) noexcept
    cdef object _pop(self, Py_ssize_t n)
