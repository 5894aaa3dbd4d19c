# Kernel: the loop's state below the asyncio API. This file is the map of it.

from cpython.object cimport PyObject

from cqloop._core.handles cimport Handle, TimerHandle
from cqloop._core.loopfd cimport LoopFd


cdef enum:
    # Cleared handles kept for reuse: a burst of callbacks past this many frees the rest.
    HANDLE_POOL_MAX = 256


cdef class Kernel(LoopFd):
    # (LoopFd, loopfd.pxd: the poller, the kernel's own fds, the ready queue and
    # the timer heap's fields, the clock flag; FdTable beneath it: the fd watcher table.)

    # -- callbacks and timers ---------------------------------------------------------
    # The list _ready is swapped with at each iteration (two lists, no deque pops).
    cdef list _ready_spare
    # Handles that ran and that nothing else held, cleared, for _call_soon to fill again
    # (see "The ready queue, the timer heap and the cyclic GC" in kernel.pyx).
    # Owned references, _pool_len of them.
    cdef PyObject *_handle_pool[HANDLE_POOL_MAX]
    cdef Py_ssize_t _pool_len
    # The last poll returned events: the callbacks they lead to run before the next poll.
    cdef bint _io_fresh
    cdef unsigned long long _timer_seq

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
    cdef dict _loop_kwargs(self)
    cdef int _debug_checks(self, object callback, str method) except -1
    cdef Handle _call_soon(self, object callback, tuple args, object context)
    cdef TimerHandle _schedule_at(self, double when, unsigned char when_form,
                                  object callback, tuple args, object context)
    cdef int _iterate(self, double max_wait) except -1
    cdef int _dispatch(self, int nevents) except -1
    cdef int _run_ready(self) except -1
    cdef int _run_timed(self, Handle handle) except -1
    cdef int _run_due_timers(self) except -1
