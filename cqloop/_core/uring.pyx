"""io_uring for cqloop: the probe, a bare Ring, and UringPoller, the io_uring readiness engine.

Owns: the ring (its fd and its three mappings: SQ ring, CQ ring, SQE array), set up and
driven through cquring.h's raw system calls (no liburing), and the table of registrations
UringPoller keeps by fd. The ring fd is O_CLOEXEC (the kernel always installs it so).

UringPoller gives the kernel (kernel.pyx) epoll's readiness semantics with poll requests:
- register(fd) is an IORING_OP_POLL_ADD, submitted at once (one io_uring_enter, as epoll_ctl
  is one call), and its errors are epoll's: EBADF for a closed fd (the request's failure is
  read back from the CQ before register returns), EPERM for a regular file or a directory
  (which poll would report ready forever; epoll refuses them), EEXIST when the fd is
  registered already for the same file (device and inode as fstat gives them; a number
  closed and reused for another file is registered afresh, as epoll does). modify is a
  POLL_REMOVE of the current request and a POLL_ADD of the new one, unregister a
  POLL_REMOVE, both submitted at once: an fd's owner closes it right after removing it,
  and the removal must have released the file by then (see below).
- Level-triggered registrations (the default, as epoll's) are single-shot poll requests
  re-armed after each completion, at the next submission (the next wait, or `flush`): the
  re-arm polls the file afresh, so an fd still ready after its callbacks ran is reported
  again at the next wait, and one they drained is not. (A multishot poll reports wake-ups,
  not readiness: a reader that leaves data behind would never hear of it again.) The re-arm
  waits for the callbacks of the iteration to have run: armed earlier it would report the
  data they were about to read.
- EPOLLONESHOT registrations are single-shot requests left disarmed after they fire, until
  modify re-arms them; EPOLLET registrations are multishot requests (edge: one report per
  wake-up), re-armed if the kernel ends them.
- `wait` submits what is pending and waits in the same io_uring_enter (IORING_ENTER_EXT_ARG:
  a timespec bound and Loop.pause's signal mask), then turns completions into the epoll_event
  entries the kernel's dispatch reads.

Which completion is whose: a poll request's user_data is (serial << 32 | fd), the serial
being the registration's current one, bumped by every new request on the fd. A completion
is reported only if its fd's registration is live and its serial current; anything else (a
request cancelled by modify or unregister, one that completed before its cancel reached it,
a request of an fd unregistered and registered again) is dropped here, before the kernel's
own generation check. POLL_REMOVE requests carry REMOVE_DATA and post nothing on success.

Ownership: a poll request holds a reference to the file its fd named when it was armed,
until it completes. So an fd closed while a request is armed stays open in the kernel (a
socket's peer sees no close) until the registration is removed, and a closed fd's number,
reused for another file, never receives the old file's completions (they carry the old
serial, and the new registration has a new one). The kernel therefore never leaves a
registration armed and idle on io_uring (`holds_files`; FdTable._wait_sock).

A request belongs to the thread that armed it: io_uring cancels a thread's requests when it
exits, and such a cancellation (-ECANCELED under a current serial: ours retire the serial
first) re-arms the registration from the thread that reaps it.
Completions are delivered by task work on the thread that armed the request: that thread
is woken (and an epoll_wait or select it is blocked in returns EINTR, which the waits retry)
when one is due. So the ring is set up without IORING_SETUP_COOP_TASKRUN (a loop nested in
an outer poller must see its ring fd turn readable without entering the ring itself) and
without SINGLE_ISSUER/DEFER_TASKRUN (a loop may be made in one thread and run in another).

A forked child never touches the parent's ring: its mappings are not inherited
(MADV_DONTFORK), and cquring.h's at-fork handler closes the child's copy of the fd at once,
whatever forked (a copy left open would keep the parent's poll requests, and the files they
hold, alive as long as the child runs); the poller's fd reads -1 in the child, and the
kernel refuses work until loop.reset() makes a new ring.

Stream receives (recv_start / recv_stop; the transport's side is ringread.pyx): a
multishot IORING_OP_RECV per reading transport, user_data RECV_DATA | serial << 32 | fd,
taking buffers from one provided buffer ring per poller (cquring.h's cq_pbuf_*, made at the
first receive). Ownership: a completion's buffer is the engine's from the CQE until the
next wait (or flush), lent meanwhile to the kernel's dispatch, which copies it; a stale
completion's buffer goes back at once. The receive holds its socket's file until its last
completion (no IORING_CQE_F_MORE), and the engine holds its owner (a reference) until
then too, so that the last completion reaches it wherever it is. recv_stop submits the
cancel at once. A new receive on an fd number takes a new serial: whatever an earlier one
on that number still posts is stale, its buffers recycled, its owner released.

Size: past 800 lines. Next to split out: Ring and probe() (the bare ring and the probe)
into a module of their own.
"""

import os

from libc.math cimport ceil
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, realloc
from libc.string cimport memset

from cpython.object cimport PyObject
from cpython.ref cimport Py_DECREF, Py_INCREF

from cqloop._core.includes.gchook cimport cq_visitproc
from cqloop._core.includes.pyapi cimport PyErr_CheckSignals
from cqloop._core.includes.system cimport (
    CLOCK_MONOTONIC,
    EBADF,
    EBUSY,
    ECANCELED,
    EEXIST,
    EINTR,
    ENOENT,
    ENOMEM,
    ENOSYS,
    EPERM,
    EPOLLET,
    EPOLLONESHOT,
    ETIME,
    clock_gettime,
    errno,
    sigaddset,
    sigemptyset,
    sigset_t,
    timespec,
)
from cqloop._core.includes.uring cimport (
    CQ_IORING_CQE_BUFFER_SHIFT,
    CQ_IORING_CQE_F_BUFFER,
    CQ_IORING_CQE_F_MORE,
    CQ_IORING_FEAT_CQE_SKIP,
    CQ_IORING_FEAT_EXT_ARG,
    CQ_IORING_FEAT_NODROP,
    CQ_IORING_OP_ASYNC_CANCEL,
    CQ_IORING_OP_NOP,
    CQ_IORING_OP_POLL_ADD,
    CQ_IORING_OP_POLL_REMOVE,
    CQ_IORING_OP_RECV,
    CQ_IORING_POLL_ADD_MULTI,
    CQ_IORING_RECV_MULTISHOT,
    CQ_IORING_SETUP_SUBMIT_ALL,
    CQ_IOSQE_BUFFER_SELECT,
    CQ_IOSQE_CQE_SKIP_SUCCESS,
    cq_cqe,
    cq_pbuf_buffer,
    cq_pbuf_publish,
    cq_pbuf_recycle,
    cq_pbuf_setup,
    cq_probe,
    cq_probe_supports,
    cq_ring_advance,
    cq_ring_clear,
    cq_ring_close,
    cq_ring_cqe_at,
    cq_ring_get_events,
    cq_ring_get_sqe,
    cq_ring_next_sqe,
    cq_ring_needs_enter,
    cq_ring_probe,
    cq_ring_publish,
    cq_ring_ready,
    cq_ring_setup,
    cq_ring_submit,
    cq_ring_submit_and_wait,
    cq_sqe,
)
from cqloop._core.poller cimport EV_RECEIVED, Poller

cdef extern from "<sys/stat.h>" nogil:
    struct stat:
        unsigned int st_mode
        unsigned long st_ino
        unsigned long st_dev
    int fstat(int fd, stat *buf)
    bint S_ISREG(unsigned int mode)
    bint S_ISDIR(unsigned int mode)

# The SQ: registrations are submitted one by one, re-arms in a batch per wait; when it
# fills, what it holds is submitted and the batch goes on.
cdef unsigned SQ_ENTRIES = 256
# The CQ: one completion per armed request at most between two waits, but a wait reports
# at most the event buffer's capacity and leaves the rest in the ring; the kernel keeps
# what does not fit in an overflow list (IORING_FEAT_NODROP) until the next wait.
cdef unsigned CQ_ENTRIES = 4096
cdef unsigned SETUP_FLAGS = CQ_IORING_SETUP_SUBMIT_ALL

# Registration states.
cdef uint8_t FREE = 0
cdef uint8_t ARMED = 1    # a request is in flight (serial is its)
cdef uint8_t IDLE = 2     # registered, nothing armed: a one-shot that fired, or a failed arm
cdef uint8_t REARM = 3    # registered, to be armed at the next submission

# user_data: a removal or cancellation (REMOVE_DATA), a receive (RECV_DATA | serial << 32 |
# fd), or a poll request (serial << 32 | fd). Serials have 30 bits.
cdef uint64_t REMOVE_DATA = 1ULL << 63
cdef uint64_t RECV_DATA = 1ULL << 62
cdef uint32_t SERIAL_MASK = 0x3fffffffu

# Receive states (Reg.recv_state).
cdef uint8_t RECV_NONE = 0
cdef uint8_t RECV_ARMED = 1      # a multishot receive is in flight
cdef uint8_t RECV_STOPPING = 2   # cancelled; its completions until the last are delivered

# The provided buffer ring the receives take their buffers from: made at the first
# receive, PBUF_ENTRIES buffers of PBUF_SIZE bytes (8 MiB of address space; pages are
# touched as buffers are used). A buffer is lent from a completion to the next wait, so
# the ring runs dry only when more completions than that arrive between two waits; a
# receive that finds it dry ends with ENOBUFS (no data is taken) and its transport
# starts another.
cdef unsigned PBUF_ENTRIES = 1024
cdef unsigned PBUF_SIZE = 8192
cdef uint16_t PBUF_GROUP = 1
cdef uint32_t MODE_BITS = EPOLLET | EPOLLONESHOT

# The opcodes the engine needs, with the names the probe reports.
cdef dict REQUIRED_OPS = {
    CQ_IORING_OP_NOP: "IORING_OP_NOP",
    CQ_IORING_OP_POLL_ADD: "IORING_OP_POLL_ADD",
    CQ_IORING_OP_POLL_REMOVE: "IORING_OP_POLL_REMOVE",
}

# The opcodes stream receives need beside those (without them streams read by readiness).
cdef dict RECEIVE_OPS = {
    CQ_IORING_OP_RECV: "IORING_OP_RECV",
    CQ_IORING_OP_ASYNC_CANCEL: "IORING_OP_ASYNC_CANCEL",
}

cdef object _probe_result = None
# Whether the kernel has the receive opcodes (set by probe()).
cdef bint _receive_ops = False


cdef inline uint32_t _next_serial(uint32_t serial) noexcept:
    """The serial after `serial` (never 0: a zeroed registration has none)."""
    serial = (serial + 1) & SERIAL_MASK
    return serial if serial else 1


cdef inline double _monotonic_ms() noexcept:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6


def _read_disabled_sysctl():
    """kernel.io_uring_disabled (Linux 6.6+): 0, 1 (only CAP_SYS_ADMIN and the group
    kernel.io_uring_group), 2 (nobody); None where the knob does not exist."""
    try:
        with open("/proc/sys/kernel/io_uring_disabled") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _setup_failure(int err):
    disabled = _read_disabled_sysctl()
    name = os.strerror(err)
    if err == 38:  # ENOSYS
        return (f"io_uring_setup is not available (ENOSYS: {name}): a kernel built without "
                "io_uring, or a seccomp filter hiding it")
    if err == EPERM:
        if disabled == 2:
            return "io_uring is disabled on this system (sysctl kernel.io_uring_disabled=2)"
        if disabled == 1:
            return ("io_uring is restricted to CAP_SYS_ADMIN and the group "
                    "kernel.io_uring_group (sysctl kernel.io_uring_disabled=1)")
        return ("io_uring_setup was refused (EPERM): a seccomp filter or a security module "
                "denies it (container runtimes' default profiles do)")
    if err == ENOMEM:
        return ("io_uring_setup failed (ENOMEM): the locked-memory limit (ulimit -l) is too "
                "low for the ring (kernels before 5.12 charge rings to it)")
    return f"io_uring_setup failed ({name}): the kernel refused cqloop's ring parameters"


def probe():
    """(usable, reason): whether cqloop's io_uring engine can run here, and why not (or
    what was found). Sets up one small ring and closes it; the answer is cached."""
    global _probe_result, _receive_ops
    cdef cq_ring ring
    cdef cq_probe ops
    cdef int err
    if _probe_result is not None:
        return _probe_result
    memset(&ring, 0, sizeof(ring))
    err = cq_ring_setup(&ring, 4, 8, SETUP_FLAGS)
    if err < 0:
        _probe_result = (False, _setup_failure(-err))
        return _probe_result
    try:
        missing = []
        if not ring.features & CQ_IORING_FEAT_EXT_ARG:
            missing.append("IORING_FEAT_EXT_ARG (Linux 5.11)")
        if not ring.features & CQ_IORING_FEAT_NODROP:
            missing.append("IORING_FEAT_NODROP (Linux 5.5)")
        if missing:
            _probe_result = (False, "the kernel's io_uring lacks " + ", ".join(missing))
            return _probe_result
        err = cq_ring_probe(&ring, &ops)
        if err < 0:
            _probe_result = (False, f"IORING_REGISTER_PROBE failed ({os.strerror(-err)})")
            return _probe_result
        for op, name in REQUIRED_OPS.items():
            if not cq_probe_supports(&ops, op):
                missing.append(name)
        if missing:
            _probe_result = (False, "the kernel's io_uring lacks " + ", ".join(missing))
            return _probe_result
        _receive_ops = all(cq_probe_supports(&ops, op) for op in RECEIVE_OPS)
        _probe_result = (True, f"ring set up (features 0x{ring.features:x}), "
                               "poll requests supported" + (
                                   ", stream receives supported" if _receive_ops else
                                   ", no stream receives (IORING_OP_RECV missing)"))
        return _probe_result
    finally:
        cq_ring_close(&ring)


def check_usable():
    """Raise OSError saying why when the io_uring engine cannot run here."""
    usable, reason = probe()
    if not usable:
        raise OSError(f"the io_uring engine is not usable here: {reason}")


cdef int _ring_setup_or_raise(cq_ring *ring, unsigned entries, unsigned cq_entries) except -1:
    cdef int err = cq_ring_setup(ring, entries, cq_entries, SETUP_FLAGS)
    if err < 0:
        raise OSError(-err, _setup_failure(-err))
    if not ring.features & CQ_IORING_FEAT_EXT_ARG:
        cq_ring_close(ring)
        raise OSError("the io_uring engine is not usable here: no IORING_FEAT_EXT_ARG")
    return 0


cdef int _wait_ring(cq_ring *ring, int timeout_ms, const void *sigmask) noexcept nogil:
    """Submit what is published and wait up to timeout_ms (-1: no bound) for a completion."""
    cdef timespec ts
    if timeout_ms < 0:
        return cq_ring_submit_and_wait(ring, NULL, sigmask)
    ts.tv_sec = timeout_ms // 1000
    ts.tv_nsec = (timeout_ms % 1000) * 1000000
    return cq_ring_submit_and_wait(ring, &ts, sigmask)


cdef class Ring:
    """A bare io_uring (the ring layer under UringPoller), for the probe and the tests:
    NOPs in, completions out, waits with a timeout. Closed by close() or when dropped."""

    def __cinit__(self, unsigned entries=8):
        cq_ring_clear(&self.ring)
        _ring_setup_or_raise(&self.ring, entries, entries * 2)

    def __dealloc__(self):
        cq_ring_close(&self.ring)

    def fileno(self):
        return self.ring.fd

    @property
    def features(self):
        return self.ring.features

    @property
    def sq_entries(self):
        return self.ring.sq_entries

    @property
    def cq_entries(self):
        return self.ring.cq_entries

    def nop(self, uint64_t user_data):
        """Queue an IORING_OP_NOP (not yet submitted)."""
        cdef cq_sqe *sqe
        self._check_open()
        sqe = cq_ring_get_sqe(&self.ring)
        if sqe is NULL:
            raise BlockingIOError("the submission queue is full: submit first")
        sqe.opcode = CQ_IORING_OP_NOP
        sqe.user_data = user_data

    def submit(self):
        """Submit what is queued; return how many the kernel took."""
        cdef int n
        self._check_open()
        n = cq_ring_submit(&self.ring)
        if n < 0:
            raise OSError(-n, f"io_uring_enter: {os.strerror(-n)}")
        return n

    def wait(self, timeout=None, sigmask=None):
        """Submit what is queued and wait for a completion: at most `timeout` seconds
        (None: no bound), with the signals in `sigmask` blocked during the wait (None: the
        thread's mask). Returns the completions reaped, [(user_data, res, flags)...]."""
        cdef int timeout_ms = -1
        cdef int err
        cdef sigset_t blocked
        cdef const void *mask = NULL
        self._check_open()
        if timeout is not None:
            timeout_ms = <int>ceil(timeout * 1e3)
        if sigmask is not None:
            sigemptyset(&blocked)
            for signum in sigmask:
                if sigaddset(&blocked, <int>signum) < 0:
                    raise OSError(errno, f"invalid signal number {signum}")
            mask = &blocked
        with nogil:
            err = _wait_ring(&self.ring, timeout_ms, mask)
        if err < 0 and err != -ETIME and err != -EINTR:
            raise OSError(-err, f"io_uring_enter: {os.strerror(-err)}")
        return self.reap()

    def reap(self):
        """The completions waiting in the CQ, taken out of it."""
        cdef unsigned n = cq_ring_ready(&self.ring)
        cdef unsigned i
        cdef cq_cqe *cqe
        out = []
        for i in range(n):
            cqe = cq_ring_cqe_at(&self.ring, i)
            out.append((cqe.user_data, cqe.res, cqe.flags))
        cq_ring_advance(&self.ring, n)
        return out

    def close(self):
        cq_ring_close(&self.ring)

    def _check_open(self):
        if self.ring.fd < 0:
            raise ValueError("the ring is closed")


cdef void _release_all(UringPoller poller) noexcept:
    """The ring is closed: no receive will complete, and no owner is held any longer. A
    function, not a method: __dealloc__ calls it."""
    cdef int fd
    cdef PyObject *owner
    for fd in range(poller.nregs):
        owner = poller.regs[fd].recv_owner
        if owner is not NULL:
            poller.regs[fd].recv_owner = NULL
            poller.regs[fd].recv_state = RECV_NONE
            Py_DECREF(<object>owner)
    if poller.released:
        poller.released.clear()


cdef class UringPoller(Poller):
    """The io_uring readiness engine (see the module's docstring)."""

    def __cinit__(self, *args, **kwargs):
        cq_ring_clear(&self.ring)
        self.engine = "io_uring"
        self.holds_files = True
        check_usable()
        self.ring.fd_mirror = &self.epfd
        _ring_setup_or_raise(&self.ring, SQ_ENTRIES, CQ_ENTRIES)
        self.epfd = self.ring.fd
        if self.ring.features & CQ_IORING_FEAT_CQE_SKIP:
            self.remove_flags = CQ_IOSQE_CQE_SKIP_SUCCESS
        # Stream receives are opt-in (CQLOOP_URING_READS=1): measured here they cost the
        # server more kernel time per message than readiness (docs/design.md, "Stream
        # receives through the ring"). A kernel without the opcodes never has them.
        self.stream_reads = _receive_ops and os.environ.get("CQLOOP_URING_READS") == "1"
        self.released = []

    def __dealloc__(self):
        cq_ring_close(&self.ring)
        _release_all(self)
        free(self.regs)
        self.regs = NULL
        free(self.rearm)
        self.rearm = NULL
        free(self.done)
        self.done = NULL
        free(self.lent)
        self.lent = NULL

    # -- the registration table ----------------------------------------------------------

    cdef int _reg_slot(self, int fd) noexcept:
        """Make regs[fd] exist: 0, or ENOMEM."""
        cdef int size
        cdef Reg *grown
        if fd < self.nregs:
            return 0
        size = self.nregs * 2
        if size < 64:
            size = 64
        if size <= fd:
            size = fd + 1
        grown = <Reg *>realloc(self.regs, size * sizeof(Reg))
        if grown is NULL:
            return ENOMEM
        memset(grown + self.nregs, 0, (size - self.nregs) * sizeof(Reg))
        self.regs = grown
        self.nregs = size
        return 0

    cdef int _arm(self, int fd) noexcept:
        """Queue a POLL_ADD for regs[fd] under a new serial: 0, or an errno."""
        cdef Reg *reg = &self.regs[fd]
        cdef int err = 0
        cdef cq_sqe *sqe = cq_ring_next_sqe(&self.ring, &err)
        if sqe is NULL:
            return -err
        reg.serial = _next_serial(reg.serial)
        sqe.opcode = CQ_IORING_OP_POLL_ADD
        sqe.fd = fd
        sqe.op_flags = reg.mask & ~MODE_BITS
        if reg.mask & EPOLLET:
            sqe.len = CQ_IORING_POLL_ADD_MULTI
        sqe.user_data = (<uint64_t>reg.serial << 32) | <uint32_t>fd
        reg.state = ARMED
        return 0

    cdef int _disarm(self, int fd) noexcept:
        """Queue a POLL_REMOVE of regs[fd]'s request, if one is armed: 0, or an errno."""
        cdef Reg *reg = &self.regs[fd]
        cdef cq_sqe *sqe
        cdef int err = 0
        if reg.state != ARMED:
            return 0
        sqe = cq_ring_next_sqe(&self.ring, &err)
        if sqe is NULL:
            return -err
        sqe.opcode = CQ_IORING_OP_POLL_REMOVE
        sqe.flags = self.remove_flags
        sqe.addr = (<uint64_t>reg.serial << 32) | <uint32_t>fd
        sqe.user_data = REMOVE_DATA
        reg.state = IDLE
        return 0

    cdef int _submit_checked(self, int fd) noexcept:
        """Submit, then read back an immediate failure of regs[fd]'s new request (a poll
        request fails at submission: its completion is in the CQ when io_uring_enter
        returns). 0, or the errno; on failure the registration is left IDLE."""
        cdef int n = cq_ring_submit(&self.ring)
        cdef Reg *reg = &self.regs[fd]
        cdef uint64_t current = (<uint64_t>reg.serial << 32) | <uint32_t>fd
        cdef unsigned i
        cdef unsigned ready
        cdef cq_cqe *cqe
        if n < 0:
            return -n
        ready = cq_ring_ready(&self.ring)
        for i in range(ready):
            cqe = cq_ring_cqe_at(&self.ring, i)
            if cqe.user_data == current and cqe.res < 0:
                # The completion stays in the CQ; with the serial bumped it is stale.
                reg.serial = (reg.serial + 1) & SERIAL_MASK
                reg.state = IDLE
                return -cqe.res
        return 0

    cdef int register(self, int fd, uint32_t events, uint64_t data) noexcept:
        cdef stat st
        cdef int err
        cdef Reg *reg
        if fd < 0 or self.ring.fd < 0:
            return EBADF
        # epoll refuses files poll cannot wait on; poll would report them ready forever.
        if fstat(fd, &st) < 0:
            return errno
        if S_ISREG(st.st_mode) or S_ISDIR(st.st_mode):
            return EPERM
        err = self._reg_slot(fd)
        if err:
            return err
        reg = &self.regs[fd]
        if reg.state == ARMED or reg.state == REARM:
            if reg.ino == st.st_ino and reg.dev == st.st_dev:
                return EEXIST  # (the same file, as far as fstat can tell: epoll's answer)
            # The number was closed with its registration armed and names another file
            # now: the old request goes (releasing the old file), the new one takes over.
            err = self._disarm(fd)
            if err:
                return err
        # A registration with nothing armed (a one-shot that fired, kept inert by the
        # kernel) holds no file: whatever the number names now, it is taken over.
        reg.ino = st.st_ino
        reg.dev = st.st_dev
        reg.mask = events
        reg.data = data
        err = self._arm(fd)
        if err:
            reg.state = FREE
            return err
        err = self._submit_checked(fd)
        if err:
            reg.state = FREE
        return err

    cdef int modify(self, int fd, uint32_t events, uint64_t data) noexcept:
        cdef Reg *reg
        cdef int err
        if self.ring.fd < 0:
            return EBADF
        if fd < 0 or fd >= self.nregs or self.regs[fd].state == FREE:
            return ENOENT
        reg = &self.regs[fd]
        reg.mask = events
        reg.data = data
        if reg.state == REARM:
            # Armed, with the new mask, once this iteration's callbacks have run.
            return 0
        err = self._disarm(fd)
        if not err:
            err = self._arm(fd)
        if err:
            reg.state = IDLE
            return err
        return self._submit_checked(fd)

    cdef int unregister(self, int fd) noexcept:
        cdef int err
        cdef int n
        if self.ring.fd < 0:
            return EBADF
        if fd < 0 or fd >= self.nregs or self.regs[fd].state == FREE:
            return ENOENT
        err = self._disarm(fd)
        self.regs[fd].state = FREE
        if err:
            return err
        # At once: the fd's owner may close it next, and the request holds its file.
        n = cq_ring_submit(&self.ring)
        return -n if n < 0 else 0

    # -- stream receives -------------------------------------------------------------------

    cdef int recv_start(self, int fd, object owner) noexcept:
        """Queue a multishot IORING_OP_RECV on `fd` taking its buffers from the buffer
        ring (made here the first time), under a new receive serial: 0, or an errno. It is
        submitted with the next wait's io_uring_enter, beside everything else queued."""
        cdef Reg *reg
        cdef cq_sqe *sqe
        cdef int err = 0
        if fd < 0 or self.ring.fd < 0:
            return EBADF
        if not self.stream_reads:
            return ENOSYS
        if self.ring.pbuf_ring is NULL:
            err = cq_pbuf_setup(&self.ring, PBUF_ENTRIES, PBUF_SIZE, PBUF_GROUP)
            if err < 0:
                self.stream_reads = False
                return -err
        err = self._reg_slot(fd)
        if err:
            return err
        reg = &self.regs[fd]
        if reg.recv_state == RECV_ARMED:
            return EBUSY
        sqe = cq_ring_next_sqe(&self.ring, &err)
        if sqe is NULL:
            return -err
        # A new serial: what an earlier receive on this fd number (another owner's, whose
        # last completion is still to come) posts from now on is stale.
        reg.recv_serial = _next_serial(reg.recv_serial)
        sqe.opcode = CQ_IORING_OP_RECV
        sqe.fd = fd
        sqe.ioprio = CQ_IORING_RECV_MULTISHOT
        sqe.flags = CQ_IOSQE_BUFFER_SELECT
        sqe.buf_index = PBUF_GROUP
        sqe.user_data = RECV_DATA | (<uint64_t>reg.recv_serial << 32) | <uint32_t>fd
        reg.recv_state = RECV_ARMED
        # (An earlier owner's receive whose last completion is still to come ends here
        # for the engine: what it posts is stale from now on.)
        self._release_owner(reg)
        Py_INCREF(owner)
        reg.recv_owner = <PyObject *>owner
        return 0

    cdef int recv_stop(self, int fd) noexcept:
        """Cancel the receive on `fd`, submitted at once: the request holds its socket's
        file, and the owner may close the fd next; task work ends the cancelled request
        before io_uring_enter returns to this thread, so the file is released by then.
        The completions the receive posted until then are still delivered, under its
        serial, the last one (-ECANCELED, or data, end of file or an error that came
        first) without `more`. 0, or an errno."""
        cdef Reg *reg
        cdef cq_sqe *sqe
        cdef int err = 0
        cdef int n
        if fd < 0 or fd >= self.nregs or self.regs[fd].recv_state != RECV_ARMED:
            return 0
        if self.ring.fd < 0:
            return EBADF
        reg = &self.regs[fd]
        sqe = cq_ring_next_sqe(&self.ring, &err)
        if sqe is NULL:
            return -err
        sqe.opcode = CQ_IORING_OP_ASYNC_CANCEL
        sqe.flags = self.remove_flags
        sqe.addr = RECV_DATA | (<uint64_t>reg.recv_serial << 32) | <uint32_t>fd
        sqe.user_data = REMOVE_DATA
        reg.recv_state = RECV_STOPPING
        n = cq_ring_submit(&self.ring)
        return -n if n < 0 else 0

    cdef bint received(self, int i, int *res, const char **buf, PyObject **owner) noexcept:
        res[0] = self.done[i].res
        buf[0] = self.done[i].buf
        owner[0] = self.done[i].owner
        return self.done[i].more

    cdef int visit_receivers(self, cq_visitproc visit, void *arg) noexcept:
        cdef int fd
        cdef int err
        for fd in range(self.nregs):
            if self.regs[fd].recv_owner is not NULL:
                err = visit(self.regs[fd].recv_owner, arg)
                if err:
                    return err
        return 0

    cdef int _release_owner(self, Reg *reg) noexcept:
        """Hand reg's receive owner to `released` (freed at the next wait, after the
        dispatch of this one's completions)."""
        cdef PyObject *owner = reg.recv_owner
        if owner is NULL:
            return 0
        reg.recv_owner = NULL
        self.released.append(<object>owner)
        Py_DECREF(<object>owner)
        return 0

    cdef int _take_received(self, cq_cqe *cqe, int n) noexcept:
        """A receive's completion: fill entry n of the event buffer with it and return 1,
        or return 0 when it is stale (an earlier receive's on this fd number: its buffer
        goes back to the ring at once). With n < 0, only tell which, changing nothing for
        a live one."""
        cdef int fd = <int>(cqe.user_data & 0xffffffffu)
        cdef uint32_t serial = <uint32_t>(cqe.user_data >> 32) & SERIAL_MASK
        cdef bint has_buffer = cqe.flags & CQ_IORING_CQE_F_BUFFER
        cdef unsigned bid = cqe.flags >> CQ_IORING_CQE_BUFFER_SHIFT
        cdef Reg *reg = NULL
        if fd < self.nregs:
            reg = &self.regs[fd]
            if reg.recv_state == RECV_NONE or reg.recv_serial != serial:
                reg = NULL
        if reg is NULL:
            if has_buffer:
                cq_pbuf_recycle(&self.ring, bid)
                self.pbuf_dirty = True
            return 0
        if n < 0:
            return 1
        self.events[n].events = EV_RECEIVED
        self.events[n].data.u64 = <uint64_t>fd
        self.done[n].owner = reg.recv_owner
        self.done[n].res = cqe.res
        self.done[n].more = (cqe.flags & CQ_IORING_CQE_F_MORE) != 0
        self.done[n].buf = NULL
        if has_buffer:
            self.done[n].buf = cq_pbuf_buffer(&self.ring, bid)
            self.lent[self.nlent] = <uint16_t>bid
            self.nlent += 1
        if not self.done[n].more:
            reg.recv_state = RECV_NONE
            self._release_owner(reg)
        return 1

    cdef int _ensure_done(self) noexcept:
        """Make the receive results and lent-buffer arrays as long as the event buffer:
        0, or ENOMEM."""
        cdef Received *done
        cdef uint16_t *lent
        if self.done_cap >= self.capacity:
            return 0
        done = <Received *>realloc(self.done, self.capacity * sizeof(Received))
        if done is NULL:
            return ENOMEM
        self.done = done
        lent = <uint16_t *>realloc(self.lent, self.capacity * sizeof(uint16_t))
        if lent is NULL:
            return ENOMEM
        self.lent = lent
        self.done_cap = self.capacity
        return 0

    cdef int _return_lent(self) noexcept:
        """Put the buffers the last wait lent back in the ring (the dispatch has copied
        them by now) and publish them."""
        cdef int i
        if self.released:
            self.released.clear()
        if not self.nlent:
            return 0
        for i in range(self.nlent):
            cq_pbuf_recycle(&self.ring, self.lent[i])
        self.nlent = 0
        cq_pbuf_publish(&self.ring)
        return 0

    # -- waiting ---------------------------------------------------------------------------

    cdef int _arm_pending(self) noexcept:
        """Queue the re-arms of the level-triggered requests that completed."""
        cdef int i
        cdef int fd
        cdef int err = 0
        cdef int failed
        for i in range(self.nrearm):
            fd = self.rearm[i]
            if fd < self.nregs and self.regs[fd].state == REARM:
                failed = self._arm(fd)
                if failed:
                    self.regs[fd].state = IDLE
                    err = failed
        self.nrearm = 0
        return err

    cdef inline Reg *_owner(self, uint64_t user_data) noexcept:
        """The registration a completion belongs to, or NULL when it is no live
        registration's current request (a removal's, or a replaced or removed request's)."""
        cdef int fd
        cdef Reg *reg
        if user_data & (REMOVE_DATA | RECV_DATA):
            return NULL
        fd = <int>(user_data & 0xffffffffu)
        if fd >= self.nregs:
            return NULL
        reg = &self.regs[fd]
        if reg.state != ARMED or reg.serial != <uint32_t>(user_data >> 32):
            return NULL
        return reg

    cdef int _reap(self) noexcept:
        """Turn completions into event entries, up to the buffer's capacity; the rest stay
        in the CQ. Returns how many entries are filled, or -ENOMEM."""
        cdef unsigned ready = cq_ring_ready(&self.ring)
        cdef unsigned i = 0
        cdef int n = 0
        cdef cq_cqe *cqe
        cdef int fd
        cdef Reg *reg
        if self._ensure_done():
            return -ENOMEM
        while i < ready and n < self.capacity:
            cqe = cq_ring_cqe_at(&self.ring, i)
            i += 1
            if cqe.user_data & RECV_DATA:
                n += self._take_received(cqe, n)
                continue
            reg = self._owner(cqe.user_data)
            if reg is NULL:
                continue  # a request replaced or removed since: not the registration's
            fd = <int>(cqe.user_data & 0xffffffffu)
            if cqe.res > 0:
                self.events[n].events = <uint32_t>cqe.res
                self.events[n].data.u64 = reg.data
                n += 1
            if cqe.flags & CQ_IORING_CQE_F_MORE:
                continue  # a multishot request goes on
            if cqe.res == -ECANCELED:
                # Cancelled, though not by us (ours leave the serial behind): the thread
                # that armed it exited, and io_uring cancels an exiting thread's requests.
                # This thread arms it again at its next submission.
                pass
            elif cqe.res < 0 or reg.mask & EPOLLONESHOT:
                # A one-shot that fired, or a request the kernel failed (the fd was closed
                # before a re-arm reached it: epoll would have dropped the registration).
                reg.state = IDLE
                continue
            if self._queue_rearm(fd):
                cq_ring_advance(&self.ring, i)
                return -ENOMEM
        cq_ring_advance(&self.ring, i)
        if self.pbuf_dirty:
            cq_pbuf_publish(&self.ring)
            self.pbuf_dirty = False
        return n

    cdef int _queue_rearm(self, int fd) noexcept:
        """Mark regs[fd] for a re-arm at the next submission: 0, or ENOMEM."""
        cdef int *grown
        cdef int cap
        self.regs[fd].state = REARM
        if self.nrearm == self.rearm_cap:
            cap = self.rearm_cap * 2 + 64
            grown = <int *>realloc(self.rearm, cap * sizeof(int))
            if grown is NULL:
                self.regs[fd].state = IDLE
                return ENOMEM
            self.rearm = grown
            self.rearm_cap = cap
        self.rearm[self.nrearm] = fd
        self.nrearm += 1
        return 0

    cdef int _revalidate(self) noexcept:
        """Turn every completion waiting in the CQ back into a re-arm: 0, or an errno.

        epoll's readiness is live: its fd is readable while a registration's file is ready
        now. A completion says the file was ready when it was posted; the loop may have
        drained the file since (a step that ran without polling, a callback that read it),
        and a completion left in the CQ keeps the ring fd readable for an outside poller.
        So before the loop hands control to one, each waiting completion is consumed and its
        registration re-armed: a re-armed poll completes at once if the file is still
        ready, and the CQ then holds exactly the registrations ready now."""
        cdef unsigned ready = cq_ring_ready(&self.ring)
        cdef unsigned i
        cdef cq_cqe *cqe
        cdef int fd
        cdef int err
        cdef Reg *reg
        for i in range(ready):
            cqe = cq_ring_cqe_at(&self.ring, i)
            if cqe.user_data & RECV_DATA:
                if self._take_received(cqe, -1):
                    # Received data is work the loop has, not a readiness to check
                    # again: it stays in the CQ (and the ring fd readable) for the next
                    # wait, with what follows it.
                    ready = i
                    break
                continue
            reg = self._owner(cqe.user_data)
            if reg is NULL:
                continue
            fd = <int>(cqe.user_data & 0xffffffffu)
            if cqe.flags & CQ_IORING_CQE_F_MORE:
                err = self._disarm(fd)  # a multishot request: re-armed afresh
                if err:
                    cq_ring_advance(&self.ring, i)
                    return err
            elif cqe.res < 0 and cqe.res != -ECANCELED:  # (see _reap on ECANCELED)
                reg.state = IDLE
                continue
            err = self._queue_rearm(fd)
            if err:
                cq_ring_advance(&self.ring, i)
                return err
        cq_ring_advance(&self.ring, ready)
        if self.pbuf_dirty:
            cq_pbuf_publish(&self.ring)
            self.pbuf_dirty = False
        return 0

    cdef int flush(self) except -1:
        cdef int n
        cdef int err
        if self.ring.fd < 0:
            return 0
        self._return_lent()
        err = self._revalidate()
        if not err:
            err = self._arm_pending()
        if err:
            raise OSError(err, f"io_uring: {os.strerror(err)}")
        n = cq_ring_submit(&self.ring)
        if n < 0:
            raise OSError(-n, f"io_uring_enter: {os.strerror(-n)}")
        return 0

    cdef int wait(self, int timeout_ms) except -1:
        """Submit what is pending and wait up to timeout_ms (-1: forever, 0: poll) for
        events. Returns how many entries of self.events are filled."""
        cdef int n
        cdef int ret
        cdef double deadline_ms = 0.0
        if self.ring.fd < 0:
            raise RuntimeError("the poller is closed")
        # Pending Python-level signal handlers first (see EpollPoller.wait).
        PyErr_CheckSignals()
        self._return_lent()
        self._arm_pending()
        if timeout_ms > 0:
            deadline_ms = _monotonic_ms() + timeout_ms
        while True:
            if timeout_ms == 0:
                # No wait: enter the kernel only to submit, or for completions it holds
                # beyond the CQ ring; what the CQ holds is read without a system call.
                ret = 0
                if cq_ring_publish(&self.ring) or cq_ring_needs_enter(&self.ring):
                    ret = cq_ring_get_events(&self.ring)
            else:
                with nogil:
                    ret = _wait_ring(&self.ring, timeout_ms, self.waitmask_ptr)
            if ret < 0 and ret != -ETIME and ret != -EINTR:
                raise OSError(-ret, f"io_uring_enter on fd {self.ring.fd}: "
                                    f"{os.strerror(-ret)}")
            n = self._reap()
            if n < 0:
                raise MemoryError()
            if n > 0 or timeout_ms == 0:
                break
            # Nothing to report: the wait timed out, was interrupted (a signal, or task
            # work), or reaped only stale completions. Run the signal handlers, then wait
            # out the rest of the timeout (as EpollPoller.wait does after EINTR).
            PyErr_CheckSignals()
            if self.waitmask_ptr is not NULL:
                return 0  # Loop.pause: a delivered signal is what ends the wait
            if ret == -ETIME:
                return 0
            if timeout_ms > 0:
                timeout_ms = <int>ceil(deadline_ms - _monotonic_ms())
                if timeout_ms <= 0:
                    return 0
        if n == self.capacity and self.capacity < 4096:
            self._grow()
        return n

    cdef int close(self) except -1:
        # (cq_ring_close unregisters the buffer ring before it unmaps it: a receive still
        # in flight can no longer take a buffer.)
        cq_ring_close(&self.ring)
        self.epfd = -1
        self.nrearm = 0
        self.nlent = 0
        _release_all(self)
        if self.regs is not NULL:
            memset(self.regs, 0, self.nregs * sizeof(Reg))
        return 0
