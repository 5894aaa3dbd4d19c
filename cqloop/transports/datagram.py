"""cqloop.transports.datagram: UDP and Unix datagram transports, create_datagram_endpoint.

DatagramMixin is a base of cqloop.loop.Loop and gives it create_datagram_endpoint: argument
checks, address resolution, and the socket set-up tried on every (family, proto) the
addresses resolve to. DatagramTransport is the transport it returns. Both are written
against the loop's public API only (add_reader/add_writer/remove_reader/remove_writer,
call_soon, create_future, call_exception_handler, getaddrinfo).

A DatagramTransport keeps these invariants:
- its fd is watched for reading while it is reading (started, not paused, not closing), and
  for writing exactly while its buffer holds datagrams;
- the buffer holds whole datagrams in order, and a datagram is sent at once only when the
  buffer is empty, so datagrams never overtake one another;
- connection_lost is called once: after the buffer drains (close), or soon (abort, a fatal
  error). The socket is closed right after it, and the transport lets go of its loop and
  protocol.
Its `_on_readable` and `_on_writable` are fired by the loop's fd dispatch; everything else is
called by users and protocols.

asyncio is the oracle (base_events.create_datagram_endpoint and
selector_events._SelectorDatagramTransport). Where asyncio changed between 3.11 and 3.13 this
follows the running Python: 3.13 sends empty datagrams, counts 8 header bytes per buffered
datagram, and accepts any non-stream socket for `sock=`. Where asyncio trips over its own
state, this does what asyncio evidently means to do, in four places: a connected socket
whose peer is unnamed is still connected (`_is_connected`); sendto() on an unconnected
transport whose socket is closed drops the datagram (`sendto`); a close() that waited for
the buffer counts as a write to a lost connection (`_on_writable`); and abort() empties
the buffer's byte count along with the buffer (`_force_close`).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
import sys
import warnings
from asyncio import constants, trsock
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

from cqloop._core.stream import water_marks
from cqloop.transports.flow import (
    CallbackContext,
    ReadFlowMixin,
    WriteFlowMixin,
    report_fatal_error,
    set_result_unless_cancelled,
)
from cqloop.transports.sockutil import remove_stale_unix_socket, set_reuseport

__all__ = ["DatagramMixin", "DatagramTransport"]

# The "asyncio" logger, so that users' logging set-up applies as it is.
logger = logging.getLogger("asyncio")

_ProtocolT = TypeVar("_ProtocolT", bound=asyncio.BaseProtocol)

MAX_DATAGRAM_BYTES = 256 * 1024
# After this many writes to a lost connection, each further one logs a warning.
LOG_THRESHOLD_FOR_CONNLOST_WRITES: int = constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES

_PY313 = sys.version_info >= (3, 13)
# 3.13 sends empty datagrams (gh-113812); 3.11 and 3.12 drop them.
_SENDS_EMPTY_DATAGRAMS = _PY313
# 3.13 counts each buffered datagram's header so that empty datagrams count toward the
# high-water mark (gh-113812). 3.13.0 added it when buffering but did not take it off when
# sending (gh-135444, fixed in later 3.13 releases); here it is counted both ways.
_DATAGRAM_HEADER_BYTES = 8 if _PY313 else 0

# getaddrinfo with these flags refuses anything that would need a lookup.
_NUMERIC_ONLY = socket.AI_NUMERICHOST | socket.AI_NUMERICSERV

_AddrInfo = tuple[int, int, int, str, Any]


# -- helpers ------------------------------------------------------------------------------------


def _is_connected(sock: socket.socket) -> tuple[bool, Any]:
    """Whether the socket has a peer, and the peer's address (None if it has none).

    asyncio tests the address's truth instead, and a connected Unix socket whose peer is
    unnamed (a socketpair) has the address '': asyncio then calls sendto(data, None) on it
    and fails with TypeError. Having a peer is what matters."""
    try:
        peername = sock.getpeername()
    except OSError:
        return False, None
    return True, peername


def _check_datagram_socket(sock: socket.socket) -> None:
    if _PY313:
        if sock.type == socket.SOCK_STREAM:
            raise ValueError(f"A datagram socket was expected, got {sock!r}")
    elif sock.type != socket.SOCK_DGRAM:
        raise ValueError(f"A UDP Socket was expected, got {sock!r}")


async def _resolve(
    loop: asyncio.AbstractEventLoop, address: tuple[Any, Any], family: int, proto: int, flags: int
) -> Sequence[_AddrInfo]:
    """getaddrinfo for a datagram socket to `address`.

    A numeric host and port (and host None, which means loopback) resolve here, with no
    lookup and no thread, as asyncio resolves numeric addresses without getaddrinfo;
    anything else goes to loop.getaddrinfo.
    TODO: once loop.getaddrinfo is implemented (cqloop/transports/sockops.py), decide whether
    this fast path stays or every address goes through loop.getaddrinfo.
    """
    host, port = address
    try:
        infos = socket.getaddrinfo(
            host, port, family, socket.SOCK_DGRAM, proto, flags | _NUMERIC_ONLY
        )
    except socket.gaierror as exc:
        if exc.errno != socket.EAI_NONAME:
            # Not a question of names: a real lookup would fail the same way.
            raise
    else:
        return infos
    return await loop.getaddrinfo(
        host, port, family=family, type=socket.SOCK_DGRAM, proto=proto, flags=flags
    )


async def _address_pairs(
    loop: asyncio.AbstractEventLoop,
    local_addr: Any,
    remote_addr: Any,
    family: int,
    proto: int,
    flags: int,
) -> list[tuple[tuple[int, int], tuple[Any, Any]]]:
    """The (family, proto) choices to try, in order, each with its (local, remote)
    addresses. A choice is offered only if every address given resolves in it."""
    if not (local_addr or remote_addr):
        if family == 0:
            raise ValueError("unexpected address family")
        return [((family, proto), (None, None))]

    if family == socket.AF_UNIX:
        for addr in (local_addr, remote_addr):
            if addr is not None and not isinstance(addr, str):
                raise TypeError("string is expected")
        if local_addr and local_addr[0] not in (0, "\x00"):
            # A path, not a name in the abstract namespace (which leaves no file behind).
            remove_stale_unix_socket(local_addr)
        return [((family, proto), (local_addr, remote_addr))]

    # (family, proto) -> [local address, remote address], in getaddrinfo's order.
    choices: dict[tuple[int, int], list[Any]] = {}
    for index, addr in enumerate((local_addr, remote_addr)):
        if addr is None:
            continue
        if not (isinstance(addr, tuple) and len(addr) == 2):
            raise TypeError("2-tuple is expected")
        infos = await _resolve(loop, addr, family, proto, flags)
        if not infos:
            raise OSError("getaddrinfo() returned empty list")
        for info_family, _, info_proto, _, address in infos:
            choices.setdefault((info_family, info_proto), [None, None])[index] = address

    pairs = [
        (key, (local, remote))
        for key, (local, remote) in choices.items()
        if not ((local_addr and local is None) or (remote_addr and remote is None))
    ]
    if not pairs:
        raise ValueError("can not get address information")
    return pairs


def _open_socket(
    family: int,
    proto: int,
    local_address: Any,
    remote_address: Any,
    reuse_port: bool | None,
    allow_broadcast: bool | None,
) -> socket.socket:
    """A non-blocking datagram socket, bound to `local_address` and connected to
    `remote_address` (when given, and unless broadcasting). Closed again if any step fails."""
    sock = socket.socket(family=family, type=socket.SOCK_DGRAM, proto=proto)
    try:
        if reuse_port:
            set_reuseport(sock)
        if allow_broadcast:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.setblocking(False)
        if local_address is not None:
            sock.bind(local_address)
        if remote_address is not None and not allow_broadcast:
            # connect() on a datagram socket only records the peer: it completes at once,
            # never with EINPROGRESS, so it needs no sock_connect() and no wait.
            sock.connect(remote_address)
    except BaseException:
        sock.close()
        raise
    return sock


def _open_first_socket(
    pairs: list[tuple[tuple[int, int], tuple[Any, Any]]],
    bind: bool,
    connect: bool,
    reuse_port: bool | None,
    allow_broadcast: bool | None,
) -> tuple[socket.socket, Any]:
    """The socket of the first (family, proto) choice whose set-up works, and its remote
    address; if none works, the first choice's error."""
    errors: list[OSError] = []
    try:
        for (family, proto), (local_address, remote_address) in pairs:
            try:
                sock = _open_socket(
                    family,
                    proto,
                    local_address if bind else None,
                    remote_address if connect else None,
                    reuse_port,
                    allow_broadcast,
                )
            except OSError as exc:
                errors.append(exc)
            else:
                return sock, remote_address if connect else None
        raise errors[0]
    finally:
        # The errors' tracebacks hold this frame, and the frame holds the list.
        errors.clear()


# -- the transport ------------------------------------------------------------------------------


# Also an asyncio.Transport, as asyncio's own datagram transport is (CPython's
# test_create_datagram_endpoint checks isinstance(transport, asyncio.Transport)).
class DatagramTransport(
    CallbackContext, ReadFlowMixin, WriteFlowMixin, asyncio.DatagramTransport, asyncio.Transport
):
    """A UDP or Unix datagram socket as an asyncio DatagramTransport.

    An ordinary Python class: instances take attributes (test suites replace methods on
    them). Made by create_datagram_endpoint."""

    _extra: dict[str, Any]  # set by BaseTransport.__init__ (a slot there)
    # The most one datagram_received() gets; the rest of a longer datagram is lost. A class
    # attribute under asyncio's name, so it can be changed as on asyncio's transport.
    max_size = MAX_DATAGRAM_BYTES
    # Read by __del__, which may run on an instance whose __init__ failed.
    _sock: socket.socket | None = None

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        protocol: asyncio.BaseProtocol,
        address: Any = None,
        waiter: asyncio.Future[None] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(extra)
        self._extra["socket"] = trsock.TransportSocket(sock)
        try:
            self._extra["sockname"] = sock.getsockname()
        except OSError:
            self._extra["sockname"] = None
        connected, peername = _is_connected(sock)
        self._extra.setdefault("peername", peername)
        self._loop: Any = loop
        self._sock = sock
        self._sock_fd = sock.fileno()
        self._protocol: Any = protocol
        # Sends go through send() on a connected socket, sendto() otherwise.
        self._connected = connected
        # The one address sendto() accepts (remote_addr), or None: any address.
        self._address = address
        # (datagram, address) pairs the socket refused with EAGAIN, oldest first.
        self._buffer: collections.deque[tuple[bytes, Any]] = collections.deque()
        self._buffer_size = 0
        self._high_water, self._low_water = water_marks()
        self._protocol_paused = False
        self._closing = False
        self._paused = False
        self._watching_reads = False
        # Non-zero once connection_lost is scheduled; then counts writes made since.
        self._conn_lost = 0
        self._capture_context()

        self._soon(protocol.connection_made, self)
        # Read only once connection_made() has run, and wake the waiter after both.
        self._soon(self._start_reading)
        if waiter is not None:
            self._soon(set_result_unless_cancelled, waiter, None)

    def __repr__(self) -> str:
        info = [type(self).__name__]
        if self._sock is None:
            info.append("closed")
        elif self._closing:
            info.append("closing")
        info.append(f"fd={self._sock_fd}")
        if self._loop is not None and not self._loop.is_closed():
            info.append("read=polling" if self._watching_reads else "read=idle")
            state = "polling" if self._buffer else "idle"
            info.append(f"write=<{state}, bufsize={self.get_write_buffer_size()}>")
        return "<{}>".format(" ".join(info))

    def __del__(self, _warn: Callable[..., Any] = warnings.warn) -> None:
        if self._sock is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            self._sock.close()

    # -- public API -----------------------------------------------------------------------

    def sendto(self, data: bytes | bytearray | memoryview, addr: Any = None) -> None:
        """Send one datagram to `addr` (None: the remote address of a connected
        transport). If the socket would block it is buffered and sent when it can be."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(
                f"data argument must be a bytes-like object, not {type(data).__name__!r}"
            )
        if not data and not _SENDS_EMPTY_DATAGRAMS:
            return
        if self._address is not None:
            if addr not in (None, self._address):
                raise ValueError(f"Invalid address: must be None or {self._address}")
            addr = self._address

        if self._conn_lost and (self._address is not None or self._sock is None):
            # As in asyncio, an unconnected transport still sends while its socket is open,
            # even after close(). Once the socket is closed asyncio fails with
            # AttributeError; here the datagram is dropped like any write to a lost
            # connection.
            if self._conn_lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES:
                logger.warning("socket.send() raised exception.")
            self._conn_lost += 1
            return

        if not self._buffer:
            try:
                self._send(data, addr)
                return
            except (BlockingIOError, InterruptedError):
                self._in_context(self._loop.add_writer, self._sock_fd, self._on_writable)
            except OSError as exc:
                self._in_context(self._protocol.error_received, exc)
                return
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal write error on datagram transport")
                return

        # Buffer a copy: the caller may reuse a bytearray or memoryview's memory.
        self._buffer.append((bytes(data), addr))
        self._buffer_size += len(data) + _DATAGRAM_HEADER_BYTES
        self._maybe_pause_protocol()

    def abort(self) -> None:
        """Close at once: buffered datagrams are dropped; connection_lost(None) follows."""
        self._force_close(None)

    def close(self) -> None:
        """Stop reading and close once the buffered datagrams are sent; connection_lost(None)
        follows."""
        if self._closing:
            return
        self._closing = True
        self._stop_reading()
        if not self._buffer:
            self._conn_lost += 1
            self._soon(self._call_connection_lost, None)

    def is_closing(self) -> bool:
        return self._closing

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> Any:
        return self._protocol

    def get_write_buffer_size(self) -> int:
        """Bytes buffered (on 3.13, with 8 more per datagram for its header)."""
        return self._buffer_size

    # -- private ----------------------------------------------------------------------------

    def _send(self, data: bytes | bytearray | memoryview, addr: Any) -> None:
        assert self._sock is not None
        if self._connected:
            self._sock.send(data)
        else:
            self._sock.sendto(data, addr)

    def _start_reading(self) -> None:
        if self.is_reading() and not self._watching_reads:
            self._in_context(self._loop.add_reader, self._sock_fd, self._on_readable)
            self._watching_reads = True

    def _stop_reading(self) -> None:
        if self._watching_reads:
            self._loop.remove_reader(self._sock_fd)
            self._watching_reads = False

    def _fatal_error(self, exc: BaseException, message: str) -> None:
        """Report an error that ends the transport (an OSError is the network's news,
        anything else a bug: see report_fatal_error) and close it at once."""
        report_fatal_error(self, exc, message, expected=isinstance(exc, OSError))
        self._force_close(exc)

    def _force_close(self, exc: BaseException | None) -> None:
        if self._conn_lost:
            return
        if self._buffer:
            self._buffer.clear()
            self._buffer_size = 0  # asyncio leaves the old count behind
            self._loop.remove_writer(self._sock_fd)
        if not self._closing:
            self._closing = True
            self._stop_reading()
        self._conn_lost += 1
        self._soon(self._call_connection_lost, exc)

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        try:
            self._protocol.connection_lost(exc)
        finally:
            assert self._sock is not None
            self._sock.close()
            self._sock = None
            self._protocol = None
            self._loop = None

    # -- callbacks fired by the loop's fd dispatch --------------------------------------

    def _on_readable(self) -> None:
        if self._conn_lost:
            return
        assert self._sock is not None
        try:
            data, addr = self._sock.recvfrom(self.max_size)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:
            # An ICMP error (ConnectionRefusedError on a connected socket, ...) or the like:
            # news for the protocol, not the end of the transport.
            self._protocol.error_received(exc)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal read error on datagram transport")
        else:
            # Outside the try: an error raised by the protocol goes to the loop's exception
            # handler and leaves the transport open, as in asyncio.
            self._protocol.datagram_received(data, addr)

    def _on_writable(self) -> None:
        while self._buffer:
            data, addr = self._buffer.popleft()
            self._buffer_size -= len(data) + _DATAGRAM_HEADER_BYTES
            try:
                self._send(data, addr)
            except (BlockingIOError, InterruptedError):
                self._buffer.appendleft((data, addr))
                self._buffer_size += len(data) + _DATAGRAM_HEADER_BYTES
                break
            except OSError as exc:
                # That datagram is lost; the rest wait for the next writable event.
                self._protocol.error_received(exc)
                return
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal write error on datagram transport")
                return

        self._maybe_resume_protocol()  # resume_writing() may send, and fill the buffer again
        if not self._buffer:
            self._loop.remove_writer(self._sock_fd)
            if self._closing:
                # close() was waiting for the buffer; asyncio does not count this in
                # _conn_lost, so a later sendto() on its transport finds no socket.
                self._conn_lost += 1
                self._call_connection_lost(None)


# -- the loop's method --------------------------------------------------------------------------


class DatagramMixin:
    """create_datagram_endpoint, for cqloop.loop.Loop."""

    async def create_datagram_endpoint(
        self,
        protocol_factory: Callable[[], _ProtocolT],
        local_addr: tuple[str, int] | str | None = None,
        remote_addr: tuple[str, int] | str | None = None,
        *,
        family: int = 0,
        proto: int = 0,
        flags: int = 0,
        reuse_port: bool | None = None,
        allow_broadcast: bool | None = None,
        sock: socket.socket | None = None,
    ) -> tuple[DatagramTransport, _ProtocolT]:
        """Open a datagram endpoint: a UDP socket (or a Unix one with family=AF_UNIX and
        paths) bound to `local_addr` and connected to `remote_addr`, each optional, or the
        given `sock`; return (transport, protocol) once protocol.connection_made has run.

        Every (family, proto) the addresses resolve to is tried in turn; if none works, the
        first error is raised. With allow_broadcast the socket is not connected, but
        sendto() still accepts only remote_addr. asyncio's reuse_address is gone (3.11
        removed it), so passing it is a TypeError."""
        loop = cast(asyncio.AbstractEventLoop, self)
        remote_address: Any = None
        owns_socket = sock is None
        if sock is not None:
            _check_datagram_socket(sock)
            modifiers = {
                "local_addr": local_addr,
                "remote_addr": remote_addr,
                "family": family,
                "proto": proto,
                "flags": flags,
                "reuse_port": reuse_port,
                "allow_broadcast": allow_broadcast,
            }
            problems = ", ".join(f"{key}={value}" for key, value in modifiers.items() if value)
            if problems:
                raise ValueError(
                    "socket modifier keyword arguments can not be used "
                    f"when sock is specified. ({problems})"
                )
            sock.setblocking(False)
        else:
            pairs = await _address_pairs(loop, local_addr, remote_addr, family, proto, flags)
            sock, remote_address = _open_first_socket(
                pairs, bool(local_addr), bool(remote_addr), reuse_port, allow_broadcast
            )

        try:
            protocol = protocol_factory()
        except BaseException:
            if owns_socket:
                sock.close()
            raise
        waiter = loop.create_future()
        transport = DatagramTransport(loop, sock, protocol, remote_address, waiter)
        if loop.get_debug():
            if local_addr:
                logger.info(
                    "Datagram endpoint local_addr=%r remote_addr=%r created: (%r, %r)",
                    local_addr,
                    remote_addr,
                    transport,
                    protocol,
                )
            else:
                logger.debug(
                    "Datagram endpoint remote_addr=%r created: (%r, %r)",
                    remote_addr,
                    transport,
                    protocol,
                )
        try:
            await waiter
        except BaseException:
            transport.close()
            raise
        return transport, protocol
