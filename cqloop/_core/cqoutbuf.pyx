"""cqoutbuf: the cq socket's output buffer and cqueues' output buffering modes.

Owns OutputBuffer: bytes to send, the "n"/"l"/"f" buffering modes, LF->CRLF text
translation, pack(). Pure but for send_due()'s one send(2): no event loop, no clock.
cqloop.socket (the only caller, with cqsock.pyx's compiled write) puts bytes in and sends
what the buffer says is due. The semantics are cqueues' (src/socket.c lso_send5 and
lso_doflush, and src/socket.lua's write, xwrite and flush around them); the code is ours.
The differential cases in tests/test_cq_oracle_write.py hold it to cqueues byte for byte.

The model: cqueues sends bytes the moment it decides they are due; this buffer makes the
same decisions and keeps what they made due as a prefix of the buffer (`_hold`) until
the caller sends it. The bytes after that prefix are exactly what cqueues' output fifo
would hold. A decision in a mode (lso_doflush) makes due:
  "n"  everything;
  "f"  the largest multiple of bufsiz;
  "l"  everything through the last LF a line-wise write put in (below) when one waits,
       else one maxline-sized chunk when at least maxline bytes wait (one per decision:
       cqueues "a chunk is always flushed at this boundary"), else nothing.
write(data, mode, text) is cqueues' socket:send buffering (lso_send5): data goes in
chunk by chunk. The write is line-wise when text translation is on, or the call's mode
or the buffer's own mode is "l": a chunk then ends at the first LF within maxline bytes,
that LF (text: as CRLF, even after a CR, cqueues' rule) marks an end of line for "l"
decisions; otherwise chunks are WRITE_CHUNK_BYTES and LFs are not marked (so flush("l")
on a binary, fully buffered socket sends no line, as in cqueues). After each chunk, when
more than bufsiz bytes wait, one decision in the call's mode; after the last, one more.

cqloop.socket builds cqueues' socket.lua calls from these: write(*pieces) puts each piece
in with append() (write in mode "f") and then decides once in the buffer's own mode;
xwrite(data, mode) is write(data, mode) then due(mode); send(data, mode) is write(data,
mode); flush(mode) is due(mode). Bytes made due but not sent go back with unflush() and
stay due; held() hands back what is due without deciding again.

Invariants: 0 <= _hold <= live bytes; _eol is an offset from the region's start (0: no
LF marked), and only the part past _hold counts for an "l" decision.
"""

from os import strerror

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.string cimport memchr, memcpy

from cqloop._core.byteregion cimport _at_least_one, _discard, _drop, _prepend, _reserve
from cqloop._core.includes.sockets cimport MSG_NOSIGNAL, send
from cqloop._core.includes.system cimport EAGAIN, EINTR, errno

# cqueues' defaults (src/socket.c LSO_MAXLINE, LSO_BUFSIZ).
DEFAULT_MAXLINE = 4096
DEFAULT_BUFSIZ = 4096
# The chunk of a write that is not line-wise (cqueues: LSO_BUFSIZ, whatever bufsiz is).
cdef Py_ssize_t WRITE_CHUNK_BYTES = 4096
# The widest pack() field, in bits (cqueues: unsigned long long).
cdef int MAX_PACK_BITS = 64

_MODE_FLAGS = {"n": MODE_NONE, "no": MODE_NONE, "nobuf": MODE_NONE,
               "l": MODE_LINE, "line": MODE_LINE, "f": MODE_FULL, "full": MODE_FULL}
_MODE_NAMES = ("n", "l", "f")


cdef int _parse_mode(object mode, int current) except -1:
    if mode is None or mode == "":
        return current
    try:
        return _MODE_FLAGS[mode]
    except (KeyError, TypeError):
        raise ValueError(f"unknown buffering mode {mode!r} (expected 'n', 'l' or 'f')")


cdef class OutputBuffer:
    """Bytes to send and cqueues' output buffering (see the module docstring).

    OutputBuffer(mode="l", bufsiz=4096, text=True, maxline=4096): cqueues' defaults."""

    def __cinit__(self):
        self._r.base = NULL
        self._r.cap = 0
        self._r.rd = 0
        self._r.wr = 0
        self._eol = 0
        self._hold = 0
        self._wbyte = 0
        self._wbits = 0
        self._bytes_written = 0
        self._bytes_due = 0

    def __init__(self, mode="l", bufsiz=DEFAULT_BUFSIZ, text=True, maxline=DEFAULT_MAXLINE):
        self.mode = mode
        self.bufsiz = bufsiz
        self.maxline = maxline
        self.text = text

    def __dealloc__(self):
        _drop(&self._r)

    # -- configuration --

    @property
    def mode(self):
        """The buffering mode: "n", "l" or "f" (set: also "no", "line", "full")."""
        return _MODE_NAMES[self._mode]

    @mode.setter
    def mode(self, value):
        if not value:
            raise ValueError(f"unknown buffering mode {value!r} (expected 'n', 'l' or 'f')")
        self._mode = _parse_mode(value, self._mode)

    @property
    def bufsiz(self):
        return self._bufsiz

    @bufsiz.setter
    def bufsiz(self, value):
        self._bufsiz = _at_least_one(value, "bufsiz")

    @property
    def maxline(self):
        return self._maxline

    @maxline.setter
    def maxline(self, value):
        self._maxline = _at_least_one(value, "maxline")

    def setvbuf(self, mode, bufsiz=None):
        """Set the mode (and size); returns the previous pair (short mode names)."""
        previous = (self.mode, self._bufsiz)
        self.mode = mode
        if bufsiz is not None:
            self.bufsiz = bufsiz
        return previous

    # -- output side --

    def write(self, data, mode=None, text=None):
        """cqueues' send buffering of data in `mode` (default: the buffer's) and text
        mode `text` (default: the buffer's); return the bytes due now."""
        cdef int m = _parse_mode(mode, self._mode)
        cdef bint t = self.text if text is None else text
        cdef Py_buffer view
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            if m == MODE_NONE and self._r.wr == self._r.rd and not t and type(data) is bytes:
                # Nothing buffered, nothing to translate, all of it due: hand the
                # caller's own bytes object back (no copy).
                self._bytes_written += view.len
                self._bytes_due += view.len
                return data
            self._write(<const char *>view.buf, view.len, m, t)
        finally:
            PyBuffer_Release(&view)
        return self._pop(self._hold)

    def append(self, data):
        """Put data in as cqueues' socket:write does (a write in mode "f"); what that
        makes due stays in the buffer, due (held(), due(), send_due())."""
        cdef Py_buffer view
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            self._put(<const char *>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)

    def send_due(self, int fd, mode=None):
        """One decision in `mode` (default: the buffer's), then one send(2) on fd of
        what is due, straight from the buffer. Returns (bytes sent, bytes still due);
        what the kernel did not take stays due. A full kernel buffer is not an error;
        anything else raises OSError."""
        cdef Py_ssize_t left = 0
        cdef Py_ssize_t sent = self._send_due(fd, _parse_mode(mode, self._mode), &left)
        if sent < 0:
            raise OSError(-sent, strerror(-sent))
        return (sent, left)

    def due(self, mode=None):
        """One decision in `mode` (default: the buffer's): remove and return what is
        due (cqueues' flush(mode) for "l"/"f")."""
        self._decide(_parse_mode(mode, self._mode))
        return self._pop(self._hold)

    def held(self):
        """Remove and return what earlier decisions made due, deciding nothing."""
        return self._pop(self._hold)

    def flush(self, mode=None):
        """Remove and return what is due: everything by default (cqueues flush(): nil
        mode is "n"), or what one decision in "l"/"f" says ("": the buffer's mode)."""
        if mode is None:
            return self._pop(self._r.wr - self._r.rd)
        return self.due(mode)

    def unflush(self, data):
        """Give back bytes that were due but not sent: they go in front, raw, and stay
        due."""
        cdef Py_buffer view
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            _prepend(&self._r, <const char *>view.buf, view.len)
            self._hold += view.len
            if self._eol:
                self._eol += view.len
            self._bytes_due -= view.len
        finally:
            PyBuffer_Release(&view)

    def pack(self, value, nbits=32, mode=None):
        """Append the low nbits (0..64) of value, big-endian, through the bit
        accumulator (negative values in two's complement); one decision in `mode`;
        return the bytes due."""
        cdef int m = _parse_mode(mode, self._mode)
        cdef int count = nbits
        cdef int k
        cdef unsigned long long bits
        cdef unsigned long long moves = 0
        if count < 0 or count > MAX_PACK_BITS:
            raise ValueError(f"nbits must be in 0..{MAX_PACK_BITS}, not {nbits!r}")
        # Python ints: the mask is exact for 64 bits and a negative value wraps.
        bits = value & ((1 << int(nbits)) - 1)
        while count:
            k = min(count, 8 - <int>self._wbits)
            self._wbyte = ((self._wbyte << k)
                           | ((bits >> (count - k)) & ((1U << k) - 1))) & 0xFF
            self._wbits += k
            count -= k
            if self._wbits == 8:
                # A packed 0x0A is data, not a line end: no LF is marked.
                _reserve(&self._r, 1, &moves)
                self._r.base[self._r.wr] = <char>self._wbyte
                self._r.wr += 1
                self._wbyte = 0
                self._wbits = 0
        self._decide(m)
        return self._pop(self._hold)

    def pending(self):
        """Bytes buffered (cqueues pending(), output side; packed bits not counted)."""
        return self._r.wr - self._r.rd

    def clear(self):
        """Discard everything buffered, packed bits included."""
        _drop(&self._r)
        self._eol = 0
        self._hold = 0
        self._wbyte = 0
        self._wbits = 0

    def statistics(self):
        return {
            "pending": self._r.wr - self._r.rd,
            "due": self._hold,
            "capacity": self._r.cap,
            "bytes_written": self._bytes_written,
            "bytes_due": self._bytes_due,
            "pending_bits": self._wbits,
        }

    # -- private --

    cdef int _put(self, const char *src, Py_ssize_t n) except -1:
        # append() of a C buffer (cqsock.pyx's write): socket.lua's send(data, "f").
        return self._write(src, n, MODE_FULL, self.text)

    cdef int _write(self, const char *src, Py_ssize_t n, int mode, bint text) except -1:
        # lso_send5's loop: chunks, each followed by a decision when more than bufsiz
        # bytes wait, and one decision at the end.
        cdef bint byline = text or mode == MODE_LINE or self._mode == MODE_LINE
        cdef Py_ssize_t p = 0
        cdef Py_ssize_t k
        cdef unsigned long long moves = 0
        cdef const char *q
        self._bytes_written += n
        while p < n:
            if byline:
                k = min(n - p, self._maxline)
                q = <const char *>memchr(src + p, b'\n', k)
                if q is not NULL:
                    k = q - (src + p)
                    _reserve(&self._r, k + 2, &moves)
                    memcpy(self._r.base + self._r.wr, src + p, k)
                    self._r.wr += k
                    if text:
                        self._r.base[self._r.wr] = b'\r'
                        self._r.wr += 1
                    self._r.base[self._r.wr] = b'\n'
                    self._r.wr += 1
                    self._eol = self._r.wr - self._r.rd
                    p += k + 1
                else:
                    self._copy(src + p, k)
                    p += k
            else:
                k = min(n - p, WRITE_CHUNK_BYTES)
                self._copy(src + p, k)
                p += k
            if self._r.wr - self._r.rd - self._hold > self._bufsiz:
                self._decide(mode)
        self._decide(mode)
        return 0

    cdef int _copy(self, const char *src, Py_ssize_t k) except -1:
        cdef unsigned long long moves = 0
        _reserve(&self._r, k, &moves)
        memcpy(self._r.base + self._r.wr, src, k)
        self._r.wr += k
        return 0

    cdef void _decide(self, int mode) noexcept:
        # lso_doflush's amount, added to what is due.
        cdef Py_ssize_t undue = self._r.wr - self._r.rd - self._hold
        cdef Py_ssize_t eol = self._eol - self._hold if self._eol > self._hold else 0
        cdef Py_ssize_t amount
        if mode == MODE_NONE:
            amount = undue
        elif mode == MODE_LINE:
            if eol > 0:
                amount = eol
            elif undue >= self._maxline:
                amount = self._maxline
            else:
                amount = 0
        else:
            amount = undue - undue % self._bufsiz
        self._hold += amount

    cdef Py_ssize_t _send_due(self, int fd, int mode, Py_ssize_t *left) except? -1:
        # send_due() without the tuple and the exception: the count sent (0 when the
        # kernel's buffer is full) or -errno; *left is what stays due.
        cdef Py_ssize_t n
        cdef ssize_t sent
        cdef int err
        self._decide(mode)
        n = self._hold
        left[0] = 0
        if n <= 0:
            return 0
        sent = send(fd, self._r.base + self._r.rd, n, MSG_NOSIGNAL)
        if sent < 0:
            err = errno
            if err != EAGAIN and err != EINTR:
                left[0] = n
                return -err
            sent = 0
        self._consume(sent)
        left[0] = n - sent
        return sent

    cdef void _consume(self, Py_ssize_t n) noexcept:
        _discard(&self._r, n)
        self._eol = max(self._eol - n, 0)
        self._hold = max(self._hold - n, 0)
        self._bytes_due += n

    cdef object _pop(self, Py_ssize_t n):
        cdef object out
        if n <= 0:
            return b""
        out = PyBytes_FromStringAndSize(self._r.base + self._r.rd, n)
        self._consume(n)
        return out
