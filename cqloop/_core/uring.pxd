# The io_uring layer: Ring (a ring over the raw system calls, for the probe and the
# tests), probe() (is io_uring usable here, and why not), and UringPoller (the readiness
# engine on poll requests). See uring.pyx.

from libc.stdint cimport uint8_t, uint32_t, uint64_t

from cqloop._core.includes.uring cimport cq_ring
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

    cdef int _reg_slot(self, int fd) noexcept
    cdef int _arm(self, int fd) noexcept
    cdef int _disarm(self, int fd) noexcept
    cdef int _submit_checked(self, int fd) noexcept
    cdef int _arm_pending(self) noexcept
    cdef Reg *_owner(self, uint64_t user_data) noexcept
    cdef int _reap(self) noexcept
    cdef int _queue_rearm(self, int fd) noexcept
    cdef int _revalidate(self) noexcept
