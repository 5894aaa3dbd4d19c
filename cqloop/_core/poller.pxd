# Poller: the kernel queue's readiness engine behind register / modify / unregister / wait /
# close: EpollPoller (one epoll instance, this file's .pyx) or UringPoller (io_uring poll
# requests, uring.pyx). Knows nothing of handles, timers or tasks.

from libc.stdint cimport uint32_t, uint64_t

from cqloop._core.includes.system cimport epoll_event, sigset_t


cdef class Poller:
    # The fd an outside poller polls (readable while the engine has events to report): the
    # epoll fd, or the io_uring fd. -1 once closed.
    cdef int epfd
    # What `wait` filled: epoll_event entries, whichever the engine (the kernel's dispatch
    # reads .events and .data.u64).
    cdef epoll_event *events
    cdef int capacity
    # The signal mask the wait applies (Loop.pause); NULL: unchanged.
    cdef sigset_t waitmask
    cdef sigset_t *waitmask_ptr
    # "epoll" or "io_uring".
    cdef readonly str engine
    # True when a registration holds the watched file open until it is removed (io_uring:
    # a poll request holds a reference to the file), so a registration must never be left
    # armed and idle on an fd its owner may close (see FdTable._wait_sock).
    cdef readonly bint holds_files

    cdef int register(self, int fd, uint32_t events, uint64_t data) noexcept
    cdef int modify(self, int fd, uint32_t events, uint64_t data) noexcept
    cdef int unregister(self, int fd) noexcept
    cdef int wait(self, int timeout_ms) except -1
    cdef int flush(self) except -1
    cdef int close(self) except -1
    cdef int set_waitmask(self, object signals) except -1
    cdef int _grow(self) except -1


cdef class EpollPoller(Poller):
    pass


cpdef Poller new_poller(object engine)
cpdef str resolve_engine(object engine)
