# Socket addresses and the calls that make or read them: accept4 for the compiled accept
# path (acceptor.pyx), getsockname/getpeername and the formatting of what they return
# (sockaddr.pyx), setsockopt for TCP_NODELAY. Only declarations live here.

from libc.stdint cimport uint16_t, uint32_t

from cqloop._core.includes.sockets cimport socklen_t


cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned short sa_family_t

    struct sockaddr:
        sa_family_t sa_family

    struct sockaddr_storage:
        sa_family_t ss_family

    enum:
        AF_INET
        AF_INET6
        AF_UNIX
        SOCK_STREAM
        SOCK_NONBLOCK
        SOCK_CLOEXEC

    int accept4(int fd, sockaddr *addr, socklen_t *addrlen, int flags)
    int getsockname(int fd, sockaddr *addr, socklen_t *addrlen)
    int getpeername(int fd, sockaddr *addr, socklen_t *addrlen)
    int setsockopt(int fd, int level, int name, const void *value, socklen_t size)


cdef extern from "<netinet/in.h>" nogil:
    enum:
        IPPROTO_TCP
        INADDR_ANY

    struct in_addr:
        uint32_t s_addr

    struct in6_addr:
        pass

    const in6_addr in6addr_any

    struct sockaddr_in:
        sa_family_t sin_family
        uint16_t sin_port
        in_addr sin_addr

    struct sockaddr_in6:
        sa_family_t sin6_family
        uint16_t sin6_port
        uint32_t sin6_flowinfo
        in6_addr sin6_addr
        uint32_t sin6_scope_id

    uint16_t ntohs(uint16_t value)
    uint32_t ntohl(uint32_t value)


cdef extern from "<netinet/tcp.h>" nogil:
    enum:
        TCP_NODELAY


cdef extern from "<arpa/inet.h>" nogil:
    enum:
        INET6_ADDRSTRLEN
    const char *inet_ntop(int family, const void *src, char *dst, socklen_t size)


cdef extern from "<sys/un.h>" nogil:
    struct sockaddr_un:
        sa_family_t sun_family
        char sun_path[108]


cdef extern from "<errno.h>" nogil:
    enum:
        ECONNABORTED
        EMFILE
        ENFILE
        ENOBUFS
