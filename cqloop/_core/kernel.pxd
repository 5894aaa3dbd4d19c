# Kernel: the loop's state below the asyncio API. This file is the map of it.

from cpython.object cimport PyObject

from cqloop._core.handles cimport Handle, TimerHandle
from cqloop._core.fdtable cimport FdTable
from cqloop._core.timerheap cimport TimerHeap


cdef enum:
    # Cleared handles kept for reuse: a burst of callbacks past this many frees the rest.
    HANDLE_POOL_MAX = 256


cdef class Kernel(FdTable):
    # (FdTable, fdtable.pxd: the epoll Poller, the fd watcher table, _closed, _forked.)
    # -- the kernel queue -------------------------------------------------------------
    # eventfd: wakes a blocked epoll_wait from other threads; also what makes the epoll fd
    # readable while callbacks are ready and the loop is driven from outside.
    cdef int _efd
    cdef bint _efd_signalled
    # timerfd, created the first time the loop is driven from outside, armed to the
    # earliest timer so that the epoll fd turns readable when it is due. -1 until then.
    cdef int _tfd
    # Whether the timerfd is armed, and for which absolute CLOCK_MONOTONIC deadline.
    cdef bint _tfd_armed
    cdef double _tfd_deadline
    # True once the loop's fd was handed out or step() was called: see "driven from outside".
    cdef bint _external

    # -- callbacks and timers ---------------------------------------------------------
    cdef list _ready
    # The list _ready is swapped with at each iteration (two lists, no deque pops).
    cdef list _ready_spare
    # Handles that ran and that nothing else held, cleared, for _call_soon to fill again
    # (see "The ready queue, the timer heap and the cyclic GC" in kernel.pyx).
    # Owned references, _pool_len of them.
    cdef PyObject *_handle_pool[HANDLE_POOL_MAX]
    cdef Py_ssize_t _pool_len
    cdef TimerHeap _timers
    # The last poll returned events: the callbacks they lead to run before the next poll.
    cdef bint _io_fresh
    cdef unsigned long long _timer_seq
    # Whether `time` is replaced on the instance or overridden by a subclass: the
    # scheduler then reads the clock through self.time(), as asyncio's does (see _clock
    # in kernel.pyx).
    cdef bint _clock_patched

    # -- lifecycle --------------------------------------------------------------------
    cdef public bint _stopping
    # True inside run_forever and inside step(): is_running().
    cdef readonly bint _running
    # True inside run_forever only (step() leaves it False).
    cdef bint _running_forever
    cdef bint _debug
    cdef public double slow_callback_duration
    cdef public object _thread_id
    # {"loop": self}, made once (see _loop_kwargs).
    cdef dict _future_kwargs
    # set_task_factory's factory, or None (create_task reads it here).
    cdef public object _task_factory

    # -- methods ----------------------------------------------------------------------
    cdef double _now(self) noexcept
    cdef dict _loop_kwargs(self)
    cdef int _debug_checks(self, object callback, str method) except -1
    cdef Handle _call_soon(self, object callback, tuple args, object context)
    cdef TimerHandle _schedule_at(self, double when, unsigned char when_form,
                                  object callback, tuple args, object context)
    cdef int _iterate(self, double max_wait) except -1
    cdef int _dispatch(self, int nevents) except -1
    cdef int _run_ready(self) except -1
    cdef int _run_timed(self, Handle handle) except -1
    cdef void _drain_pool(self) noexcept
    cdef int _run_due_timers(self) except -1
    cdef int _sync_external(self) except -1
    cdef int _signal_wakeup(self) noexcept
    cdef int _drain_wakeup(self) noexcept
    cdef int _ensure_timerfd(self) except -1
    cdef int _arm_timerfd(self, double deadline, bint armed) except -1
    cdef int _drain_timerfd(self) noexcept
