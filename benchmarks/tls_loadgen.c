/*
 * tls_loadgen.c: the TLS echo benchmark's load generator (one thread, epoll, OpenSSL).
 *
 * It opens CONNS TLS connections to an echo server (each handshake done before anything
 * is counted, certificates not verified: the benchmark measures the record path, not PKI)
 * and plays ping-pong on each: write a message of SIZE bytes, wait until its whole echo is
 * back and matches, write the next. After WARMUP seconds (not counted) it counts the echoes
 * completed in DURATION seconds and prints one line of JSON on stdout:
 *
 *   {"messages": N, "bytes": B, "seconds": T, "cpu_seconds": C}
 *
 * as benchmarks/echo/loadgen.c does (cpu_seconds near seconds means the generator, not
 * the server, is the bottleneck). On an error it prints {"error": "..."} and exits with 1;
 * a connection that completed no echo in the counted time is the error "stall: ...".
 *
 *   tls_loadgen -a HOST:PORT -c CONNS -s SIZE -w WARMUP -d DURATION [-p CPU] [-l]
 *
 * -l sends text lines for line-echo servers: printable bytes ending in one LF (no CR, so
 * that a binary-mode line read and a readline() both give back what was sent), the
 * sequence number written in hex at the start, so that no byte but the last is a line feed.
 *
 * benchmarks/tls_echo.py compiles it (cc -O2 ... -lssl -lcrypto) and runs it.
 *
 * Every message differs from the one before (its first bytes carry a sequence number) and
 * every echo is compared with what was sent. With non-blocking sockets OpenSSL reports
 * SSL_ERROR_WANT_READ/WANT_WRITE; SSL_write is then retried with the same arguments when
 * the socket allows, and reads loop until WANT_READ, so no decrypted byte is left inside
 * OpenSSL where epoll cannot see it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_EVENTS 256
#define MAX_CONNS 10000
#define MAX_MESSAGE_BYTES (64L * 1024 * 1024)
#define NS_PER_S 1000000000LL
#define NS_PER_MS 1000000LL
#define SEQ_BYTES sizeof(uint64_t)
#define USAGE "tls_loadgen -a HOST:PORT -c CONNS -s SIZE -w WARMUP -d DURATION [-p CPU] [-l]"

struct conn {
    int fd;
    SSL *ssl;
    int write_pending;   /* the current message's SSL_write wants to be retried */
    int watching_output; /* EPOLLOUT is registered */
    size_t received;     /* bytes of the echo read */
    uint64_t seq;        /* messages completed on this connection */
    uint64_t seq_counted;
    unsigned char *out;
    unsigned char *in;
};

static int epfd;
static size_t message_bytes;
static uint64_t completed;
static int lines; /* -l: messages are LF-terminated text lines */

static void fail(const char *what, const char *detail)
{
    printf("{\"error\": \"%s: %s\"}\n", what, detail);
    fflush(stdout);
    exit(1);
}

static void fail_errno(const char *what) { fail(what, strerror(errno)); }

static void fail_ssl(const char *what)
{
    char text[256];
    unsigned long code = ERR_get_error();
    if (code == 0)
        snprintf(text, sizeof(text), "%s", errno ? strerror(errno) : "connection closed");
    else
        ERR_error_string_n(code, text, sizeof(text));
    /* OpenSSL's texts contain colons but no quotes or backslashes. */
    fail(what, text);
}

static int64_t clock_ns(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (int64_t)ts.tv_sec * NS_PER_S + ts.tv_nsec;
}

static double parse_number(const char *text, const char *option)
{
    char *end;
    double value = strtod(text, &end);
    if (*text == '\0' || *end != '\0' || value < 0)
        fail(option, "expected a non-negative number");
    return value;
}

static int connect_tcp(const char *address)
{
    char host[256];
    const char *port = strrchr(address, ':');
    size_t host_len = port ? (size_t)(port - address) : 0;
    if (!port || host_len == 0 || host_len >= sizeof(host))
        fail("address", "expected HOST:PORT");
    memcpy(host, address, host_len);
    host[host_len] = '\0';
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *info;
    int rc = getaddrinfo(host, port + 1, &hints, &info);
    if (rc != 0)
        fail("getaddrinfo", gai_strerror(rc));
    int fd = socket(info->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        fail_errno("socket");
    if (connect(fd, info->ai_addr, info->ai_addrlen) < 0)
        fail_errno("connect");
    freeaddrinfo(info);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return fd;
}

static void watch(struct conn *c, int op, int want_output)
{
    struct epoll_event ev = {.events = EPOLLIN | (want_output ? EPOLLOUT : 0), .data.ptr = c};
    if (epoll_ctl(epfd, op, c->fd, &ev) < 0)
        fail_errno("epoll_ctl");
    c->watching_output = want_output;
}

/* (Re)try writing the current message; it goes out whole or not at all. */
static void try_write(struct conn *c)
{
    int n = SSL_write(c->ssl, c->out, (int)message_bytes);
    if (n > 0) {
        c->write_pending = 0;
    } else {
        int err = SSL_get_error(c->ssl, n);
        if (err != SSL_ERROR_WANT_WRITE && err != SSL_ERROR_WANT_READ)
            fail_ssl("SSL_write");
        c->write_pending = 1;
    }
    if (c->write_pending != c->watching_output)
        watch(c, EPOLL_CTL_MOD, c->write_pending);
}

static void start_message(struct conn *c)
{
    /* The sequence number makes each message differ from the one before. */
    if (lines) {
        static const char hex[] = "0123456789abcdef";
        size_t digits = message_bytes - 1 < 2 * SEQ_BYTES ? message_bytes - 1 : 2 * SEQ_BYTES;
        for (size_t j = 0; j < digits; j++)
            c->out[j] = (unsigned char)hex[(c->seq >> (4 * j)) & 0xf];
    } else {
        memcpy(c->out, &c->seq, message_bytes < SEQ_BYTES ? message_bytes : SEQ_BYTES);
    }
    c->received = 0;
    try_write(c);
}

static void on_readable(struct conn *c)
{
    for (;;) {
        if (c->received == message_bytes) {
            if (c->write_pending || memcmp(c->in, c->out, message_bytes) != 0)
                fail("echo", "the bytes echoed differ from the bytes sent");
            c->seq++;
            completed++;
            start_message(c);
            continue; /* the next echo may not be here yet: read until WANT_READ */
        }
        int n = SSL_read(c->ssl, c->in + c->received, (int)(message_bytes - c->received));
        if (n > 0) {
            c->received += (size_t)n;
            continue;
        }
        int err = SSL_get_error(c->ssl, n);
        if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE)
            return;
        if (err == SSL_ERROR_ZERO_RETURN)
            fail("SSL_read", "the server closed the connection");
        fail_ssl("SSL_read");
    }
}

int main(int argc, char **argv)
{
    const char *address = NULL;
    long conns = 0, size = 0, cpu = -1;
    double warmup_s = 0, duration_s = 0;
    int opt;
    while ((opt = getopt(argc, argv, "a:c:s:w:d:p:l")) != -1) {
        switch (opt) {
        case 'a': address = optarg; break;
        case 'c': conns = (long)parse_number(optarg, "-c"); break;
        case 's': size = (long)parse_number(optarg, "-s"); break;
        case 'w': warmup_s = parse_number(optarg, "-w"); break;
        case 'd': duration_s = parse_number(optarg, "-d"); break;
        case 'p': cpu = (long)parse_number(optarg, "-p"); break;
        case 'l': lines = 1; break;
        default: fail("usage", USAGE);
        }
    }
    if (!address || conns < 1 || conns > MAX_CONNS || size < 1 || size > MAX_MESSAGE_BYTES
        || duration_s <= 0 || (lines && size < 2))
        fail("usage", USAGE);
    message_bytes = (size_t)size;

    prctl(PR_SET_PDEATHSIG, SIGKILL);
    signal(SIGPIPE, SIG_IGN);
    if (cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET((int)cpu, &set);
        if (sched_setaffinity(0, sizeof(set), &set) < 0)
            fail_errno("sched_setaffinity");
    }

    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx)
        fail_ssl("SSL_CTX_new");
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);

    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0)
        fail_errno("epoll_create1");
    struct conn *all = calloc((size_t)conns, sizeof(*all));
    if (!all)
        fail("calloc", "out of memory");
    for (long i = 0; i < conns; i++) {
        struct conn *c = &all[i];
        c->out = malloc(message_bytes);
        c->in = malloc(message_bytes);
        if (!c->out || !c->in)
            fail("malloc", "out of memory");
        for (size_t j = 0; j < message_bytes; j++)
            c->out[j] = lines ? (unsigned char)('a' + (j + (size_t)i) % 26)
                              : (unsigned char)(j * 7 + (size_t)i * 13);
        if (lines)
            c->out[message_bytes - 1] = '\n';
        c->fd = connect_tcp(address);
        c->ssl = SSL_new(ctx);
        if (!c->ssl || SSL_set_fd(c->ssl, c->fd) != 1)
            fail_ssl("SSL_new");
        /* The handshake, blocking: it is not what is measured. */
        if (SSL_connect(c->ssl) != 1)
            fail_ssl("SSL_connect");
        if (fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK) < 0)
            fail_errno("fcntl");
        watch(c, EPOLL_CTL_ADD, 0);
    }
    for (long i = 0; i < conns; i++)
        start_message(&all[i]);

    struct epoll_event events[MAX_EVENTS];
    int measuring = 0;
    int64_t now = clock_ns(CLOCK_MONOTONIC);
    int64_t measure_at = now + (int64_t)(warmup_s * NS_PER_S);
    int64_t end_at = measure_at + (int64_t)(duration_s * NS_PER_S);
    int64_t started = 0, cpu_started = 0;
    uint64_t completed_before = 0;
    for (;;) {
        now = clock_ns(CLOCK_MONOTONIC);
        if (!measuring && now >= measure_at) {
            measuring = 1;
            started = now;
            cpu_started = clock_ns(CLOCK_PROCESS_CPUTIME_ID);
            completed_before = completed;
            for (long i = 0; i < conns; i++)
                all[i].seq_counted = all[i].seq;
        }
        if (measuring && now >= end_at)
            break;
        int64_t deadline = measuring ? end_at : measure_at;
        int timeout_ms = (int)((deadline - now + NS_PER_MS - 1) / NS_PER_MS);
        int n = epoll_wait(epfd, events, MAX_EVENTS, timeout_ms);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            fail_errno("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            if ((events[i].events & EPOLLOUT) && c->write_pending)
                try_write(c);
            if (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))
                on_readable(c);
        }
    }
    for (long i = 0; i < conns; i++) {
        if (all[i].seq == all[i].seq_counted)
            fail("stall", "a connection got no echo back in the counted time");
    }
    double seconds = (double)(now - started) / NS_PER_S;
    double cpu_seconds = (double)(clock_ns(CLOCK_PROCESS_CPUTIME_ID) - cpu_started) / NS_PER_S;
    uint64_t messages = completed - completed_before;
    printf("{\"messages\": %llu, \"bytes\": %llu, \"seconds\": %.6f, \"cpu_seconds\": %.6f}\n",
           (unsigned long long)messages, (unsigned long long)(2 * messages * message_bytes),
           seconds, cpu_seconds);
    return 0;
}
