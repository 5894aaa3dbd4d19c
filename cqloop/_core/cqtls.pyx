# cython: freethreading_compatible=False
"""TLSChannel: the TLS session of one cq socket, compiled.

Owns, for one cq socket: its TLS session (through TLSSession, tlsrecord.pyx, the record
layer the transports' TLSRecordPump shares); and, for all of them, the buffer ciphertext
is received into. The socket (cqloop/_cqtls.py, the TLS half of cqloop._cqsocket.Socket,
and its compiled hot paths in cqsock.pyx) owns the policy: the handshake's waits,
sending what TLS produced, the close_notify exchange, errors and their messages.

Receiving (`receive_into`): what the session already holds is decrypted first, all of
it (TLSSession._drained: records left in the incoming BIO make no fd readable); only
when that gave nothing is the fd read, and the new ciphertext decrypted the same way.
Records are decrypted straight into the socket's input buffer (no copy in between).
So one call brings every complete record that has arrived, and a burst of records is
never read one per readiness event.

End of stream: the peer's close_notify, however it arrives (alone, or in one TCP
segment behind data: the data is appended first), ends the input. A FIN at a record
boundary without close_notify ends it too (`close_notify_received` stays False); the
FIN is never fed to the session, so OpenSSL does not take it as a protocol violation,
sends the peer no alert, and the session can still send. A FIN inside a record is
truncation: ssl.SSLEOFError.

A bad record after good ones: the good ones' plaintext is returned, and the error is
raised by the next receive (bad input loses nothing that came before it).

Never waits; touches the fd only in `receive_into` (one non-blocking recv at a time).
"""

from os import strerror
from ssl import SSL_ERROR_EOF, MemoryBIO, SSLEOFError, SSLSyscallError, SSLWantReadError

from cpython.buffer cimport PyBUF_READ, PyBUF_WRITE
from cpython.bytearray cimport PyByteArray_AS_STRING
from cpython.memoryview cimport PyMemoryView_FromMemory

from cqloop._core.byteregion cimport _reserve
from cqloop._core.includes.sockets cimport recv
from cqloop._core.includes.system cimport EAGAIN, EINTR, errno

cdef enum:
    # Plaintext per SSLObject.read: one record's worth (TLS caps a record's plaintext at
    # 16 KiB), so a read that does not fill it has emptied its record (see _drained).
    PLAIN_CHUNK_BYTES = 17 * 1024
    # Ciphertext per recv (asyncio's sslproto reads as much per recv).
    CIPHER_CHUNK_BYTES = 256 * 1024
    # A TLS record's header: content type, version (2 bytes), body length (2 bytes).
    RECORD_HEADER_BYTES = 5


# Ciphertext is received here and fed to the session's incoming BIO (which copies it)
# at once: one buffer serves every channel, so that a connection does not keep 256 KiB
# of its own. It is taken for the recv and the feed only; the feed makes a memoryview,
# which may run the garbage collector and a finalizer, which may let another thread run
# (and receive): a receive that finds the buffer taken uses one of its own.
cdef char _cipher_chunk[CIPHER_CHUNK_BYTES]
cdef bint _cipher_chunk_taken = False


cdef class TLSChannel(TLSSession):
    """One cq socket's TLS session (see the module docstring)."""

    def __init__(self, context not None, *, bint server_side, server_hostname=None):
        incoming = MemoryBIO()
        outgoing = MemoryBIO()
        self.sslobj = context.wrap_bio(
            incoming, outgoing, server_side=server_side, server_hostname=server_hostname
        )
        self._bind(self.sslobj, incoming, outgoing)

    # -- the handshake -------------------------------------------------------------------

    def feed(self, raw):
        """Hand received ciphertext in (the handshake's, and pushback's)."""
        cdef const unsigned char[::1] view = memoryview(raw).cast("B")
        if view.shape[0]:
            self._feed(&view[0], view.shape[0])

    def feed_eof(self):
        """The peer closed during the handshake."""
        self._incoming.write_eof()

    def do_handshake(self):
        """One handshake step: raises ssl.SSLWantReadError until it is complete."""
        self.sslobj.do_handshake()
        self.handshake_done = True

    # -- receiving -----------------------------------------------------------------------

    def input_pending(self):
        """Ciphertext or decrypted bytes wait in the session (no fd shows them)."""
        return self._incoming.pending != 0 or self._ssl_pending() != 0

    def decrypt_into(self, InputBuffer ibuf not None):
        """Decrypt every complete record the session holds into ibuf; the count."""
        return self._decrypt_all(ibuf)

    def receive_into(self, InputBuffer ibuf not None, int fd):
        """The plaintext of every complete record that has arrived, appended to ibuf:
        the count (0 only when the peer closed: see peer_closed), or -1 when nothing
        came. OSError from recv(2) (not EAGAIN); ssl.SSLError for a bad record, and
        ssl.SSLEOFError for a FIN inside a record."""
        return self._receive_into(ibuf, fd)

    cdef Py_ssize_t _receive_into(self, InputBuffer ibuf, int fd) except -2:
        cdef Py_ssize_t total = 0
        # Asking an empty session costs an SSLWantReadError made and caught: ask only
        # when it holds something (the usual receive finds it empty: the records of the
        # last one were all read, see _drained).
        if self._incoming.pending != 0 or self._ssl_pending() != 0:
            total = self._decrypt_all(ibuf)
        cdef ssize_t n
        if self._pending_error is not None:
            error, self._pending_error = self._pending_error, None
            raise error
        while total == 0 and not self.peer_closed:
            n = self._recv_and_feed(fd)
            if n == -1:
                return -1
            if n == 0:
                if self._body_left != 0 or self._header_have != 0:
                    raise SSLEOFError(
                        SSL_ERROR_EOF, "peer closed the connection inside a TLS record"
                    )
                self.peer_closed = True
                break
            total = self._decrypt_all(ibuf)
        return total

    cdef ssize_t _recv_and_feed(self, int fd) except -2:
        # One recv into the shared buffer (or one of our own while it is taken), fed to
        # the incoming BIO: the count, 0 at EOF, -1 when nothing came; OSError else.
        global _cipher_chunk_taken
        cdef bytearray own = None
        cdef char *cipher = _cipher_chunk
        cdef bint shared = not _cipher_chunk_taken
        cdef ssize_t n
        cdef int err
        if shared:
            _cipher_chunk_taken = True
        else:
            own = bytearray(CIPHER_CHUNK_BYTES)
            cipher = PyByteArray_AS_STRING(own)
        try:
            while True:
                n = recv(fd, cipher, CIPHER_CHUNK_BYTES, 0)
                if n >= 0:
                    break
                err = errno
                if err == EAGAIN:
                    return -1
                if err != EINTR:
                    raise OSError(err, strerror(err))
            if n > 0:
                self._feed(<unsigned char *>cipher, n)
            return n
        finally:
            if shared:
                _cipher_chunk_taken = False

    cdef int _feed(self, const unsigned char *data, Py_ssize_t n) except -1:
        cdef Py_ssize_t i = 0
        cdef Py_ssize_t step
        self._incoming_write(PyMemoryView_FromMemory(<char *>data, n, PyBUF_READ))
        while i < n:
            if self._body_left:
                step = min(n - i, self._body_left)
                self._body_left -= step
                i += step
            else:
                self._header[self._header_have] = data[i]
                self._header_have += 1
                i += 1
                if self._header_have == RECORD_HEADER_BYTES:
                    self._body_left = (self._header[3] << 8) | self._header[4]
                    self._header_have = 0
        return 0

    cdef Py_ssize_t _decrypt_all(self, InputBuffer ibuf) except -1:
        # Records are decrypted straight into the input buffer's free space.
        cdef Py_ssize_t total = 0
        cdef Py_ssize_t n
        while not self.peer_closed:
            _reserve(&ibuf._r, PLAIN_CHUNK_BYTES, &ibuf._compactions)
            try:
                n = self._decrypt(
                    PLAIN_CHUNK_BYTES,
                    PyMemoryView_FromMemory(
                        ibuf._r.base + ibuf._r.wr, PLAIN_CHUNK_BYTES, PyBUF_WRITE
                    ),
                )
            except Exception as exc:
                if total == 0:
                    raise
                self._pending_error = exc
                break
            if n < 0:
                break  # only part of a record is here
            if n == 0:
                self.peer_closed = True
                self.close_notify_received = True
                break
            ibuf._r.wr += n
            ibuf._bytes_fed += n
            total += n
            if self._drained(n, PLAIN_CHUNK_BYTES):
                break
        return total

    # -- sending -------------------------------------------------------------------------

    def encrypt(self, data):
        """Encrypt all of data into the outgoing BIO (a MemoryBIO never pushes back)."""
        cdef const unsigned char[::1] view = memoryview(data).cast("B")
        if view.shape[0]:
            self._encrypt_from(<const char *>&view[0], view.shape[0])

    cdef int _encrypt_from(self, const char *data, Py_ssize_t n) except -1:
        cdef Py_ssize_t done = 0
        cdef Py_ssize_t step
        while done < n:
            step = self._encrypt(
                PyMemoryView_FromMemory(<char *>data + done, n - done, PyBUF_READ)
            )
            if step == 0:
                # Only a renegotiation makes a write wait for a read; cq sockets do not
                # drive one.
                raise SSLWantReadError(
                    "TLS wants to read before it can write (a renegotiation)"
                )
            done += step
        return 0

    def take_outgoing(self):
        """The ciphertext waiting to be sent (records, handshake messages, alerts)."""
        return self._outgoing_read()

    @property
    def outgoing_pending(self):
        return self._outgoing.pending

    def send_close_notify(self):
        """Queue our close_notify in the outgoing BIO (once)."""
        if self.close_notify_sent:
            return
        self.close_notify_sent = True
        try:
            self.sslobj.unwrap()
        except (SSLWantReadError, SSLSyscallError):
            pass  # sent; the peer's has not arrived yet
