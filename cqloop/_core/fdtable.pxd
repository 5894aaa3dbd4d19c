# FdTable: the watched fds and their epoll registrations; Kernel's base class.

from cpython.object cimport PyObject
from libc.stdint cimport uint32_t

from cqloop._core.handles cimport Handle
from cqloop._core.poller cimport Poller
from cqloop._core.watchers cimport FdWatcher


cdef class FdTable:
    # The epoll instance (made and closed by Kernel, which also polls it).
    cdef Poller _poller
    # fd -> FdWatcher, as an array indexed by fd holding a reference to each (NULL where
    # no fd is watched): the dispatch's lookup per event. Changed only through
    # _table_put/_table_drop/_table_clear; _count is how many entries are set.
    cdef PyObject **_by_fd
    cdef Py_ssize_t _by_fd_len
    cdef Py_ssize_t _count
    cdef uint32_t _last_gen
    # Set by Kernel: closed loops refuse registrations; a forked child's epoll set is the
    # parent's, so nothing here may touch it until Kernel._reset_kernel().
    cdef bint _closed
    cdef public bint _forked

    cdef int _check_closed(self) except -1
    cdef object _table_get(self, int fd)
    cdef list _table_values(self)
    cdef int _table_put(self, FdWatcher watcher) except -1
    cdef int _table_drop(self, int fd) except -1
    cdef int _table_clear(self) except -1
    cdef uint32_t _new_gen(self) noexcept
    cdef int _update_watcher(self, FdWatcher watcher, bint removing) except -1
    cdef int _install_watcher(self, FdWatcher watcher) except -1
    cdef int _remove_watcher(self, FdWatcher watcher) except -1
    cdef Handle _register_handle(self, int fd, object callback, tuple args, bint reading,
                                 int mode)
    cdef Handle _wait_sock(self, object sock, int fd, object callback, tuple args)
    cdef bint _unregister_handle(self, int fd, bint reading) except -1
    cdef int _check_no_transport(self, int fd) except -1
