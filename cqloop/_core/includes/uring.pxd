# io_uring's ABI and cqloop's minimal ring over the raw system calls (cquring.h): the
# declarations uring.pyx uses. No liburing: the header is the whole of it.

from libc.stdint cimport int32_t, uint8_t, uint16_t, uint32_t, uint64_t

from cqloop._core.includes.system cimport timespec


cdef extern from "cquring.h" nogil:
    struct cq_sqe:
        uint8_t opcode
        uint8_t flags
        uint16_t ioprio
        int32_t fd
        uint64_t off
        uint64_t addr
        uint32_t len
        uint32_t op_flags
        uint64_t user_data
        uint16_t buf_index

    struct cq_cqe:
        uint64_t user_data
        int32_t res
        uint32_t flags

    struct cq_buf:
        pass

    struct cq_probe:
        uint8_t last_op
        uint8_t ops_len

    ctypedef struct cq_ring:
        int fd
        int *fd_mirror
        unsigned features
        unsigned sq_entries
        unsigned cq_entries
        unsigned pbuf_entries
        unsigned pbuf_size
        cq_buf *pbuf_ring

    enum:
        CQ_IORING_SETUP_SUBMIT_ALL
        CQ_IORING_FEAT_NODROP
        CQ_IORING_FEAT_EXT_ARG
        CQ_IORING_FEAT_CQE_SKIP
        CQ_IORING_OP_NOP
        CQ_IORING_OP_POLL_ADD
        CQ_IORING_OP_POLL_REMOVE
        CQ_IOSQE_CQE_SKIP_SUCCESS
        CQ_IORING_POLL_ADD_MULTI
        CQ_IORING_CQE_F_MORE
        CQ_IORING_CQE_F_BUFFER
        CQ_IORING_CQE_BUFFER_SHIFT
        CQ_IORING_OP_RECV
        CQ_IORING_OP_ASYNC_CANCEL
        CQ_IORING_RECV_MULTISHOT
        CQ_IOSQE_BUFFER_SELECT

    void cq_ring_clear(cq_ring *ring)
    void cq_ring_close(cq_ring *ring)
    int cq_ring_setup(cq_ring *ring, unsigned entries, unsigned cq_entries, unsigned flags)
    cq_sqe *cq_ring_get_sqe(cq_ring *ring)
    cq_sqe *cq_ring_next_sqe(cq_ring *ring, int *err)
    unsigned cq_ring_publish(cq_ring *ring)
    int cq_ring_submit(cq_ring *ring)
    int cq_ring_submit_and_wait(cq_ring *ring, timespec *ts, const void *sigmask)
    unsigned cq_ring_ready(cq_ring *ring)
    cq_cqe *cq_ring_cqe_at(cq_ring *ring, unsigned i)
    void cq_ring_advance(cq_ring *ring, unsigned n)
    int cq_ring_needs_enter(cq_ring *ring)
    int cq_ring_get_events(cq_ring *ring)
    int cq_ring_probe(cq_ring *ring, cq_probe *probe)
    int cq_probe_supports(cq_probe *probe, unsigned op)
    int cq_pbuf_setup(cq_ring *ring, unsigned entries, unsigned size, uint16_t group)
    char *cq_pbuf_buffer(cq_ring *ring, unsigned bid)
    void cq_pbuf_recycle(cq_ring *ring, unsigned bid)
    void cq_pbuf_publish(cq_ring *ring)
