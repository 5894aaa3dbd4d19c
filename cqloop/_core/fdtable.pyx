"""FdTable: the kernel's table of watched fds and their epoll registrations.

Owns: the table of watchers, `_by_fd` (an array indexed by fd holding a reference to each
fd's FdWatcher; the dispatch's lookup), the registration generations, and every epoll_ctl
the kernel makes for a watcher (through the Poller). Kernel (kernel.pyx) is its subclass
and adds the queue, the timers and the run-once step; the add_reader/remove_reader family,
the sock_* waits (sockio.pyx) and the stream transports (stream.pyx) call in here.

Invariants:
- Every watcher in the table whose `registered` mask is non-zero has a live epoll
  registration whose data is (gen << 32 | fd); the kernel's own wake-up and timer fds use
  generation 0.
- A one-shot watcher whose wait is done stays in the table with its registration disarmed
  (`disarmed`, no handles): inert until the next wait on the fd re-arms it.
- A watcher that is not a HandleWatcher is a transport's: add_reader, add_writer,
  remove_reader and remove_writer on its fd raise RuntimeError, as asyncio's do.

Why a generation: epoll keys a registration by (open file, fd number), and a dup or a
forked child keeps a closed fd's registration alive under its old number; events whose
generation is not the current watcher's are dropped by the dispatch (docs/design.md, "fds
closed or reused behind the loop's back").

This is the seam a second engine (io_uring) plugs into beside epoll.
"""

from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memset

from cpython.mem cimport PyMem_Free, PyMem_Realloc
from cpython.ref cimport Py_DECREF, Py_INCREF, Py_XDECREF
from cpython.weakref cimport PyWeakref_NewRef

from cqloop._core.handles cimport Handle, new_handle
from cqloop._core.includes.pyapi cimport cq_weakref_is
from cqloop._core.includes.system cimport EBADF, EEXIST, ENOENT, EPOLLET, EPOLLIN
from cqloop._core.watchers cimport (
    WAIT_EDGE,
    WAIT_LEVEL,
    WAIT_ONESHOT,
    FdWatcher,
    HandleWatcher,
)

# An edge-triggered read registration's mask (see FdTable._wait_sock).
cdef uint32_t EDGE_READ = EPOLLIN | EPOLLET
# Generations are 32 bits in epoll_data; 0 is reserved for the kernel's own fds.
cdef uint32_t FIRST_GEN = 1
cdef str FORKED_MESSAGE = (
    "this event loop was inherited across fork(): its kernel queue belongs to the parent "
    "process; call loop.reset() in the child first, or make a new loop")


cdef int _refuse_transport_fd(int fd, object watcher) except -1:
    # Every watcher but a HandleWatcher is a transport's (asyncio's wording).
    raise RuntimeError(f"File descriptor {fd!r} is used by transport {watcher!r}")


cdef inline Handle _exchange(HandleWatcher watcher, bint reading, Handle handle):
    """Put `handle` (or None) in the watcher's reader or writer slot; return what it held."""
    cdef Handle old
    if reading:
        old = watcher.reader
        watcher.reader = handle
    else:
        old = watcher.writer
        watcher.writer = handle
    return old


cdef inline uint64_t _token(FdWatcher watcher) noexcept:
    return (<uint64_t>watcher.gen << 32) | <uint32_t>watcher.fd


def _strerror(int err):
    import os
    return os.strerror(err)


cdef class FdTable:

    def __cinit__(self, *args, **kwargs):
        self._last_gen = FIRST_GEN

    def __dealloc__(self):
        cdef Py_ssize_t i
        for i in range(self._by_fd_len):
            Py_XDECREF(self._by_fd[i])
        PyMem_Free(self._by_fd)

    # -- the table: an array indexed by fd ---------------------------------------------
    # The dispatch looks the watcher of every event up by fd: an array index instead of
    # an int object and a dict lookup saved about 130 instructions per event (callgrind,
    # 1 KiB echo). The array grows to the highest fd watched, as libuv's does, and holds
    # the table's references (a dict beside it cost every connection its entry and, past
    # fd 256, an int key). The cyclic GC sees them through Kernel's traversal
    # (kernel.pyx, _kernel_traverse).

    cdef inline object _table_get(self, int fd):
        """The watcher of fd, or None."""
        if fd < 0 or fd >= self._by_fd_len or self._by_fd[fd] == NULL:
            return None
        return <object>self._by_fd[fd]

    cdef list _table_values(self):
        """Every watcher in the table, in fd order."""
        cdef Py_ssize_t i
        cdef list found = []
        for i in range(self._by_fd_len):
            if self._by_fd[i] != NULL:
                found.append(<object>self._by_fd[i])
        return found

    cdef int _table_put(self, FdWatcher watcher) except -1:
        cdef int fd = watcher.fd
        cdef Py_ssize_t size
        cdef PyObject **grown
        if fd < 0:
            raise ValueError(f"invalid file descriptor: {fd}")
        if fd >= self._by_fd_len:
            size = max(64, 2 * self._by_fd_len, fd + 1)
            grown = <PyObject **>PyMem_Realloc(self._by_fd, size * sizeof(PyObject *))
            if grown == NULL:
                raise MemoryError()
            memset(grown + self._by_fd_len, 0,
                   (size - self._by_fd_len) * sizeof(PyObject *))
            self._by_fd = grown
            self._by_fd_len = size
        # A watcher already there (an inert one-shot registration's) is replaced.
        old = self._by_fd[fd]
        Py_INCREF(watcher)
        self._by_fd[fd] = <PyObject *>watcher
        if old == NULL:
            self._count += 1
        else:
            Py_DECREF(<object>old)
        return 0

    cdef int _table_drop(self, int fd) except -1:
        cdef PyObject *old = self._by_fd[fd]
        if old != NULL:
            self._by_fd[fd] = NULL
            self._count -= 1
            Py_DECREF(<object>old)
        return 0

    cdef int _table_clear(self) except -1:
        # Emptied before the references go: a finaliser they run finds an empty table.
        cdef list watchers = self._table_values()
        if self._by_fd_len:
            memset(self._by_fd, 0, self._by_fd_len * sizeof(PyObject *))
        self._count = 0
        for watcher in watchers:
            Py_DECREF(watcher)
        return 0

    cdef int _check_closed(self) except -1:
        if self._closed:
            raise RuntimeError("Event loop is closed")
        return 0

    cdef uint32_t _new_gen(self) noexcept:
        self._last_gen += 1
        if self._last_gen == 0:
            self._last_gen = FIRST_GEN
        return self._last_gen

    cdef int _install_watcher(self, FdWatcher watcher) except -1:
        """Put a new watcher in the table and register what it wants with epoll."""
        watcher.gen = self._new_gen()
        watcher.registered = 0
        self._table_put(watcher)
        try:
            self._update_watcher(watcher, False)
        except BaseException:
            self._table_drop(watcher.fd)
            raise
        return 0

    cdef int _remove_watcher(self, FdWatcher watcher) except -1:
        """Take a watcher out of the table and out of epoll (its fd may be closed already)."""
        if watcher.registered:
            if not self._closed and not self._forked:
                self._poller.unregister(watcher.fd)
            watcher.registered = 0
        if self._table_get(watcher.fd) is watcher:
            self._table_drop(watcher.fd)
        return 0

    cdef int _update_watcher(self, FdWatcher watcher, bint removing) except -1:
        """Bring the epoll registration in line with watcher.wanted(); drop the watcher from
        the table when it wants nothing. With `removing`, an fd that was closed meanwhile
        is not an error: its registration went with it, or lingers under a dup with a
        generation that is now stale."""
        cdef uint32_t wanted = watcher.wanted()
        cdef int fd = watcher.fd
        cdef int err = 0
        if self._forked:
            # The epoll set is the parent's (see _reset_kernel): removing leaves it alone,
            # adding is refused.
            if not removing:
                raise RuntimeError(FORKED_MESSAGE)
            if wanted == 0 and not watcher.persistent and self._table_get(fd) is watcher:
                self._table_drop(fd)
            return 0
        if wanted == 0:
            if (watcher.disarmed or watcher.registered & EPOLLET) and not watcher.persistent:
                # A one-shot wait that fired and is done: leave the disarmed registration
                # (and the watcher) in place, inert, so that the next wait on the fd is one
                # EPOLL_CTL_MOD instead of a DEL now and an ADD then. Inert is the point: a
                # disarmed registration reports nothing, even if the fd is closed while a
                # dup keeps its file open (the trap that makes a lazily deferred DEL of a
                # level-triggered registration unsafe). A closed fd's registration goes
                # with its file; a reused number is caught by the MOD (ENOENT) below.
                # An edge-triggered wait's registration stays too (see _wait_sock), armed
                # but nearly as inert: it never spins, and the first arrival of data with
                # nobody waiting drops it (HandleWatcher._on_events). Where the fd was
                # closed meanwhile and a dup keeps the file open, that drop cannot reach
                # the registration: each arrival on the file then wakes the loop once
                # (and is ignored) until the file's last fd is closed.
                return 0
            if watcher.registered:
                self._poller.unregister(fd)
                watcher.registered = 0
            if not watcher.persistent and self._table_get(fd) is watcher:
                self._table_drop(fd)
            return 0
        if watcher.registered == wanted and removing and not watcher.disarmed:
            return 0
        # When adding, re-issue the registration even if the mask is unchanged: that is how
        # the kernel learns (ENOENT) that the fd was closed and its number reused since.
        if watcher.registered:
            err = self._poller.modify(fd, wanted, _token(watcher))
            if err == ENOENT:
                # The fd number now names another file than the one registered: register
                # that one afresh, under a new generation.
                watcher.gen = self._new_gen()
                err = self._poller.register(fd, wanted, _token(watcher))
        else:
            err = self._poller.register(fd, wanted, _token(watcher))
            if err == EEXIST:
                # Registered under this fd and file by an earlier watcher whose removal
                # could not reach epoll; take it over.
                err = self._poller.modify(fd, wanted, _token(watcher))
        if err:
            watcher.registered = 0
            watcher.gen = self._new_gen()
            if removing and (err == EBADF or err == ENOENT):
                return 0
            raise OSError(err, f"cannot watch fd {fd}: {_strerror(err)}")
        watcher.registered = wanted
        watcher.disarmed = False
        return 0

    def _add_reader(self, int fd, callback, tuple args):
        return self._register_handle(fd, callback, args, True, WAIT_LEVEL)

    def _add_writer(self, int fd, callback, tuple args):
        return self._register_handle(fd, callback, args, False, WAIT_LEVEL)

    def _wait_readable(self, int fd, callback, tuple args):
        """add_reader for one wait (pollables' readability waits): the registration is
        one-shot, so the wait's end costs no EPOLL_CTL_DEL. After a wake-up that finds the
        fd not ready after all, call _rearm(fd)."""
        return self._register_handle(fd, callback, args, True, WAIT_ONESHOT)

    def _wait_sock_readable(self, sock, int fd, callback, tuple args):
        """_wait_sock for the Python half (sockops.py)."""
        return self._wait_sock(sock, fd, callback, args)

    cdef Handle _wait_sock(self, object sock, int fd, object callback, tuple args):
        """add_reader for one wait of a sock_* operation whose call on `sock` (fd `fd`)
        just said "not ready". Such a wait may be edge-triggered: its operation has tried
        first, so any data it waits for arrives after the registration, and an edge comes.
        The registration stays, idle, when the wait ends, and a busy connection's next wait
        costs no system call at all (a one-shot registration costs a re-arm per wait; the
        echo benchmark's sock mode waits at every message). Skipping the system call needs
        proof that the registration is still for this fd's file: a registration lives as
        long as its file is open, the fd number may have been closed and reused since, and
        a registration re-issued on the fd (as every other add does) is how epoll says so.
        The proof is the socket object: the same one as at the last registration (held
        weakly), still open with the same fd, owns the same open file. A wake-up that
        finds nothing to read needs no re-arm: the next data brings the next edge."""
        cdef HandleWatcher watcher
        cdef Handle handle
        cdef object found
        if self._poller.holds_files:
            # io_uring: an idle registration would hold the socket's file open after its
            # owner closes it (poller.pxd); every wait is one-shot there.
            return self._register_handle(fd, callback, args, True, WAIT_ONESHOT)
        found = self._table_get(fd)
        if found is not None and type(found) is HandleWatcher:
            watcher = <HandleWatcher>found
            if (
                watcher.reader is None
                and watcher.writer is None
                and watcher.registered == EDGE_READ
                and watcher.sock_ref is not None
            ):
                # (A closed loop's table is empty: no check for that here.)
                if cq_weakref_is(watcher.sock_ref, sock):
                    handle = new_handle(callback, args, self, None)
                    watcher.reader = handle
                    return handle
        handle = self._register_handle(fd, callback, args, True, WAIT_EDGE)
        watcher = <HandleWatcher>self._table_get(fd)
        if watcher.registered == EDGE_READ:
            try:
                watcher.sock_ref = PyWeakref_NewRef(sock, None)
            except TypeError:
                pass  # no weak references: every wait re-issues the registration
        return handle

    def _rearm(self, int fd):
        """Re-arm a one-shot registration that fired while its wait goes on."""
        cdef FdWatcher watcher
        found = self._table_get(fd)
        if found is not None:
            watcher = <FdWatcher>found
            if watcher.disarmed and watcher.wanted():
                self._update_watcher(watcher, True)

    def _fd_handle(self, int fd, bint reading):
        """The handle registered to read (or write) fd, or None; a transport's watcher
        if a transport owns fd. cqloop.pollable asks, so as never to take over or drop a
        registration it did not make."""
        found = self._table_get(fd)
        if found is None or not isinstance(found, HandleWatcher):
            return found
        return (<HandleWatcher>found).reader if reading else (<HandleWatcher>found).writer

    cdef Handle _register_handle(self, int fd, object callback, tuple args, bint reading,
                                 int mode):
        cdef HandleWatcher watcher
        cdef Handle handle
        cdef Handle old
        self._check_closed()
        handle = new_handle(callback, args, self, None)
        found = self._table_get(fd)
        if found is None:
            watcher = HandleWatcher(fd)
            watcher.mode = mode
            if reading:
                watcher.reader = handle
            else:
                watcher.writer = handle
            self._install_watcher(watcher)
            return handle
        if not isinstance(found, HandleWatcher):
            _refuse_transport_fd(fd, found)
        watcher = <HandleWatcher>found
        # One mode per registration: level-triggered as soon as a plain add_reader or
        # add_writer shares it; a wait's own mode when it is alone (a wait replacing one
        # in the same direction keeps the mode it finds). Adding always re-issues the
        # registration below, which makes epoll report an fd that is ready already.
        if mode == WAIT_LEVEL or (watcher.reader is None and watcher.writer is None):
            watcher.mode = mode
        watcher.sock_ref = None
        old = _exchange(watcher, reading, handle)
        try:
            self._update_watcher(watcher, False)
        except BaseException:
            _exchange(watcher, reading, old)
            raise
        if old is not None:
            old.cancel()
        return handle

    def _remove_reader(self, int fd):
        self._check_no_transport(fd)
        return self._unregister_handle(fd, True)

    def _remove_writer(self, int fd):
        self._check_no_transport(fd)
        return self._unregister_handle(fd, False)

    cdef int _check_no_transport(self, int fd) except -1:
        """remove_reader/remove_writer on a transport's fd raise, as add_reader does and
        as asyncio's do (the transport would lose its registration behind its back)."""
        found = self._table_get(fd)
        if found is not None and not isinstance(found, HandleWatcher):
            _refuse_transport_fd(fd, found)
        return 0

    cdef bint _unregister_handle(self, int fd, bint reading) except -1:
        """remove_reader/remove_writer; also how a compiled sock_* wait ends (sockio.pyx),
        once per message in a busy connection: a C call, not a method lookup."""
        cdef HandleWatcher watcher
        cdef Handle handle
        if self._closed:
            return False
        found = self._table_get(fd)
        if found is None or not isinstance(found, HandleWatcher):
            return False
        watcher = <HandleWatcher>found
        handle = _exchange(watcher, reading, None)
        if handle is None:
            return False
        self._update_watcher(watcher, True)
        handle.cancel()
        return True
