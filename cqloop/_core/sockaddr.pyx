# cython: freethreading_compatible=False
"""Raw socket addresses and their Python form, made on demand.

asyncio's transports record "sockname" and "peername" when they are made; formatting an
IPv4 address (inet_ntop, the port, a tuple) costs about 1,200 instructions, two of them
2,500 of a connection that lives for one request. The stream transports keep the raw
sockaddr the kernel gave (accept4's peer address; getsockname's and getpeername's, read
just before the fd closes when nobody asked) and format it when get_extra_info first
asks, to the very value the socket module's getsockname()/getpeername() would return:
AF_INET (host, port); AF_INET6 (host, port, flowinfo, scope_id), the host without a
%scope suffix (the socket module's since 3.7); AF_UNIX the path as str, an abstract
name (leading NUL) as bytes, '' for an unnamed socket. Other families are left to the
socket module (NotImplemented here): their transports always hold a socket object.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.string cimport memset

from cqloop._core.includes.sockaddr cimport (
    AF_INET,
    AF_INET6,
    AF_UNIX,
    INET6_ADDRSTRLEN,
    getpeername,
    getsockname,
    inet_ntop,
    ntohl,
    ntohs,
    sockaddr,
    sockaddr_in,
    sockaddr_in6,
    sockaddr_storage,
    sockaddr_un,
)
from cqloop._core.includes.sockets cimport socklen_t


cdef extern from "Python.h":
    object PyUnicode_DecodeFSDefault(const char *s)
    object PyUnicode_FromString(const char *s)


cdef bytes raw_socket_name(int fd, bint peer):
    cdef sockaddr_storage addr
    cdef socklen_t size = sizeof(addr)
    cdef int rc
    memset(&addr, 0, sizeof(addr))
    if peer:
        rc = getpeername(fd, <sockaddr *>&addr, &size)
    else:
        rc = getsockname(fd, <sockaddr *>&addr, &size)
    if rc < 0:
        return None
    if size > sizeof(addr):
        size = sizeof(addr)
    return PyBytes_FromStringAndSize(<char *>&addr, size)


cdef bint formats(bytes raw) noexcept:
    if raw is None:
        return False
    if PyBytes_GET_SIZE(raw) < <Py_ssize_t>sizeof(sockaddr):
        # No family (an unnamed socket's empty address): format_sockaddr says None.
        return True
    family = (<const sockaddr *>PyBytes_AS_STRING(raw)).sa_family
    return family == AF_INET or family == AF_INET6 or family == AF_UNIX


cdef object format_sockaddr(bytes raw):
    cdef const char *data = PyBytes_AS_STRING(raw)
    cdef Py_ssize_t size = PyBytes_GET_SIZE(raw)
    cdef Py_ssize_t path_size
    cdef char host[INET6_ADDRSTRLEN + 1]
    cdef const sockaddr_in *v4
    cdef const sockaddr_in6 *v6
    cdef const sockaddr_un *unix
    if size == 0:
        return None
    family = (<const sockaddr *>data).sa_family
    if family == AF_INET and size >= <Py_ssize_t>sizeof(sockaddr_in):
        v4 = <const sockaddr_in *>data
        inet_ntop(AF_INET, &v4.sin_addr, host, sizeof(host))
        return (PyUnicode_FromString(host), ntohs(v4.sin_port))
    if family == AF_INET6 and size >= <Py_ssize_t>sizeof(sockaddr_in6):
        v6 = <const sockaddr_in6 *>data
        inet_ntop(AF_INET6, &v6.sin6_addr, host, sizeof(host))
        return (
            PyUnicode_FromString(host),
            ntohs(v6.sin6_port),
            ntohl(v6.sin6_flowinfo),
            v6.sin6_scope_id,
        )
    if family == AF_UNIX:
        unix = <const sockaddr_un *>data
        path_size = size - (<const char *>unix.sun_path - data)
        if path_size > 0 and unix.sun_path[0] == 0:
            return PyBytes_FromStringAndSize(unix.sun_path, path_size)
        if path_size <= 0:
            return ""
        # A bytes object's data ends with a NUL past its size, so the path ends in it.
        return PyUnicode_DecodeFSDefault(unix.sun_path)
    return NotImplemented


def format_raw_sockaddr(bytes raw not None):
    """format_sockaddr for the tests: the Python form of a raw sockaddr."""
    return format_sockaddr(raw)


def raw_name(int fd, bint peer=False):
    """raw_socket_name for the tests: the fd's raw sockaddr bytes, or None."""
    return raw_socket_name(fd, peer)
