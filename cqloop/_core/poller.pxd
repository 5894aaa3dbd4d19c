# Poller: one epoll instance behind register / modify / unregister / wait / close.
# Knows nothing of handles, timers or tasks.

from libc.stdint cimport uint32_t, uint64_t

from cqloop._core.includes.system cimport epoll_event, sigset_t


cdef class Poller:
    cdef int epfd
    cdef epoll_event *events
    cdef int capacity
    # The signal mask epoll_pwait applies during the wait (Loop.pause); NULL: unchanged.
    cdef sigset_t waitmask
    cdef sigset_t *waitmask_ptr

    cdef int register(self, int fd, uint32_t events, uint64_t data) noexcept
    cdef int modify(self, int fd, uint32_t events, uint64_t data) noexcept
    cdef int unregister(self, int fd) noexcept
    cdef int wait(self, int timeout_ms) except -1
    cdef int close(self) except -1
    cdef int set_waitmask(self, object signals) except -1
    cdef int _grow(self) except -1
