# cython: freethreading_compatible=False
"""Acceptor: the compiled accept path of a listening TCP or Unix socket.

cqloop.transports.server.Server puts one on each plain listening socket (a socket.socket
of family AF_INET, AF_INET6 or AF_UNIX, with no TLS) as the loop's reader for its fd; the
policy stays in the Server (serving, closing, the out-of-fds pause and its report). Per
readiness event it accepts up to `backlog` connections, as asyncio does, with accept4
(non-blocking and close-on-exec from the start: no fcntl calls), and for each makes the
protocol and the public transport straight from the fd (Acceptor._make_owner): no
socket object, no formatted peer address (both made if ever asked for), TCP_NODELAY set
on the fd. Python's socket.accept() and a SocketTransport.__init__ per connection cost
about 9,000 instructions of a connection that lives for one HTTP request.

Errors follow asyncio's _accept_connection: EAGAIN, EINTR and ECONNABORTED end the batch;
running out of fds (EMFILE, ENFILE, ENOBUFS, ENOMEM) goes to the Server's
_on_out_of_resources; any other accept error propagates to the reader's handle (the
exception handler). A protocol factory or transport that fails closes the connection and
is reported to the exception handler, and accepting goes on.
"""

import logging

from libc.string cimport memcmp, strerror

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.object cimport PyObject, PyTypeObject
from cpython.ref cimport Py_INCREF

from cqloop._core.includes.sockaddr cimport (
    AF_INET,
    AF_INET6,
    AF_UNIX,
    ECONNABORTED,
    EMFILE,
    ENFILE,
    ENOBUFS,
    INADDR_ANY,
    IPPROTO_TCP,
    SOCK_CLOEXEC,
    SOCK_NONBLOCK,
    SOCK_STREAM,
    TCP_NODELAY,
    accept4,
    in6_addr,
    in6addr_any,
    setsockopt,
    sockaddr,
    sockaddr_in,
    sockaddr_in6,
    sockaddr_storage,
)
from cqloop._core.includes.pyapi cimport cq_type_generic_alloc
from cqloop._core.includes.sockets cimport socklen_t
from cqloop._core.includes.system cimport EAGAIN, EINTR, ENOMEM, close, errno
from cqloop._core.kernel cimport Kernel
from cqloop._core.sockaddr cimport format_sockaddr, raw_socket_name
from cqloop._core.stream cimport StreamTransport

from cqloop._core.sockio import slot_offset

logger = logging.getLogger("asyncio")


cdef bytes _shared_local_address(int fd, int family):
    # A connection accepted on a Unix socket has the listener's address; on TCP, the
    # listener's address unless that is the wildcard (then it is the address the peer
    # reached, known only to getsockname on the connection).
    cdef bytes raw = raw_socket_name(fd, False)
    cdef const char *data
    if raw is None:
        return None
    data = PyBytes_AS_STRING(raw)
    if family == AF_UNIX:
        return raw
    if family == AF_INET and PyBytes_GET_SIZE(raw) >= <Py_ssize_t>sizeof(sockaddr_in):
        if (<const sockaddr_in *>data).sin_addr.s_addr != INADDR_ANY:
            return raw
    elif family == AF_INET6 and PyBytes_GET_SIZE(raw) >= <Py_ssize_t>sizeof(sockaddr_in6):
        if memcmp(&(<const sockaddr_in6 *>data).sin6_addr, &in6addr_any, sizeof(in6_addr)):
            return raw
    return None


cdef inline int _set_slot(object owner, Py_ssize_t offset, object value) except -1:
    # Store into a fresh instance's slot at an offset Acceptor checked (empty until now).
    cdef PyObject **slot = <PyObject **>(<char *><PyObject *>owner + offset)
    Py_INCREF(value)
    slot[0] = <PyObject *>value
    return 0


cdef class Acceptor:
    """Accepts the connections waiting on one listening socket (see the module
    docstring); called by the loop when the socket is readable."""

    cdef Kernel loop
    cdef object server
    cdef object sock
    cdef object protocol_factory
    cdef type transport_class
    cdef set clients
    cdef int fd
    cdef int family
    cdef int kind
    cdef int proto
    cdef int backlog
    cdef bint nodelay
    # transport_class has object's __new__ (a new instance is PyType_GenericAlloc's), and
    # the offsets of its `_loop`, `_core` and `_extra` slots, -1 where they are set by name
    # (see sockio.slot_offset, which checks them once).
    # The listening socket's own address as a raw sockaddr, when every connection it
    # accepts has that address too (a Unix socket, or TCP bound to one address rather
    # than the wildcard): given to each connection, it saves a getsockname() at close.
    cdef bytes local_raw
    cdef bint plain_new
    cdef Py_ssize_t loop_offset
    cdef Py_ssize_t core_offset
    cdef Py_ssize_t extra_offset
    # The server's out-of-fds report was made since the last connection accepted.
    cdef bint starved

    def __init__(self, Kernel loop not None, server, sock, int family, int kind, int proto,
                 protocol_factory, type transport_class not None, int backlog,
                 set clients not None):
        self.loop = loop
        self.server = server
        self.sock = sock
        self.fd = sock.fileno()
        self.family = family
        self.kind = kind
        self.proto = proto
        self.protocol_factory = protocol_factory
        self.transport_class = transport_class
        self.backlog = backlog
        self.clients = clients
        # asyncio's transports turn Nagle's algorithm off on TCP stream sockets.
        self.nodelay = (family == AF_INET or family == AF_INET6) and kind == SOCK_STREAM
        self.local_raw = _shared_local_address(self.fd, family)
        self.plain_new = transport_class.__new__ is object.__new__
        self.loop_offset = slot_offset(transport_class, "_loop")
        self.core_offset = slot_offset(transport_class, "_core")
        self.extra_offset = -1
        for base in transport_class.__mro__:
            if "_extra" in base.__dict__:
                self.extra_offset = slot_offset(base, "_extra")
                break

    def __call__(self):
        self._accept()

    def stop(self):
        """The server stopped accepting on the socket (and may close it): a batch under
        way ends, and the fd number, which the kernel may give to a new file at once, is
        never used again."""
        self.fd = -1

    cdef int _accept(self) except -1:
        cdef sockaddr_storage addr
        cdef socklen_t size
        cdef int fd
        cdef int err
        cdef int one = 1
        cdef int _
        for _ in range(self.backlog):
            # A protocol factory may have closed the server during this batch.
            if self.fd < 0:
                return 0
            size = sizeof(addr)
            fd = accept4(self.fd, <sockaddr *>&addr, &size, SOCK_NONBLOCK | SOCK_CLOEXEC)
            if fd < 0:
                err = errno
                if err == EAGAIN or err == EINTR or err == ECONNABORTED:
                    return 0
                exc = OSError(err, strerror(err).decode("utf-8", "replace"))
                if err == EMFILE or err == ENFILE or err == ENOBUFS or err == ENOMEM:
                    self.starved = True
                    self.server._on_out_of_resources(self.sock, exc)
                    return 0
                raise exc
            if self.starved:
                self.starved = False
                self.server._accept_error_logged = False
            if size > sizeof(addr):
                size = sizeof(addr)
            peer = PyBytes_FromStringAndSize(<char *>&addr, size)
            if self.nodelay:
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one))
            self._make_transport(fd, peer)
        return 0

    cdef int _make_transport(self, int fd, bytes peer) except -1:
        cdef Kernel loop = self.loop
        try:
            protocol = self.protocol_factory()
        except (SystemExit, KeyboardInterrupt):
            close(fd)
            raise
        except BaseException as exc:
            close(fd)
            self._report(exc)
            return 0
        try:
            self._make_owner(fd, peer, protocol)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            # _make_owner closed the fd unless its engine holds it.
            self._report(exc)
            return 0
        if loop._debug:
            logger.debug("%r got a new connection from %r", self.server, format_sockaddr(peer))
        return 0

    cdef object _make_owner(self, int fd, bytes peer, object protocol):
        """The public transport (a transport_class, SocketTransport) of a connection
        accept4 gave as a bare fd, with what SocketTransport.__init__ does for one, less
        its Python call and attribute lookups: no socket object (made if asked for,
        SocketEnds.socket_object), the peer address kept raw, the transport added to the
        server's `clients`, and connection_made and the start of reading scheduled,
        asyncio's two callbacks. The fd is closed if the engine does not take it."""
        cdef Kernel loop = self.loop
        cdef StreamTransport core = StreamTransport.__new__(StreamTransport)
        cdef dict extra = {}
        core._family = self.family
        core._type = self.kind
        core._proto = self.proto
        core._peer_raw = peer
        core._sockname_raw = self.local_raw
        try:
            if self.plain_new:
                owner = cq_type_generic_alloc(<PyTypeObject *>self.transport_class, 0)
            else:
                owner = self.transport_class.__new__(self.transport_class)
            if self.loop_offset >= 0:
                _set_slot(owner, self.loop_offset, loop)
            else:
                owner._loop = loop
            if self.core_offset >= 0:
                _set_slot(owner, self.core_offset, core)
            else:
                owner._core = core
            if self.extra_offset >= 0:
                _set_slot(owner, self.extra_offset, extra)
            else:
                owner._extra = extra
            core._setup(loop, owner, fd, protocol, extra, self.server)
        except BaseException:
            # The fd is ours until the engine holds it (_setup's last step).
            if not core._open:
                close(fd)
            raise
        self.clients.add(owner)
        context = core._context
        loop._call_soon(core._connection_made, (), context)
        loop._call_soon(core._start_reading, (), context)
        return owner

    cdef int _report(self, object exc) except -1:
        self.loop.call_exception_handler({
            "message": "Error on transport creation for incoming connection",
            "exception": exc,
        })
        return 0
