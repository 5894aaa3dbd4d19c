"""The TLS half of a cq socket: handshake, receiving and sending records, the close.

Owns SocketTLS, a base class of cqloop._cqsocket.Socket: the TLS handshake (connect's
and starttls()'s, with cqueues' pushback), the errors of receiving (`_tls_read_error`),
the general TLS branch of sending and the ciphertext queue (`_send_tls_nowait`,
`_send_raw_nowait`, `_send_raw_out`), and the close_notify exchange
(`_tls_close_nowait` for close(), `_tls_close` for aclose() and `async with`).

Compiled (cqloop/_core/cqsock.pyx, SocketCore): the hot paths of a ready TLS socket, a
read's receive callback decrypting records straight into the input buffer (`_tls_pull`,
and `_tls_fill` for Socket._receive) and write() encrypting the output buffer's due
bytes and sending the ciphertext (`_tls_send_due`), with `_raw_out` for what the kernel
did not take. The record layer: cqloop/_core/cqtls.pyx (TLSChannel), on the TLSSession
the transports use too.

Pushback: bytes the socket had buffered as plaintext before starttls() are fed in as
ciphertext before the handshake starts, so nothing received in the clear can pass for
data received under TLS (the STARTTLS command-injection class of bugs, CVE-2011-0411).

Ending (docs/design.md, "cq socket TLS"):
- The peer's close_notify is the end of the stream, as a plain socket's EOF is, however
  it arrives. A FIN without close_notify at a record boundary is the end of the stream
  too (asyncio's and the ssl module's default reading), never answered with an
  alert; a FIN or a reset inside a record is an error (ssl.SSLEOFError,
  ConnectionResetError).
- aclose() and `async with` flush, send close_notify and wait for the peer's, all within
  the socket's timeout (TLS_CLOSE_TIMEOUT_SECONDS when it has none). close() is
  synchronous: it sends close_notify when the kernel takes it at once, and does not wait.

Invariant: ciphertext goes out in the order TLS produced it: `_raw_out` holds what the
kernel did not take yet, and nothing is sent past it.
"""

from __future__ import annotations

import socket as _socket
import ssl
import time
from typing import TYPE_CHECKING

from cqloop._core.cqtls import TLSChannel
from cqloop.pollable import wait_readable, wait_writable

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine
    from typing import Any, NoReturn

    from cqloop._core.cqbuf import InputBuffer

MSG_NOSIGNAL = _socket.MSG_NOSIGNAL

# How long aclose() waits for the peer's close_notify when the socket has no timeout
# (asyncio's SSL shutdown timeout).
TLS_CLOSE_TIMEOUT_SECONDS = 30.0
# close() drops at most this many recvs' worth (64 KiB each) of unread input before it
# closes the fd (see _tls_close_nowait).
CLOSE_DRAIN_RECVS = 16


def context_part(context: ssl.SSLContext) -> bool | None:
    """The side a context was made for (True: server), as PROTOCOL_TLS_SERVER and
    PROTOCOL_TLS_CLIENT contexts are (ssl.create_default_context makes one of them): cqueues
    takes a socket's part from its context, and so do we. None for a context of either."""
    return {ssl.PROTOCOL_TLS_SERVER: True, ssl.PROTOCOL_TLS_CLIENT: False}.get(context.protocol)


class SocketTLS:
    """The TLS methods of cqloop._cqsocket.Socket (see the module docstring)."""

    if TYPE_CHECKING:
        # Socket's and SocketCore's state these methods use.
        _sock: _socket.socket | None
        _fd: int
        _tls: TLSChannel | None
        _tls_pending: bool
        _raw_out: bytearray
        _ibuf: InputBuffer
        _pushback: bool
        _server_side: bool
        _input_fresh: bool
        _events: str | None
        _timeout: float | None
        _rerror: OSError | None
        _werror: OSError | None
        _recv_error: OSError | None
        _opts: Any

        def _stop_receiving(self) -> None: ...
        def _receive(self) -> bool: ...
        def _received(self, data: bytes) -> None: ...
        def _count_sent(self, n: int) -> None: ...
        def _raise(self, op: str, error: OSError, *, sticky: bool = True) -> NoReturn: ...
        async def _wait(self, reading: bool, deadline: float | None, op: str) -> None: ...
        async def _flush_all(self, deadline: float | None, op: str) -> None: ...

    # -- the handshake -------------------------------------------------------------------

    def _tls_role(self, context: ssl.SSLContext) -> bool:
        """True to take the server's part: the part the context was made for
        (context_part), else the socket's own (accepted: server; connected: client;
        starttls(server_side=) sets it)."""
        part = context_part(context)
        return self._server_side if part is None else part

    async def _handshake(self, deadline: float | None) -> None:
        # From here TLS owns the input: no plaintext may be received behind its back.
        self._stop_receiving()
        await self._flush_all(deadline, "starttls")
        opts = self._opts
        context = opts.context
        if context is None:
            if self._server_side:
                raise ValueError("starttls() on the server side needs an ssl.SSLContext")
            context = ssl.create_default_context()
            if not opts.verify:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
        server_side = self._tls_role(context)
        hostname = None
        if not server_side and opts.sendname:
            hostname = opts.sendname if isinstance(opts.sendname, str) else opts.host
        tls = TLSChannel(context, server_side=server_side, server_hostname=hostname)
        if self._pushback and self._ibuf.pending():
            tls.feed(self._ibuf.take())
        self._tls = tls
        self._tls_pending = False
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._events = "r"  # even when the input is there already, as in cqueues
            except ssl.SSLError:
                # Tell the peer why (the alert TLS queued), if it goes out at once.
                try:
                    self._send_raw_nowait()
                except OSError:
                    pass
                raise
            await self._send_raw_out(deadline, "starttls")
            if not await self._recv_ciphertext(deadline, "starttls"):
                raise ssl.SSLEOFError(
                    ssl.SSL_ERROR_EOF, "peer closed the connection during the handshake"
                )
        await self._send_raw_out(deadline, "starttls")
        # Records that came in the segment that ended the handshake make no fd readable:
        # take them now, so that a read, recv() or poll() finds them.
        if tls.input_pending() and self._receive():
            self._input_fresh = True

    async def _recv_ciphertext(self, deadline: float | None, op: str) -> bool:
        """During a handshake: feed one read of ciphertext to TLS; False at EOF."""
        tls = self._tls
        sock = self._sock
        assert tls is not None and sock is not None
        while True:
            try:
                raw = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                await self._wait(True, deadline, op)
                continue
            if not raw:
                tls.feed_eof()
                return False
            tls.feed(raw)
            return True

    # -- receiving -----------------------------------------------------------------------

    # Receiving itself is compiled (SocketCore._tls_pull, behind the receive callback and
    # _tls_fill): what arrives is decrypted straight into the input buffer. Its failures
    # come here.

    def _tls_read_error(self, exc: OSError) -> OSError:
        """A failed receive's error as the socket reports it, after sending the alert
        saying why, if TLS made one."""
        self._send_what_tls_made()
        return _read_error(exc)

    def _send_what_tls_made(self) -> None:
        # While reading: a failure to send is the write side's to report, at its next
        # operation.
        try:
            self._send_raw_nowait()
        except OSError:
            pass

    # -- sending ---------------------------------------------------------------------------

    def _send_tls_nowait(self, view: memoryview) -> int:
        """Socket._send_nowait's TLS branch: encrypt all of view and send what the
        kernel takes now; the rest waits in _raw_out."""
        tls = self._tls
        assert tls is not None
        tls.encrypt(view)
        self._send_raw_nowait()
        self._count_sent(len(view))
        return len(view)

    def _send_raw_nowait(self) -> None:
        """Send queued ciphertext (and what TLS made since) as far as the kernel takes it."""
        sock = self._sock
        assert sock is not None
        tls = self._tls
        raw = self._raw_out
        if tls is not None and tls.outgoing_pending:
            data = tls.take_outgoing()
            if not raw:
                try:
                    sent = sock.send(data, MSG_NOSIGNAL)
                except (BlockingIOError, InterruptedError):
                    sent = 0
                if sent < len(data):
                    raw += memoryview(data)[sent:]
                return
            raw += data
        if not raw:
            return
        try:
            sent = sock.send(raw, MSG_NOSIGNAL)
        except (BlockingIOError, InterruptedError):
            return
        del raw[:sent]

    async def _send_raw_out(self, deadline: float | None, op: str) -> None:
        """Send all queued ciphertext (TLS records, handshake messages, alerts)."""
        while True:
            try:
                self._send_raw_nowait()
            except OSError as exc:
                self._raise(op, exc)
            if not self._raw_out:
                return
            await self._wait(False, deadline, op)

    # -- ending ----------------------------------------------------------------------------

    def _tls_close_ready(self) -> TLSChannel | None:
        """The session, when a close_notify exchange makes sense: the handshake is done,
        the fd is open, no error broke the session and ours was not sent yet."""
        tls = self._tls
        if tls is None or not tls.handshake_done or tls.close_notify_sent:
            return None
        if self._sock is None or self._rerror is not None or self._werror is not None:
            return None
        if self._recv_error is not None:
            return None
        return tls

    def _tls_close_nowait(self) -> None:
        """close()'s part: our close_notify, if the kernel takes it now."""
        tls = self._tls_close_ready()
        if tls is None:
            return
        sock = self._sock
        assert sock is not None
        try:
            # Closing an fd with unread input sends a reset, and a reset may destroy our
            # last records (and the close_notify) before the peer reads them: drop what
            # the kernel holds (a TLS 1.3 server's session tickets, often) first.
            for _ in range(CLOSE_DRAIN_RECVS):
                if not sock.recv(65536):
                    break
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            return  # the peer is gone: nobody to tell
        try:
            tls.send_close_notify()
            self._send_raw_nowait()
        except OSError:
            pass  # the peer is gone: nobody to tell

    async def _tls_close(self) -> None:
        """aclose()'s part: send our close_notify and wait for the peer's (the rest of
        its data is dropped), within the socket's timeout."""
        tls = self._tls_close_ready()
        if tls is None:
            return
        sock = self._sock
        assert sock is not None
        fd = sock.fileno()
        self._stop_receiving()
        bound = TLS_CLOSE_TIMEOUT_SECONDS if self._timeout is None else self._timeout
        deadline = time.monotonic() + bound
        try:
            tls.send_close_notify()
            self._send_raw_nowait()
            while self._raw_out:
                if not await _wait_until(wait_writable, fd, deadline):
                    return
                self._send_raw_nowait()
            ibuf = self._ibuf
            while not tls.peer_closed:
                got = tls.receive_into(ibuf, fd)
                if got < 0 and not await _wait_until(wait_readable, fd, deadline):
                    return
                ibuf.clear()
            self._received(b"")
        except OSError:
            return  # the peer reset or broke the session: nothing more to exchange


async def _wait_until(
    wait: Callable[..., Coroutine[Any, Any, bool]], fd: int, deadline: float
) -> bool:
    remaining = deadline - time.monotonic()
    return remaining > 0 and await wait(fd, remaining)


def _read_error(exc: OSError) -> OSError:
    """exc with the module's "socket:read:" message; an ssl.SSLError keeps its class,
    library and reason."""
    if isinstance(exc, ssl.SSLError):
        reason = exc.strerror if exc.strerror else str(exc)
        error: OSError = type(exc)(exc.errno, f"socket:read: {reason}")
        error.library = getattr(exc, "library", None)  # type: ignore[attr-defined]
        error.reason = getattr(exc, "reason", None)  # type: ignore[attr-defined]
        return error
    if exc.errno is None:
        return exc
    return OSError(exc.errno, f"socket:read: {exc.strerror}")
