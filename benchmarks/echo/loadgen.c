/*
 * loadgen.c: the echo benchmark's load generator (one thread, epoll, level-triggered).
 *
 * It opens CONNS connections to an echo server and plays ping-pong on each: send a message
 * of SIZE bytes, wait until the whole echo is back and matches, send the next. After a
 * warm-up of WARMUP seconds (not counted) it counts the echoes completed in DURATION
 * seconds and prints one line of JSON on stdout:
 *
 *   {"messages": N, "bytes": B, "seconds": T, "cpu_seconds": C}
 *
 * where bytes counts both directions and cpu_seconds is this process's CPU time over the
 * counted interval (C / T near 1.0 would mean the generator, not the server, is the
 * bottleneck). On any error it prints {"error": "..."} instead and exits with status 1.
 *
 *   loadgen -a tcp:HOST:PORT|unix:PATH -c CONNS -s SIZE -w WARMUP -d DURATION [-p CPU] [-l] [-t]
 *   loadgen -a ADDRESS -c CONNS -H PATH [-C] -w WARMUP -d DURATION [-p CPU]
 *
 * -l sends text lines for line-echo servers: printable bytes ending in CRLF, the sequence
 * number written in hex at the start, so that no byte but the last is a line feed.
 *
 * -p pins the generator to one CPU, so that it does not compete with a server pinned to
 * another. benchmarks/echo/native.py compiles this file; benchmarks/echo/run.py runs it.
 *
 * -t speaks TLS (OpenSSL) on every connection, for benchmarks/tls_echo.py. Only a build with
 * -DLOADGEN_TLS (and -lssl -lcrypto) has it, so that the plain build needs no OpenSSL
 * headers; native.build_tls_loadgen() makes that build. Each handshake is done, blocking,
 * before anything is counted, and certificates are not verified: the benchmark measures the
 * record path, not PKI. With non-blocking sockets OpenSSL reports WANT_READ/WANT_WRITE;
 * SSL_write is then retried with the same arguments when the socket allows (a message goes
 * out whole or not at all), and reads go on until WANT_READ, so that no decrypted byte is
 * left inside OpenSSL where epoll cannot see it. TLS echoes are always compared whole.
 *
 * -H PATH speaks HTTP/1.1 instead of echo (benchmarks/http.py): each connection sends
 * `GET PATH HTTP/1.1` with a Host header and reads the whole response before it sends the
 * next request (keep-alive, no pipelining), and the line printed is
 *
 *   {"requests": N, "non_2xx": E, "seconds": T, "cpu_seconds": C, "p50_us": A, "p99_us": B}
 *
 * with the latency percentiles (request written to response read) of the counted requests.
 * With -C every request says `Connection: close` and goes on a new connection (connected
 * without blocking, through epoll), which measures the server's accept rate. A response is
 * parsed in one pass over the bytes as they arrive: the status line (it must begin with
 * HTTP/1.), the headers up to the empty line (only Content-Length and Transfer-Encoding:
 * chunked matter), then the body, skipped by length or chunk by chunk. Anything else fails
 * the run with {"error": ...} at once: a response that does not begin like one (so garbage
 * fails at its first bytes, not at a time-out), a response with neither length nor chunks,
 * headers or a chunk-size line past the buffer, or bytes beyond the end of the response
 * (with no pipelining there can be none). The latencies go into a histogram of about 2,300
 * counters (exact up to 64 µs, then 64 steps per power of two: within 1.6%).
 *
 * Every message differs from the one before (its first bytes, and in binary messages its
 * last bytes too, carry a sequence number) and echoes are compared with what was sent, so a
 * server that loses, repeats or reorders bytes makes the run fail instead of posting a fast
 * number, and so does a connection that completes no echo at all in the counted time (a
 * server that lost it). Reads never ask for more than the rest of the expected echo: bytes a
 * server sends beyond it show up as a mismatch in the next message. A connection is watched
 * for input also while a large message is still being written, because the server echoes the
 * first part of a message before it has read the rest: finishing the write before reading
 * could deadlock both sides.
 *
 * Messages up to WHOLE_CHECK_MAX_BYTES, and one in FULL_CHECK_EVERY of the larger ones, are
 * compared whole. Of the other large messages only the first and last CHECK_BYTES are kept
 * and compared, and the bytes between are received without being kept: over TCP with
 * MSG_TRUNC, which discards them in the kernel without copying them out, over a Unix socket
 * into one small scratch buffer. Copying and comparing every byte of a 100 KiB echo made the
 * generator, not the server, the limit for every server (the C one's included); this way a
 * lost, repeated or misplaced byte still shifts the sequence numbers at the ends of the
 * following messages, and bytes reordered inside a message show in the whole comparisons.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#ifdef LOADGEN_TLS
#include <openssl/err.h>
#include <openssl/ssl.h>
#endif
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define MAX_EVENTS 256
#define MAX_CONNS 10000
#define MAX_MESSAGE_BYTES (64L * 1024 * 1024)
#define NS_PER_S 1000000000LL
#define NS_PER_MS 1000000LL
#define SEQ_BYTES sizeof(uint64_t)
#define CHECK_BYTES 64                   /* kept and compared at each end of every message */
#define WHOLE_CHECK_MAX_BYTES (16 * 1024) /* messages up to this size are compared whole */
#define FULL_CHECK_EVERY 8               /* and one in this many larger ones */
#define SCRATCH_BYTES (64 * 1024)        /* where skipped bytes go when MSG_TRUNC cannot */
_Static_assert(WHOLE_CHECK_MAX_BYTES >= 2 * CHECK_BYTES, "the checked ends must not overlap");
#define USAGE                                                                             \
    "loadgen -a ADDRESS -c CONNS (-s SIZE [-l] [-t] | -H PATH [-C]) -w WARMUP -d DURATION "  \
    "[-p CPU]"
#define HTTP_BUFFER_BYTES (16 * 1024) /* a response's headers, or a chunk-size line, must fit */
#define HTTP_REQUEST_MAX_BYTES 4096
#define LATENCY_SUB_BITS 6 /* 64 histogram steps per power of two */
#define LATENCY_SUB (1 << LATENCY_SUB_BITS)
#define LATENCY_BUCKETS ((64 - LATENCY_SUB_BITS + 1) * LATENCY_SUB)

/* Where a connection is in the response it reads (-H). */
enum http_state { HTTP_HEAD, HTTP_BODY, HTTP_CHUNK_SIZE, HTTP_CHUNK_DATA, HTTP_CHUNK_END,
                  HTTP_TRAILER };

struct conn {
    int fd;
#ifdef LOADGEN_TLS
    SSL *ssl; /* with -t */
#endif
    int watching_output; /* EPOLLOUT is registered: part of the message is unsent */
    size_t sent;         /* bytes of the current message written */
    size_t received;     /* bytes of its echo read */
    uint64_t seq;        /* messages completed on this connection */
    uint64_t seq_counted; /* seq when the counted time began */
    unsigned char *out;  /* the current message */
    unsigned char *in;   /* its echo as it arrives; with -H, the response's unparsed bytes */
    /* -H only */
    enum http_state state;
    size_t parsed;        /* bytes of `in` already parsed (before `received`) */
    uint64_t remaining;   /* body or chunk bytes still to skip */
    int64_t sent_at;      /* when the request was started (CLOCK_MONOTONIC, ns) */
};

static int epfd;
static size_t message_bytes;
static int lines; /* -l: messages are CRLF-terminated text lines */
static int discards; /* TCP: recv(MSG_TRUNC) drops received bytes without copying them */
static int tls;      /* -t: every connection speaks TLS */
static uint64_t completed; /* echoes completed on all connections */
static unsigned char scratch[SCRATCH_BYTES];
static int http;            /* -H: HTTP/1.1 requests, not echoes */
static int http_close;      /* -C: Connection: close, a new connection per request */
static const char *address; /* -a */
static int measuring;       /* the counted interval has begun */
static uint64_t non_2xx;    /* counted responses whose status was not 2xx */
static uint64_t latencies[LATENCY_BUCKETS]; /* counted requests, by latency in µs */

/* ---------------------------------------------------------------------------------------- */
/* Helpers                                                                                  */
/* ---------------------------------------------------------------------------------------- */

static void fail(const char *what, const char *detail)
{
    /* what and detail are our own words or strerror() texts: nothing to escape for JSON. */
    printf("{\"error\": \"%s: %s\"}\n", what, detail);
    fflush(stdout);
    exit(1);
}

static void fail_errno(const char *what) { fail(what, strerror(errno)); }

#ifdef LOADGEN_TLS
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
#endif

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

static struct sockaddr_storage peer; /* the server's address, resolved once */
static socklen_t peer_len;

/* The harness's address syntax: tcp:HOST:PORT (HOST may be a name) or unix:PATH. */
static void resolve(void)
{
    if (strncmp(address, "unix:", 5) == 0) {
        struct sockaddr_un *sun = (struct sockaddr_un *)&peer;
        if (strlen(address + 5) >= sizeof(sun->sun_path))
            fail("address", "unix socket path too long");
        sun->sun_family = AF_UNIX;
        strcpy(sun->sun_path, address + 5);
        peer_len = sizeof(*sun);
    } else if (strncmp(address, "tcp:", 4) == 0) {
        char host[256];
        const char *port = strrchr(address + 4, ':');
        size_t host_len = port ? (size_t)(port - (address + 4)) : 0;
        if (!port || host_len == 0 || host_len >= sizeof(host))
            fail("address", "expected tcp:HOST:PORT");
        memcpy(host, address + 4, host_len);
        host[host_len] = '\0';
        struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *info;
        int rc = getaddrinfo(host, port + 1, &hints, &info);
        if (rc != 0)
            fail("getaddrinfo", gai_strerror(rc));
        memcpy(&peer, info->ai_addr, info->ai_addrlen);
        peer_len = info->ai_addrlen;
        freeaddrinfo(info);
    } else {
        fail("address", "expected tcp:HOST:PORT or unix:PATH");
    }
}

/* A new connection to the resolved peer. Without blocking, connect() goes on in the kernel:
 * until it is done send() fails with EAGAIN, so send_rest() waits for EPOLLOUT, and a refused
 * connection shows as EPOLLERR, which the read reports. */
static int connect_to(int blocking)
{
    int fd = socket(peer.ss_family, SOCK_STREAM | SOCK_CLOEXEC | (blocking ? 0 : SOCK_NONBLOCK),
                    0);
    if (fd < 0)
        fail_errno("socket");
    if (connect(fd, (struct sockaddr *)&peer, peer_len) < 0 && (blocking || errno != EINPROGRESS))
        fail_errno("connect");
    if (peer.ss_family != AF_UNIX) {
        /* Each message is written whole; Nagle would hold its tail back for an ACK. */
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    return fd;
}

#ifdef LOADGEN_TLS
/* The client's handshake on the connected, still blocking, socket. */
static void start_tls(struct conn *c, SSL_CTX *ctx)
{
    c->ssl = SSL_new(ctx);
    if (!c->ssl || SSL_set_fd(c->ssl, c->fd) != 1)
        fail_ssl("SSL_new");
    if (SSL_connect(c->ssl) != 1)
        fail_ssl("SSL_connect");
}

/* (Re)try writing the current message over TLS: it goes out whole or not at all. */
static void tls_send(struct conn *c)
{
    int n = SSL_write(c->ssl, c->out, (int)message_bytes);
    if (n > 0) {
        c->sent = message_bytes;
        return;
    }
    int err = SSL_get_error(c->ssl, n);
    if (err != SSL_ERROR_WANT_WRITE && err != SSL_ERROR_WANT_READ)
        fail_ssl("SSL_write");
}

/* recv()'s contract for SSL_read: bytes, 0 at the end, or -1 with EAGAIN for "nothing yet". */
static ssize_t tls_receive(struct conn *c)
{
    int n = SSL_read(c->ssl, c->in + c->received, (int)(message_bytes - c->received));
    if (n > 0)
        return n;
    int err = SSL_get_error(c->ssl, n);
    if (err == SSL_ERROR_ZERO_RETURN)
        return 0;
    if (err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE)
        fail_ssl("SSL_read");
    errno = EAGAIN;
    return -1;
}
#endif

static void watch(struct conn *c, int op, int want_output)
{
    struct epoll_event ev = {.events = EPOLLIN | (want_output ? EPOLLOUT : 0), .data.ptr = c};
    if (epoll_ctl(epfd, op, c->fd, &ev) < 0)
        fail_errno("epoll_ctl");
    c->watching_output = want_output;
}

/* ---------------------------------------------------------------------------------------- */
/* One connection's ping-pong                                                               */
/* ---------------------------------------------------------------------------------------- */

/* Write what is unsent of the current message; watch for output only while some is. */
static void send_rest(struct conn *c)
{
#ifdef LOADGEN_TLS
    if (tls)
        tls_send(c);
#endif
    while (!tls && c->sent < message_bytes) {
        ssize_t n = send(c->fd, c->out + c->sent, message_bytes - c->sent, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            if (errno == EINTR)
                continue;
            fail_errno("send");
        }
        c->sent += (size_t)n;
    }
    int unsent = c->sent < message_bytes;
    if (unsent != c->watching_output)
        watch(c, EPOLL_CTL_MOD, unsent);
}

static void start_message(struct conn *c)
{
    /* The sequence number makes each message differ from the one before; HTTP requests are
     * all the same (c->out is shared). */
    if (http) {
        c->sent_at = clock_ns(CLOCK_MONOTONIC);
        c->state = HTTP_HEAD;
        c->parsed = 0;
    } else if (lines) {
        static const char hex[] = "0123456789abcdef";
        size_t digits = message_bytes - 2 < 2 * SEQ_BYTES ? message_bytes - 2 : 2 * SEQ_BYTES;
        for (size_t j = 0; j < digits; j++)
            c->out[j] = (unsigned char)hex[(c->seq >> (4 * j)) & 0xf];
    } else {
        memcpy(c->out, &c->seq, message_bytes < SEQ_BYTES ? message_bytes : SEQ_BYTES);
        if (message_bytes >= 2 * SEQ_BYTES)
            memcpy(c->out + message_bytes - SEQ_BYTES, &c->seq, SEQ_BYTES);
    }
    c->sent = 0;
    c->received = 0;
    send_rest(c);
}

/* Whether the current message is compared whole (else only its ends are kept). */
static int checked_whole(const struct conn *c)
{
    return message_bytes <= WHOLE_CHECK_MAX_BYTES || c->seq % FULL_CHECK_EVERY == 0;
}

/* Receive more of the echo, up to the end of the span c->received is in: kept in c->in (the
 * whole message if it is compared whole, else its first and last CHECK_BYTES), or received
 * and dropped (the bytes between). */
static ssize_t receive(struct conn *c, int whole)
{
#ifdef LOADGEN_TLS
    if (tls)
        return tls_receive(c);
#endif
    size_t at = c->received, tail = message_bytes - CHECK_BYTES;
    if (whole || at >= tail)
        return recv(c->fd, c->in + at, message_bytes - at, 0);
    if (at < CHECK_BYTES)
        return recv(c->fd, c->in + at, CHECK_BYTES - at, 0);
    if (discards)
        return recv(c->fd, NULL, tail - at, MSG_TRUNC);
    return recv(c->fd, scratch, tail - at < SCRATCH_BYTES ? tail - at : SCRATCH_BYTES, 0);
}

/* What a read's result n means: 1 if bytes came (added to c->received), 0 for nothing yet
 * (EAGAIN), -1 for an interrupted read (try again); the end of the stream (`closed` says
 * what that means) and errors fail the run. */
static int took(struct conn *c, ssize_t n, const char *closed)
{
    if (n > 0) {
        c->received += (size_t)n;
        return 1;
    }
    if (n == 0)
        fail("recv", closed);
    if (errno == EAGAIN || errno == EWOULDBLOCK)
        return 0;
    if (errno == EINTR)
        return -1;
    fail_errno("recv");
    return 0;
}

/* Read the echo; when it is complete, check it and start the next message. Over TLS the
 * next echo may already be decrypted inside OpenSSL, where epoll cannot see it: go on
 * reading until OpenSSL wants more from the socket. */
static void on_readable(struct conn *c)
{
    do {
        int whole = tls || checked_whole(c);
        while (c->received < message_bytes) {
            if (took(c, receive(c, whole), "the server closed the connection") == 0)
                return;
        }
        int same = whole ? memcmp(c->in, c->out, message_bytes) == 0
                         : memcmp(c->in, c->out, CHECK_BYTES) == 0
                               && memcmp(c->in + message_bytes - CHECK_BYTES,
                                         c->out + message_bytes - CHECK_BYTES, CHECK_BYTES) == 0;
        if (c->received > c->sent || !same)
            fail("echo", "the bytes echoed differ from the bytes sent");
        c->seq++;
        completed++;
        start_message(c);
    } while (tls);
}

/* ---------------------------------------------------------------------------------------- */
/* HTTP (-H)                                                                                */
/* ---------------------------------------------------------------------------------------- */

static void record_latency(int64_t ns)
{
    uint64_t us = ns > 0 ? (uint64_t)ns / 1000 : 0;
    size_t index = us;
    if (us >= LATENCY_SUB) {
        int top = 63 - __builtin_clzll(us); /* >= LATENCY_SUB_BITS */
        int shift = top - LATENCY_SUB_BITS;
        index = (size_t)(shift + 1) * LATENCY_SUB + ((us >> shift) & (LATENCY_SUB - 1));
    }
    latencies[index]++;
}

/* The latency (µs) below which `fraction` of the counted requests fall: the middle of the
 * bucket where that count is reached. */
static double latency_percentile(double fraction, uint64_t total)
{
    uint64_t want = (uint64_t)(fraction * (double)total + 0.5), seen = 0;
    if (want < 1)
        want = 1;
    for (size_t i = 0; i < LATENCY_BUCKETS; i++) {
        seen += latencies[i];
        if (seen >= want) {
            if (i < LATENCY_SUB)
                return (double)i + 0.5;
            int shift = (int)(i / LATENCY_SUB) - 1;
            double low = (double)((LATENCY_SUB + i % LATENCY_SUB) << shift);
            return low + (double)(1ULL << shift) / 2;
        }
    }
    return 0;
}

/* The end of the line that starts at `from` (the index of its CR), or -1 if it is not all
 * in. (An empty line at the start of the buffer ends at 0.) */
static ssize_t line_end(const struct conn *c, size_t from)
{
    const unsigned char *cr = memmem(c->in + from, c->received - from, "\r\n", 2);
    return cr ? cr - c->in : -1;
}

static int header_is(const unsigned char *line, size_t len, const char *name)
{
    size_t n = strlen(name);
    return len > n && line[n] == ':' && strncasecmp((const char *)line, name, n) == 0;
}

/* The status line and headers, c->in[0 .. end): the status, and how the body is delimited. */
static void parse_head(struct conn *c, size_t end)
{
    const unsigned char *in = c->in;
    /* "HTTP/1.x NNN" */
    if (end < 12 || in[8] != ' ' || in[9] < '1' || in[9] > '5' || in[10] < '0' || in[10] > '9'
        || in[11] < '0' || in[11] > '9')
        fail("http", "the response's status line is not HTTP/1.x NNN");
    if (measuring && in[9] != '2')
        non_2xx++;
    int length_known = 0, chunked = 0;
    size_t at = (size_t)line_end(c, 0) + 2;
    while (at < end) {
        size_t stop = (size_t)line_end(c, at); /* the head ends in CRLF: found */
        const unsigned char *line = in + at;
        size_t len = stop - at;
        if (header_is(line, len, "content-length")) {
            char *tail;
            const char *digits = (const char *)line + 15;
            while (*digits == ' ' || *digits == '\t')
                digits++;
            c->remaining = strtoull(digits, &tail, 10);
            if (tail == digits || (*tail != '\r' && *tail != ' ' && *tail != '\t'))
                fail("http", "the response's Content-Length is not a number");
            length_known = 1;
        } else if (header_is(line, len, "transfer-encoding")) {
            /* The last coding is the one that frames the body: chunked must end the value. */
            size_t vend = len;
            while (vend > 18 && (line[vend - 1] == ' ' || line[vend - 1] == '\t'))
                vend--;
            chunked = vend >= 18 + 7 && strncasecmp((const char *)line + vend - 7, "chunked", 7) == 0;
            if (!chunked)
                fail("http", "the response's Transfer-Encoding does not end in chunked");
        }
        at = stop + 2;
    }
    if (chunked)
        c->state = HTTP_CHUNK_SIZE;
    else if (length_known)
        c->state = HTTP_BODY;
    else
        fail("http", "a response with neither Content-Length nor Transfer-Encoding: chunked");
}

/* Skip up to c->remaining bytes of what is buffered; whether they are all skipped. */
static int skip_body(struct conn *c)
{
    size_t buffered = c->received - c->parsed;
    size_t take = c->remaining < buffered ? (size_t)c->remaining : buffered;
    c->parsed += take;
    c->remaining -= take;
    return c->remaining == 0;
}

/* Parse what has arrived of the response; whether it is complete. */
static int parse_response(struct conn *c)
{
    for (;;) {
        ssize_t end;
        switch (c->state) {
        case HTTP_HEAD:
            /* Garbage fails at its first bytes, not when a terminator never comes. */
            if (memcmp(c->in, "HTTP/1.", c->received < 7 ? c->received : 7) != 0)
                fail("http", "the server's answer does not begin with HTTP/1.");
            {
                const unsigned char *blank = memmem(c->in, c->received, "\r\n\r\n", 4);
                if (!blank)
                    return 0;
                end = blank - c->in + 2; /* the last header's CRLF included */
            }
            parse_head(c, (size_t)end);
            c->parsed = (size_t)end + 2;
            break;
        case HTTP_BODY:
            if (!skip_body(c))
                return 0;
            return 1;
        case HTTP_CHUNK_SIZE:
        case HTTP_TRAILER:
            end = line_end(c, c->parsed);
            if (end < 0)
                return 0;
            if (c->state == HTTP_TRAILER) {
                int last = (size_t)end == c->parsed;
                c->parsed = (size_t)end + 2;
                if (last)
                    return 1;
                break;
            }
            {
                char *tail;
                unsigned long long size = strtoull((const char *)c->in + c->parsed, &tail, 16);
                if (tail == (char *)c->in + c->parsed || (*tail != '\r' && *tail != ';'))
                    fail("http", "a chunk's size line is not hexadecimal");
                c->remaining = size;
                c->parsed = (size_t)end + 2;
                c->state = size ? HTTP_CHUNK_DATA : HTTP_TRAILER;
            }
            break;
        case HTTP_CHUNK_DATA:
            if (!skip_body(c))
                return 0;
            c->state = HTTP_CHUNK_END;
            break;
        case HTTP_CHUNK_END:
            if (c->received - c->parsed < 2)
                return 0;
            if (memcmp(c->in + c->parsed, "\r\n", 2) != 0)
                fail("http", "a chunk is not followed by CRLF");
            c->parsed += 2;
            c->state = HTTP_CHUNK_SIZE;
            break;
        }
    }
}

/* Read the response; when it is complete, count it and send the next request (with -C, on
 * a new connection). */
static void on_http_readable(struct conn *c)
{
    for (;;) {
        /* Parsed bytes are dropped, so the buffer only ever holds an unparsed head or line. */
        if (c->parsed > 0) {
            memmove(c->in, c->in + c->parsed, c->received - c->parsed);
            c->received -= c->parsed;
            c->parsed = 0;
        }
        if (c->received == HTTP_BUFFER_BYTES)
            fail("http", "a response's headers or a chunk-size line exceed 16 KiB");
        ssize_t n = recv(c->fd, c->in + c->received, HTTP_BUFFER_BYTES - c->received, 0);
        int got = took(c, n, "the server closed the connection before the response's end");
        if (got == 0)
            return;
        if (got < 0 || !parse_response(c))
            continue;
        if (c->parsed != c->received)
            fail("http", "bytes beyond the end of the response (one request was sent)");
        if (measuring)
            record_latency(clock_ns(CLOCK_MONOTONIC) - c->sent_at);
        c->seq++;
        completed++;
        c->received = 0;
        if (http_close) {
            close(c->fd); /* which also takes it out of the epoll set */
            c->fd = connect_to(0);
            watch(c, EPOLL_CTL_ADD, 0);
        }
        start_message(c);
        return;
    }
}

/* ---------------------------------------------------------------------------------------- */
/* Main                                                                                     */
/* ---------------------------------------------------------------------------------------- */

int main(int argc, char **argv)
{
    const char *path = NULL;
    long conns = 0, size = 0, cpu = -1;
    double warmup_s = 0, duration_s = 0;
    int opt;
    while ((opt = getopt(argc, argv, "a:c:s:w:d:p:ltH:C")) != -1) {
        switch (opt) {
        case 'a': address = optarg; break;
        case 'c': conns = (long)parse_number(optarg, "-c"); break;
        case 's': size = (long)parse_number(optarg, "-s"); break;
        case 'w': warmup_s = parse_number(optarg, "-w"); break;
        case 'd': duration_s = parse_number(optarg, "-d"); break;
        case 'p': cpu = (long)parse_number(optarg, "-p"); break;
        case 'l': lines = 1; break;
        case 't': tls = 1; break;
        case 'H': path = optarg; break;
        case 'C': http_close = 1; break;
        default: fail("usage", USAGE);
        }
    }
    http = path != NULL;
    if (http && (size || lines || tls))
        fail("usage", "-H: no -s, -l or -t with it (HTTP requests are fixed, and not over TLS)");
    if (http_close && !http)
        fail("usage", "-C: only with -H");
    if (!address || conns < 1 || conns > MAX_CONNS || (!http && (size < 1 || size > MAX_MESSAGE_BYTES))
        || duration_s <= 0 || (lines && size < 3))
        fail("usage", USAGE);
    static char request[HTTP_REQUEST_MAX_BYTES];
    if (http) {
        /* The Host header is the address as given (a Unix socket's server gets localhost). */
        const char *host = strncmp(address, "tcp:", 4) == 0 ? address + 4 : "localhost";
        if (path[0] != '/' || strpbrk(path, " \r\n"))
            fail("-H", "the path must begin with / and hold no space or line break");
        int n = snprintf(request, sizeof(request), "GET %s HTTP/1.1\r\nHost: %s\r\n%s\r\n", path,
                         host, http_close ? "Connection: close\r\n" : "");
        if (n < 0 || (size_t)n >= sizeof(request))
            fail("-H", "the request would be too long");
        size = n;
    }
#ifndef LOADGEN_TLS
    if (tls)
        fail("usage", "-t: this loadgen was built without TLS (build it with -DLOADGEN_TLS)");
#endif
    message_bytes = (size_t)size;
    discards = strncmp(address, "tcp:", 4) == 0;
    resolve();

    /* The harness may die without killing us (SIGKILL): go with it. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    /* OpenSSL writes with write(), not send(MSG_NOSIGNAL): a closed peer must not kill us. */
    signal(SIGPIPE, SIG_IGN);
    if (cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET((int)cpu, &set);
        if (sched_setaffinity(0, sizeof(set), &set) < 0)
            fail_errno("sched_setaffinity");
    }

#ifdef LOADGEN_TLS
    SSL_CTX *ctx = NULL;
    if (tls) {
        ctx = SSL_CTX_new(TLS_client_method());
        if (!ctx)
            fail_ssl("SSL_CTX_new");
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    }
#endif
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0)
        fail_errno("epoll_create1");
    struct conn *all = calloc((size_t)conns, sizeof(*all));
    if (!all)
        fail("calloc", "out of memory");
    for (long i = 0; i < conns; i++) {
        struct conn *c = &all[i];
        c->out = http ? (unsigned char *)request : malloc(message_bytes);
        c->in = malloc(http ? HTTP_BUFFER_BYTES : message_bytes);
        if (!c->out || !c->in)
            fail("malloc", "out of memory");
        /* A pattern that differs between connections and is not all one byte. */
        for (size_t j = 0; j < message_bytes && !http; j++)
            c->out[j] = lines ? (unsigned char)('a' + (j + (size_t)i) % 26)
                              : (unsigned char)(j * 7 + (size_t)i * 13);
        if (lines && !http) {
            c->out[message_bytes - 2] = '\r';
            c->out[message_bytes - 1] = '\n';
        }
        c->fd = connect_to(1);
#ifdef LOADGEN_TLS
        if (tls)
            start_tls(c, ctx); /* the handshake, blocking: it is not what is measured */
#endif
        if (fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK) < 0)
            fail_errno("fcntl");
        watch(c, EPOLL_CTL_ADD, 0);
    }
    for (long i = 0; i < conns; i++)
        start_message(&all[i]);

    struct epoll_event events[MAX_EVENTS];
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
        /* Round up, so that the wait never ends just short of the deadline. */
        int timeout_ms = (int)((deadline - now + NS_PER_MS - 1) / NS_PER_MS);
        int n = epoll_wait(epfd, events, MAX_EVENTS, timeout_ms);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            fail_errno("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            /* OpenSSL wants a write it refused retried before anything else. */
            if (tls && (events[i].events & EPOLLOUT) && c->watching_output)
                send_rest(c);
            if (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                if (http)
                    on_http_readable(c);
                else
                    on_readable(c);
            }
            if (!tls && (events[i].events & EPOLLOUT) && c->watching_output)
                send_rest(c);
        }
    }
    /* A server that loses track of a connection (a lost wake-up) must not pass unnoticed
     * behind the others' figures. */
    for (long i = 0; i < conns; i++) {
        if (all[i].seq == all[i].seq_counted)
            fail("stall", http ? "a connection got no response in the counted time"
                               : "a connection got no echo back in the counted time");
    }
    double seconds = (double)(now - started) / NS_PER_S;
    double cpu_seconds = (double)(clock_ns(CLOCK_PROCESS_CPUTIME_ID) - cpu_started) / NS_PER_S;
    uint64_t messages = completed - completed_before;
    if (http) {
        printf("{\"requests\": %llu, \"non_2xx\": %llu, \"seconds\": %.6f, \"cpu_seconds\": %.6f, "
               "\"p50_us\": %.1f, \"p99_us\": %.1f}\n",
               (unsigned long long)messages, (unsigned long long)non_2xx, seconds, cpu_seconds,
               latency_percentile(0.50, messages), latency_percentile(0.99, messages));
        return 0;
    }
    printf("{\"messages\": %llu, \"bytes\": %llu, \"seconds\": %.6f, \"cpu_seconds\": %.6f}\n",
           (unsigned long long)messages, (unsigned long long)(2 * messages * message_bytes),
           seconds, cpu_seconds);
    return 0;
}
