# cython: freethreading_compatible=False
"""TLSSession: the record layer of one TLS session, shared by every TLS user in cqloop.

Owns the ssl.SSLObject's C object (_ssl._SSLSocket) and the two ssl.MemoryBIOs under it,
and the one rule for reading records: decrypt until neither the incoming BIO nor the
session holds bytes (`_drained`). Two TLS users derive from it: the transports' record
pump (tls.pyx, TLSRecordPump) and the cq sockets' channel (cqtls.pyx, TLSChannel). Each
decides where the plaintext goes; neither may stop reading before `_drained` says so,
because ciphertext left in the incoming BIO makes no fd readable: the records behind it
would wait for the peer's next packet (a burst of records read one per readiness event
stalls until the peer writes again).

Never blocks, never touches an event loop or an fd.
"""

from ssl import MemoryBIO, SSLObject, SSLSyscallError, SSLWantReadError, SSLZeroReturnError

# The exceptions that mean "give the session more ciphertext and try again".
cdef tuple _AGAIN = (SSLWantReadError, SSLSyscallError)


cdef class TLSSession:
    """The record layer of one TLS session (see the module docstring)."""

    cdef int _bind(self, object sslobj, object incoming, object outgoing) except -1:
        if type(sslobj) is not SSLObject or type(incoming) is not MemoryBIO:
            raise TypeError("a TLS session needs an ssl.SSLObject over ssl.MemoryBIOs")
        self._ssl = sslobj._sslobj
        self._incoming = incoming
        self._outgoing = outgoing
        self._ssl_read = self._ssl.read
        self._ssl_write = self._ssl.write
        self._ssl_pending = self._ssl.pending
        self._incoming_write = incoming.write
        self._outgoing_read = outgoing.read
        return 0

    cdef Py_ssize_t _decrypt(self, Py_ssize_t n, object buf) except -2:
        try:
            return self._ssl_read(n, buf)
        except _AGAIN:
            return -1
        except SSLZeroReturnError:
            # The peer's close_notify after ours: ssl returns 0 for it only while ours
            # has not been sent.
            return 0

    cdef bint _drained(self, Py_ssize_t got, Py_ssize_t asked) except -1:
        # Neither ciphertext in the BIO nor decrypted bytes in the session: another read
        # could only raise SSLWantReadError, so do not ask. A read returns at most one
        # record's plaintext, and Python's ssl does not turn on read-ahead, so a read that
        # did not fill its buffer left nothing of its record behind in the session.
        if self._incoming.pending != 0:
            return False
        return got < asked or self._ssl_pending() == 0

    cdef Py_ssize_t _encrypt(self, object data) except -1:
        try:
            return self._ssl_write(data)
        except _AGAIN:
            return 0
