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


cdef class HandleWatcher(FdWatcher):
    # asyncio's add_reader/add_writer: a handle per direction, queued when the fd is ready.
    cdef public Handle reader
    cdef public Handle writer
    # Serving only one-shot waits (the loop's sock_* operations): registered with
    # EPOLLONESHOT, so that a finished wait costs no EPOLL_CTL_DEL (see kernel.pyx).
    cdef bint oneshot
