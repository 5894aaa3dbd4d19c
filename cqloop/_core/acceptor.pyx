# cython: freethreading_compatible=False
"""Acceptor: the compiled accept path of a listening TCP or Unix socket.

cqloop.transports.server.Server puts one on each plain listening socket (a socket.socket
of family AF_INET, AF_INET6 or AF_UNIX, with no TLS) as the loop's reader for its fd; the
policy stays in the Server (serving, closing, the out-of-fds pause and its report). Per
readiness event it accepts up to `backlog` connections, as asyncio does, with accept4
(non-blocking and close-on-exec from the start: no fcntl calls), and for each makes the
protocol and the public transport straight from the fd (stream.accepted_transport): no
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

from libc.string cimport strerror

from cpython.bytes cimport PyBytes_FromStringAndSize

from cqloop._core.includes.sockaddr cimport (
    AF_INET,
    AF_INET6,
    ECONNABORTED,
    EMFILE,
    ENFILE,
    ENOBUFS,
    IPPROTO_TCP,
    SOCK_CLOEXEC,
    SOCK_NONBLOCK,
    SOCK_STREAM,
    TCP_NODELAY,
    accept4,
    setsockopt,
    sockaddr,
    sockaddr_storage,
)
from cqloop._core.includes.sockets cimport socklen_t
from cqloop._core.includes.system cimport EAGAIN, EINTR, ENOMEM, close, errno
from cqloop._core.kernel cimport Kernel
from cqloop._core.sockaddr cimport format_sockaddr
from cqloop._core.stream cimport StreamTransport

logger = logging.getLogger("asyncio")


cdef object accepted_transport(Kernel loop, type owner_class, int fd, int family, int kind,
                               int proto, bytes peer, object protocol, object server,
                               set clients):
    """The public transport (an owner_class, SocketTransport) of a connection accept4 gave
    as a bare fd (acceptor.pyx), with what SocketTransport.__init__ does for one, less
    its Python call: no socket object (made if asked for, StreamTransport.socket_object),
    the peer address kept raw, the transport added to the server's `clients`, and
    connection_made and the start of reading scheduled, asyncio's two callbacks."""
    cdef StreamTransport self = StreamTransport.__new__(StreamTransport)
    cdef dict extra = {}
    self._family = family
    self._type = kind
    self._proto = proto
    self._peer_raw = peer
    try:
        owner = owner_class.__new__(owner_class)
        owner._loop = loop
        owner._core = self
        owner._extra = extra
        self._setup(loop, owner, fd, protocol, extra, server)
    except BaseException:
        # The fd is the caller's until the engine holds it (_setup's last step).
        if not self._open:
            close(fd)
        raise
    clients.add(owner)
    context = self._context
    loop._call_soon(self._connection_made, (), context)
    loop._call_soon(self._start_reading, (), context)
    return owner


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
            accepted_transport(loop, self.transport_class, fd, self.family, self.kind,
                               self.proto, peer, protocol, self.server, self.clients)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            # accepted_transport closed the fd unless its engine holds it.
            self._report(exc)
            return 0
        if loop._debug:
            logger.debug("%r got a new connection from %r", self.server, format_sockaddr(peer))
        return 0

    cdef int _report(self, object exc) except -1:
        self.loop.call_exception_handler({
            "message": "Error on transport creation for incoming connection",
            "exception": exc,
        })
        return 0
