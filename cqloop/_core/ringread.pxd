# RingReader: a stream socket read through the loop's ring (io_uring's multishot receive
# into its provided buffers): the receive's state and what it brought. StreamTransport's
# base class; see ringread.pyx.

from cqloop._core.poller cimport Poller
from cqloop._core.sockends cimport SocketEnds


cdef enum:
    # RingReader._ring_state.
    RING_IDLE = 0
    RING_ARMED = 1       # a receive runs
    RING_STOPPING = 2    # cancelled; its last completion is still to come

    # What _ring_take asks of its caller (bits).
    TAKE_DELIVER = 1     # _ring_input grew: queue its delivery
    TAKE_RESYNC = 2      # the receive ended: start another if the transport still reads
    TAKE_FALLBACK = 4    # the kernel refused the receive: read by readiness from now on


cdef class RingReader(SocketEnds):
    # The engine receives for this transport (Poller.stream_reads: io_uring with
    # CQLOOP_URING_READS=1) instead of reporting EPOLLIN; False otherwise, and once the
    # kernel refused a receive (readiness then).
    cdef bint _ring_read
    cdef unsigned char _ring_state
    # The receive reported end of file or an error: no new one is started.
    cdef bint _ring_ended
    # What the receive brought that the protocol has yet to get, oldest first: bytes
    # objects, then possibly None (end of file) or an OSError (the read failed). None
    # until the first completion.
    cdef list _ring_input
    # The read handle is in the ready queue to deliver _ring_input.
    cdef bint _ring_queued

    cdef int _ring_sync(self, Poller poller, bint reading) except -1
    cdef int _ring_take(self, int res, const char *data, bint more) except -1
    cdef object _ring_pop(self)
