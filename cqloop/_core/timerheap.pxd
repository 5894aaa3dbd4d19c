# TimerHeap: a binary min-heap of TimerHandles ordered by (when, seq), with lazy removal
# of cancelled timers. Used only by the kernel.

from cpython.object cimport PyObject

from cqloop._core.handles cimport TimerHandle


# A timer's sort key, kept in a C array beside the list of handles so that sifting compares
# contiguous memory instead of chasing a pointer into each handle.
cdef struct TimerKey:
    double when
    unsigned long long seq


cdef class TimerHeap:
    # The handles, in heap order: owns them and lets the cyclic GC see them.
    cdef list _heap
    # _keys[i] is the key of _heap[i]; _capacity entries are allocated.
    cdef TimerKey *_keys
    cdef Py_ssize_t _capacity
    # Timers in the heap whose handle was cancelled (removed lazily, see compact()).
    cdef Py_ssize_t cancelled
    # Timers pushed (and taken out of the GC's lists) since the last settle(): borrowed
    # pointers, valid because nothing leaves the heap before settle() has run.
    cdef PyObject **_fresh
    cdef Py_ssize_t _nfresh
    cdef Py_ssize_t _fresh_capacity

    cdef int push(self, TimerHandle timer) except -1
    cdef TimerHandle pop(self)
    cdef TimerHandle peek(self)
    cdef double peek_when(self) noexcept
    cdef int drop_cancelled_head(self) except -1
    cdef int compact(self) except -1
    cdef int clear(self) except -1
    cdef int settle(self) except -1
    cdef int _add_fresh(self, TimerHandle timer) except -1
    cdef Py_ssize_t size(self) noexcept
    cdef int _reserve(self, Py_ssize_t n) except -1
