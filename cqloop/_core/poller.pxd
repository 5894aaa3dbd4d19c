# Poller: the kernel queue's readiness engine behind register / modify / unregister / wait /
# close: EpollPoller (one epoll instance, this file's .pyx) or UringPoller (io_uring poll
# requests, uring.pyx). Knows nothing of handles, timers or tasks.

from cpython.object cimport PyObject
from libc.stdint cimport uint32_t, uint64_t

from cqloop._core.includes.gchook cimport cq_visitproc

from cqloop._core.includes.system cimport epoll_event, sigset_t


cdef enum:
    # In a filled event's `events`: the entry is not readiness but the completion of an
    # engine-run receive (Poller.recv_start); Poller.received tells what it brought. A bit
    # epoll never reports.
    EV_RECEIVED = 1 << 26


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
    # True when the engine runs stream receives itself (io_uring's multishot receive into
    # its provided buffers): a transport then calls recv_start instead of asking for
    # EPOLLIN, and its owner gets the data through FdWatcher._on_received.
    cdef readonly bint stream_reads

    cdef int register(self, int fd, uint32_t events, uint64_t data) noexcept
    cdef int modify(self, int fd, uint32_t events, uint64_t data) noexcept
    cdef int unregister(self, int fd) noexcept
    cdef int wait(self, int timeout_ms) except -1
    cdef int flush(self) except -1
    cdef int close(self) except -1
    cdef int set_waitmask(self, object signals) except -1
    cdef int recv_start(self, int fd, object owner) noexcept
    cdef int recv_stop(self, int fd) noexcept
    cdef bint received(self, int i, int *res, const char **buf, PyObject **owner) noexcept
    cdef int visit_receivers(self, cq_visitproc visit, void *arg) noexcept
    cdef int _grow(self) except -1


cdef class EpollPoller(Poller):
    pass


cpdef Poller new_poller(object engine)
cpdef str resolve_engine(object engine)
