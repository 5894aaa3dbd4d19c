# Raw socket addresses, kept as the kernel gave them and made into Python values only when
# asked for (see sockaddr.pyx).

# The address the socket's fd is bound to (or, with peer, connected to), as raw sockaddr
# bytes; None when the kernel refuses (not connected, closed).
cdef bytes raw_socket_name(int fd, bint peer)
# A raw sockaddr as the socket module gives it (a (host, port) tuple, (host, port,
# flowinfo, scope_id), a Unix path); NotImplemented for a family formatted only by the
# socket module.
cdef object format_sockaddr(bytes raw)
# Whether format_sockaddr formats the family of this raw sockaddr.
cdef bint formats(bytes raw) noexcept
