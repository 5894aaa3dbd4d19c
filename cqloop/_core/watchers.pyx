"""FdWatcher and HandleWatcher: the objects the kernel dispatches fd events to.

A watcher is registered under one fd in the kernel's table. The kernel keeps its epoll
registration in step with `wanted()` and calls `_on_events` from its dispatch with the
events epoll reported. HandleWatcher serves add_reader/add_writer: it appends the reader's
and writer's handles to the ready queue, so they run in the same iteration as asyncio's
would. Transports (cqloop.transports) subclass FdWatcher to act on events directly.
"""

from libc.stdint cimport uint32_t

from cqloop._core.handles cimport Handle
from cqloop._core.includes.system cimport EPOLLET, EPOLLIN, EPOLLONESHOT, EPOLLOUT


cdef class FdWatcher:
    # Subclasses take their own constructor arguments, which Cython passes to every
    # __cinit__ in the hierarchy: hence *args here and the fd set by each subclass.
    def __cinit__(self, *args, **kwargs):
        self.fd = -1
        self.gen = 0
        self.registered = 0
        self.persistent = False
        self.disarmed = False

    cdef uint32_t wanted(self) noexcept:
        return 0

    cdef int _on_events(self, uint32_t events, list ready) except -1:
        """React to `events`; return 1 when wanted() changed and the kernel must update the
        epoll registration, 2 when the watcher is idle and the kernel should drop it and
        its registration, else 0."""
        return 0

    cdef int _on_received(self, int res, const char *data, bint more, list ready) except -1:
        """A completion of the receive the engine runs for this watcher's fd (io_uring's
        multishot receive, Poller.recv_start): `res` bytes at `data` (lent until the next
        wait: copy them now), 0 for end of file, or a negative errno; `more` says whether
        the receive goes on. Only watchers that start receives get these."""
        return 0


cdef class HandleWatcher(FdWatcher):
    def __init__(self, int fd):
        self.fd = fd

    cdef uint32_t wanted(self) noexcept:
        cdef uint32_t mask = 0
        if self.reader is not None:
            mask |= EPOLLIN
        if self.writer is not None:
            mask |= EPOLLOUT
        if mask and self.mode == WAIT_ONESHOT:
            mask |= EPOLLONESHOT
        elif mask and self.mode == WAIT_EDGE:
            mask |= EPOLLET
        return mask

    cdef int _on_events(self, uint32_t events, list ready) except -1:
        # As asyncio's EpollSelector: anything but plain EPOLLOUT (EPOLLIN, EPOLLHUP,
        # EPOLLERR) makes the fd readable, anything but plain EPOLLIN makes it writable, so
        # a hung-up or failed fd wakes both directions and their callbacks see the error.
        # A cancelled handle is dropped here, as asyncio removes the reader or writer whose
        # handle it finds cancelled; returning 1 asks the kernel to update the registration.
        cdef Handle handle
        cdef int changed = 0
        if self.registered & EPOLLONESHOT:
            # epoll disarmed the registration as it reported this event.
            self.disarmed = True
        if events & ~EPOLLOUT:
            handle = self.reader
            if handle is not None:
                if handle._cancelled:
                    self.reader = None
                    changed = 1
                else:
                    ready.append(handle)
        if events & ~EPOLLIN:
            handle = self.writer
            if handle is not None:
                if handle._cancelled:
                    self.writer = None
                    changed = 1
                else:
                    ready.append(handle)
        if (
            changed == 0
            and self.reader is None
            and self.writer is None
            and self.registered & EPOLLET
        ):
            # An edge-triggered wait's registration, left idle (kernel.pyx, _wait_sock), saw
            # data arrive with nobody waiting: drop it rather than be woken at every arrival
            # (the next wait registers afresh).
            return 2
        return changed
