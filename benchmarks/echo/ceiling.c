/*
 * ceiling.c: a minimal echo server in C (one thread, epoll, level-triggered), the echo
 * benchmark's ceiling: what any event loop serving the same load could reach at best.
 * Built with -DCEILING_IO_URING (and cqloop's cquring.h on the include path) it serves on
 * io_uring instead: completions, not readiness (a multishot accept, a recv and a send in
 * flight per connection at most, over raw system calls, no liburing): the ceiling of an
 * io_uring engine.
 *
 *   ceiling -a tcp:HOST:PORT|unix:PATH [-p CPU]
 *
 * PORT may be 0. Once listening it prints {"address": "tcp:HOST:PORT"} (the bound port) or
 * {"address": "unix:PATH"} on stdout, as benchmarks/echo/server.py does; on an error it
 * prints {"error": "..."} and exits with status 1. It serves until its stdin reaches end of
 * file (the harness closes it, or dies) or it is killed. -p pins it to one CPU.
 *
 * Each connection has one buffer, read into while it has room and written from while it
 * holds data: what a read brings in is written back at once, and what the socket does not
 * take waits in the buffer, the connection then watched for output too. Reading goes on
 * meanwhile, as a Python transport's does (its write buffer is unbounded), so that a large
 * message is not held up chunk by chunk behind its own echo. That is one read and usually
 * one write per chunk of input, and no copy beyond moving a partly written tail to the front
 * of a full buffer: the least work an echo server can do on epoll.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#ifdef CEILING_IO_URING
#include <poll.h>
#include <sys/stat.h>
#include "cquring.h"
#endif

#define MAX_EVENTS 256
#define BUFFER_BYTES (256 * 1024) /* asyncio's read size for a stream transport */
#define LISTEN_BACKLOG 1024

struct conn {
    int fd;
    unsigned events;   /* what epoll watches it for; on io_uring, the ops in flight */
    size_t start, end; /* buffer[start:end] is read but not yet written back */
    unsigned char buffer[BUFFER_BYTES];
};

/* Tags for the two fds that are not connections, kept in epoll_event.data.ptr. */
static char listener_tag, stdin_tag;
static int epfd;

static void fail(const char *what, const char *detail)
{
    printf("{\"error\": \"%s: %s\"}\n", what, detail);
    fflush(stdout);
    exit(1);
}

static void fail_errno(const char *what) { fail(what, strerror(errno)); }

static void watch(int op, int fd, unsigned events, void *ptr)
{
    struct epoll_event ev = {.events = events, .data.ptr = ptr};
    if (epoll_ctl(epfd, op, fd, &ev) < 0)
        fail_errno("epoll_ctl");
}

/* Bind and listen on the harness's address syntax; print the bound address. */
static int listen_on(const char *address)
{
    int fd;
    if (strncmp(address, "unix:", 5) == 0) {
        struct sockaddr_un sun = {.sun_family = AF_UNIX};
        if (strlen(address + 5) >= sizeof(sun.sun_path))
            fail("address", "unix socket path too long");
        strcpy(sun.sun_path, address + 5);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
            fail_errno("socket");
        if (bind(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0)
            fail_errno("bind");
        if (listen(fd, LISTEN_BACKLOG) < 0)
            fail_errno("listen");
        printf("{\"address\": \"%s\"}\n", address);
    } else if (strncmp(address, "tcp:", 4) == 0) {
        char host[256], bound_host[NI_MAXHOST], bound_port[NI_MAXSERV];
        const char *port = strrchr(address + 4, ':');
        size_t host_len = port ? (size_t)(port - (address + 4)) : 0;
        if (!port || host_len == 0 || host_len >= sizeof(host))
            fail("address", "expected tcp:HOST:PORT");
        memcpy(host, address + 4, host_len);
        host[host_len] = '\0';
        struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *info;
        int rc = getaddrinfo(host, port + 1, &hints, &info);
        if (rc != 0)
            fail("getaddrinfo", gai_strerror(rc));
        fd = socket(info->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
            fail_errno("socket");
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(fd, info->ai_addr, info->ai_addrlen) < 0)
            fail_errno("bind");
        freeaddrinfo(info);
        if (listen(fd, LISTEN_BACKLOG) < 0)
            fail_errno("listen");
        struct sockaddr_storage bound;
        socklen_t bound_len = sizeof(bound);
        if (getsockname(fd, (struct sockaddr *)&bound, &bound_len) < 0)
            fail_errno("getsockname");
        rc = getnameinfo((struct sockaddr *)&bound, bound_len, bound_host, sizeof(bound_host),
                         bound_port, sizeof(bound_port), NI_NUMERICHOST | NI_NUMERICSERV);
        if (rc != 0)
            fail("getnameinfo", gai_strerror(rc));
        printf("{\"address\": \"tcp:%s:%s\"}\n", bound_host, bound_port);
    } else {
        fail("address", "expected tcp:HOST:PORT or unix:PATH");
    }
    fflush(stdout);
    return fd;
}

static void close_conn(struct conn *c)
{
    close(c->fd); /* closing also removes it from the epoll set (no dup'd fds here) */
    free(c);
}

static void on_acceptable(int listener)
{
    for (;;) {
        int fd = accept4(listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ECONNABORTED)
                return;
            fail_errno("accept4");
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)); /* fails on unix: fine */
        struct conn *c = malloc(sizeof(*c));
        if (!c)
            fail("malloc", "out of memory");
        c->fd = fd;
        c->start = c->end = 0;
        c->events = EPOLLIN;
        watch(EPOLL_CTL_ADD, fd, c->events, c);
    }
}

/* Read once if there is room; returns 0 if the connection is finished (and closed). */
static int read_some(struct conn *c)
{
    if (c->end == BUFFER_BYTES && c->start > 0) {
        memmove(c->buffer, c->buffer + c->start, c->end - c->start);
        c->end -= c->start;
        c->start = 0;
    }
    if (c->end == BUFFER_BYTES)
        return 1;
    ssize_t n = recv(c->fd, c->buffer + c->end, BUFFER_BYTES - c->end, 0);
    if (n > 0) {
        c->end += (size_t)n;
        return 1;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return 1;
    close_conn(c); /* end of file, or an error */
    return 0;
}

/* Write back what is buffered, until the socket takes no more; returns 0 if the connection
 * was closed, else 1 with c->start < c->end exactly when the socket is full. */
static int write_some(struct conn *c)
{
    while (c->start < c->end) {
        ssize_t n = send(c->fd, c->buffer + c->start, c->end - c->start, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 1;
            close_conn(c);
            return 0;
        }
        c->start += (size_t)n;
    }
    c->start = c->end = 0;
    return 1;
}

static void on_conn_event(struct conn *c, unsigned events)
{
    if ((events & (EPOLLIN | EPOLLHUP | EPOLLERR)) && !read_some(c))
        return;
    if (!write_some(c))
        return;
    unsigned wanted = (c->end < BUFFER_BYTES ? EPOLLIN : 0) | (c->start < c->end ? EPOLLOUT : 0);
    if (wanted != c->events) {
        c->events = wanted;
        watch(EPOLL_CTL_MOD, c->fd, wanted, c);
    }
}

#ifdef CEILING_IO_URING
/* -- io_uring ---------------------------------------------------------------------------- */

#define OP_RECV 1u
#define OP_SEND 2u
#define ACCEPT_DATA 1u /* user_data of the accept and stdin requests (conns are aligned) */
#define STDIN_DATA 2u
#define CQ_IORING_ACCEPT_MULTISHOT (1U << 0)

static cq_ring ring;

static struct cq_sqe *next_sqe(void)
{
    int err = 0;
    struct cq_sqe *sqe = cq_ring_next_sqe(&ring, &err);
    if (sqe == NULL)
        fail("io_uring_enter", strerror(-err));
    return sqe;
}

static void queue_accept(int listener)
{
    struct cq_sqe *sqe = next_sqe();
    sqe->opcode = CQ_IORING_OP_ACCEPT;
    sqe->fd = listener;
    sqe->ioprio = CQ_IORING_ACCEPT_MULTISHOT;
    sqe->op_flags = SOCK_CLOEXEC; /* accept_flags */
    sqe->user_data = ACCEPT_DATA;
}

static void queue_stdin_poll(void)
{
    struct cq_sqe *sqe = next_sqe();
    sqe->opcode = CQ_IORING_OP_POLL_ADD;
    sqe->fd = STDIN_FILENO;
    sqe->op_flags = POLLIN;
    sqe->user_data = STDIN_DATA;
}

/* Queue what the connection can do now: a recv while the buffer has room, a send while it
 * holds data, one of each in flight at most. The buffer is compacted only while no recv is
 * in flight (a recv in flight writes past c->end). */
static void queue_io(struct conn *c)
{
    if (!(c->events & OP_RECV)) {
        if (c->start == c->end)
            c->start = c->end = 0;
        else if (c->end == BUFFER_BYTES && c->start > 0 && !(c->events & OP_SEND)) {
            memmove(c->buffer, c->buffer + c->start, c->end - c->start);
            c->end -= c->start;
            c->start = 0;
        }
        if (c->end < BUFFER_BYTES) {
            struct cq_sqe *sqe = next_sqe();
            sqe->opcode = CQ_IORING_OP_RECV;
            sqe->fd = c->fd;
            sqe->addr = (uint64_t)(uintptr_t)(c->buffer + c->end);
            sqe->len = (uint32_t)(BUFFER_BYTES - c->end);
            sqe->user_data = (uint64_t)(uintptr_t)c | OP_RECV;
            c->events |= OP_RECV;
        }
    }
    if (!(c->events & OP_SEND) && c->start < c->end) {
        struct cq_sqe *sqe = next_sqe();
        sqe->opcode = CQ_IORING_OP_SEND;
        sqe->fd = c->fd;
        sqe->addr = (uint64_t)(uintptr_t)(c->buffer + c->start);
        sqe->len = (uint32_t)(c->end - c->start);
        sqe->op_flags = MSG_NOSIGNAL; /* msg_flags */
        sqe->user_data = (uint64_t)(uintptr_t)c | OP_SEND;
        c->events |= OP_SEND;
    }
}

static void on_completion(int listener, uint64_t user_data, int res, unsigned flags)
{
    if (user_data == ACCEPT_DATA) {
        if (res >= 0) {
            int one = 1;
            setsockopt(res, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)); /* unix: fails */
            struct conn *c = malloc(sizeof(*c));
            if (!c)
                fail("malloc", "out of memory");
            c->fd = res;
            c->start = c->end = 0;
            c->events = 0;
            queue_io(c);
        } else if (res != -ECONNABORTED && res != -EINTR && res != -EAGAIN) {
            fail("accept", strerror(-res));
        }
        if (!(flags & CQ_IORING_CQE_F_MORE))
            queue_accept(listener);
        return;
    }
    if (user_data == STDIN_DATA) {
        char byte;
        if (read(STDIN_FILENO, &byte, 1) <= 0)
            exit(0); /* end of file: the harness is done with us */
        queue_stdin_poll();
        return;
    }
    unsigned op = (unsigned)(user_data & 3u);
    struct conn *c = (struct conn *)(uintptr_t)(user_data & ~(uint64_t)3u);
    c->events &= ~op;
    if (res <= 0 && res != -EINTR && res != -EAGAIN) {
        c->end = BUFFER_BYTES + 1; /* finished: no more I/O is queued */
    } else if (res > 0 && op == OP_RECV) {
        c->end += (size_t)res;
    } else if (res > 0) {
        c->start += (size_t)res;
    }
    if (c->end > BUFFER_BYTES) {
        if (c->events == 0) {
            close(c->fd);
            free(c);
        }
        return;
    }
    queue_io(c);
}

static int __attribute__((noreturn)) serve_io_uring(int listener)
{
    int err = cq_ring_setup(&ring, 256, 4096, CQ_IORING_SETUP_SUBMIT_ALL);
    struct stat st;
    if (err < 0)
        fail("io_uring_setup", strerror(-err));
    queue_accept(listener);
    /* stdin is the harness's pipe; anything poll cannot wait on (a file) is not. */
    if (fstat(STDIN_FILENO, &st) == 0 && (S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode)))
        queue_stdin_poll();
    for (;;) {
        int n = cq_ring_submit_and_wait(&ring, NULL, NULL);
        if (n < 0 && n != -EINTR && n != -ETIME)
            fail("io_uring_enter", strerror(-n));
        unsigned ready = cq_ring_ready(&ring);
        for (unsigned i = 0; i < ready; i++) {
            struct cq_cqe *cqe = cq_ring_cqe_at(&ring, i);
            on_completion(listener, cqe->user_data, cqe->res, cqe->flags);
        }
        cq_ring_advance(&ring, ready);
    }
}
#endif
static int serve_epoll(int listener) __attribute__((unused));

int main(int argc, char **argv)
{
    const char *address = NULL;
    int cpu = -1, opt;
    while ((opt = getopt(argc, argv, "a:p:")) != -1) {
        switch (opt) {
        case 'a': address = optarg; break;
        case 'p': cpu = atoi(optarg); break;
        default: fail("usage", "ceiling -a ADDRESS [-p CPU]");
        }
    }
    if (!address)
        fail("usage", "ceiling -a ADDRESS [-p CPU]");

    /* The harness may die without killing us (SIGKILL): go with it. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(cpu, &set);
        if (sched_setaffinity(0, sizeof(set), &set) < 0)
            fail_errno("sched_setaffinity");
    }
    int listener = listen_on(address);
#ifdef CEILING_IO_URING
    return serve_io_uring(listener);
#else
    return serve_epoll(listener);
#endif
}

static int serve_epoll(int listener)
{
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0)
        fail_errno("epoll_create1");
    watch(EPOLL_CTL_ADD, listener, EPOLLIN, &listener_tag);
    /* stdin is the harness's pipe; anything epoll cannot watch (a file) is not. */
    struct epoll_event stdin_event = {.events = EPOLLIN, .data.ptr = &stdin_tag};
    epoll_ctl(epfd, EPOLL_CTL_ADD, STDIN_FILENO, &stdin_event);

    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        int n = epoll_wait(epfd, events, MAX_EVENTS, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            fail_errno("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            void *ptr = events[i].data.ptr;
            if (ptr == &listener_tag) {
                on_acceptable(listener);
            } else if (ptr == &stdin_tag) {
                char byte;
                if (read(STDIN_FILENO, &byte, 1) <= 0)
                    return 0; /* end of file: the harness is done with us */
            } else {
                on_conn_event(ptr, events[i].events);
            }
        }
    }
}
