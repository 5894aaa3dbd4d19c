"""RingReader: the state of a stream socket read through the loop's ring.

On the io_uring engine with CQLOOP_URING_READS=1 (Poller.stream_reads; opt-in, see
docs/design.md for why) the engine receives for a stream transport:
one multishot IORING_OP_RECV while the transport reads, taking buffers from the ring's
provided buffer ring (uring.pyx). The kernel's dispatch hands each completion to the
transport's _on_received, which calls _ring_take here: the bytes are copied out at once
(the buffer goes back to the ring at the next wait) and queued in _ring_input, with end of
file or the error last; the transport's read handle then delivers them in order
(stream.pyx), as the readiness path would.

Built on SocketEnds (sockends.pyx: the socket and its ends), StreamTransport's base.

Owns: the receive's state (_ring_state) and _ring_input. Invariants: at most one receive
per transport; a new one starts only once the last completion of the one before arrived
(RING_STOPPING waits for it), so no completion is ever dropped while its transport reads;
none starts after end of file or an error. pause_reading and close cancel the receive
(Poller.recv_stop submits the cancel at once, so the socket's file is released before the
owner may close the fd); what the receive posted before the cancel stays in _ring_input
for resume_reading. The engine holds the transport until the receive's last completion,
so that completion arrives even while the transport is out of the kernel's table
(sendfile lends the fd).
"""

from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.string cimport strerror

from cqloop._core.includes.system cimport ECANCELED, EINVAL, ENOBUFS, EOPNOTSUPP


cdef class RingReader(SocketEnds):

    cdef int _ring_sync(self, Poller poller, bint reading) except -1:
        """Start or cancel the receive to match `reading`: 0, or TAKE_FALLBACK when the
        engine cannot receive here (no buffer ring, or a forked child's closed ring)."""
        if reading:
            if self._ring_state != RING_IDLE or self._ring_ended:
                return 0
            if poller.recv_start(self.fd, self):
                self._ring_read = False
                return TAKE_FALLBACK
            self._ring_state = RING_ARMED
        elif self._ring_state == RING_ARMED:
            self._ring_state = RING_STOPPING
            poller.recv_stop(self.fd)
        return 0

    cdef int _ring_take(self, int res, const char *data, bint more) except -1:
        """One completion of the receive: `res` bytes at `data`, 0 (end of file) or a
        negative errno; `more` says whether the receive goes on. Returns TAKE_* bits."""
        cdef object item
        if self._ring_state == RING_IDLE:
            return 0  # (the engine reports only our own receive's; kept as a guard)
        if not more:
            self._ring_state = RING_IDLE
        if res > 0:
            item = PyBytes_FromStringAndSize(data, res)
        elif res == 0:
            item = None
            self._ring_ended = True
        elif res == -ENOBUFS or res == -ECANCELED:
            # The buffer ring ran dry (nothing was taken from the socket), or our cancel
            # (or the exit of the thread that started it) ended the receive.
            return TAKE_RESYNC
        elif (res == -EINVAL or res == -EOPNOTSUPP) and self._ring_input is None:
            # The kernel has no multishot receive for this socket.
            self._ring_read = False
            return TAKE_FALLBACK
        else:
            # OSError(errno, message) gives the errno's subclass (ConnectionResetError...).
            item = OSError(-res, strerror(-res).decode("utf-8", "replace"))
            self._ring_ended = True
        if self._ring_input is None:
            self._ring_input = [item]
        else:
            self._ring_input.append(item)
        if not more and not self._ring_ended:
            return TAKE_DELIVER | TAKE_RESYNC
        return TAKE_DELIVER

    cdef object _ring_pop(self):
        """Take the next item of _ring_input (not empty) to deliver: the bytes of every
        chunk up to the next end of file or error, joined (one data_received for what
        came in one batch), or that None or exception."""
        cdef list queue = self._ring_input
        cdef Py_ssize_t count = 1
        cdef object item = queue[0]
        if type(item) is bytes:
            while count < len(queue) and type(queue[count]) is bytes:
                count += 1
            if count > 1:
                item = b"".join(queue[:count])
        del queue[:count]
        return item
