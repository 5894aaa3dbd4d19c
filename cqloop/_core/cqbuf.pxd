# The cq socket's byte buffers (cqbuf.pyx): an input buffer with cqueues' read-format
# scanners and an output buffer with cqueues' buffering modes. Pure: no I/O, no loop.
# cqloop.socket feeds received bytes in and sends what the output side says is due.


# A contiguous byte region [rd, wr) inside a malloc'd block of cap bytes. Consuming
# advances rd; the live bytes are moved to the front only when appending would not fit
# (see ByteRegion helpers in cqbuf.pyx).
cdef struct ByteRegion:
    char *base
    Py_ssize_t cap
    Py_ssize_t rd
    Py_ssize_t wr


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


cdef class OutputBuffer:
    cdef ByteRegion _r
    # Offset (from _r.rd) just past the last LF written; 0 when none is pending.
    cdef Py_ssize_t _eol
    # Bytes at the front that were already due and were handed back by unflush().
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
    cdef int _append(self, const char *src, Py_ssize_t n) except -1
    cdef int _append_text(self, const char *src, Py_ssize_t n) except -1
    cdef Py_ssize_t _due_amount(self, int mode) noexcept
    cdef object _pop(self, Py_ssize_t n)
