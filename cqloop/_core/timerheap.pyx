"""TimerHeap: the loop's timers, earliest first.

Owns: the heap list and the count of cancelled timers still in it. Invariants: the list is a
binary min-heap on (when, seq), so timers due at the same instant leave in the order they
were scheduled; every timer in it has `_scheduled` set. Cancelled timers are left in place
and skipped when they reach the head; when more than half of a heap of at least
MIN_COMPACT_SIZE timers is cancelled, compact() rebuilds it without them (asyncio's rule,
which keeps a loop that cancels most of its timeouts from growing without bound).
Only the kernel calls into it.
"""

from cqloop._core.handles cimport TimerHandle

# Below this many timers a rebuild costs more than skipping cancelled ones at the head.
cdef Py_ssize_t MIN_COMPACT_SIZE = 100


cdef inline bint _before(TimerHandle a, TimerHandle b) noexcept:
    return a._when < b._when or (a._when == b._when and a._seq < b._seq)


cdef class TimerHeap:
    def __cinit__(self):
        self._heap = []
        self.cancelled = 0

    def __len__(self):
        return len(self._heap)

    cdef Py_ssize_t size(self):
        return len(self._heap)

    cdef int push(self, TimerHandle timer) except -1:
        cdef list heap = self._heap
        cdef Py_ssize_t pos = len(heap)
        cdef Py_ssize_t parent
        cdef TimerHandle up
        heap.append(timer)
        while pos > 0:
            parent = (pos - 1) >> 1
            up = <TimerHandle>heap[parent]
            if not _before(timer, up):
                break
            heap[pos] = up
            pos = parent
        heap[pos] = timer
        timer._scheduled = True
        return 0

    cdef TimerHandle peek(self):
        if not self._heap:
            return None
        return <TimerHandle>self._heap[0]

    cdef TimerHandle pop(self):
        cdef list heap = self._heap
        cdef Py_ssize_t n = len(heap)
        cdef TimerHandle top, last
        if n == 0:
            return None
        top = <TimerHandle>heap[0]
        last = <TimerHandle>heap.pop()
        if n > 1:
            self._sift_down(last)
        top._scheduled = False
        if top._cancelled:
            self.cancelled -= 1
        return top

    cdef int _sift_down(self, TimerHandle item) except -1:
        # Place `item` at the root and move it down to where it belongs.
        cdef list heap = self._heap
        cdef Py_ssize_t n = len(heap)
        cdef Py_ssize_t pos = 0
        cdef Py_ssize_t child
        cdef TimerHandle c, c2
        while True:
            child = 2 * pos + 1
            if child >= n:
                break
            c = <TimerHandle>heap[child]
            if child + 1 < n:
                c2 = <TimerHandle>heap[child + 1]
                if _before(c2, c):
                    child += 1
                    c = c2
            if not _before(c, item):
                break
            heap[pos] = c
            pos = child
        heap[pos] = item
        return 0

    cdef int drop_cancelled_head(self) except -1:
        """Remove cancelled timers at the head; compact when most of the heap is cancelled."""
        cdef Py_ssize_t n = len(self._heap)
        if n >= MIN_COMPACT_SIZE and self.cancelled * 2 > n:
            return self.compact()
        while self._heap and (<TimerHandle>self._heap[0])._cancelled:
            self.pop()
        return 0

    cdef int compact(self) except -1:
        cdef list keep = []
        cdef TimerHandle timer
        for timer in self._heap:
            if timer._cancelled:
                timer._scheduled = False
            else:
                keep.append(timer)
        self._heap = []
        self.cancelled = 0
        keep.sort(key=_sort_key)
        # A sorted list is a valid heap.
        self._heap = keep
        return 0

    cdef int clear(self) except -1:
        cdef TimerHandle timer
        for timer in self._heap:
            timer._scheduled = False
        self._heap = []
        self.cancelled = 0
        return 0


def _sort_key(TimerHandle timer):
    return (timer._when, timer._seq)
