/* recv and send as plain system calls, for every recv and send of the core (sockets.pxd
 * declares them under those names). glibc's recv and send are thread
 * cancellation points: in a process with more than one thread, each call switches
 * asynchronous cancellation on and off around the system call, about 35 instructions of
 * bookkeeping per call (callgrind: a 1 KiB echo, one recv and one send, went from 2,086
 * to 1,989 instructions). Python never cancels its threads with pthread_cancel, so the
 * bookkeeping buys nothing here. syscall(2) sets errno as the wrappers do. */
#ifndef CQLOOP_SYSCALL_H
#define CQLOOP_SYSCALL_H

#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

static inline ssize_t
cq_recv(int fd, void *buf, size_t n, int flags)
{
    return (ssize_t)syscall(SYS_recvfrom, fd, buf, n, flags, NULL, NULL);
}

static inline ssize_t
cq_send(int fd, const void *buf, size_t n, int flags)
{
    return (ssize_t)syscall(SYS_sendto, fd, buf, n, flags, NULL, 0);
}

#endif
