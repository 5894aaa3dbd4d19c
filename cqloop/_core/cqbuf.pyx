"""cqbuf: the cq socket's input buffer and cqueues' read-format scanners.

Owns InputBuffer (received bytes, the read formats, unget, unpack). Pure but for
recv_from()'s one recv(2): no event loop, no clock. cqloop.socket (the only caller, with
cqsock.pyx's compiled read) feeds received bytes in and asks for one format at a time.
The semantics are cqueues' (src/socket.c lso_recv3 and the lso_get* helpers, fifo.h);
the code is ours. Differences from cqueues are marked "(cqueues: ...)"; the differential
cases in tests/test_cq_oracle_read.py hold the formats to cqueues. The output side is
cqoutbuf.pyx; both keep their bytes in a ByteRegion (byteregion.pxd, whose header gives
the region's invariants).

A scan never looks past its window (maxline, or bufsiz + 2 + len(boundary)), so a peer
that never sends an LF or a boundary costs a bounded scan per call.

Read formats: InputBuffer.get(fmt, text=None)
---------------------------------------------
get() returns bytes, or NEED_MORE (a module singleton: nothing was consumed, feed more
input and ask again), or None when the stream is at EOF and the format yields nothing
(cqueues returns nil). `text` overrides the buffer's text mode for this call only
(cqueues' recv(fmt, mode) / xread). Text mode (the default, as in cqueues) turns CRLF
into LF in what is returned; the buffer always holds the raw bytes, so unget() takes
raw bytes and a later read translates them. An LF is the only end of line; in binary
mode "*l" keeps the CR of a CRLF (as cqueues: translation is text mode's job).

"*l"  The next line without its end of line: the bytes up to the first LF within the
      first `maxline` bytes, LF removed (text mode: a CR before it too). When no LF lies
      within `maxline` bytes the first `maxline` bytes are returned as they are (cqueues:
      "processed as-if EOF was reached at this boundary"; no error is raised, memory stays
      bounded, and the rest of the long line comes back in later reads). At EOF the last
      unterminated bytes are returned; at EOF with nothing buffered, None.
"*L"  The same line keeping its LF (text mode: a final CRLF becomes LF).
"*a"  Everything up to EOF: NEED_MORE until feed_eof(), then all buffered bytes (text
      mode: every CRLF -> LF), or None when nothing is buffered (cqueues returns nil here,
      unlike Lua's file:read("*a")). Unbounded by design, as in cqueues.
"*h"  One MIME header field, unfolded: the field's bytes with every LF and every CRLF
      removed (in either mode), so "A: b\\r\\n c\\r\\n" gives b"A: b c".
"*H"  One MIME header field as sent, folding and final EOL kept (text mode: CRLF -> LF).
      A header is a field name of printable ASCII other than ':' (at least one byte),
      optional blanks, ':', then lines until an LF that is followed by a byte that is not
      a blank (space or tab); that byte must be present, so a header is never taken until
      the next line has started. Both formats return None and consume nothing when the
      next bytes are not a header (the blank line ending a header block, a body, binary
      garbage), when EOF cuts the header short (EOF is not a terminating condition), and
      when the header does not end within the first `maxline` bytes (cqueues: iov_eoh with
      nomore). After None the caller reads the next line and decides (cqueues' advice).
"--B" (any str/bytes starting with "--") MIME multipart body data up to the boundary
      marker "--B" (found anywhere, not only at a line start, as cqueues' memmem). In
      chunks: the window is W = C + 2 + len(marker) bytes where C = bufsiz (binary) or
      max(bufsiz, maxline) (text), C >= 2. If the marker starts in the window at offset
      k > 0, the k bytes before it are consumed and returned with one trailing LF or CRLF
      removed (it belongs to the boundary) and, in text mode, CRLF -> LF; if that leaves
      nothing, None is returned (the k bytes are still consumed). If the marker is at
      offset 0, None is returned and nothing is consumed: the caller reads the boundary
      line itself with "*l". With no marker in a full window, a C-byte chunk is returned
      (text mode: cut after the last LF in it when there is one, and never ending in a
      CR, then CRLF -> LF), so the CRLF before a marker is never split off. At EOF with no
      marker, the remaining bytes are returned (then None). Otherwise NEED_MORE
      (cqueues: lso_getbody returned whatever was buffered, even a marker's prefix).
n>0   Exactly n bytes (text mode: n bytes after CRLF -> LF, never stopping between a CR
      and a possible LF); fewer only at EOF; None at EOF with nothing buffered; 0: b"".
-n    1 to n bytes, whatever is buffered (text mode: the same count after translation,
      and a final lone CR is held back until the next byte shows whether it is a CRLF);
      NEED_MORE only when nothing usable is buffered before EOF; None at EOF when empty.
"*n"  Unsupported, as in cqueues: ValueError. Any other format: ValueError.
The Lua 5.3 spellings without "*" ("l", "L", "a", "h", "H") are accepted too.

Scanning cost: "*l" is one memchr over the line and one bytes allocation per line; n and
-n in binary mode are one memcpy; text translation adds one memchr pass.

unpack(nbits) reads cqueues' bit stream: big-endian, most significant bit first, with
the unread low bits of a partly read byte kept for the next unpack (byte formats skip
them, as in cqueues). NEED_MORE when fewer bits are buffered, None at EOF.

Errors: no format raises OSError. cqueues makes maxline a hard limit that ends a line as
if EOF were there, treats a header that does not fit in maxline as "not a header", and
returns a body without a boundary in chunks; so overlong input is returned in pieces or
refused (None), memory stays bounded, and there is no error state to clear. ValueError:
an invalid format, "*n", feed() after feed_eof(), a limit below 1, nbits outside 0..64.
MemoryError when the buffer cannot grow.
"""

import enum

from os import strerror

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.string cimport memchr, memcpy

from cqloop._core.byteregion cimport _at_least_one, _discard, _drop, _prepend, _reserve
from cqloop._core.includes.cqbuf cimport memmem, memrchr
from cqloop._core.includes.sockets cimport recv
from cqloop._core.includes.system cimport errno

# cqueues' defaults (src/socket.c LSO_MAXLINE, LSO_BUFSIZ).
DEFAULT_MAXLINE = 4096
DEFAULT_BUFSIZ = 4096
# The widest unpack() field, in bits (cqueues: unsigned long long).
cdef int MAX_PACK_BITS = 64

cdef enum Trim:
    TRIM_NONE = 0       # bytes as buffered
    TRIM_CRLF = 1       # every CRLF -> LF (cqueues iov_trimcr)
    TRIM_EOL = 2        # every CRLF and every LF removed (cqueues iov_trimcrlf)


class _NeedMore(enum.Enum):
    """The type of NEED_MORE: get()/unpack() need more input (nothing was consumed). An
    enum member, so that type checkers narrow `value is not NEED_MORE`."""

    NEED_MORE = "NEED_MORE"

    def __repr__(self):
        return "NEED_MORE"


cdef object _NEED_MORE = _NeedMore.NEED_MORE
NEED_MORE = _NEED_MORE


# -- scanners (pure functions over one window) ------------------------------------------

cdef inline bint _isblank(char c) noexcept nogil:
    return c == b' ' or c == b'\t'


cdef inline bint _isfname(char c) noexcept nogil:
    return 33 <= <unsigned char>c <= 126 and c != b':'


cdef object _translate(const char *p, Py_ssize_t n, int trim):
    """The bytes p[:n] with `trim` applied: one counting pass, one allocation."""
    cdef Py_ssize_t removed = 0
    cdef Py_ssize_t i = 0
    cdef Py_ssize_t j, k, o
    cdef const char *q
    cdef char *d
    cdef bytes out
    if trim != TRIM_NONE:
        while i < n:
            q = <const char *>memchr(p + i, b'\n', n - i)
            if q is NULL:
                break
            j = q - p
            if j > 0 and p[j - 1] == b'\r':
                removed += 1
            if trim == TRIM_EOL:
                removed += 1
            i = j + 1
    if removed == 0:
        return PyBytes_FromStringAndSize(p, n)
    out = PyBytes_FromStringAndSize(NULL, n - removed)
    d = PyBytes_AS_STRING(out)
    i = 0
    o = 0
    while i < n:
        q = <const char *>memchr(p + i, b'\n', n - i)
        if q is NULL:
            memcpy(d + o, p + i, n - i)
            o += n - i
            break
        j = q - p
        # A CR just before this LF lies inside this segment (p[i-1] is an LF or p[-1]).
        k = j - 1 if (j > i and p[j - 1] == b'\r') else j
        memcpy(d + o, p + i, k - i)
        o += k - i
        if trim == TRIM_CRLF:
            d[o] = b'\n'
            o += 1
        i = j + 1
    return out


cdef Py_ssize_t _scan_header(const char *p, Py_ssize_t n, bint nomore) noexcept nogil:
    """Length of the MIME header at p[:n]; 0: not a header (or cut short when nomore);
    -1: need more bytes (cqueues iov_eoh)."""
    cdef Py_ssize_t i = 0
    cdef const char *q
    while i < n and _isfname(p[i]):
        i += 1
    if i == 0 and n > 0:
        return 0
    while i < n and _isblank(p[i]):
        i += 1
    if i < n and p[i] != b':':
        return 0
    while i < n:
        q = <const char *>memchr(p + i, b'\n', n - i)
        if q is NULL:
            break
        i = q - p + 1
        if i < n and not _isblank(p[i]):
            return i
    return 0 if nomore else -1


cdef Py_ssize_t _scan_text(const char *p, Py_ssize_t n, Py_ssize_t minbuf,
                           Py_ssize_t maxbuf, bint eof) noexcept nogil:
    """How many raw bytes give between minbuf and maxbuf bytes after CRLF -> LF without
    ending between a CR and a possible LF; -1: need more (cqueues iov_eot)."""
    cdef Py_ssize_t i = 0
    cdef Py_ssize_t got = 0
    cdef Py_ssize_t room, k
    cdef int lc = -1
    cdef const char *q
    while i < n and got < maxbuf:
        room = min(maxbuf - got, n - i)
        q = <const char *>memchr(p + i, b'\r', room)
        if q is NULL:
            i += room
            got += room
            lc = <unsigned char>p[i - 1]
            continue
        k = q - (p + i)
        i += k + 1
        got += k + 1
        lc = b'\r'
        if i < n and p[i] == b'\n':
            i += 1
            lc = b'\n'
    if got < maxbuf:
        if eof:
            return i
        if got >= minbuf and lc != b'\r':
            return i
        if got > minbuf and lc == b'\r':
            return i - 1
        return -1
    # The last byte taken is a CR and nothing follows it yet: it may start a CRLF.
    # (cqueues: at EOF such a CR made the read fail, and when the next byte was already
    # there and not an LF it was returned too, one byte past maxbuf.)
    if lc == b'\r' and i == n and not eof:
        return i - 1 if got > minbuf else -1
    return i


# -- input ----------------------------------------------------------------------------

cdef class InputBuffer:
    """Received bytes and cqueues' read formats (see the module docstring).

    InputBuffer(maxline=4096, text=True, bufsiz=4096): cqueues' defaults. `maxline`
    bounds line and header scans, `bufsiz` sizes MIME body chunks, `text` is the input
    mode ("t" True, "b" False)."""

    def __cinit__(self):
        self._r.base = NULL
        self._r.cap = 0
        self._r.rd = 0
        self._r.wr = 0
        self._eof = False
        self._rbyte = 0
        self._rbits = 0
        self._bytes_fed = 0
        self._compactions = 0

    def __init__(self, maxline=DEFAULT_MAXLINE, text=True, bufsiz=DEFAULT_BUFSIZ):
        self.maxline = maxline
        self.bufsiz = bufsiz
        self.text = text

    def __dealloc__(self):
        _drop(&self._r)

    # -- configuration --

    @property
    def maxline(self):
        """The longest line/header a scan looks at (cqueues setmaxline, input side)."""
        return self._maxline

    @maxline.setter
    def maxline(self, value):
        self._maxline = _at_least_one(value, "maxline")

    @property
    def bufsiz(self):
        """The MIME body chunk size (cqueues setbufsiz, input side)."""
        return self._bufsiz

    @bufsiz.setter
    def bufsiz(self, value):
        self._bufsiz = _at_least_one(value, "bufsiz")

    # -- input side --

    def feed(self, data):
        """Append received bytes (bytes, bytearray, memoryview: anything contiguous)."""
        cdef Py_buffer view
        if self._eof:
            raise ValueError("InputBuffer.feed() after feed_eof()")
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            self._append(<const char *>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)

    def feed_eof(self):
        """The peer will send nothing more (idempotent)."""
        self._eof = True

    @property
    def eof(self):
        """EOF was fed (and not undone by unget())."""
        return self._eof

    @property
    def at_eof(self):
        """EOF was fed and nothing is buffered."""
        return self._eof and self._r.wr == self._r.rd

    def recv_from(self, int fd):
        """One recv(2) on fd straight into the buffer: a cq socket's receive with no bytes
        object in between. Reads into the free capacity, made at least `bufsiz` bytes
        (so an idle socket's buffer stays small). Returns the count, 0 at end of file
        (feed_eof() is then the caller's), or raises OSError (BlockingIOError when there
        is nothing to read)."""
        cdef Py_ssize_t n
        if self._eof:
            raise ValueError("InputBuffer.recv_from() after feed_eof()")
        n = self._recv(fd)
        if n < 0:
            raise OSError(-n, strerror(-n))
        return n

    cdef Py_ssize_t _recv(self, int fd) except? -1:
        # recv_from() without the exceptions (cqsock.pyx's receive callback): the count,
        # 0 at end of file, or -errno (-EAGAIN when there is nothing to read).
        cdef ssize_t n
        _reserve(&self._r, self._bufsiz, &self._compactions)
        n = recv(fd, self._r.base + self._r.wr, self._r.cap - self._r.wr, 0)
        if n < 0:
            return -errno
        self._r.wr += n
        self._bytes_fed += n
        return n

    def pending(self):
        """Bytes buffered (cqueues pending(), input side; unread bits not counted)."""
        return self._r.wr - self._r.rd

    def unget(self, data):
        """Push raw bytes back in front of the buffer; they are read again, translated
        by the mode of that read. Clears EOF, as cqueues' unget does: the caller must
        see EOF from the stream again (feed_eof()) before reads return None."""
        cdef Py_buffer view
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            _prepend(&self._r, <const char *>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)
        self._eof = False

    def take(self):
        """Remove and return every buffered byte raw (pushback into TLS)."""
        cdef Py_ssize_t live = self._r.wr - self._r.rd
        return self._take(live, live, TRIM_NONE)

    def clear(self):
        """Discard the buffered bytes and unread bits (EOF state is kept)."""
        _drop(&self._r)
        self._rbyte = 0
        self._rbits = 0

    def statistics(self):
        return {
            "pending": self._r.wr - self._r.rd,
            "capacity": self._r.cap,
            "bytes_fed": self._bytes_fed,
            "compactions": self._compactions,
            "eof": self._eof,
        }

    # -- formats --

    def get(self, fmt, text=None):
        """One cqueues read format: bytes, NEED_MORE, or None (see module docstring)."""
        cdef bint t = self.text if text is None else bool(text)
        cdef Py_ssize_t n
        cdef bytes marker
        if type(fmt) is str:
            # Checked first: line reads in a loop are the hot path.
            if fmt == "*l" or fmt == "l":
                return self._line(False, t)
            if fmt == "*L" or fmt == "L":
                return self._line(True, t)
            if fmt == "*a" or fmt == "a":
                return self._slurp(t)
            if fmt == "*h" or fmt == "h":
                return self._header(True, t)
            if fmt == "*H" or fmt == "H":
                return self._header(False, t)
            if fmt.startswith("--"):
                marker = (<str>fmt).encode("utf-8")
                return self._body(marker, len(marker), t)
            if fmt == "*n" or fmt == "n":
                raise ValueError("read format '*n' is unsupported (as in cqueues)")
        elif isinstance(fmt, int) and not isinstance(fmt, bool):
            n = fmt
            if n > 0:
                return self._block(n, t)
            if n < 0:
                return self._limit(-n, t)
            return b""
        elif isinstance(fmt, (bytes, bytearray)) and bytes(fmt).startswith(b"--"):
            marker = bytes(fmt)
            return self._body(marker, len(marker), t)
        raise ValueError(f"invalid read format {fmt!r}")

    def unpack(self, nbits=32):
        """The next nbits (0..64) of input, big-endian, as an unsigned int; NEED_MORE
        when fewer are buffered, None at EOF (cqueues socket:unpack)."""
        cdef int count = nbits
        cdef int k
        cdef unsigned long long value = 0
        if count < 0 or count > MAX_PACK_BITS:
            raise ValueError(f"nbits must be in 0..{MAX_PACK_BITS}, not {nbits!r}")
        if self._rbits + 8 * (self._r.wr - self._r.rd) < count:
            return None if self._eof else _NEED_MORE
        while count:
            if self._rbits == 0:
                self._rbyte = <unsigned char>self._r.base[self._r.rd]
                self._rbits = 8
                _discard(&self._r, 1)
            k = min(count, <int>self._rbits)
            value = (value << k) | ((self._rbyte >> (self._rbits - k)) & ((1U << k) - 1))
            self._rbits -= k
            count -= k
        return value

    # -- private --

    cdef int _append(self, const char *src, Py_ssize_t n) except -1:
        if n <= 0:
            return 0
        _reserve(&self._r, n, &self._compactions)
        memcpy(self._r.base + self._r.wr, src, n)
        self._r.wr += n
        self._bytes_fed += n
        return 0

    cdef object _take(self, Py_ssize_t n, Py_ssize_t consume, int trim):
        out = _translate(self._r.base + self._r.rd, n, trim)
        _discard(&self._r, consume)
        return out

    cdef object _line(self, bint keep_eol, bint text):
        cdef const char *p = self._r.base + self._r.rd
        cdef Py_ssize_t live = self._r.wr - self._r.rd
        cdef Py_ssize_t win = min(live, self._maxline)
        cdef Py_ssize_t n, m
        cdef const char *q
        cdef bint crlf
        cdef bytes out
        if live == 0:
            return None if self._eof else _NEED_MORE
        q = <const char *>memchr(p, b'\n', win)
        if q is NULL:
            if self._eof or live >= self._maxline:
                return self._take(win, win, TRIM_NONE)
            return _NEED_MORE
        n = q - p + 1
        crlf = text and n >= 2 and p[n - 2] == b'\r'
        if not keep_eol:
            m = n - 2 if crlf else n - 1
            out = PyBytes_FromStringAndSize(p, m)
        elif crlf:
            out = PyBytes_FromStringAndSize(NULL, n - 1)
            memcpy(PyBytes_AS_STRING(out), p, n - 2)
            PyBytes_AS_STRING(out)[n - 2] = b'\n'
        else:
            out = PyBytes_FromStringAndSize(p, n)
        _discard(&self._r, n)
        return out

    cdef object _slurp(self, bint text):
        cdef Py_ssize_t live = self._r.wr - self._r.rd
        if not self._eof:
            return _NEED_MORE
        if live == 0:
            return None
        return self._take(live, live, TRIM_CRLF if text else TRIM_NONE)

    cdef object _header(self, bint unfold, bint text):
        cdef Py_ssize_t live = self._r.wr - self._r.rd
        cdef Py_ssize_t win = min(live, self._maxline)
        cdef Py_ssize_t eoh
        eoh = _scan_header(self._r.base + self._r.rd, win,
                           self._eof or live >= self._maxline)
        if eoh < 0:
            return _NEED_MORE
        if eoh == 0:
            return None
        if unfold:
            return self._take(eoh, eoh, TRIM_EOL)
        return self._take(eoh, eoh, TRIM_CRLF if text else TRIM_NONE)

    cdef object _body(self, const char *eob, Py_ssize_t eoblen, bint text):
        cdef const char *p = self._r.base + self._r.rd
        cdef Py_ssize_t live = self._r.wr - self._r.rd
        cdef Py_ssize_t chunk = max(self._bufsiz, self._maxline) if text else self._bufsiz
        cdef Py_ssize_t window, win, n, m
        cdef const char *q = NULL
        cdef int trim = TRIM_CRLF if text else TRIM_NONE
        chunk = max(chunk, 2)
        window = chunk + 2 + eoblen
        win = min(live, window)
        if win >= eoblen:
            q = <const char *>memmem(p, win, eob, eoblen)
        if q is not NULL:
            n = q - p
            if n == 0:
                return None
            m = n
            if p[m - 1] == b'\n':
                m -= 1
                if m > 0 and p[m - 1] == b'\r':
                    m -= 1
            if m == 0:
                _discard(&self._r, n)
                return None
            return self._take(m, n, trim)
        if live >= window:
            n = chunk
            if text:
                q = <const char *>memrchr(p, b'\n', chunk)
                if q is not NULL:
                    n = q - p + 1
                if p[n - 1] == b'\r':
                    n -= 1
            return self._take(n, n, trim)
        if self._eof:
            if live == 0:
                return None
            return self._take(live, live, trim)
        return _NEED_MORE

    cdef object _block(self, Py_ssize_t n, bint text):
        cdef Py_ssize_t live = self._r.wr - self._r.rd
        cdef Py_ssize_t end
        if text:
            end = _scan_text(self._r.base + self._r.rd, live, n, n, self._eof)
            if end < 0:
                return _NEED_MORE
            if end == 0:
                return None
            return self._take(end, end, TRIM_CRLF)
        if live >= n:
            return self._take(n, n, TRIM_NONE)
        if self._eof:
            return self._take(live, live, TRIM_NONE) if live else None
        return _NEED_MORE

    cdef object _limit(self, Py_ssize_t n, bint text):
        cdef Py_ssize_t live = self._r.wr - self._r.rd
        cdef Py_ssize_t end
        if text:
            end = _scan_text(self._r.base + self._r.rd, live, 1, n, self._eof)
            if end < 0:
                return _NEED_MORE
            if end == 0:
                return None
            return self._take(end, end, TRIM_CRLF)
        if live == 0:
            return None if self._eof else _NEED_MORE
        end = min(live, n)
        return self._take(end, end, TRIM_NONE)
