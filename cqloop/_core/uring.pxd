# The io_uring layer: Ring (a ring over the raw system calls, for the probe and the
# tests), probe() (is io_uring usable here, and why not), and UringPoller (the readiness
# engine on poll requests). See uring.pyx.

from cpython.object cimport PyObject
from libc.stdint cimport int32_t, uint8_t, uint16_t, uint32_t, uint64_t

from cqloop._core.includes.uring cimport cq_cqe, cq_ring
from cqloop._core.poller cimport Poller


cdef struct Reg:
    # The kernel's registration of one fd, as epoll would hold it.
    uint64_t data
    uint32_t mask
    # The serial of the fd's current poll request (its user_data's high half).
    uint32_t serial
    uint8_t state
    # The file registered (fstat's st_dev and st_ino): a reused fd number is told apart.
    uint64_t dev
    uint64_t ino
    # The fd's multishot receive (recv_start): its serial (user_data's, as above), state
    # (RECV_NONE, RECV_ARMED, RECV_STOPPING) and owner (a reference held while the state
    # is not RECV_NONE: its completions are for it, in or out of the kernel's table).
    uint32_t recv_serial
    uint8_t recv_state
    PyObject *recv_owner


cdef struct Received:
    # What an EV_RECEIVED entry of the event buffer brought (same index).
    int32_t res
    bint more
    char *buf
    PyObject *owner


cdef class Ring:
    cdef cq_ring ring


cdef class UringPoller(Poller):
    cdef cq_ring ring
    # Registrations indexed by fd (nregs of them; FREE past the highest registered).
    cdef Reg *regs
    cdef int nregs
    # fds whose level-triggered poll fired: re-armed at the next submission (see REARM).
    cdef int *rearm
    cdef int nrearm
    cdef int rearm_cap
    # IOSQE_CQE_SKIP_SUCCESS for POLL_REMOVE (Linux 5.17+).
    cdef uint8_t remove_flags
    # Beside the event buffer: each EV_RECEIVED entry's result (done_cap of them).
    cdef Received *done
    cdef int done_cap
    # Provided buffers lent to the last wait's EV_RECEIVED entries: the kernel's dispatch
    # copies them, and they go back to the buffer ring at the next wait (or flush).
    cdef uint16_t *lent
    cdef int nlent
    # Buffers put back in the ring and not yet published to the kernel.
    cdef bint pbuf_dirty
    # Owners whose receive ended (or was superseded) in the last wait: released at the
    # next one, after the dispatch has handed them their completions.
    cdef list released

    cdef int _release_owner(self, Reg *reg) noexcept

    cdef int _ensure_done(self) noexcept
    cdef int _return_lent(self) noexcept
    cdef int _take_received(self, cq_cqe *cqe, int n) noexcept

    cdef int _reg_slot(self, int fd) noexcept
    cdef int _arm(self, int fd) noexcept
    cdef int _disarm(self, int fd) noexcept
    cdef int _submit_checked(self, int fd) noexcept
    cdef int _arm_pending(self) noexcept
    cdef Reg *_owner(self, uint64_t user_data) noexcept
    cdef int _reap(self) noexcept
    cdef int _queue_rearm(self, int fd) noexcept
    cdef int _revalidate(self) noexcept
