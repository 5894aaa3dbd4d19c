"""TimerHeap: the loop's timers, earliest first.

Owns: the list of TimerHandles in heap order, a C array of their sort keys in the same order,
and the count of cancelled timers still in the heap. Invariants: `_keys[i]` is the
(when, seq) of `_heap[i]`; the pair is a binary min-heap on (when, seq), so timers due at
the same instant leave in the order they were scheduled; every timer in it has `_scheduled`
set. Cancelled timers are left in place and skipped when they reach the head; when more
than half of a heap of at least MIN_COMPACT_SIZE timers is cancelled, compact() rebuilds it
without them (asyncio's rule, which keeps a loop that cancels most of its timeouts from
growing without bound). Only the kernel calls into it.

Why two arrays: with tens of thousands of timers, a heap that compares each handle's deadline reads
one scattered object per level of every sift, and those cache misses, not instructions,
dominated a 50,000-timer benchmark. Sifting here compares keys in one contiguous array and
moves the list's item pointers directly: a move within one list changes no reference
count, so no handle is touched at all.
"""

from cpython.object cimport PyObject
from cpython.ref cimport Py_XDECREF, _Py_REFCNT
from libc.stdlib cimport free, realloc

from cqloop._core.handles cimport TimerHandle
from cqloop._core.includes.gchook cimport PyObject_GC_UnTrack, cq_gc_is_tracked, cq_gc_retrack
from cqloop._core.includes.pyapi cimport cq_list_items, cq_list_set_size

# Below this many timers a rebuild costs more than skipping cancelled ones at the head.
cdef Py_ssize_t MIN_COMPACT_SIZE = 100
cdef Py_ssize_t MIN_CAPACITY = 64
# settle() frees a fresh-timer array grown past this many entries.
cdef Py_ssize_t MAX_IDLE_FRESH = 4096


cdef inline bint _before(TimerKey a, TimerKey b) noexcept nogil:
    return a.when < b.when or (a.when == b.when and a.seq < b.seq)


cdef class TimerHeap:
    def __cinit__(self):
        self._heap = []
        self._keys = NULL
        self._capacity = 0
        self.cancelled = 0
        self._fresh = NULL
        self._nfresh = 0
        self._fresh_capacity = 0

    def __dealloc__(self):
        cdef Py_ssize_t i
        cdef PyObject *timer
        if self._heap is not None:
            # Dropped without clear() (a loop never closed): whatever outlives the heap goes
            # back under the GC's eye.
            for i in range(len(self._heap)):
                timer = cq_list_items(self._heap)[i]
                if _Py_REFCNT(timer) > 1:
                    cq_gc_retrack(timer)
        if self._keys is not NULL:
            free(self._keys)
            self._keys = NULL
        if self._fresh is not NULL:
            free(self._fresh)
            self._fresh = NULL

    def __len__(self):
        return len(self._heap)

    cdef Py_ssize_t size(self) noexcept:
        return len(self._heap)

    cdef int _reserve(self, Py_ssize_t n) except -1:
        cdef Py_ssize_t capacity = self._capacity if self._capacity else MIN_CAPACITY
        cdef TimerKey *keys
        if n <= self._capacity:
            return 0
        while capacity < n:
            capacity *= 2
        keys = <TimerKey *>realloc(self._keys, capacity * sizeof(TimerKey))
        if keys is NULL:
            raise MemoryError()
        self._keys = keys
        self._capacity = capacity
        return 0

    cdef int push(self, TimerHandle timer) except -1:
        cdef list heap = self._heap
        cdef Py_ssize_t pos = len(heap)
        cdef Py_ssize_t parent
        cdef TimerKey key
        cdef TimerKey *keys
        cdef PyObject **items
        self._reserve(pos + 1)
        heap.append(timer)
        items = cq_list_items(heap)
        keys = self._keys
        key.when = timer._deadline
        key.seq = timer._seq
        while pos > 0:
            parent = (pos - 1) >> 1
            if not _before(key, keys[parent]):
                break
            items[pos] = items[parent]
            keys[pos] = keys[parent]
            pos = parent
        items[pos] = <PyObject *>timer
        keys[pos] = key
        timer._scheduled = True
        if cq_gc_is_tracked(<PyObject *>timer):
            self._add_fresh(timer)
        return 0

    cdef int _add_fresh(self, TimerHandle timer) except -1:
        cdef Py_ssize_t capacity
        cdef PyObject **fresh
        if self._nfresh == self._fresh_capacity:
            capacity = 2 * self._fresh_capacity if self._fresh_capacity else MIN_CAPACITY
            fresh = <PyObject **>realloc(self._fresh, capacity * sizeof(PyObject *))
            if fresh is NULL:
                return 0  # it stays tracked: correct, only slower
            self._fresh = fresh
            self._fresh_capacity = capacity
        PyObject_GC_UnTrack(timer)
        self._fresh[self._nfresh] = <PyObject *>timer
        self._nfresh += 1
        return 0

    cdef int settle(self) except -1:
        """Put the timers pushed since the last call that something besides the heap holds
        back in the GC's lists (see the module docstring)."""
        cdef Py_ssize_t i
        cdef PyObject *timer
        for i in range(self._nfresh):
            timer = self._fresh[i]
            if _Py_REFCNT(timer) > 1:
                cq_gc_retrack(timer)
        self._nfresh = 0
        if self._fresh_capacity > MAX_IDLE_FRESH:
            # A burst of timers grew it: give the memory back.
            free(self._fresh)
            self._fresh = NULL
            self._fresh_capacity = 0
        return 0

    cdef TimerHandle peek(self):
        if not self._heap:
            return None
        return <TimerHandle>cq_list_items(self._heap)[0]

    cdef double peek_when(self) noexcept:
        """The earliest deadline. Only for a heap that is not empty (any double is a valid
        deadline: call_at takes any number)."""
        return self._keys[0].when

    cdef TimerHandle pop(self):
        cdef list heap = self._heap
        cdef Py_ssize_t n = len(heap)
        cdef Py_ssize_t pos = 0
        cdef Py_ssize_t child
        cdef PyObject **items
        cdef TimerKey *keys = self._keys
        cdef PyObject *top
        cdef PyObject *last
        cdef TimerKey last_key
        cdef TimerHandle timer
        if n == 0:
            return None
        if self._nfresh:
            self.settle()
        items = cq_list_items(heap)
        top = items[0]
        last = items[n - 1]
        last_key = keys[n - 1]
        items[n - 1] = NULL
        n -= 1
        cq_list_set_size(heap, n)
        if n > 0:
            # Sift `last` down from the root.
            while True:
                child = 2 * pos + 1
                if child >= n:
                    break
                if child + 1 < n and _before(keys[child + 1], keys[child]):
                    child += 1
                if not _before(keys[child], last_key):
                    break
                items[pos] = items[child]
                keys[pos] = keys[child]
                pos = child
            items[pos] = last
            keys[pos] = last_key
        # The list's reference to `top` becomes ours.
        timer = <TimerHandle>top
        Py_XDECREF(top)
        timer._scheduled = False
        if timer._cancelled:
            self.cancelled -= 1
            cq_gc_retrack(top)
        return timer

    cdef int drop_cancelled_head(self) except -1:
        """Remove cancelled timers at the head; compact when most of the heap is cancelled."""
        cdef Py_ssize_t n = len(self._heap)
        if n >= MIN_COMPACT_SIZE and self.cancelled * 2 > n:
            return self.compact()
        while self._heap and (<TimerHandle>cq_list_items(self._heap)[0])._cancelled:
            self.pop()
        return 0

    cdef int compact(self) except -1:
        cdef list keep = []
        cdef TimerHandle timer
        cdef Py_ssize_t i
        if self._nfresh:
            self.settle()
        for timer in self._heap:
            if timer._cancelled:
                timer._scheduled = False
                cq_gc_retrack(<PyObject *>timer)
            else:
                keep.append(timer)
        keep.sort(key=_sort_key)
        # A sorted list is a valid heap.
        self._heap = keep
        self.cancelled = 0
        self._reserve(len(keep))
        for i in range(len(keep)):
            timer = <TimerHandle>cq_list_items(keep)[i]
            self._keys[i].when = timer._deadline
            self._keys[i].seq = timer._seq
        return 0

    cdef int clear(self) except -1:
        cdef TimerHandle timer
        self._nfresh = 0
        for timer in self._heap:
            timer._scheduled = False
            cq_gc_retrack(<PyObject *>timer)
        self._heap = []
        self.cancelled = 0
        return 0


def _sort_key(TimerHandle timer):
    return (timer._deadline, timer._seq)
