# TimerHeap: a binary min-heap of TimerHandles ordered by (when, seq), with lazy removal
# of cancelled timers. Used only by the kernel.

from cqloop._core.handles cimport TimerHandle


cdef class TimerHeap:
    cdef list _heap
    # Timers in the heap whose handle was cancelled (removed lazily, see compact()).
    cdef Py_ssize_t cancelled

    cdef int push(self, TimerHandle timer) except -1
    cdef TimerHandle pop(self)
    cdef TimerHandle peek(self)
    cdef int _sift_down(self, TimerHandle item) except -1
    cdef int drop_cancelled_head(self) except -1
    cdef int compact(self) except -1
    cdef int clear(self) except -1
    cdef Py_ssize_t size(self)
