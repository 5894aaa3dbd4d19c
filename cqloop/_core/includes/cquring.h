/* cquring.h: io_uring for cqloop without liburing: the kernel ABI (the structs and
 * constants of include/uapi/linux/io_uring.h that cqloop uses, laid out as the kernel lays
 * them out; they are a stable ABI) and a minimal ring over the raw system calls.
 *
 * Owns nothing by itself: a cq_ring is set up by cq_ring_setup, owned by whoever holds it
 * (cqloop._core.uring.Ring), and released by cq_ring_close. Everything here is inline:
 * the hot calls (get an SQE, publish, reap) compile into the caller.
 *
 * Fork: a ring's mappings are MADV_DONTFORK and every ring this process set up is closed in
 * a forked child by a pthread_atfork handler (cq_rings_forget_in_child), whatever forked:
 * a child must never touch its parent's ring, and a child holding a copy of the ring fd
 * would keep the ring alive, and with it the files its poll requests hold (a socket whose
 * peer then never sees it close), until the child exits.
 *
 * Memory ordering: the SQ tail and the CQ head are ours (the kernel reads them); the SQ
 * head and the CQ tail are the kernel's (we read them). Each is read with acquire and
 * written with release ordering, as the io_uring man pages require.
 */
#ifndef CQ_URING_H
#define CQ_URING_H

#include <errno.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef __NR_io_uring_setup
#define __NR_io_uring_setup 425
#endif
#ifndef __NR_io_uring_enter
#define __NR_io_uring_enter 426
#endif
#ifndef __NR_io_uring_register
#define __NR_io_uring_register 427
#endif

/* -- the ABI ------------------------------------------------------------------------ */

struct cq_sqe {
    uint8_t opcode;
    uint8_t flags;
    uint16_t ioprio;
    int32_t fd;
    uint64_t off;          /* off, addr2; POLL_REMOVE/UPDATE: the new user_data */
    uint64_t addr;         /* addr; POLL_REMOVE: the target's user_data */
    uint32_t len;          /* len; POLL_ADD: IORING_POLL_* flags */
    uint32_t op_flags;     /* poll32_events, msg_flags, timeout_flags... */
    uint64_t user_data;
    uint16_t buf_index;    /* buf_index, buf_group */
    uint16_t personality;
    int32_t file_index;    /* splice_fd_in, file_index */
    uint64_t addr3;
    uint64_t pad2;
};

struct cq_cqe {
    uint64_t user_data;
    int32_t res;
    uint32_t flags;
};

struct cq_sqring_offsets {
    uint32_t head, tail, ring_mask, ring_entries, flags, dropped, array, resv1;
    uint64_t user_addr;
};

struct cq_cqring_offsets {
    uint32_t head, tail, ring_mask, ring_entries, overflow, cqes, flags, resv1;
    uint64_t user_addr;
};

struct cq_uring_params {
    uint32_t sq_entries, cq_entries, flags, sq_thread_cpu, sq_thread_idle, features, wq_fd;
    uint32_t resv[3];
    struct cq_sqring_offsets sq_off;
    struct cq_cqring_offsets cq_off;
};

struct cq_getevents_arg {
    uint64_t sigmask;
    uint32_t sigmask_sz;
    uint32_t min_wait_usec;
    uint64_t ts;
};

struct cq_probe_op {
    uint8_t op;
    uint8_t resv;
    uint16_t flags;
    uint32_t resv2;
};

#define CQ_PROBE_OPS 256
struct cq_probe {
    uint8_t last_op;
    uint8_t ops_len;
    uint16_t resv;
    uint32_t resv2[3];
    struct cq_probe_op ops[CQ_PROBE_OPS];
};

/* A provided buffer ring's entry (io_uring_buf); the ring's tail overlays entry 0's resv. */
struct cq_buf {
    uint64_t addr;
    uint32_t len;
    uint16_t bid;
    uint16_t resv;
};

struct cq_buf_reg {
    uint64_t ring_addr;
    uint32_t ring_entries;
    uint16_t bgid;
    uint16_t flags;
    uint64_t resv[3];
};

_Static_assert(sizeof(struct cq_buf) == 16, "io_uring_buf is 16 bytes");
_Static_assert(sizeof(struct cq_buf_reg) == 40, "io_uring_buf_reg is 40 bytes");
_Static_assert(sizeof(struct cq_sqe) == 64, "io_uring_sqe is 64 bytes");
_Static_assert(sizeof(struct cq_cqe) == 16, "io_uring_cqe is 16 bytes");
_Static_assert(sizeof(struct cq_uring_params) == 120, "io_uring_params is 120 bytes");
_Static_assert(sizeof(struct cq_getevents_arg) == 24, "io_uring_getevents_arg is 24 bytes");
_Static_assert(offsetof(struct cq_sqe, user_data) == 32, "sqe user_data at 32");

#define CQ_IORING_OFF_SQ_RING 0ULL
#define CQ_IORING_OFF_CQ_RING 0x8000000ULL
#define CQ_IORING_OFF_SQES 0x10000000ULL

#define CQ_IORING_SETUP_CQSIZE (1U << 3)
#define CQ_IORING_SETUP_CLAMP (1U << 4)
#define CQ_IORING_SETUP_SUBMIT_ALL (1U << 7)

#define CQ_IORING_FEAT_SINGLE_MMAP (1U << 0)
#define CQ_IORING_FEAT_NODROP (1U << 1)
#define CQ_IORING_FEAT_EXT_ARG (1U << 8)
#define CQ_IORING_FEAT_CQE_SKIP (1U << 11)

#define CQ_IORING_ENTER_GETEVENTS (1U << 0)
#define CQ_IORING_ENTER_EXT_ARG (1U << 3)

#define CQ_IORING_SQ_CQ_OVERFLOW (1U << 1)
#define CQ_IORING_SQ_TASKRUN (1U << 2)

#define CQ_IORING_OP_NOP 0
#define CQ_IORING_OP_POLL_ADD 6
#define CQ_IORING_OP_POLL_REMOVE 7
#define CQ_IORING_OP_TIMEOUT 11
#define CQ_IORING_OP_ACCEPT 13
#define CQ_IORING_OP_ASYNC_CANCEL 14
#define CQ_IORING_OP_SEND 26
#define CQ_IORING_OP_RECV 27

#define CQ_IOSQE_BUFFER_SELECT (1U << 5)
#define CQ_IOSQE_CQE_SKIP_SUCCESS (1U << 6)

/* sqe->ioprio for RECV: a multishot receive (Linux 6.0). */
#define CQ_IORING_RECV_MULTISHOT (1U << 1)

#define CQ_IORING_POLL_ADD_MULTI (1U << 0)

#define CQ_IORING_CQE_F_BUFFER (1U << 0)
#define CQ_IORING_CQE_F_MORE (1U << 1)
#define CQ_IORING_CQE_BUFFER_SHIFT 16

#define CQ_IORING_REGISTER_PROBE 8
#define CQ_IORING_REGISTER_PBUF_RING 22
#define CQ_IORING_UNREGISTER_PBUF_RING 23
#define CQ_IO_URING_OP_SUPPORTED (1U << 0)

/* The kernel's sigset_t: _NSIG bits (64 on every Linux architecture cqloop builds on). */
#define CQ_KERNEL_SIGSET_SIZE 8

/* -- the system calls ----------------------------------------------------------------- */

static inline int cq_io_uring_setup(unsigned entries, struct cq_uring_params *p) {
    return (int)syscall(__NR_io_uring_setup, entries, p);
}

static inline int cq_io_uring_enter(int fd, unsigned to_submit, unsigned min_complete,
                                    unsigned flags, void *arg, size_t argsz) {
    return (int)syscall(__NR_io_uring_enter, fd, to_submit, min_complete, flags, arg, argsz);
}

static inline int cq_io_uring_register(int fd, unsigned opcode, void *arg, unsigned nr_args) {
    return (int)syscall(__NR_io_uring_register, fd, opcode, arg, nr_args);
}

/* -- the ring ------------------------------------------------------------------------- */

typedef struct cq_ring {
    int fd;
    unsigned features;
    unsigned sq_entries;
    unsigned cq_entries;
    /* The SQ ring's shared words. */
    unsigned *sq_head;
    unsigned *sq_tail;
    unsigned *sq_flags;
    unsigned sq_mask;
    /* SQEs handed out by cq_ring_get_sqe, published to the kernel by cq_ring_publish. */
    unsigned sqe_tail;
    struct cq_sqe *sqes;
    /* The CQ ring's shared words. */
    unsigned *cq_head;
    unsigned *cq_tail;
    unsigned cq_mask;
    struct cq_cqe *cqes;
    /* The mappings, for munmap. With IORING_FEAT_SINGLE_MMAP the CQ ring shares the SQ
     * ring's mapping (cq_map == sq_map). */
    void *sq_map;
    size_t sq_map_len;
    void *cq_map;
    size_t cq_map_len;
    void *sqes_map;
    size_t sqes_map_len;
    /* Set to -1 with fd when a forked child forgets the ring (the owner's copy of the fd
     * number), or NULL. */
    int *fd_mirror;
    /* The provided buffer ring (cq_pbuf_setup), or NULL: its entries, then the buffers,
     * pbuf_entries of pbuf_size bytes each, in one MADV_DONTFORK mapping of pbuf_map_len
     * bytes. Part of the ring so that a forked child forgets it with the ring. */
    struct cq_buf *pbuf_ring;
    char *pbuf_data;
    size_t pbuf_map_len;
    unsigned pbuf_entries;
    unsigned pbuf_size;
    uint16_t pbuf_tail;
    uint16_t pbuf_group;
} cq_ring;

static inline void cq_ring_clear(cq_ring *ring) {
    int *mirror = ring->fd_mirror;
    memset(ring, 0, sizeof(*ring));
    ring->fd = -1;
    ring->fd_mirror = mirror;
}

/* The rings this process has set up and not closed: what a forked child forgets. Changed
 * only with the GIL held (cqloop's callers) or in a single-threaded program (ceiling.c). */
static cq_ring **cq_live_rings;
static size_t cq_live_count, cq_live_cap;
static int cq_atfork_installed;

/* In a forked child: close each live ring's fd copy and forget the ring. Its mappings are
 * not in the child (MADV_DONTFORK), so nothing is unmapped: the addresses may be reused. */
static void cq_rings_forget_in_child(void) {
    size_t i;
    for (i = 0; i < cq_live_count; i++) {
        cq_ring *ring = cq_live_rings[i];
        if (ring->fd >= 0)
            close(ring->fd);
        if (ring->fd_mirror != NULL)
            *ring->fd_mirror = -1;
        cq_ring_clear(ring);
    }
    cq_live_count = 0;
}

static inline int cq_rings_track(cq_ring *ring) {
    if (!cq_atfork_installed) {
        if (pthread_atfork(NULL, NULL, cq_rings_forget_in_child) != 0)
            return -ENOMEM;
        cq_atfork_installed = 1;
    }
    if (cq_live_count == cq_live_cap) {
        size_t cap = cq_live_cap ? cq_live_cap * 2 : 16;
        cq_ring **grown = realloc(cq_live_rings, cap * sizeof(*grown));
        if (grown == NULL)
            return -ENOMEM;
        cq_live_rings = grown;
        cq_live_cap = cap;
    }
    cq_live_rings[cq_live_count++] = ring;
    return 0;
}

static inline void cq_rings_untrack(cq_ring *ring) {
    size_t i;
    for (i = 0; i < cq_live_count; i++) {
        if (cq_live_rings[i] == ring) {
            cq_live_rings[i] = cq_live_rings[--cq_live_count];
            return;
        }
    }
}

/* Unmap and close. Safe on a cleared or half set-up ring, and on a ring a forked child
 * forgot (cleared then). */
static inline void cq_pbuf_close(cq_ring *ring);

static inline void cq_ring_close(cq_ring *ring) {
    cq_rings_untrack(ring);
    cq_pbuf_close(ring);
    if (ring->sqes_map != NULL)
        munmap(ring->sqes_map, ring->sqes_map_len);
    if (ring->cq_map != NULL && ring->cq_map != ring->sq_map)
        munmap(ring->cq_map, ring->cq_map_len);
    if (ring->sq_map != NULL)
        munmap(ring->sq_map, ring->sq_map_len);
    if (ring->fd >= 0)
        close(ring->fd);
    cq_ring_clear(ring);
}

/* Set up a ring of `entries` SQEs and `cq_entries` CQEs with setup `flags`. 0, or a
 * negative errno (the ring is then cleared). The ring fd is always O_CLOEXEC: the kernel
 * installs it so. */
static inline int cq_ring_setup(cq_ring *ring, unsigned entries, unsigned cq_entries,
                                unsigned flags) {
    struct cq_uring_params p;
    unsigned *array;
    unsigned i;
    int err;
    cq_ring_clear(ring);
    memset(&p, 0, sizeof(p));
    p.flags = flags | CQ_IORING_SETUP_CQSIZE | CQ_IORING_SETUP_CLAMP;
    p.cq_entries = cq_entries;
    ring->fd = cq_io_uring_setup(entries, &p);
    if (ring->fd < 0) {
        err = errno;
        ring->fd = -1;
        return -err;
    }
    ring->features = p.features;
    ring->sq_entries = p.sq_entries;
    ring->cq_entries = p.cq_entries;
    ring->sq_map_len = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    ring->cq_map_len = p.cq_off.cqes + p.cq_entries * sizeof(struct cq_cqe);
    if (p.features & CQ_IORING_FEAT_SINGLE_MMAP) {
        if (ring->cq_map_len > ring->sq_map_len)
            ring->sq_map_len = ring->cq_map_len;
        ring->cq_map_len = ring->sq_map_len;
    }
    ring->sq_map = mmap(NULL, ring->sq_map_len, PROT_READ | PROT_WRITE,
                        MAP_SHARED | MAP_POPULATE, ring->fd, CQ_IORING_OFF_SQ_RING);
    if (ring->sq_map == MAP_FAILED) {
        err = errno;
        ring->sq_map = NULL;
        cq_ring_close(ring);
        return -err;
    }
    if (p.features & CQ_IORING_FEAT_SINGLE_MMAP) {
        ring->cq_map = ring->sq_map;
    } else {
        ring->cq_map = mmap(NULL, ring->cq_map_len, PROT_READ | PROT_WRITE,
                            MAP_SHARED | MAP_POPULATE, ring->fd, CQ_IORING_OFF_CQ_RING);
        if (ring->cq_map == MAP_FAILED) {
            err = errno;
            ring->cq_map = NULL;
            cq_ring_close(ring);
            return -err;
        }
    }
    ring->sqes_map_len = p.sq_entries * sizeof(struct cq_sqe);
    ring->sqes_map = mmap(NULL, ring->sqes_map_len, PROT_READ | PROT_WRITE,
                          MAP_SHARED | MAP_POPULATE, ring->fd, CQ_IORING_OFF_SQES);
    if (ring->sqes_map == MAP_FAILED) {
        err = errno;
        ring->sqes_map = NULL;
        cq_ring_close(ring);
        return -err;
    }
    ring->sq_head = (unsigned *)((char *)ring->sq_map + p.sq_off.head);
    ring->sq_tail = (unsigned *)((char *)ring->sq_map + p.sq_off.tail);
    ring->sq_flags = (unsigned *)((char *)ring->sq_map + p.sq_off.flags);
    ring->sq_mask = *(unsigned *)((char *)ring->sq_map + p.sq_off.ring_mask);
    ring->sqes = (struct cq_sqe *)ring->sqes_map;
    ring->sqe_tail = *ring->sq_tail;
    /* The SQ array maps ring slots to SQE indexes: the identity, set once. */
    array = (unsigned *)((char *)ring->sq_map + p.sq_off.array);
    for (i = 0; i < p.sq_entries; i++)
        array[i] = i;
    /* Not inherited by a forked child (see "Fork" above). */
    madvise(ring->sq_map, ring->sq_map_len, MADV_DONTFORK);
    if (ring->cq_map != ring->sq_map)
        madvise(ring->cq_map, ring->cq_map_len, MADV_DONTFORK);
    madvise(ring->sqes_map, ring->sqes_map_len, MADV_DONTFORK);
    err = cq_rings_track(ring);
    if (err < 0) {
        cq_ring_close(ring);
        return err;
    }
    ring->cq_head = (unsigned *)((char *)ring->cq_map + p.cq_off.head);
    ring->cq_tail = (unsigned *)((char *)ring->cq_map + p.cq_off.tail);
    ring->cq_mask = *(unsigned *)((char *)ring->cq_map + p.cq_off.ring_mask);
    ring->cqes = (struct cq_cqe *)((char *)ring->cq_map + p.cq_off.cqes);
    return 0;
}

/* A zeroed SQE at the SQ's tail, or NULL when the SQ is full (submit, then ask again). */
static inline struct cq_sqe *cq_ring_get_sqe(cq_ring *ring) {
    unsigned head = __atomic_load_n(ring->sq_head, __ATOMIC_ACQUIRE);
    struct cq_sqe *sqe;
    if (ring->sqe_tail - head >= ring->sq_entries)
        return NULL;
    sqe = &ring->sqes[ring->sqe_tail & ring->sq_mask];
    ring->sqe_tail++;
    memset(sqe, 0, sizeof(*sqe));
    return sqe;
}

static inline int cq_ring_submit(cq_ring *ring);

/* A zeroed SQE, submitting what the SQ holds first when it is full; NULL with *err set to a
 * negative errno when none can be had. */
static inline struct cq_sqe *cq_ring_next_sqe(cq_ring *ring, int *err) {
    struct cq_sqe *sqe = cq_ring_get_sqe(ring);
    int n;
    if (sqe != NULL)
        return sqe;
    n = cq_ring_submit(ring);
    if (n < 0) {
        *err = n;
        return NULL;
    }
    sqe = cq_ring_get_sqe(ring);
    if (sqe == NULL)
        *err = -EBUSY;
    return sqe;
}

/* Publish the SQEs handed out so far; return how many the kernel has yet to consume. */
static inline unsigned cq_ring_publish(cq_ring *ring) {
    __atomic_store_n(ring->sq_tail, ring->sqe_tail, __ATOMIC_RELEASE);
    return ring->sqe_tail - __atomic_load_n(ring->sq_head, __ATOMIC_ACQUIRE);
}

/* Submit what is published, without waiting: the count submitted or a negative errno. */
static inline int cq_ring_submit(cq_ring *ring) {
    unsigned pending = cq_ring_publish(ring);
    int n;
    if (pending == 0)
        return 0;
    n = cq_io_uring_enter(ring->fd, pending, 0, 0, NULL, 0);
    return n < 0 ? -errno : n;
}

/* Submit what is published and wait for at least one completion, at most `ts` (NULL:
 * no bound), with `sigmask` (NULL: the thread's) as the signal mask during the wait.
 * Returns the io_uring_enter result or a negative errno (-ETIME, -EINTR). A wait that
 * also submitted reports the submission's count even when the wait itself timed out or
 * was interrupted: the caller looks at the CQ, not at this result. */
static inline int cq_ring_submit_and_wait(cq_ring *ring, struct timespec *ts,
                                          const void *sigmask) {
    struct cq_getevents_arg arg;
    unsigned pending = cq_ring_publish(ring);
    int n;
    arg.sigmask = (uint64_t)(uintptr_t)sigmask;
    arg.sigmask_sz = CQ_KERNEL_SIGSET_SIZE;
    arg.min_wait_usec = 0;
    arg.ts = (uint64_t)(uintptr_t)ts;
    n = cq_io_uring_enter(ring->fd, pending, 1,
                          CQ_IORING_ENTER_GETEVENTS | CQ_IORING_ENTER_EXT_ARG,
                          &arg, sizeof(arg));
    return n < 0 ? -errno : n;
}

/* How many CQEs wait in the CQ ring (from cq_ring_cqe_at(ring, 0) on). */
static inline unsigned cq_ring_ready(cq_ring *ring) {
    return __atomic_load_n(ring->cq_tail, __ATOMIC_ACQUIRE) - *ring->cq_head;
}

static inline struct cq_cqe *cq_ring_cqe_at(cq_ring *ring, unsigned i) {
    return &ring->cqes[(*ring->cq_head + i) & ring->cq_mask];
}

/* Give `n` reaped CQEs back to the kernel. */
static inline void cq_ring_advance(cq_ring *ring, unsigned n) {
    __atomic_store_n(ring->cq_head, *ring->cq_head + n, __ATOMIC_RELEASE);
}

/* Completions the kernel holds beyond the CQ ring (an overflow) or task work it asks us
 * to run: a wait that would not block must still enter the kernel to see them. */
static inline int cq_ring_needs_enter(cq_ring *ring) {
    return (__atomic_load_n(ring->sq_flags, __ATOMIC_ACQUIRE)
            & (CQ_IORING_SQ_CQ_OVERFLOW | CQ_IORING_SQ_TASKRUN)) != 0;
}

/* Flush an overflow and run pending task work without waiting. */
static inline int cq_ring_get_events(cq_ring *ring) {
    unsigned pending = cq_ring_publish(ring);
    int n = cq_io_uring_enter(ring->fd, pending, 0, CQ_IORING_ENTER_GETEVENTS, NULL, 0);
    return n < 0 ? -errno : n;
}

/* IORING_REGISTER_PROBE into `probe`: 0 or a negative errno. */
static inline int cq_ring_probe(cq_ring *ring, struct cq_probe *probe) {
    memset(probe, 0, sizeof(*probe));
    if (cq_io_uring_register(ring->fd, CQ_IORING_REGISTER_PROBE, probe, CQ_PROBE_OPS) < 0)
        return -errno;
    return 0;
}

static inline int cq_probe_supports(struct cq_probe *probe, unsigned op) {
    if (op > probe->last_op || op >= probe->ops_len)
        return 0;
    return (probe->ops[op].flags & CQ_IO_URING_OP_SUPPORTED) != 0;
}

/* -- the provided buffer ring ------------------------------------------------------------
 * One ring of `entries` buffers of `size` bytes (IORING_REGISTER_PBUF_RING, Linux 5.19)
 * for buffer group `group`: a receive with IOSQE_BUFFER_SELECT takes a buffer from it when
 * data arrives and names it in its completion (IORING_CQE_F_BUFFER, the id in the flags'
 * high half). From then on the buffer is the reaper's, until cq_pbuf_recycle puts it back
 * and cq_pbuf_publish makes the kernel see it. */

static inline char *cq_pbuf_buffer(cq_ring *ring, unsigned bid) {
    return ring->pbuf_data + (size_t)bid * ring->pbuf_size;
}

static inline void cq_pbuf_recycle(cq_ring *ring, unsigned bid) {
    /* Never writes resv: entry 0's is the kernel's view of the tail. */
    struct cq_buf *buf = &ring->pbuf_ring[ring->pbuf_tail & (ring->pbuf_entries - 1)];
    buf->addr = (uint64_t)(uintptr_t)cq_pbuf_buffer(ring, bid);
    buf->len = ring->pbuf_size;
    buf->bid = (uint16_t)bid;
    ring->pbuf_tail++;
}

static inline void cq_pbuf_publish(cq_ring *ring) {
    __atomic_store_n(&ring->pbuf_ring[0].resv, ring->pbuf_tail, __ATOMIC_RELEASE);
}

/* 0, or a negative errno (nothing is then set up). `entries` is a power of two. */
static inline int cq_pbuf_setup(cq_ring *ring, unsigned entries, unsigned size,
                                uint16_t group) {
    struct cq_buf_reg reg;
    size_t ring_len = (size_t)entries * sizeof(struct cq_buf);
    size_t len;
    void *map;
    unsigned i;
    int err;
    if (ring->pbuf_ring != NULL)
        return -EEXIST;
    /* The entries first, page-aligned (the kernel requires it), then the buffers. */
    ring_len = (ring_len + 4095) & ~(size_t)4095;
    len = ring_len + (size_t)entries * size;
    map = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (map == MAP_FAILED)
        return -errno;
    madvise(map, len, MADV_DONTFORK);
    memset(&reg, 0, sizeof(reg));
    reg.ring_addr = (uint64_t)(uintptr_t)map;
    reg.ring_entries = entries;
    reg.bgid = group;
    if (cq_io_uring_register(ring->fd, CQ_IORING_REGISTER_PBUF_RING, &reg, 1) < 0) {
        err = errno;
        munmap(map, len);
        return -err;
    }
    ring->pbuf_ring = (struct cq_buf *)map;
    ring->pbuf_data = (char *)map + ring_len;
    ring->pbuf_map_len = len;
    ring->pbuf_entries = entries;
    ring->pbuf_size = size;
    ring->pbuf_group = group;
    ring->pbuf_tail = 0;
    for (i = 0; i < entries; i++)
        cq_pbuf_recycle(ring, i);
    cq_pbuf_publish(ring);
    return 0;
}

/* Unregister the buffer ring (no receive can take a buffer from it afterwards: one in
 * flight fails with ENOBUFS), then unmap it. The ring's own fd must still be open. */
static inline void cq_pbuf_close(cq_ring *ring) {
    struct cq_buf_reg reg;
    if (ring->pbuf_ring == NULL)
        return;
    if (ring->fd >= 0) {
        memset(&reg, 0, sizeof(reg));
        reg.bgid = ring->pbuf_group;
        cq_io_uring_register(ring->fd, CQ_IORING_UNREGISTER_PBUF_RING, &reg, 1);
    }
    munmap(ring->pbuf_ring, ring->pbuf_map_len);
    ring->pbuf_ring = NULL;
    ring->pbuf_data = NULL;
}

#endif
