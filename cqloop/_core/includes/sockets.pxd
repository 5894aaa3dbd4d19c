# Socket calls the stream transport's read and write paths make directly on the fd (the
# socket module's methods cost an attribute lookup, argument parsing and a bytes object
# each). Only declarations live here; see stream.pyx.

cdef extern from "<sys/uio.h>" nogil:
    struct iovec:
        void *iov_base
        size_t iov_len


cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t

    struct msghdr:
        void *msg_name
        socklen_t msg_namelen
        iovec *msg_iov
        size_t msg_iovlen
        void *msg_control
        size_t msg_controllen
        int msg_flags

    enum:
        MSG_DONTWAIT
        MSG_NOSIGNAL
        SHUT_WR

    ssize_t sendmsg(int fd, const msghdr *msg, int flags)
    int shutdown(int fd, int how)


cdef extern from "cqsyscall.h" nogil:
    # recv and send as the system calls, without glibc's cancellation-point bookkeeping
    # (see cqsyscall.h): every recv and send the core makes (the stream transports', the
    # sock_* fast paths', the cq sockets' and their TLS's) goes through these two.
    ssize_t recv "cq_recv"(int fd, void *buf, size_t n, int flags)
    ssize_t send "cq_send"(int fd, const void *buf, size_t n, int flags)
