"""TLS for cq sockets: an ssl.SSLObject over two MemoryBIOs, pumped by the socket.

Owns the TLS record layer of one cq socket (cqloop/socket.py is its only caller). The
socket does all waiting; this class never blocks and never touches the event loop:
- `feed(raw)` hands received ciphertext in (`feed_eof()` when the peer closed);
- `read(n)` returns plaintext, b"" at a clean close_notify, or raises
  ssl.SSLWantReadError when it needs more ciphertext;
- `write(data)` encrypts all of data at once (a MemoryBIO never pushes back);
- `outgoing()` takes the ciphertext waiting to be sent (handshake, records, alerts).

cqueues' pushback: bytes the socket had buffered as plaintext before starttls() are fed
in as ciphertext (`feed`) before the handshake starts, so nothing received in the
clear can pass for data received under TLS (the STARTTLS command-injection class of
bugs, CVE-2011-0411).
"""

from __future__ import annotations

import ssl

__all__ = ["TLSChannel"]


class TLSChannel:
    """One TLS session over memory BIOs."""

    __slots__ = ("_incoming", "_outgoing", "handshake_done", "sslobj")

    def __init__(
        self, context: ssl.SSLContext, *, server_side: bool, server_hostname: str | None
    ) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self.sslobj = context.wrap_bio(
            self._incoming,
            self._outgoing,
            server_side=server_side,
            server_hostname=server_hostname,
        )
        self.handshake_done = False

    def feed(self, raw: bytes | bytearray | memoryview) -> None:
        self._incoming.write(raw)

    def feed_eof(self) -> None:
        self._incoming.write_eof()

    def do_handshake(self) -> None:
        """One handshake step: raises ssl.SSLWantReadError until it is complete."""
        self.sslobj.do_handshake()
        self.handshake_done = True

    def read(self, n: int) -> bytes:
        try:
            return self.sslobj.read(n)
        except ssl.SSLZeroReturnError:
            return b""  # close_notify: a clean end of the TLS stream

    def write(self, data: bytes | bytearray | memoryview) -> int:
        return self.sslobj.write(data)

    def unwrap(self) -> None:
        """Start (or continue) the close_notify exchange."""
        try:
            self.sslobj.unwrap()
        except (ssl.SSLWantReadError, ssl.SSLSyscallError):
            pass

    def outgoing(self) -> bytes:
        return self._outgoing.read() if self._outgoing.pending else b""

    def has_outgoing(self) -> bool:
        return bool(self._outgoing.pending)
