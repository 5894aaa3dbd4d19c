# FdWatcher: what the kernel knows about one watched fd. The kernel owns the epoll
# registration; a watcher says which events it wants and reacts to the ones that come.

from libc.stdint cimport uint32_t

from cqloop._core.handles cimport Handle


cdef class FdWatcher:
    cdef readonly int fd
    # Generation of the epoll registration this watcher owns (see poller.pyx on epoll and
    # reused fd numbers); events carrying another generation are not this watcher's.
    cdef uint32_t gen
    # Events currently registered with epoll for this watcher; 0 when not registered.
    cdef uint32_t registered
    # A persistent watcher (a transport) stays in the kernel's table while it wants no
    # events, so that its fd stays claimed; its owner removes it with _remove_watcher.
    # Others (add_reader/add_writer) leave the table when they want nothing.
    cdef bint persistent
    # Registered with EPOLLONESHOT and fired since: epoll holds the registration but
    # reports nothing for it until it is re-armed with EPOLL_CTL_MOD (see kernel.pyx).
    cdef bint disarmed

    cdef uint32_t wanted(self) noexcept
    cdef int _on_events(self, uint32_t events, list ready) except -1
    cdef int _on_received(self, int res, const char *data, bint more, list ready) except -1


# How a HandleWatcher's registration is made (Kernel._register_handle): level-triggered
# (asyncio's add_reader/add_writer), one-shot (pollables' readability waits: EPOLLONESHOT,
# so a finished wait costs no EPOLL_CTL_DEL), or edge-triggered (the waits of sock_*
# operations, which try their call first: EPOLLET, left registered and idle after the
# wait, so that the next wait on the same socket costs no system call; Kernel._wait_sock).
cdef enum:
    WAIT_LEVEL = 0
    WAIT_ONESHOT = 1
    WAIT_EDGE = 2


cdef class HandleWatcher(FdWatcher):
    # asyncio's add_reader/add_writer: a handle per direction, queued when the fd is ready.
    cdef public Handle reader
    cdef public Handle writer
    # WAIT_LEVEL, or the mode of the waits it alone serves (see the enum above).
    cdef int mode
    # A weak reference to the socket whose file the edge-triggered registration is for,
    # or None: the proof that the next wait is on the same open file (see _wait_sock).
    cdef object sock_ref
