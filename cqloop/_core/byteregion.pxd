# The byte region both cq socket buffers keep their bytes in (cqbuf.pyx's InputBuffer,
# cqoutbuf.pyx's OutputBuffer), and its helpers. The live bytes are one contiguous region
# [rd, wr) of a malloc'd block of cap bytes; consuming advances rd, and the live bytes
# move to the front only when an append would not fit and at least half the used block is
# dead (so each byte moves O(1) times); an empty region resets to offset 0 and drops a
# block larger than IDLE_MAX_CAPACITY_BYTES. The helpers are inline so that each buffer
# module compiles its own copy (no cross-module call on the hot path). _at_least_one
# checks the buffers' size limits (maxline, bufsiz) for both.

from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memmove


cdef struct ByteRegion:
    char *base
    Py_ssize_t cap
    Py_ssize_t rd
    Py_ssize_t wr


cdef enum:
    # Smallest block a region allocates, and the largest it keeps while empty.
    MIN_CAPACITY_BYTES = 1024
    IDLE_MAX_CAPACITY_BYTES = 262144


cdef inline int _reserve(ByteRegion *r, Py_ssize_t n, unsigned long long *moves) except -1:
    """Make room for n more bytes at r.wr."""
    cdef Py_ssize_t live = r.wr - r.rd
    cdef Py_ssize_t need = live + n
    cdef Py_ssize_t cap
    cdef char *base
    if r.cap - r.wr >= n:
        return 0
    # Moving the live bytes down pays for itself when it frees at least as much as it
    # moves; otherwise grow, so a large buffer fed in small pieces is not moved per feed.
    if need <= r.cap and r.rd * 2 >= live:
        memmove(r.base, r.base + r.rd, live)
        r.rd = 0
        r.wr = live
        moves[0] += 1
        return 0
    cap = max(r.cap * 2, need, MIN_CAPACITY_BYTES)
    base = <char *>malloc(cap)
    if base is NULL:
        raise MemoryError()
    if live:
        memcpy(base, r.base + r.rd, live)
    free(r.base)
    r.base = base
    r.cap = cap
    r.rd = 0
    r.wr = live
    return 0


cdef inline int _prepend(ByteRegion *r, const char *src, Py_ssize_t n) except -1:
    """Put n bytes in front of the live bytes (unget, unflush)."""
    cdef Py_ssize_t live = r.wr - r.rd
    cdef Py_ssize_t cap
    cdef char *base
    if n <= 0:
        return 0
    if r.rd >= n:
        r.rd -= n
        memcpy(r.base + r.rd, src, n)
        return 0
    if live + n <= r.cap:
        memmove(r.base + n, r.base + r.rd, live)
        memcpy(r.base, src, n)
    else:
        cap = max(r.cap * 2, live + n, MIN_CAPACITY_BYTES)
        base = <char *>malloc(cap)
        if base is NULL:
            raise MemoryError()
        if live:
            memcpy(base + n, r.base + r.rd, live)
        memcpy(base, src, n)
        free(r.base)
        r.base = base
        r.cap = cap
    r.rd = 0
    r.wr = live + n
    return 0


cdef inline void _discard(ByteRegion *r, Py_ssize_t n) noexcept:
    r.rd += n
    if r.rd >= r.wr:
        r.rd = 0
        r.wr = 0
        if r.cap > IDLE_MAX_CAPACITY_BYTES:
            free(r.base)
            r.base = NULL
            r.cap = 0


cdef inline void _drop(ByteRegion *r) noexcept:
    free(r.base)
    r.base = NULL
    r.cap = 0
    r.rd = 0
    r.wr = 0


cdef inline Py_ssize_t _at_least_one(object value, str what) except -1:
    """A size limit (maxline, bufsiz): at least 1, else ValueError."""
    if value < 1:
        raise ValueError(f"{what} must be at least 1, not {value!r}")
    return value
