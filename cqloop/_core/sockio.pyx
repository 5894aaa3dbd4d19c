# cython: binding=True
"""The hot loop.sock_* coroutines: sock_recv, sock_recv_into and sock_sendall.

cqloop.transports.sockops.SockOpsMixin binds these as its methods (they are compiled
functions with method binding); everything else about the sock_* family stays there, in
Python: the checks' wording, sock_sendall's wait for writability, and the other
operations. Here is the path a busy connection takes at every message: the argument
checks in the common case (a plain socket.socket, debug mode off: nothing to check), the
system call tried at once on the fd, and its result returned without a future. They are
compiled, and make the first call themselves, because a Python coroutine's frame, the
method call that checks a socket and the socket module's call (argument parsing, a GIL
release around a call that cannot block, a 64 KiB bytes object shrunk to what came) cost
about as much as the two system calls an echo makes per message (benchmarks/echo, sock
mode).

The first call is made with MSG_DONTWAIT: it never blocks, whatever the socket's mode. A
socket left blocking (or with a timeout) is a caller's error asyncio reports in debug mode
only; outside it, asyncio's first recv() blocks the whole loop, ours waits for the fd as
for a non-blocking socket. Errors are the socket module's: OSError from errno (so
ConnectionResetError and the rest), and anything unusual about the arguments (a negative
or non-int size, a read-only or non-contiguous buffer) goes to the socket method itself,
which raises its own error.

A receive that finds nothing waits here (a large-message stream waits at most
messages): _ReadWait is its registration's callback, and the waiting coroutine
removes the registration when it resumes, in a `finally` (whether the future got a result
or an error, or was cancelled with its task, or the coroutine was closed), unless another
operation replaced it meanwhile. That keeps sockops.py's invariant as far as anyone can
observe (a registration whose future is done is never acted on: the callback checks), at
the cost of no done callback: a done callback is one more handle through the ready queue
per message. A sock_sendall
that could not send everything awaits the future of SockOpsMixin._sendall_when_writable.
Any other socket (an SSLSocket, a subclass) and debug mode go through its _check_sock.

While any sock_* operation waits on a socket, the loop co-owns its fd (FdClaim, below,
used by every waiting operation here and in sockops.py): socket.close() then fails the
waiting operations at once with EBADF, as the socket's own methods fail after close, and
the fd is really closed when the last of them has ended and dropped its registration.
Without that, close() under a wait left the operation pending forever (epoll drops a
closed file's registration silently) and released the fd number for reuse while the
loop still had a registration, and a callback, for it.
"""

import errno as _errno
import os
import socket
from asyncio.events import _get_running_loop
from types import MemberDescriptorType

from libc.string cimport strerror

from cpython.buffer cimport PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.object cimport PyObject

from cqloop._core.handles cimport Handle
from cqloop._core.includes.members cimport MEMBER_OBJECT_EX, PyMemberDef, PyMemberDescrObject
from cqloop._core.includes.rawbytes cimport (
    cq_bytes_data,
    cq_bytes_new,
    cq_bytes_resize,
    cq_decref,
)
from cqloop._core.includes.sockets cimport MSG_DONTWAIT, recv, send
from cqloop._core.includes.system cimport EAGAIN, EINTR, errno
from cqloop._core.kernel cimport Kernel

cdef enum:
    # recv() lands here and the bytes come out as a copy of what arrived (no allocation of
    # the requested size); the GIL is held from recv to copy, so one buffer serves all.
    RECV_BUFFER_SIZE = 64 * 1024
    # A receive of more than this many bytes makes the next ones receive straight into a
    # bytes object of the requested size instead (copying it would cost more than the
    # allocation saves).
    LARGE_RECV_BYTES = 16 * 1024
    # What _recv_into_nowait and _send_nowait return besides a byte count.
    NOT_READY = -1  # EAGAIN or EINTR: wait for the fd
    NOT_SIMPLE = -2  # an argument for the socket method to handle (and raise about)

# The only type for which there is nothing to check (SSLSocket and other subclasses are
# checked by SockOpsMixin._check_sock).
cdef object _PLAIN_SOCKET = socket.socket
# Errors that mean "not ready yet, try again when the fd is".
cdef tuple _NOT_READY = (BlockingIOError, InterruptedError)

cdef char _recv_buffer[RECV_BUFFER_SIZE]
# The last receive (of any socket) was large: see LARGE_RECV_BYTES.
cdef bint _large_recvs = False


async def sock_recv(Kernel self, sock, n):
    """Receive up to n bytes from a connected socket."""
    if type(sock) is not _PLAIN_SOCKET or self._debug:
        self._check_sock(sock)
    if type(n) is int and n > 0:
        data = _recv_nowait(sock.fileno(), n)
        if data is not None:
            return data
    else:
        try:
            return sock.recv(n)
        except _NOT_READY:
            pass
    wait = _start_wait(self, sock, n, False)
    try:
        return await wait.fut
    finally:
        wait.finish()


async def sock_recv_into(Kernel self, sock, buf):
    """Receive into the writable buffer buf; return the number of bytes received."""
    cdef Py_ssize_t received
    if type(sock) is not _PLAIN_SOCKET or self._debug:
        self._check_sock(sock)
    received = _recv_into_nowait(sock.fileno(), buf)
    if received >= 0:
        return received
    if received == NOT_SIMPLE:
        try:
            return sock.recv_into(buf)
        except _NOT_READY:
            pass
    wait = _start_wait(self, sock, buf, True)
    try:
        return await wait.fut
    finally:
        wait.finish()


async def sock_sendall(Kernel self, sock, data):
    """Send all of data on a connected socket, however many send() calls it takes.
    On error there is no telling how much the peer received."""
    cdef Py_ssize_t sent
    if type(sock) is not _PLAIN_SOCKET or self._debug:
        self._check_sock(sock)
    sent = _send_nowait(sock.fileno(), data)
    if sent == NOT_SIMPLE:
        try:
            sent = sock.send(data)
        except _NOT_READY:
            sent = 0
    elif sent == NOT_READY:
        sent = 0
    if sent == len(data):
        return
    await self._sendall_when_writable(sock, data, sent)


# -- one system call each, never blocking --------------------------------------------------

cdef inline bint _not_ready(int err) noexcept:
    # EWOULDBLOCK is EAGAIN on Linux.
    return err == EAGAIN or err == EINTR


cdef object _recv_nowait(int fd, Py_ssize_t n):
    """recv(fd, n) as bytes; None when not ready; raises OSError for any other error."""
    global _large_recvs
    cdef Py_ssize_t got
    cdef int err
    cdef PyObject *raw
    cdef object data
    if _large_recvs or n > RECV_BUFFER_SIZE:
        raw = cq_bytes_new(NULL, n)
        got = recv(fd, cq_bytes_data(raw), n, MSG_DONTWAIT)
        if got < 0:
            err = errno
            cq_decref(raw)
            return _recv_failed(err)
        if got != n:
            # Its sole reference: shrunk where it is (on failure it is released).
            cq_bytes_resize(&raw, got)
        data = <object>raw
        cq_decref(raw)
    else:
        got = recv(fd, _recv_buffer, n, MSG_DONTWAIT)
        if got < 0:
            return _recv_failed(errno)
        data = PyBytes_FromStringAndSize(_recv_buffer, got)
    _large_recvs = got > LARGE_RECV_BYTES
    return data


cdef object _recv_failed(int err):
    if _not_ready(err):
        return None
    raise _os_error(err)


cdef object _os_error(int err):
    # What the socket module raises: OSError(errno, strerror), which picks the errno's
    # subclass (ConnectionResetError, BrokenPipeError, ...).
    return OSError(err, strerror(err).decode("utf-8", "replace"))


cdef Py_ssize_t _recv_into_nowait(int fd, object buf) except -3:
    cdef Py_buffer view
    cdef Py_ssize_t got
    cdef int err
    try:
        PyObject_GetBuffer(buf, &view, PyBUF_WRITABLE | PyBUF_SIMPLE)
    except (TypeError, BufferError):
        return NOT_SIMPLE
    got = recv(fd, view.buf, view.len, MSG_DONTWAIT)
    err = errno
    PyBuffer_Release(&view)
    if got >= 0:
        return got
    if _not_ready(err):
        return NOT_READY
    raise _os_error(err)


cdef Py_ssize_t _send_nowait(int fd, object data) except -3:
    cdef Py_buffer view
    cdef Py_ssize_t sent
    cdef int err
    try:
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    except (TypeError, BufferError):
        return NOT_SIMPLE
    sent = send(fd, view.buf, view.len, MSG_DONTWAIT)
    err = errno
    PyBuffer_Release(&view)
    if sent >= 0:
        return sent
    if _not_ready(err):
        return NOT_READY
    raise _os_error(err)


# -- waiting for the fd --------------------------------------------------------------------


cdef class _ReadWait:
    """One receive waiting for its socket: retried each time the fd is readable until the
    call does not say "not ready" (an edge-triggered registration, Kernel._wait_sock); its
    future gets the result or the error."""

    cdef Kernel loop
    cdef object sock
    cdef object fut
    # recv's byte count, or recv_into's buffer.
    cdef object arg
    cdef bint into
    # A plain socket.socket: the retry is the compiled call, not the socket's method.
    cdef bint plain
    cdef int fd
    cdef Handle handle
    # The loop's hold on the fd while the wait lasts (None for a socket-like object
    # without socket.socket's close protocol).
    cdef FdClaim claim

    def __call__(self):
        # The registration's callback: the fd is readable.
        if self.fut.done():
            # Cancelled, with this call already queued: finish() removes the registration.
            return
        try:
            result = self._retry()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self.fut.set_exception(exc)
            return
        if result is None:
            # Not ready after all: wait on. An edge-triggered registration needs nothing
            # (the next data brings the next edge); a one-shot one (the wait took over a
            # pollable's on the same fd, and its mode) must be re-armed.
            self.loop._rearm(self.fd)
            return
        self.fut.set_result(result)

    cdef object _retry(self):
        """The receive again: its result, or None when the fd is not ready after all."""
        cdef Py_ssize_t got
        if self.plain:
            if not self.into:
                return _recv_nowait(self.fd, self.arg)
            got = _recv_into_nowait(self.fd, self.arg)
            if got >= 0:
                return got
            if got == NOT_READY:
                return None
        try:
            return self.sock.recv_into(self.arg) if self.into else self.sock.recv(self.arg)
        except _NOT_READY:
            return None

    cdef int finish(self) except -1:
        # The waiting coroutine resumed: the only place the registration goes, and not if
        # another operation replaced it (the kernel cancelled our handle then).
        if not self.handle._cancelled:
            self.loop._unregister_handle(self.fd, True)
        if self.claim is not None:
            # After the registration went: a close() meanwhile closes the fd now.
            self.claim.release(self.sock, self.fut)
        return 0


cdef _ReadWait _start_wait(Kernel loop, object sock, object arg, bint into):
    """Register a receive retried whenever sock is readable; await its .fut, then finish()."""
    cdef _ReadWait wait = _ReadWait.__new__(_ReadWait)
    wait.loop = loop
    wait.sock = sock
    wait.arg = arg
    wait.into = into
    # sock_recv's compiled first try took the same path (a positive int size).
    wait.plain = type(sock) is _PLAIN_SOCKET and (into or (type(arg) is int and arg > 0))
    wait.fd = sock.fileno()
    wait.fut = loop.create_future()
    wait.handle = loop._wait_sock(sock, wait.fd, wait, ())
    wait.claim = _claim(sock, wait.fut)
    return wait


# -- the loop's claim on a waited-on socket's fd ------------------------------------------

# What a waiting operation raises when its socket is closed under it: the error the
# socket's own methods raise once it is closed.
cdef object _CLOSED_ERRNO = _errno.EBADF
cdef object _CLOSED_MESSAGE = os.strerror(_errno.EBADF)


cdef Py_ssize_t _slot_offset(type cls, str name):
    """Where the __slots__ attribute `name` of cls lives in its instances; -1 when it is not
    an object slot of cls that reads back, in place, what the attribute was set to (then
    the attribute is read by name). Checked on an instance made with cls.__new__(cls): the
    offset is trusted only if two values written through the attribute are the pointers
    found at it, so a CPython whose member layout differs from members.pxd's falls back to
    the attribute instead of reading the wrong memory."""
    cdef PyMemberDef *member
    cdef Py_ssize_t offset
    descr = cls.__dict__.get(name)
    if type(descr) is not MemberDescriptorType or descr.__objclass__ is not cls:
        return -1
    member = (<PyMemberDescrObject *>descr).d_member
    offset = member.offset
    if (
        member.type != MEMBER_OBJECT_EX
        or offset < <Py_ssize_t>sizeof(PyObject)
        or offset + <Py_ssize_t>sizeof(PyObject *) > cls.__basicsize__
    ):
        return -1
    try:
        probe = cls.__new__(cls)
    except Exception:
        return -1
    try:
        for marker in (object(), object()):
            setattr(probe, name, marker)
            if (<PyObject **>(<char *><PyObject *>probe + offset))[0] is not <PyObject *>marker:
                return -1
    except Exception:
        return -1
    finally:
        # Unset again: the probe's finaliser (if its class has one) finds it never set up.
        try:
            delattr(probe, name)
        except AttributeError:
            pass
    return offset


# socket.socket's `_io_refs` slot, read in place on the waiting path (see _claim); -1 when
# the check at import failed and _claim reads it by name. A socket.socket made by __new__
# alone has no fd (fileno() is -1), so the probe opens and closes nothing.
cdef Py_ssize_t _IO_REFS_OFFSET = _slot_offset(_PLAIN_SOCKET, "_io_refs")


def slot_offset(cls, name):
    """The offset _claim would read `name` at in instances of cls, or -1 (read by name):
    the import-time check, for the tests."""
    return _slot_offset(cls, name)


def io_refs_offset():
    """Where socket.socket's `_io_refs` is read in place, or -1 when it is read by name."""
    return _IO_REFS_OFFSET


cdef class FdClaim:
    """The loop's share in a socket's fd while sock_* operations wait on it.

    socket.socket.close() (CPython 3.11 to 3.14, socket.py) reads
        self._closed = True
        if self._io_refs <= 0:
            self._real_close()
    and _io_refs is the count of makefile() objects that keep the fd open past close();
    SocketIO.close() calls _decref_socketios, which closes the fd once the count is 0 if
    close() was called meanwhile. The first wait on a socket puts a claim in `_io_refs`,
    keeping the real count, and the claim stays there for the socket's life (so a busy
    connection's next waits cost one attribute read, not a write at each end). The `<=`
    of close() is how the claim learns of the close: if operations still wait, it fails
    them and answers "not yet", and the last of them to end closes the fd (release(), as
    _decref_socketios does); if none waits it answers as the count would. `>`, `+=` and
    `-=` work on the real count for makefile(). One claim per socket, shared by its
    waiting operations (a receive and a send often wait together). It holds no reference
    to its socket: the socket's life, and the warning of an unclosed one, stay as they
    were. close() may come from any thread (see _fail_waiting)."""

    # The socket's own _io_refs count.
    cdef object refs
    # The futures of the operations waiting on the socket, done ones included until they
    # release: the first in `first` (one is the common case), any others in `more`.
    cdef object first
    cdef list more
    # close() came while operations waited: the last to release closes the fd.
    cdef bint closing

    def __le__(self, other):
        # socket.close(), after it set the socket's _closed. `closing` goes first: an
        # operation releasing meanwhile in the loop's thread then closes the fd itself
        # (socket.close() twice is harmless).
        self.closing = True
        if self._fail_waiting():
            return False
        return self.refs <= other

    def __gt__(self, other):
        return self.refs > other

    def __lt__(self, other):
        return self.refs < other

    def __ge__(self, other):
        return self.refs >= other

    def __iadd__(self, other):
        self.refs = self.refs + other
        return self

    def __isub__(self, other):
        self.refs = self.refs - other
        return self

    def __index__(self):
        return self.refs

    def __repr__(self):
        return f"<FdClaim io_refs={self.refs!r} waiting={len(self._waiting())}>"

    cdef list _waiting(self):
        waiting = [] if self.first is None else [self.first]
        if self.more is not None:
            waiting.extend(self.more)
        return waiting

    cdef int _add(self, object fut) except -1:
        if self.closing:
            # The socket was closed while an earlier operation still held the fd open:
            # a new operation on it fails as on any closed socket (nothing would ever
            # wake it otherwise, and it would keep the fd open).
            _fail_closed(fut)
        if self.first is None:
            self.first = fut
        elif self.more is None:
            self.more = [fut]
        else:
            self.more.append(fut)
        return 0

    cdef bint _remove(self, object fut) except -1:
        """Forget fut; True when no operation is left."""
        if self.first is fut:
            self.first = None
        elif self.more is not None:
            self.more.remove(fut)
        return self.first is None and not self.more

    cdef bint _fail_waiting(self) except -1:
        """Fail the operations that still wait; True if any does (then the fd must stay
        open until it has released). A future of a loop not running in this thread is
        failed through that loop's call_soon_threadsafe, and one of a closed loop (nothing
        will ever run it) is given up."""
        cdef bint held = False
        running = _get_running_loop()
        for fut in self._waiting():
            if fut.done():
                continue
            loop = fut.get_loop()
            if loop is running:
                _fail_closed(fut)
                held = True
                continue
            try:
                loop.call_soon_threadsafe(_fail_closed, fut)
            except RuntimeError:
                self._remove(fut)
            else:
                held = True
        return held

    cdef int release(self, object sock, object fut) except -1:
        """The operation of `fut` on `sock` ended and its registration is gone."""
        if self._remove(fut) and self.closing:
            # The count goes back: close() then decides as it would have without us.
            sock._io_refs = self.refs
            sock.close()
        return 0


def _fail_closed(fut):
    # Also called through call_soon_threadsafe (a close() in another thread).
    if not fut.done():
        fut.set_exception(OSError(_CLOSED_ERRNO, _CLOSED_MESSAGE))


cdef FdClaim _claim(object sock, object fut):
    """The claim on sock's fd, with fut among its waiting operations; None when sock has
    no _io_refs (not a socket.socket)."""
    cdef FdClaim claim
    cdef PyObject *slot
    if type(sock) is _PLAIN_SOCKET and _IO_REFS_OFFSET >= 0:
        # A busy socket's claim is there already: found without an attribute lookup.
        slot = (<PyObject **>(<char *><PyObject *>sock + _IO_REFS_OFFSET))[0]
        if slot is not NULL and type(<object>slot) is FdClaim:
            claim = <FdClaim>slot
            claim._add(fut)
            return claim
    try:
        refs = sock._io_refs
    except AttributeError:
        return None
    if type(refs) is FdClaim:
        claim = <FdClaim>refs
    else:
        claim = FdClaim.__new__(FdClaim)
        claim.refs = refs
        sock._io_refs = claim
    claim._add(fut)
    return claim


cdef class _Release:
    # The done callback of a sockops.py operation's future (see claim_fd).
    cdef FdClaim claim
    cdef object sock

    def __call__(self, fut):
        self.claim.release(self.sock, fut)


def claim_fd(sock, fut):
    """Hold sock's fd open while fut (a waiting sock_* operation's future) is pending:
    socket.close() meanwhile fails fut with EBADF, and the fd is closed when the
    operations on it are done. Call it after adding the done callback that drops the
    operation's registration: this one, added next, runs after it."""
    cdef _Release release
    claim = _claim(sock, fut)
    if claim is not None:
        release = _Release.__new__(_Release)
        release.claim = claim
        release.sock = sock
        fut.add_done_callback(release)
