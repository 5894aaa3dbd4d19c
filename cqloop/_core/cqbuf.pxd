# The cq socket's input buffer (cqbuf.pyx): received bytes and cqueues' read-format
# scanners. The output side is cqoutbuf.pxd; the byte region both use, byteregion.pxd.

from cqloop._core.byteregion cimport ByteRegion


cdef class InputBuffer:
    cdef ByteRegion _r
    # EOF was fed and not undone by unget() (cqueues clears ibuf.eof on unget).
    cdef bint _eof
    # cqueues' bit reader: the low _rbits bits of _rbyte are unread (unpack).
    cdef unsigned char _rbyte
    cdef unsigned char _rbits
    # The format scanners' limits and the text-mode flag (cqueues' setmaxline, setbufsiz,
    # setmode "t"/"b" for the input channel).
    # (properties in cqbuf.pyx check that both limits stay >= 1)
    cdef Py_ssize_t _maxline
    cdef Py_ssize_t _bufsiz
    cdef public bint text
    # statistics()
    cdef unsigned long long _bytes_fed
    cdef unsigned long long _compactions

    # recv_from() for compiled callers: the count, 0 at EOF, or -errno (no exception).
    cdef Py_ssize_t _recv(self, int fd) except? -1
    cdef int _append(self, const char *src, Py_ssize_t n) except -1
    cdef object _take(self, Py_ssize_t n, Py_ssize_t consume, int trim)
    cdef object _line(self, bint keep_eol, bint text)
    cdef object _slurp(self, bint text)
    cdef object _header(self, bint unfold, bint text)
    cdef object _body(self, const char *eob, Py_ssize_t eoblen, bint text)
    cdef object _block(self, Py_ssize_t n, bint text)
    cdef object _limit(self, Py_ssize_t n, bint text)
