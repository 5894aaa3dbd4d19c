"""LoopFd: the loop as a pollable object (its fd and the kernel's own fds), Kernel's base.

Owns: the kernel queue's Poller (made here, by engine) and the kernel's own fds beside it,
the wake-up eventfd and the lazily created timerfd; fileno() and timeout(), what an
outside poller reads. Kernel (kernel.pyx) fills the ready queue and the timer heap
declared here and calls _sync_external at the end of each step.

Driven from outside (the nesting semantics of docs/design.md):
A loop may be run by run_forever, or stepped by someone else who polls its fd: another
event loop (`outer.add_reader(inner.fileno(), inner.step)`), select(), a GUI toolkit. For
the second case the loop's fd must turn readable whenever the loop has work, not only when
one of its fds is ready:
- ready callbacks: the eventfd is signalled while the ready queue is non-empty between
  steps (call_soon from outside a step signals it; the end of a step signals or drains it);
- timers: a timerfd, registered with the poller, is armed to the earliest deadline, so the
  loop's fd itself turns readable when a timer is due. It costs a timerfd_settime per change
  of the earliest deadline, so it exists only once the loop has been driven from outside
  (fileno() was handed out or step() was called); a loop that is only ever run by
  run_forever computes its poll timeout from the heap and never creates it.
Readability may be spurious (a timer cancelled after the timerfd was armed): an outside
poller then runs a step that finds nothing to do, which is harmless.
"""

from libc.stdint cimport uint64_t

from cqloop._core.includes.system cimport (
    CLOCK_MONOTONIC,
    EFD_CLOEXEC,
    EFD_NONBLOCK,
    EPOLLIN,
    TFD_CLOEXEC,
    TFD_NONBLOCK,
    TFD_TIMER_ABSTIME,
    close,
    errno,
    eventfd,
    itimerspec,
    read,
    timerfd_create,
    timerfd_settime,
    write,
)
from cqloop._core.poller cimport Poller, new_poller


cdef int _new_wakeup_fd(Poller poller) except -1:
    """A wake-up eventfd registered with `poller`."""
    cdef int err
    cdef int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)
    if efd < 0:
        raise OSError(errno, "eventfd failed")
    err = poller.register(efd, EPOLLIN, <uint64_t>efd)
    if err:
        close(efd)
        raise OSError(err, "cannot register the wake-up eventfd")
    return efd


cdef void _close_own_fds(LoopFd loop) noexcept:
    """Close the eventfd and the timerfd. A function, not a method: __dealloc__ calls it,
    and a loop whose construction failed is freed before its method table is set."""
    if loop._efd >= 0:
        close(loop._efd)
        loop._efd = -1
    if loop._tfd >= 0:
        close(loop._tfd)
        loop._tfd = -1


cdef class LoopFd(FdTable):

    def __cinit__(self, *args, **kwargs):
        self._efd = -1
        self._tfd = -1
        self._tfd_armed = False
        self._tfd_deadline = 0.0
        self._poller = new_poller(kwargs.get("engine"))
        self._efd = _new_wakeup_fd(self._poller)

    def __dealloc__(self):
        # A loop dropped without close(): give its fds back (Loop.__del__ warns first).
        _close_own_fds(self)

    cdef double _now(self) noexcept:
        return _monotonic()

    cdef int _renew_fds(self) except -1:
        """A new poller of the same engine and a new eventfd; the timerfd goes (made again
        when needed). For a forked child (Kernel._reset_kernel): the old fds are the
        parent's files, so they are only closed, never operated on."""
        cdef Poller poller = new_poller(self._poller.engine)
        cdef int efd
        try:
            efd = _new_wakeup_fd(poller)
        except BaseException:
            poller.close()
            raise
        self._poller.close()
        self._poller = poller
        _close_own_fds(self)
        self._efd = efd
        self._efd_signalled = False
        self._tfd_armed = False
        self._tfd_deadline = 0.0
        return 0

    cdef int _close_fds(self) except -1:
        """Close the poller and the kernel's own fds (Kernel._close_kernel, after the
        watchers were unregistered)."""
        self._poller.close()
        _close_own_fds(self)
        return 0

    # -- the kernel's own fds -----------------------------------------------------------

    cdef int _signal_wakeup(self) noexcept:
        cdef uint64_t one = 1
        if self._efd >= 0 and not self._forked:
            # EAGAIN would mean the counter is at its maximum: it is readable anyway.
            write(self._efd, &one, sizeof(one))
            self._efd_signalled = True
        return 0

    cdef int _drain_wakeup(self) noexcept:
        cdef uint64_t value
        if self._efd >= 0 and not self._forked:
            read(self._efd, &value, sizeof(value))
        self._efd_signalled = False
        return 0

    cdef int _ensure_timerfd(self) except -1:
        cdef int err
        if self._tfd >= 0:
            return 0
        self._tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK)
        if self._tfd < 0:
            raise OSError(errno, "timerfd_create failed")
        err = self._poller.register(self._tfd, EPOLLIN, <uint64_t>self._tfd)
        if err:
            close(self._tfd)
            self._tfd = -1
            raise OSError(err, "cannot register the timerfd")
        self._tfd_armed = False
        return 0

    cdef int _arm_timerfd(self, double deadline, bint armed) except -1:
        """Arm the timerfd for `deadline` (absolute loop time), or disarm it."""
        cdef itimerspec spec
        cdef double secs
        cdef double real
        if self._forked:
            return 0  # the timerfd is the parent's
        if self._tfd < 0:
            self._ensure_timerfd()
        if armed == self._tfd_armed and (not armed or deadline == self._tfd_deadline):
            return 0
        spec.it_interval.tv_sec = 0
        spec.it_interval.tv_nsec = 0
        spec.it_value.tv_sec = 0
        spec.it_value.tv_nsec = 0
        if armed:
            # The timerfd counts CLOCK_MONOTONIC: a deadline on a replaced clock is moved
            # to it, and one past the poll's cap (an infinity, 1e300) is armed at the cap
            # instead (the wake-up then finds nothing due and re-arms): C has no long for it.
            real = deadline
            if self._clock_patched:
                real = deadline - _clock(self) + self._now()
            if not real < self._now() + MAX_POLL_TIMEOUT_S:
                real = self._now() + MAX_POLL_TIMEOUT_S
            if real > 0.0:
                secs = <double>(<long>real)
                spec.it_value.tv_sec = <long>real
                spec.it_value.tv_nsec = <long>((real - secs) * 1e9)
            if spec.it_value.tv_sec == 0 and spec.it_value.tv_nsec == 0:
                # A zero it_value disarms. A deadline at or before the clock's zero (call_at
                # accepts any number) is long past: one nanosecond after boot is too.
                spec.it_value.tv_nsec = 1
        if timerfd_settime(self._tfd, TFD_TIMER_ABSTIME, &spec, NULL) < 0:
            raise OSError(errno, "timerfd_settime failed")
        self._tfd_armed = armed
        self._tfd_deadline = deadline
        return 0

    cdef int _drain_timerfd(self) noexcept:
        cdef uint64_t expirations
        if self._tfd >= 0:
            read(self._tfd, &expirations, sizeof(expirations))
        # A one-shot timer that fired is disarmed.
        self._tfd_armed = False
        return 0

    cdef int _sync_external(self) except -1:
        """Make the epoll fd tell the truth to an outside poller: readable iff callbacks
        are ready, and due to turn readable when the earliest timer is."""
        if self._closed:
            return 0
        if self._ready:
            if not self._efd_signalled:
                self._signal_wakeup()
        elif self._efd_signalled:
            self._drain_wakeup()
        if self._timers._heap:
            self._timers.drop_cancelled_head()
        if self._timers._heap:
            self._arm_timerfd(self._timers.peek_when(), True)
        else:
            self._arm_timerfd(0.0, False)
        # Last: an engine that reports completions (io_uring) re-polls what they said.
        self._poller.flush()
        return 0

    def _refresh_pollfd(self):
        """After run_forever returns: if the loop is also driven from outside, make its fd
        tell the truth again."""
        if self._external:
            self._sync_external()

    # -- the loop as a pollable object --------------------------------------------------

    def fileno(self):
        """The epoll fd: readable whenever the loop has work (an fd event, a due timer, a
        ready callback, a wake-up from another thread). Handing it out makes the loop keep
        that promise from now on (see "driven from outside")."""
        self._check_closed()
        if not self._external:
            self._external = True
            if not self._running:
                self._sync_external()
        return self._poller.epfd

    def timeout(self):
        """How long an outside poller may sleep before calling step(): 0 when callbacks
        are ready, the time to the next timer, or None when the loop is idle."""
        if self._ready:
            return 0.0
        if self._timers._heap:
            self._timers.drop_cancelled_head()
        if not self._timers._heap:
            return None
        # Never NaN, never past the kernel's own cap on one wait (select() and poll()
        # refuse an infinite timeout).
        return _wait_limit(max(0.0, self._timers.peek_when() - _clock(self)))

    @property
    def engine(self):
        """The readiness engine the loop runs on: "epoll" or "io_uring"."""
        return self._poller.engine

    def _set_wait_sigmask(self, signals):
        """The signal mask for the kernel's waits (a list of signals to block), or None
        to leave the thread's mask alone (Loop.pause)."""
        self._check_closed()
        self._poller.set_waitmask(signals)
