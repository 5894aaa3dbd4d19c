"""Poller: the kernel queue's readiness engine, and EpollPoller, its epoll engine.

Poller is the interface the kernel calls (register / modify / unregister / wait / flush /
close) and owns what every engine shares: the event buffer `wait` fills with epoll_event
entries (the kernel's dispatch reads them), its growth, and the signal mask of Loop.pause's
wait. The engines: EpollPoller (here: one epoll instance) and UringPoller (uring.pyx: poll
requests on an io_uring). `new_poller` makes the one a loop asks for (engine="auto",
"epoll", "io_uring", or CQLOOP_ENGINE in the environment); "auto" is epoll until io_uring
is measured faster for what cqloop does (docs/design.md, "The io_uring engine").

EpollPoller owns the epoll fd. register, modify and unregister
return 0 or an errno rather than raising, because EEXIST, ENOENT and EBADF are normal events
for the kernel (an fd closed or reused behind its back) and it decides what each means.
`wait` is the only place in cqloop where epoll waits (epoll_pwait: with a NULL mask it is
epoll_wait; Loop.pause gives it a mask).

Some facts about epoll that shape the kernel above this file:
- epoll keys a registration by (open file description, fd number), not by fd number alone.
  Closing an fd removes the registration only when no other fd (a dup, a forked child's
  copy) refers to the same file description. Until then the registration keeps reporting
  events under the old fd number, even after that number is reused for another file, and
  it cannot be removed: EPOLL_CTL_DEL looks the entry up through the fd's *current* file.
  The kernel therefore tags every registration with a generation in epoll_data and drops
  events whose generation is stale (kernel.pyx, "_dispatch").
- An epoll fd is itself pollable: it is readable while any of its registrations is ready.
  That is what makes a loop nestable; see kernel.pyx, "driven from outside".
- epoll_wait fails with EINTR when a signal handler runs; Python-level handlers (SIGINT's
  KeyboardInterrupt, asyncio.Runner's Ctrl-C handler) run only when the interpreter checks
  for them, so `wait` checks at once, then waits out the rest of its timeout, as PEP 475
  retry loops (and so asyncio's selectors) do. A handler that wants the loop awake writes
  to it (call_soon_threadsafe, a wakeup fd).
  `wait` also runs pending handlers before it waits: a signal that arrived while only
  compiled code ran has had no bytecode boundary to run its handler at.
"""

import os
from os import strerror

from libc.math cimport ceil
from libc.stdlib cimport free, malloc, realloc

from cqloop._core.includes.pyapi cimport PyErr_CheckSignals
from cqloop._core.includes.system cimport (
    CLOCK_MONOTONIC,
    EINTR,
    ENOSYS,
    EPOLL_CLOEXEC,
    EPOLL_CTL_ADD,
    EPOLL_CTL_DEL,
    EPOLL_CTL_MOD,
    clock_gettime,
    close as close_fd,
    epoll_create1,
    epoll_ctl,
    epoll_pwait,
    errno,
    sigaddset,
    sigemptyset,
    timespec,
)

cdef int INITIAL_CAPACITY = 64
# The buffer doubles when a wait fills it, up to this many events per wait.
cdef int MAX_CAPACITY = 4096


cdef inline int _ctl(int epfd, int op, int fd, uint32_t events, uint64_t data) noexcept:
    """epoll_ctl ADD or MOD: 0, or the errno (inlined into register and modify)."""
    cdef epoll_event ev
    ev.events = events
    ev.data.u64 = data
    if epoll_ctl(epfd, op, fd, &ev) < 0:
        return errno
    return 0


ENGINES = ("auto", "epoll", "io_uring")


cpdef str resolve_engine(object engine):
    """The engine a loop made with `engine` runs on: "epoll" or "io_uring". None means
    CQLOOP_ENGINE from the environment, or "auto"; "auto" means epoll (io_uring is picked
    by "auto" only for what it was measured faster at, and nothing is yet)."""
    cdef str source = "engine"
    if engine is None:
        engine = os.environ.get("CQLOOP_ENGINE") or "auto"
        source = "CQLOOP_ENGINE"
    if engine not in ENGINES:
        raise ValueError(
            f"{source} must be one of {', '.join(map(repr, ENGINES))}, not {engine!r}")
    if engine == "auto":
        return "epoll"
    return engine


cpdef Poller new_poller(object engine):
    """A new Poller of the engine `engine` names (see resolve_engine). Asking for io_uring
    where it is not usable raises OSError saying why (cqloop._core.uring.probe)."""
    if resolve_engine(engine) == "io_uring":
        from cqloop._core.uring import UringPoller

        return UringPoller()
    return EpollPoller()


cdef class Poller:
    """The engine interface; EpollPoller and UringPoller implement it."""

    def __cinit__(self, *args, **kwargs):
        self.epfd = -1
        self.events = <epoll_event *>malloc(INITIAL_CAPACITY * sizeof(epoll_event))
        if self.events is NULL:
            raise MemoryError()
        self.capacity = INITIAL_CAPACITY

    def __dealloc__(self):
        if self.events is not NULL:
            free(self.events)
            self.events = NULL

    def fileno(self):
        return self.epfd

    cdef int register(self, int fd, uint32_t events, uint64_t data) noexcept:
        return ENOSYS

    cdef int modify(self, int fd, uint32_t events, uint64_t data) noexcept:
        return ENOSYS

    cdef int unregister(self, int fd) noexcept:
        return ENOSYS

    cdef int wait(self, int timeout_ms) except -1:
        raise NotImplementedError(f"{type(self).__name__} does not implement wait")

    cdef int flush(self) except -1:
        """Submit what the engine deferred to its next wait, so that its fd tells an
        outside poller the truth (the kernel calls it when it hands control back to one).
        epoll defers nothing."""
        return 0

    cdef int close(self) except -1:
        return 0

    cdef int recv_start(self, int fd, object owner) noexcept:
        """Start receiving on stream socket `fd` for `owner` (an FdWatcher: its
        _on_received gets the completions; the engine holds it until the last one, in or
        out of the kernel's fd table): 0, or an errno. Only an engine with stream_reads
        runs receives."""
        return ENOSYS

    cdef int recv_stop(self, int fd) noexcept:
        """Stop the receive on `fd`: 0, or an errno. Completions it posted before the stop
        are still reported, the last one without `more`."""
        return ENOSYS

    cdef bint received(self, int i, int *res, const char **buf, PyObject **owner) noexcept:
        """For an EV_RECEIVED entry i of the last wait: its result, bytes and owner (each
        lent until the next wait); returns whether the receive goes on."""
        res[0] = -ENOSYS
        buf[0] = NULL
        owner[0] = NULL
        return False

    cdef int visit_receivers(self, cq_visitproc visit, void *arg) noexcept:
        """Visit the owners the engine holds for its receives (the kernel's GC traversal:
        the poller is the kernel's alone)."""
        return 0

    cdef int _grow(self) except -1:
        cdef int capacity = self.capacity * 2
        cdef epoll_event *events = <epoll_event *>realloc(
            self.events, capacity * sizeof(epoll_event))
        if events is NULL:
            raise MemoryError()
        self.events = events
        self.capacity = capacity
        return 0

    cdef int set_waitmask(self, object signals) except -1:
        """The signals to block during waits (epoll_pwait's mask), or None for no
        change of mask. Loop.pause unblocks signals for one wait this way."""
        if signals is None:
            self.waitmask_ptr = NULL
            return 0
        sigemptyset(&self.waitmask)
        for signum in signals:
            if sigaddset(&self.waitmask, <int>signum) < 0:
                raise OSError(errno, f"invalid signal number {signum}")
        self.waitmask_ptr = &self.waitmask
        return 0


cdef class EpollPoller(Poller):
    """One epoll instance: registrations are epoll_ctl calls, a wait is epoll_pwait."""

    def __cinit__(self, *args, **kwargs):
        self.engine = "epoll"
        self.epfd = epoll_create1(EPOLL_CLOEXEC)
        if self.epfd < 0:
            raise OSError(errno, "epoll_create1 failed")

    def __dealloc__(self):
        if self.epfd >= 0:
            close_fd(self.epfd)
            self.epfd = -1

    cdef int register(self, int fd, uint32_t events, uint64_t data) noexcept:
        return _ctl(self.epfd, EPOLL_CTL_ADD, fd, events, data)

    cdef int modify(self, int fd, uint32_t events, uint64_t data) noexcept:
        return _ctl(self.epfd, EPOLL_CTL_MOD, fd, events, data)

    cdef int unregister(self, int fd) noexcept:
        cdef epoll_event ev
        if epoll_ctl(self.epfd, EPOLL_CTL_DEL, fd, &ev) < 0:
            return errno
        return 0

    cdef int wait(self, int timeout_ms) except -1:
        """Wait up to timeout_ms (-1: forever, 0: poll). Returns how many entries of
        self.events are filled."""
        cdef int n
        cdef int err
        cdef double deadline_ms = 0.0
        if self.epfd < 0:
            raise RuntimeError("the poller is closed")
        # A signal that arrived while only compiled code ran (a callback written in C, the
        # kernel itself) has its Python-level handler pending: no bytecode has run to call
        # it, and the wait below is not interrupted by a signal delivered before it began.
        # Run the handlers now (Ctrl-C's KeyboardInterrupt, asyncio.Runner's SIGINT
        # handler), as asyncio's selector loop does at its last bytecode before select().
        # With nothing pending this is one atomic load.
        PyErr_CheckSignals()
        if timeout_ms > 0:
            deadline_ms = _monotonic_ms() + timeout_ms
        while True:
            if timeout_ms == 0:
                n = epoll_pwait(self.epfd, self.events, self.capacity, 0, self.waitmask_ptr)
            else:
                with nogil:
                    n = epoll_pwait(self.epfd, self.events, self.capacity, timeout_ms,
                                    self.waitmask_ptr)
            if n >= 0:
                break
            err = errno
            if err != EINTR:
                _raise_errno(err, "epoll_wait", self.epfd)
            # Interrupted: run the Python-level signal handlers now (KeyboardInterrupt
            # leaves from here), then wait out the rest of the timeout, as PEP 475 retry
            # loops do. An interruption with no signal behind it happens too: io_uring
            # task work (a uvloop loop closed earlier in the process leaves some) ends
            # a blocking wait with EINTR; returning then would be an early, empty step.
            PyErr_CheckSignals()
            if self.waitmask_ptr is not NULL:
                return 0  # Loop.pause: a delivered signal is what ends the wait
            if timeout_ms > 0:
                timeout_ms = <int>ceil(deadline_ms - _monotonic_ms())
                if timeout_ms <= 0:
                    return 0
        if n == self.capacity and self.capacity < MAX_CAPACITY:
            self._grow()
        return n

    cdef int close(self) except -1:
        if self.epfd >= 0:
            close_fd(self.epfd)
            self.epfd = -1
        return 0


cdef inline double _monotonic_ms() noexcept:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6


cdef int _raise_errno(int err, str call, int fd) except -1:
    raise OSError(err, f"{call} on fd {fd}: {strerror(err)}")
