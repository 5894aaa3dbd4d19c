# GNU string.h extensions the cq socket's input buffer uses (cqbuf.pyx): memmem finds a
# MIME boundary, memrchr the last LF of a body chunk. Python.h defines _GNU_SOURCE before
# string.h is first included, so both are declared. Only declarations live here.


cdef extern from "<string.h>" nogil:
    void *memmem(const void *haystack, size_t haystacklen,
                 const void *needle, size_t needlelen)
    void *memrchr(const void *s, int c, size_t n)
