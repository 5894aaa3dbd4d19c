"""cqloop.transports.tls: TLS over any stream transport, on ssl.MemoryBIO.

Owns the TLS layer of one connection: `SSLProtocol` sits between a plain stream transport
(cqloop's SocketTransport, or another SSLTransport for TLS over TLS) and the application's
protocol. Toward the socket it is an asyncio.BufferedProtocol (the socket transport recvs
straight into its buffer); toward the application it offers `SSLTransport`, a real
asyncio.Transport subclass whose instances take attributes (aiohttp's and uvicorn's tests
replace `transport.write` on an instance).

The record path (ciphertext in, plaintext out to the application; application writes in,
ciphertext out to the socket) is compiled: `cqloop._core.tls.TLSRecordPump`, the base class
of SSLProtocol, holds it and the flow control counters it needs. This file holds the policy:
construction and argument checks, the handshake and its timeout, the shutdown (close_notify
both ways) and its timeout, errors, extra info, and the state machine's bookkeeping.

States (TLSState) run UNWRAPPED -> DO_HANDSHAKE -> WRAPPED -> FLUSHING -> SHUTDOWN, and
back to UNWRAPPED from anywhere when the connection ends. The application protocol's own
lifecycle (AppState) is INIT -> CON_MADE [-> EOF] -> CON_LOST; start_tls begins it at
CON_MADE, since that protocol is connected already. Semantics follow asyncio's sslproto
(3.11+) callback for callback: handshake errors go to the waiter (create_connection raises
them) and never to connection_lost, which is only called after connection_made; later
errors reach connection_lost(exc); write_eof raises (TLS has no half-close).

Where it does better than asyncio (whose sslproto does none of these):
- Context: the application protocol's callbacks run in the context its connection runs
  in (the socket transport's, adopted at connection_made), whatever set them off: a
  write() from another task that fills the buffer (pause_writing), a resume_reading()
  from elsewhere (the data it releases), a close() (connection_lost).
- Close: after the application's close() it gets no more data; what it had not been
  given (held by pause_reading, or arriving before the peer's close_notify) is dropped,
  never an error; close() calls nothing of the protocol before it returns; what was
  written before it is sent, then close_notify; the peer's answering close_notify gives
  eof_received() (as in asyncio), then connection_lost(None).
- start_tls: plaintext that arrives with the end of the handshake is delivered only
  after start_tls() has returned the new transport (`_holding`), so that a protocol
  answering from data_received uses the transport the caller installed.
Who calls in:
cqloop.transports.streams (create_connection, create_server's accept path via server.py,
connect_accepted_socket, start_tls).
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
import logging
import ssl
import warnings
from asyncio import constants
from collections.abc import Callable
from typing import Any

from cqloop._core.tls import (
    STATE_DO_HANDSHAKE,
    STATE_FLUSHING,
    STATE_SHUTDOWN,
    STATE_UNWRAPPED,
    STATE_WRAPPED,
    TLSRecordPump,
)

__all__ = ["SSLProtocol", "SSLTransport", "TLSState"]

logger = logging.getLogger("asyncio")

# asyncio's defaults (seconds): how long a handshake and a close_notify exchange may take.
DEFAULT_HANDSHAKE_TIMEOUT_S = constants.SSL_HANDSHAKE_TIMEOUT
DEFAULT_SHUTDOWN_TIMEOUT_S = constants.SSL_SHUTDOWN_TIMEOUT


class TLSState(enum.IntEnum):
    """Where the TLS session is; the values are the compiled pump's."""

    UNWRAPPED = STATE_UNWRAPPED
    DO_HANDSHAKE = STATE_DO_HANDSHAKE
    WRAPPED = STATE_WRAPPED
    FLUSHING = STATE_FLUSHING
    SHUTDOWN = STATE_SHUTDOWN


class AppState(enum.Enum):
    """Which of the application protocol's callbacks have run."""

    INIT = "INIT"
    CON_MADE = "CON_MADE"
    EOF = "EOF"
    CON_LOST = "CON_LOST"


# The transitions _set_state allows (any state may go back to UNWRAPPED).
_ALLOWED = frozenset(
    {
        (TLSState.UNWRAPPED, TLSState.DO_HANDSHAKE),
        (TLSState.DO_HANDSHAKE, TLSState.WRAPPED),
        (TLSState.WRAPPED, TLSState.FLUSHING),
        (TLSState.FLUSHING, TLSState.SHUTDOWN),
    }
)

# The calls on the application transport that run per message: bound onto each instance
# from the compiled pump, so that calling them costs no Python frame of ours.
_HOT_METHODS = ("write", "writelines", "get_write_buffer_size")


def _default_context(server_side: bool, server_hostname: str | None) -> ssl.SSLContext:
    # ssl=True on the client side: a default, verifying context (asyncio's choice).
    if server_side:
        raise ValueError("Server side SSL needs a valid SSLContext")
    context = ssl.create_default_context()
    if not server_hostname:
        context.check_hostname = False
    return context


def _check_timeout(name: str, value: float | None, default: float) -> float:
    if value is None:
        return default
    if value <= 0:
        raise ValueError(f"{name} should be a positive number, got {value}")
    return value


class SSLTransport(asyncio.Transport):
    """What the application protocol sees: a TLS connection as an asyncio.Transport.

    Everything is delegated to the SSLProtocol; write, writelines and
    get_write_buffer_size are bound from its compiled base onto the instance.
    """

    # loop.start_tls may layer TLS over this transport; loop.sendfile reads and writes.
    _start_tls_compatible = True
    _sendfile_compatible = constants._SendfileMode.FALLBACK

    def __init__(self, loop: Any, ssl_protocol: SSLProtocol) -> None:
        super().__init__()
        self._loop = loop
        self._ssl_protocol: SSLProtocol | None = ssl_protocol
        self._closed = False
        for name in _HOT_METHODS:
            setattr(self, name, getattr(ssl_protocol, f"_app_{name}"))

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<{type(self).__name__} {state} protocol={self._ssl_protocol!r}>"

    # -- asyncio.Transport -----------------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        proto = self._ssl_protocol
        if proto is None:
            return default
        return proto._get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        if self._ssl_protocol is not None:
            self._ssl_protocol._set_app_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        proto = self._ssl_protocol
        return None if proto is None else proto._app_protocol  # type: ignore[return-value]

    def is_closing(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Flush what is buffered, send close_notify, then close the socket; the protocol's
        connection_lost(None) follows. Data not yet delivered is dropped."""
        if not self._closed:
            self._closed = True
            if self._ssl_protocol is not None:
                self._ssl_protocol._close_from_app()
        else:
            # Closed already (by us, or by the shutdown the peer began): let go of the SSL
            # protocol, so that an application protocol that keeps this transport does not
            # keep the TLS session and its context alive (asyncio does the same).
            self._release()

    @property
    def _context(self) -> contextvars.Context | None:
        # What a TLS session layered over this one (start_tls on it) adopts.
        proto = self._ssl_protocol
        return None if proto is None else proto._context

    def _release(self) -> None:
        self._ssl_protocol = None
        for name in _HOT_METHODS:
            self.__dict__.pop(name, None)

    def abort(self) -> None:
        """Close at once: buffered data is lost, no close_notify is sent."""
        self._force_close(None)

    def _force_close(self, exc: BaseException | None) -> None:
        self._closed = True
        if self._ssl_protocol is not None:
            self._ssl_protocol._abort(exc)

    def is_reading(self) -> bool:
        proto = self._ssl_protocol
        return proto is not None and not proto._app_reading_paused and not self._closed

    def pause_reading(self) -> None:
        if self._ssl_protocol is not None:
            self._ssl_protocol._pause_reading()

    def resume_reading(self) -> None:
        if self._ssl_protocol is not None:
            self._ssl_protocol._resume_reading()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._ssl_protocol is not None:
            self._ssl_protocol._app_write(data)

    def writelines(self, list_of_data: Any) -> None:
        if self._ssl_protocol is not None:
            self._ssl_protocol._app_writelines(list_of_data)

    def write_eof(self) -> None:
        raise NotImplementedError("TLS transports cannot half-close: there is no write_eof")

    def can_write_eof(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        proto = self._ssl_protocol
        return 0 if proto is None else proto._app_get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._protocol_or_closed()._write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        proto = self._protocol_or_closed()
        proto._set_write_buffer_limits(high, low)
        proto._control_app_writing()

    def get_read_buffer_size(self) -> int:
        proto = self._ssl_protocol
        return 0 if proto is None else proto._get_read_buffer_size()

    def get_read_buffer_limits(self) -> tuple[int, int]:
        return self._protocol_or_closed()._read_buffer_limits()

    def set_read_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        proto = self._protocol_or_closed()
        proto._set_read_buffer_limits(high, low)
        if proto._transport is not None:
            proto._control_ssl_reading()

    def _protocol_or_closed(self) -> SSLProtocol:
        proto = self._ssl_protocol
        if proto is None:
            raise RuntimeError("the TLS transport is closed")
        return proto

    # -- for loop.sendfile's fallback, and CPython's tests --------------------------------

    @property
    def _protocol_paused(self) -> bool:
        proto = self._ssl_protocol
        return proto is not None and proto._app_writing_paused

    def _test__append_write_backlog(self, data: bytes) -> None:
        # asyncio's test hook (test_ssl fills the backlog past the peer's window with it).
        self._protocol_or_closed()._append_write_backlog(data)

    def __del__(self, _warn: Callable[..., Any] = warnings.warn) -> None:
        if not self._closed:
            self._closed = True
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)


class SSLProtocol(TLSRecordPump, asyncio.BufferedProtocol):
    """The TLS layer of one connection (see the module docstring)."""

    def __init__(
        self,
        loop: Any,
        app_protocol: asyncio.BaseProtocol,
        sslcontext: ssl.SSLContext | None,
        waiter: asyncio.Future[None] | None,
        server_side: bool = False,
        server_hostname: str | None = None,
        call_connection_made: bool = True,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
    ) -> None:
        self._ssl_handshake_timeout = _check_timeout(
            "ssl_handshake_timeout", ssl_handshake_timeout, DEFAULT_HANDSHAKE_TIMEOUT_S
        )
        self._ssl_shutdown_timeout = _check_timeout(
            "ssl_shutdown_timeout", ssl_shutdown_timeout, DEFAULT_SHUTDOWN_TIMEOUT_S
        )
        if not sslcontext:
            sslcontext = _default_context(server_side, server_hostname)
        self._server_side = server_side
        self._server_hostname = server_hostname if server_hostname and not server_side else None
        self._sslcontext = sslcontext
        # More is added when the handshake completes.
        self._extra: dict[str, Any] = {"sslcontext": sslcontext}
        self._loop = loop
        self._waiter = waiter
        self._app_state = AppState.INIT if call_connection_made else AppState.CON_MADE
        self._conn_lost = 0
        # The exception a forced close of the socket transport should end with (handed to
        # connection_lost when the transport itself reports None).
        self._close_exc: BaseException | None = None
        self._handshake_start_time: float | None = None
        self._handshake_timeout_handle: asyncio.TimerHandle | None = None
        self._shutdown_timeout_handle: asyncio.TimerHandle | None = None
        incoming = ssl.MemoryBIO()
        outgoing = ssl.MemoryBIO()
        sslobj = sslcontext.wrap_bio(
            incoming, outgoing, server_side=server_side, server_hostname=self._server_hostname
        )
        self._sslobj = sslobj
        self._init_pump(sslobj, incoming, outgoing, loop)
        # Until connection_made adopts the socket transport's (see the module docstring).
        self._context = contextvars.copy_context()
        self._set_app_protocol(app_protocol)
        self._app_transport: SSLTransport | None = SSLTransport(loop, self)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {TLSState(self._state).name}>"

    def statistics(self) -> dict[str, Any]:
        """Where the connection is and what its buffers hold, in bytes."""
        connected = self._transport is not None
        return {
            "state": TLSState(self._state).name,
            "app_state": self._app_state.value,
            "read_buffer_size": self._get_read_buffer_size() if connected else 0,
            "write_buffer_size": self._app_get_write_buffer_size() if connected else 0,
            "app_reading_paused": self._app_reading_paused,
            "app_writing_paused": self._app_writing_paused,
        }

    # -- toward the socket transport (asyncio.BufferedProtocol) -------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """The socket is connected (or start_tls handed it over): start the handshake."""
        # The application's callbacks run where the socket transport runs its own: the
        # context the connection was made in (for start_tls, the one the protocol has had
        # its callbacks in so far). Made in the same call as this protocol otherwise.
        context = getattr(transport, "_context", None)
        if isinstance(context, contextvars.Context):
            self._context = context
        self._set_transport(transport)
        self._start_handshake()

    def connection_lost(self, exc: BaseException | None) -> None:
        """The socket transport is gone: tell the application (if it was told of the
        connection) and the waiter, and drop every reference that makes a cycle."""
        if exc is None:
            exc = self._close_exc
        self._close_exc = None
        self._discard_buffers()
        self._conn_lost += 1
        app_transport = self._app_transport
        if app_transport is not None:
            app_transport._closed = True
        if self._state != TLSState.DO_HANDSHAKE and self._app_state in (
            AppState.CON_MADE,
            AppState.EOF,
        ):
            self._app_state = AppState.CON_LOST
            self._loop.call_soon(self._app_protocol.connection_lost, exc, context=self._context)
        self._set_state(TLSState.UNWRAPPED)
        self._set_transport(None)
        self._app_transport = None
        self._clear_app_protocol()
        self._wakeup_waiter(exc)
        self._cancel_timers()

    def eof_received(self) -> bool | None:
        """The peer closed its end of the socket, with or without a close_notify."""
        self._eof_received = True
        try:
            if self._loop.get_debug():
                logger.debug("%r received EOF", self)
            state = self._state
            if state == TLSState.DO_HANDSHAKE:
                self._on_handshake_complete(ConnectionResetError())
            elif state == TLSState.WRAPPED:
                self._set_state(TLSState.FLUSHING)
                if self._app_reading_paused or self._holding:
                    # Keep the socket open: what is buffered is delivered on resume.
                    return True
                self._do_flush()
            elif state == TLSState.FLUSHING:
                self._do_write()
                self._set_state(TLSState.SHUTDOWN)
                self._do_shutdown()
            elif state == TLSState.SHUTDOWN:
                self._do_shutdown()
        except Exception:
            self._close_transport()
            raise
        return None

    # buffer_updated, get_buffer, pause_writing and resume_writing are the pump's.

    def _on_bytes_unwrapped(self) -> None:
        """The pump got ciphertext outside WRAPPED: advance the handshake or shutdown."""
        state = self._state
        if state == TLSState.DO_HANDSHAKE:
            self._do_handshake()
        elif state == TLSState.FLUSHING:
            self._do_flush()
        elif state == TLSState.SHUTDOWN:
            self._do_shutdown()

    # -- handshake ----------------------------------------------------------------------------

    def _start_handshake(self) -> None:
        if self._loop.get_debug():
            logger.debug("%r starts SSL handshake", self)
            self._handshake_start_time = self._loop.time()
        self._set_state(TLSState.DO_HANDSHAKE)
        self._handshake_timeout_handle = self._loop.call_later(
            self._ssl_handshake_timeout, self._check_handshake_timeout
        )
        self._do_handshake()

    def _check_handshake_timeout(self) -> None:
        if self._state == TLSState.DO_HANDSHAKE:
            msg = (
                f"SSL handshake is taking longer than {self._ssl_handshake_timeout} seconds: "
                f"aborting the connection"
            )
            self._fatal_error(ConnectionAbortedError(msg))

    def _do_handshake(self) -> None:
        try:
            self._sslobj.do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLSyscallError):
            self._process_outgoing()
        except ssl.SSLError as exc:
            self._on_handshake_complete(exc)
        else:
            self._on_handshake_complete(None)

    def _on_handshake_complete(self, handshake_exc: BaseException | None) -> None:
        handle = self._handshake_timeout_handle
        if handle is not None:
            handle.cancel()
            self._handshake_timeout_handle = None
        sslobj = self._sslobj
        try:
            if handshake_exc is not None:
                raise handshake_exc
            self._set_state(TLSState.WRAPPED)
            peercert = sslobj.getpeercert()
        except Exception as exc:
            handshake_exc = None
            self._set_state(TLSState.UNWRAPPED)
            if isinstance(exc, ssl.CertificateError):
                msg = "SSL handshake failed on verifying the certificate"
            else:
                msg = "SSL handshake failed"
            # The peer should learn why (an alert may be waiting in the outgoing BIO).
            self._process_outgoing()
            self._fatal_error(exc, msg)
            self._wakeup_waiter(exc)
            return
        if self._loop.get_debug() and self._handshake_start_time is not None:
            elapsed = self._loop.time() - self._handshake_start_time
            logger.debug("%r: SSL handshake took %.1f ms", self, elapsed * 1e3)
        self._extra.update(
            peercert=peercert,
            cipher=sslobj.cipher(),
            compression=sslobj.compression(),
            ssl_object=sslobj,
        )
        if self._app_state != AppState.INIT:
            # start_tls: the protocol must not hear of data before start_tls() has
            # returned the transport to answer on. The waiter's task runs first (its
            # wake-up is queued now), then the delivery.
            self._holding = True
            self._wakeup_waiter(None)
            self._loop.call_soon(self._release_held, context=self._context)
            return
        self._app_state = AppState.CON_MADE
        self._app_protocol.connection_made(self._app_transport)  # type: ignore[arg-type]
        self._wakeup_waiter(None)
        self._do_read()

    def _release_held(self) -> None:
        self._holding = False
        if self._transport is not None and not self._app_reading_paused:
            self._on_resumed()

    def _wakeup_waiter(self, exc: BaseException | None) -> None:
        waiter = self._waiter
        if waiter is None:
            return
        self._waiter = None
        if not waiter.cancelled():
            if exc is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(exc)

    # -- shutdown -----------------------------------------------------------------------------

    def _close_from_app(self) -> None:
        """The application closed its transport: it gets no more data, nothing of it is
        called before this returns, and what follows is eof_received (if the peer answers
        with its close_notify) and connection_lost."""
        self._app_closed = True
        if self._state == TLSState.FLUSHING:
            # The peer's end of file came while reading was paused: no more to deliver.
            self._do_flush()
        else:
            self._start_shutdown()

    def _start_shutdown(self) -> None:
        if self._state in (TLSState.FLUSHING, TLSState.SHUTDOWN, TLSState.UNWRAPPED):
            return
        if self._app_transport is not None:
            self._app_transport._closed = True
        if self._state == TLSState.DO_HANDSHAKE:
            self._abort(None)
            return
        self._set_state(TLSState.FLUSHING)
        self._shutdown_timeout_handle = self._loop.call_later(
            self._ssl_shutdown_timeout, self._check_shutdown_timeout
        )
        self._do_flush()

    def _check_shutdown_timeout(self) -> None:
        if self._state in (TLSState.FLUSHING, TLSState.SHUTDOWN):
            self._force_close_transport(TimeoutError("SSL shutdown timed out"))

    def _do_flush(self) -> None:
        # Deliver what was decrypted already (unless the application paused reading or
        # closed), then send close_notify.
        self._do_read()
        self._set_state(TLSState.SHUTDOWN)
        self._do_shutdown()

    def _do_shutdown(self) -> None:
        try:
            if not self._eof_received:
                # What the application wrote goes out before close_notify; what the peer
                # sent before its own is dropped (nobody will read it now).
                self._do_write()
                self._drop_plaintext()
                self._sslobj.unwrap()
        except (ssl.SSLWantReadError, ssl.SSLSyscallError):
            # close_notify is sent; the peer's has not come yet. The incoming BIO is empty
            # now: read from the socket again if it was full, or the close_notify never comes.
            self._process_outgoing()
            if self._transport is not None:
                self._control_ssl_reading()
        except ssl.SSLError as exc:
            self._on_shutdown_complete(exc)
        else:
            self._process_outgoing()
            if self._app_closed:
                # The peer answered our close_notify (asyncio tells the protocol so); this
                # may run inside close(), which must not call the protocol.
                self._loop.call_soon(self._call_eof_received, context=self._context)
            else:
                self._call_eof_received()
            self._on_shutdown_complete(None)

    def _on_shutdown_complete(self, shutdown_exc: BaseException | None) -> None:
        handle = self._shutdown_timeout_handle
        if handle is not None:
            handle.cancel()
            self._shutdown_timeout_handle = None
        if shutdown_exc is not None:
            self._fatal_error(shutdown_exc)
        else:
            self._loop.call_soon(self._close_transport)

    def _abort(self, exc: BaseException | None) -> None:
        self._set_state(TLSState.UNWRAPPED)
        self._force_close_transport(exc)

    def _close_transport(self) -> None:
        transport = self._transport
        if transport is not None:
            transport.close()

    def _force_close_transport(self, exc: BaseException | None) -> None:
        transport = self._transport
        if transport is None:
            return
        force_close = getattr(transport, "_force_close", None)
        if force_close is not None:
            force_close(exc)
        else:
            # cqloop's socket transport: abort() ends in connection_lost(None), which then
            # reports this exception instead.
            if self._close_exc is None:
                self._close_exc = exc
            transport.abort()  # type: ignore[attr-defined]

    def _cancel_timers(self) -> None:
        for name in ("_handshake_timeout_handle", "_shutdown_timeout_handle"):
            handle = getattr(self, name)
            if handle is not None:
                handle.cancel()
                setattr(self, name, None)

    # -- called by the pump ---------------------------------------------------------------------

    def _call_eof_received(self) -> None:
        try:
            if self._app_state == AppState.CON_MADE:
                self._app_state = AppState.EOF
                keep_open = self._app_protocol.eof_received()  # type: ignore[attr-defined]
                if keep_open:
                    logger.warning(
                        "returning true from eof_received() has no effect when using ssl"
                    )
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Error calling eof_received()")

    def _fatal_error(self, exc: BaseException, message: str = "Fatal error on transport") -> None:
        transport = self._transport
        self._force_close_transport(exc)
        if isinstance(exc, OSError):
            if self._loop.get_debug():
                logger.debug("%r: %s", self, message, exc_info=True)
        elif not isinstance(exc, asyncio.CancelledError):
            self._loop.call_exception_handler(
                {
                    "message": message,
                    "exception": exc,
                    "transport": transport,
                    "protocol": self,
                }
            )

    # -- application-side reading ----------------------------------------------------------------

    def _resume_reading(self) -> None:
        if not self._app_reading_paused:
            return
        self._app_reading_paused = False
        self._loop.call_soon(self._on_resumed, context=self._context)

    def _on_resumed(self) -> None:
        state = self._state
        if state == TLSState.WRAPPED:
            self._do_read()
        elif state == TLSState.FLUSHING:
            self._do_flush()
        elif state == TLSState.SHUTDOWN:
            self._do_shutdown()

    # -- state and extra info ---------------------------------------------------------------------

    def _set_state(self, new_state: TLSState) -> None:
        old = TLSState(self._state)
        if new_state != TLSState.UNWRAPPED and (old, new_state) not in _ALLOWED:
            raise RuntimeError(f"cannot switch state from {old} to {new_state}")
        self._state = new_state

    def _get_extra_info(self, name: str, default: Any = None) -> Any:
        if name in self._extra:
            return self._extra[name]
        transport = self._transport
        if transport is not None:
            return transport.get_extra_info(name, default)
        return default
