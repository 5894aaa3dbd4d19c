# LoopFd: the loop as a pollable object. The kernel queue's fd (the Poller's), the
# kernel's own fds that keep it honest (the wake-up eventfd, the timerfd), fileno() and
# timeout(). Kernel's base class, FdTable's subclass; see loopfd.pyx.

from cqloop._core.fdtable cimport FdTable
from cqloop._core.includes.system cimport CLOCK_MONOTONIC, clock_gettime, timespec
from cqloop._core.timerheap cimport TimerHeap


cdef enum:
    # asyncio caps one select at a day; so do we (and it fits epoll_wait's int milliseconds).
    MAX_POLL_TIMEOUT_S = 24 * 3600


cdef class LoopFd(FdTable):
    # (FdTable, fdtable.pxd: the Poller, the fd watcher table, _closed, _forked.)
    # -- the kernel's own fds -----------------------------------------------------------
    # eventfd: wakes a blocked wait from other threads; also what makes the loop's fd
    # readable while callbacks are ready and the loop is driven from outside.
    cdef int _efd
    cdef bint _efd_signalled
    # timerfd, created the first time the loop is driven from outside, armed to the
    # earliest timer so that the loop's fd turns readable when it is due. -1 until then.
    cdef int _tfd
    # Whether the timerfd is armed, and for which absolute CLOCK_MONOTONIC deadline.
    cdef bint _tfd_armed
    cdef double _tfd_deadline
    # True once the loop's fd was handed out or step() was called: see "driven from outside".
    cdef bint _external

    # -- what readability is judged on (Kernel fills them) ------------------------------
    # The ready queue (callbacks to run at the next iteration).
    cdef list _ready
    cdef TimerHeap _timers
    # Whether `time` is replaced on the instance or overridden by a subclass: the
    # scheduler then reads the clock through self.time(), as asyncio's does (see _clock).
    cdef bint _clock_patched

    cdef double _now(self) noexcept
    cdef int _renew_fds(self) except -1
    cdef int _close_fds(self) except -1
    cdef int _sync_external(self) except -1
    cdef int _signal_wakeup(self) noexcept
    cdef int _drain_wakeup(self) noexcept
    cdef int _ensure_timerfd(self) except -1
    cdef int _arm_timerfd(self, double deadline, bint armed) except -1
    cdef int _drain_timerfd(self) noexcept


cdef inline double _monotonic() noexcept:
    # CLOCK_MONOTONIC, the clock of time.monotonic() and of asyncio's loop.time().
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9


cdef inline double _clock(LoopFd loop) except? -1.0:
    """The scheduler's clock: loop.time() as the instance answers it. asyncio's scheduler
    asks self.time(), so a clock replaced on the instance (mock.patch.object, test
    plugins' fake clocks) or overridden by a subclass moves it; _clock_patched says
    whether one is (see Kernel.__setattr__), and otherwise the clock is read directly.
    Inline: it is read three times per timer scheduled and run."""
    if loop._clock_patched:
        return loop.time()
    return _monotonic()


cdef inline double _wait_limit(double seconds) noexcept:
    """A wait's length in seconds (< 0: unbounded) as the poll takes it: a NaN is no wait
    (as a NaN deadline is due at once), and anything past MAX_POLL_TIMEOUT_S, infinity
    included, is MAX_POLL_TIMEOUT_S."""
    if seconds != seconds:
        return 0.0
    if seconds > MAX_POLL_TIMEOUT_S:
        return MAX_POLL_TIMEOUT_S
    return seconds
