# SocketEnds: a stream transport's socket, its fd's ownership and the extra info about
# its two ends (see sockends.pyx); StreamTransport (stream.pxd) is built on it.

from cqloop._core.watchers cimport FdWatcher


cdef class SocketEnds(FdWatcher):
    # The socket object, or None: an accepted connection makes one only when asked for.
    cdef readonly object _sock
    # The fd is open: from construction until connection_lost closes it.
    cdef readonly bint _open
    # asyncio's extra info; "socket", "sockname" and "peername" join it when first asked.
    cdef public dict _extra
    # The peer's address as the socket module gave it (a server's Python accept path),
    # until fill_socket_info moves it into _extra.
    cdef object _peername
    # The raw sockaddrs (sockaddr.pyx) of the peer (from accept4, or read at close) and
    # of this end (read at close), until fill_socket_info formats them into _extra.
    cdef bytes _peer_raw
    cdef bytes _sockname_raw
    # The socket's family, type and proto, for the socket object an accepted connection
    # makes only when asked for (_socket_object); and that object once closed.
    cdef int _family
    cdef int _type
    cdef int _proto
    cdef object _closed_sock

    cdef int _close_socket(self) except -1
    cdef int _keep_socket_info(self) except -1
    cdef object _socket_object(self)
    cdef object _address(self, bint peer)
