"""cqloop.transports.sockops: the loop's sock_* methods, getaddrinfo and getnameinfo.

SockOpsMixin is a base of cqloop.loop.Loop and is called only through it. Its three hot
methods, sock_recv, sock_recv_into and sock_sendall, are compiled (cqloop/_core/sockio.pyx:
the first system call on the fd and a receive's wait are made there; a partial sendall
waits through _sendall_when_writable here). Its methods keep
the behaviour, argument checks and error messages of asyncio's selector loop (3.11 to
3.13): the non-blocking check in debug mode, SSL sockets refused, sock_connect resolving
names as asyncio's _ensure_resolved does, sock_sendfile with os.sendfile and asyncio's
read-and-send fallback.

Every socket operation first tries its system call at once; only when the socket is not
ready (BlockingIOError, InterruptedError) does it make a future and register a reader or
writer for the fd. Invariant: such a registration lives exactly as long as its future is
pending. The callback that performs the retried call never removes it; the future's done
callback does, whether the future got a result, an exception or was cancelled, unless the
registration was replaced meanwhile (another operation or add_reader on the same fd: the
kernel cancelled our handle then, and the fd now belongs to the newcomer, as in asyncio).
That is why registrations go through the kernel's `_add_reader`/`_add_writer` (what the
public add_reader/add_writer wrap): they return the handle, whose `cancelled()` says whether
it is still the fd's registration, and they refuse an fd a transport's watcher owns.
While an operation waits, the loop co-owns the socket's fd (sockio.claim_fd, whose done
callback comes after the one that drops the registration): a socket.close() fails the
operation at once with EBADF, and the fd is closed only when the registration is gone, so
its number is never reused under a registration of ours.

getaddrinfo gives exactly socket.getaddrinfo's results. A query whose host and port are
numeric is answered in the loop's thread with AI_NUMERICHOST | AI_NUMERICSERV added (the
C library then does no lookup, and the list is the same); anything else goes to the
default executor, as in asyncio.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import io
import logging
import os
import socket
import sys
from asyncio import constants
from asyncio.exceptions import SendfileNotAvailableError
from collections.abc import Callable
from operator import methodcaller
from typing import IO, TYPE_CHECKING, Any, TypeVar, TypeVarTuple, Unpack

from cqloop._core import sockio as _sockio
from cqloop.transports.sockutil import refuse_ssl_socket

if TYPE_CHECKING:
    import concurrent.futures

    from cqloop._core.handles import Handle

__all__ = ["SockOpsMixin"]

# asyncio's logger, as cqloop.loop uses (it is not imported from there: loop imports us).
logger = logging.getLogger("asyncio")

_Ts = TypeVarTuple("_Ts")
_T = TypeVar("_T")

if TYPE_CHECKING:
    # What getaddrinfo() returns, as typeshed spells it.
    from socket import _GetAddrInfoResult as _AddrInfo

# Added to a getaddrinfo query tried in the loop's thread: the C library then answers from
# the strings alone, or fails with EAI_NONAME, without consulting DNS, hosts or services.
NUMERIC_ONLY_FLAGS = socket.AI_NUMERICHOST | socket.AI_NUMERICSERV

# The C library refuses a sendfile() count past this on 32-bit systems (asyncio 3.12+
# clamps it the same way).
SENDFILE_MAX_BLOCK_BYTES = sys.maxsize // 2 + 1

# Errors that mean "not ready yet, try again when the fd is".
_NOT_READY = (BlockingIOError, InterruptedError)


# -- helpers ------------------------------------------------------------------------------


def _accept_nonblocking(sock: socket.socket) -> tuple[socket.socket, Any]:
    conn, address = sock.accept()
    conn.setblocking(False)
    return conn, address


def _ip_literal_address(
    host: Any,
    port: Any,
    family: int,
    type: int,
    proto: int,
    flowinfo: int = 0,
    scopeid: int = 0,
) -> tuple[Any, ...] | None:
    """The socket address for (host, port) when host is already an IP address, else None
    (then getaddrinfo must resolve it). The rules are asyncio's _ipaddr_info, so that
    sock_connect sends the same queries to getaddrinfo as asyncio does."""
    if host is None or proto not in {0, socket.IPPROTO_TCP, socket.IPPROTO_UDP}:
        return None
    if type not in {socket.SOCK_STREAM, socket.SOCK_DGRAM}:
        return None
    if port is None or port in {"", b""}:
        port = 0
    else:
        try:
            port = int(port)
        except (TypeError, ValueError):
            return None  # a service name such as "http": getaddrinfo knows it
    if isinstance(host, bytes):
        host = host.decode("idna")
    if "%" in host:
        # inet_pton takes no IPv6 zone index ("fe80::1%lo"); getaddrinfo does.
        return None
    families = [socket.AF_INET, socket.AF_INET6] if family == socket.AF_UNSPEC else [family]
    for af in families:
        try:
            socket.inet_pton(af, host)
        except OSError:
            continue
        if af == socket.AF_INET6:
            return (host, port, flowinfo, scopeid)
        return (host, port)
    return None


def _describe_query(host: Any, port: Any, family: int, type: int, proto: int, flags: int) -> str:
    # asyncio's wording, so debug logs read the same on either loop.
    parts = [f"{host}:{port!r}"]
    if family:
        parts.append(f"family={family!r}")
    if type:
        parts.append(f"type={type!r}")
    if proto:
        parts.append(f"proto={proto!r}")
    if flags:
        parts.append(f"flags={flags!r}")
    return ", ".join(parts)


class _PendingSend:
    """What a sock_sendall still has to send: its data and how much of it went."""

    __slots__ = ("sent", "view")

    def __init__(self, view: memoryview, sent: int) -> None:
        self.view = view
        self.sent = sent


class _SendfileJob:
    """One native sock_sendfile: where in the file the next sendfile() starts and how much
    has gone. `registered` is False until the first retry was scheduled on writability."""

    __slots__ = ("blocksize", "count", "fileno", "offset", "registered", "sock", "total_sent")

    def __init__(
        self, sock: socket.socket, fileno: int, offset: int, count: int | None, blocksize: int
    ) -> None:
        self.sock = sock
        self.fileno = fileno
        self.offset = offset
        self.count = count
        self.blocksize = blocksize
        self.total_sent = 0
        self.registered = False

    def send_some(self) -> bool:
        """One sendfile() call; True when the job is complete (count reached or end of
        file). Raises what sendfile() raises, BlockingIOError included."""
        if self.count:
            self.blocksize = self.count - self.total_sent
            if self.blocksize <= 0:
                return True
        blocksize = min(self.blocksize, SENDFILE_MAX_BLOCK_BYTES)
        sent = os.sendfile(self.sock.fileno(), self.fileno, self.offset, blocksize)
        if sent == 0:
            return True  # end of file
        self.offset += sent
        self.total_sent += sent
        return self.count is not None and self.total_sent >= self.count

    def failure(self, exc: OSError) -> BaseException:
        """What the caller sees when sendfile() raised `exc`: as asyncio, a failure before
        any byte went is SendfileNotAvailableError (sock_sendfile then falls back to
        read-and-send), and ENOTCONN once under way is a ConnectionError."""
        if self.total_sent == 0:
            return SendfileNotAvailableError("os.sendfile call failed")
        if self.registered and exc.errno == errno.ENOTCONN and type(exc) is not ConnectionError:
            # asyncio's exact construction (message first, so str() reads oddly), kept so
            # that callers matching on it see the same exception.
            lost = ConnectionError("socket is not connected", errno.ENOTCONN)
            lost.__cause__ = exc
            return lost
        return exc

    def update_file_position(self) -> None:
        # sendfile() with an offset leaves the file position alone; asyncio moves it past
        # what was sent, as a read would have.
        if self.total_sent > 0:
            os.lseek(self.fileno, self.offset, os.SEEK_SET)


# -- the mixin ----------------------------------------------------------------------------


class SockOpsMixin:
    """sock_recv, sock_recv_into, sock_recvfrom, sock_recvfrom_into, sock_sendall,
    sock_sendto, sock_connect, sock_accept, sock_sendfile, getaddrinfo, getnameinfo."""

    if TYPE_CHECKING:
        # What this mixin uses of the loop it is mixed into (the Kernel and Loop define it).
        slow_callback_duration: float

        def time(self) -> float: ...
        def get_debug(self) -> bool: ...
        def create_future(self) -> asyncio.Future[Any]: ...
        def _add_reader(
            self, fd: int, callback: Callable[..., object], args: tuple[Any, ...]
        ) -> Handle: ...
        def _add_writer(
            self, fd: int, callback: Callable[..., object], args: tuple[Any, ...]
        ) -> Handle: ...
        def _wait_sock_readable(
            self,
            sock: socket.socket,
            fd: int,
            callback: Callable[..., object],
            args: tuple[Any, ...],
        ) -> Handle: ...
        def _rearm(self, fd: int) -> None: ...
        def _remove_reader(self, fd: int) -> bool: ...
        def _remove_writer(self, fd: int) -> bool: ...
        def run_in_executor(
            self,
            executor: concurrent.futures.Executor | None,
            func: Callable[[Unpack[_Ts]], _T],
            *args: *_Ts,
        ) -> asyncio.Future[_T]: ...

    # -- receiving ------------------------------------------------------------------------

    # sock_recv, sock_recv_into and sock_sendall are compiled (cqloop/_core/sockio.pyx):
    # an echo server calls two of them per message. They check through _check_sock when
    # there is anything to check, try the call first as the methods here do (with
    # MSG_DONTWAIT: a blocking socket outside debug mode waits instead of blocking the
    # loop), and a partial sendall waits through _sendall_when_writable.
    sock_recv = _sockio.sock_recv
    sock_recv_into = _sockio.sock_recv_into
    sock_sendall = _sockio.sock_sendall

    async def sock_recvfrom(self, sock: socket.socket, bufsize: int) -> tuple[bytes, Any]:
        """Receive a datagram of up to bufsize bytes; return (data, address)."""
        self._check_sock(sock)
        try:
            return sock.recvfrom(bufsize)
        except _NOT_READY:
            pass
        return await self._retry_when_readable(sock, methodcaller("recvfrom", bufsize), (sock,))

    async def sock_recvfrom_into(
        self, sock: socket.socket, buf: Any, nbytes: int = 0
    ) -> tuple[int, Any]:
        """Receive a datagram into buf (at most nbytes, or len(buf) when nbytes is 0);
        return (number of bytes, address)."""
        self._check_sock(sock)
        if not nbytes:
            nbytes = len(buf)
        try:
            return sock.recvfrom_into(buf, nbytes)
        except _NOT_READY:
            pass
        return await self._retry_when_readable(
            sock, methodcaller("recvfrom_into", buf, nbytes), (sock,)
        )

    async def sock_accept(self, sock: socket.socket) -> tuple[socket.socket, Any]:
        """Accept a connection on a listening socket; return (conn, address), conn
        non-blocking."""
        self._check_sock(sock)
        try:
            return _accept_nonblocking(sock)
        except _NOT_READY:
            pass
        fut = self._retry_when_readable(sock, _accept_nonblocking, (sock,))
        try:
            return await fut
        except asyncio.CancelledError:
            # Cancelled after the connection was accepted but before this task resumed:
            # nobody will ever get `conn`, so close it rather than leave it to the GC.
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                fut.result()[0].close()
            raise

    # -- sending --------------------------------------------------------------------------

    async def sock_sendto(self, sock: socket.socket, data: Any, address: Any) -> int:
        """Send a datagram to address; return the number of bytes sent."""
        self._check_sock(sock)
        try:
            return sock.sendto(data, address)
        except _NOT_READY:
            pass
        return await self._retry_when_writable(
            sock, methodcaller("sendto", data, 0, address), (sock,)
        )

    async def sock_sendfile(
        self,
        sock: socket.socket,
        file: IO[bytes],
        offset: int = 0,
        count: int | None = None,
        *,
        fallback: bool | None = True,
    ) -> int:
        """Send file (from offset, count bytes or to its end) on a connected stream socket
        with os.sendfile; when that is not possible and fallback is true, read the file
        and send it with sock_sendall. Return the number of bytes sent; the file position
        ends up after the last byte sent."""
        if self.get_debug() and sock.gettimeout() != 0:
            raise ValueError("the socket must be non-blocking")
        refuse_ssl_socket(sock)
        self._check_sendfile_params(sock, file, offset, count)
        try:
            return await self._sock_sendfile_native(sock, file, offset, count)
        except SendfileNotAvailableError:
            if not fallback:
                raise
        return await self._sock_sendfile_fallback(sock, file, offset, count)

    # -- connecting -----------------------------------------------------------------------

    async def sock_connect(self, sock: socket.socket, address: Any) -> None:
        """Connect sock to address; an IP socket's host may be a name, resolved with
        getaddrinfo for the socket's family, type and protocol."""
        self._check_sock(sock)
        if sock.family in {socket.AF_INET, socket.AF_INET6}:
            address = await self._resolve_for_connect(sock, address)
        try:
            sock.connect(address)
        except _NOT_READY:
            # EINPROGRESS (and EINTR, bpo-23618): the connection goes on in the background;
            # writability says it finished, SO_ERROR how.
            pass
        else:
            return
        fut = self.create_future()
        fd = sock.fileno()
        handle = self._add_writer(fd, self._on_connect_writable, (fut, sock, address))
        fut.add_done_callback(functools.partial(self._on_writer_done, fd, handle))
        _sockio.claim_fd(sock, fut)
        try:
            await fut
        finally:
            # The error's traceback holds this frame: drop fut so fut -> error -> frame ->
            # fut is no reference cycle (connect errors are common, as asyncio notes).
            del fut

    # -- name resolution ------------------------------------------------------------------

    async def getaddrinfo(
        self,
        host: bytes | str | None,
        port: bytes | str | int | None,
        *,
        family: int = 0,
        type: int = 0,
        proto: int = 0,
        flags: int = 0,
    ) -> _AddrInfo:
        """socket.getaddrinfo's answer, in the default executor; a numeric host (an IP
        address, or None) with a numeric port (or None) is answered in the loop's thread."""
        debug = self.get_debug()
        t0 = self.time() if debug else 0.0
        try:
            infos = socket.getaddrinfo(host, port, family, type, proto, flags | NUMERIC_ONLY_FLAGS)
        except Exception:
            # Not numeric, or not valid at all: the executor makes the query as asked, so a
            # result or an error is exactly the standard library's.
            pass
        else:
            if debug:
                query = _describe_query(host, port, family, type, proto, flags)
                logger.debug("Get address info %s", query)
                self._log_getaddrinfo_result(query, self.time() - t0, infos)
            return infos
        if debug:
            return await self.run_in_executor(
                None, self._getaddrinfo_logged, host, port, family, type, proto, flags
            )
        return await self.run_in_executor(
            None, socket.getaddrinfo, host, port, family, type, proto, flags
        )

    async def getnameinfo(self, sockaddr: tuple[Any, ...], flags: int = 0) -> tuple[str, str]:
        """socket.getnameinfo in the default executor."""
        return await self.run_in_executor(None, socket.getnameinfo, sockaddr, flags)

    # -- private: checks ------------------------------------------------------------------

    def _check_sock(self, sock: socket.socket) -> None:
        refuse_ssl_socket(sock)
        if self.get_debug() and sock.gettimeout() != 0:
            raise ValueError("the socket must be non-blocking")

    def _check_sendfile_params(
        self, sock: socket.socket, file: Any, offset: Any, count: Any
    ) -> None:
        if "b" not in getattr(file, "mode", "b"):
            raise ValueError("file should be opened in binary mode")
        if sock.type != socket.SOCK_STREAM:
            raise ValueError("only SOCK_STREAM type sockets are supported")
        if count is not None:
            if not isinstance(count, int):
                raise TypeError(f"count must be a positive integer (got {count!r})")
            if count <= 0:
                raise ValueError(f"count must be a positive integer (got {count!r})")
        if not isinstance(offset, int):
            raise TypeError(f"offset must be a non-negative integer (got {offset!r})")
        if offset < 0:
            raise ValueError(f"offset must be a non-negative integer (got {offset!r})")

    # -- private: waiting for the fd ------------------------------------------------------

    def _retry_when_readable(
        self, sock: socket.socket, op: Callable[[Unpack[_Ts]], _T], args: tuple[*_Ts]
    ) -> asyncio.Future[_T]:
        """A future for op(*args), retried each time sock is readable until it is ready."""
        fut = self.create_future()
        fd = sock.fileno()
        # Edge-triggered and left in place when the wait ends (the call was tried first):
        # the next wait on the same socket costs no system call (Kernel._wait_sock).
        handle = self._wait_sock_readable(sock, fd, self._on_ready, (fd, fut, op, args))
        fut.add_done_callback(functools.partial(self._on_reader_done, fd, handle))
        _sockio.claim_fd(sock, fut)
        return fut

    def _sendall_when_writable(
        self, sock: socket.socket, data: Any, sent: int
    ) -> asyncio.Future[None]:
        """A future for sending the rest of data (`sent` bytes of it went already), one
        send() each time sock is writable."""
        fut = self.create_future()
        fd = sock.fileno()
        pending = _PendingSend(memoryview(data), sent)
        handle = self._add_writer(fd, self._on_sendall_writable, (fut, sock, pending))
        fut.add_done_callback(functools.partial(self._on_writer_done, fd, handle))
        _sockio.claim_fd(sock, fut)
        return fut

    def _retry_when_writable(
        self, sock: socket.socket, op: Callable[[Unpack[_Ts]], _T], args: tuple[*_Ts]
    ) -> asyncio.Future[_T]:
        """A future for op(*args), retried each time sock is writable until it is ready."""
        fut = self.create_future()
        fd = sock.fileno()
        handle = self._add_writer(fd, self._on_ready, (fd, fut, op, args))
        fut.add_done_callback(functools.partial(self._on_writer_done, fd, handle))
        _sockio.claim_fd(sock, fut)
        return fut

    # -- private: connecting and resolving ------------------------------------------------

    async def _resolve_for_connect(self, sock: socket.socket, address: Any) -> Any:
        # asyncio's _ensure_resolved: an IP literal is used as it is; anything else is the
        # first answer of getaddrinfo for the socket's family, type and protocol.
        host, port = address[:2]
        literal = _ip_literal_address(host, port, sock.family, sock.type, sock.proto, *address[2:])
        if literal is not None:
            return literal
        infos = await self.getaddrinfo(
            host, port, family=sock.family, type=sock.type, proto=sock.proto, flags=0
        )
        if not infos:
            raise OSError(f"getaddrinfo({host!r}) returned empty list")
        return infos[0][4]

    def _getaddrinfo_logged(
        self, host: Any, port: Any, family: int, type: int, proto: int, flags: int
    ) -> _AddrInfo:
        # Debug mode's query, run in the executor: asyncio's log lines around the lookup.
        query = _describe_query(host, port, family, type, proto, flags)
        logger.debug("Get address info %s", query)
        t0 = self.time()
        infos = socket.getaddrinfo(host, port, family, type, proto, flags)
        self._log_getaddrinfo_result(query, self.time() - t0, infos)
        return infos

    def _log_getaddrinfo_result(self, query: str, seconds: float, infos: _AddrInfo) -> None:
        message = f"Getting address info {query} took {seconds * 1e3:.3f}ms: {infos!r}"
        if seconds >= self.slow_callback_duration:
            logger.info(message)
        else:
            logger.debug(message)

    # -- private: sendfile ----------------------------------------------------------------

    async def _sock_sendfile_native(
        self, sock: socket.socket, file: IO[bytes], offset: int, count: int | None
    ) -> int:
        try:
            fileno = file.fileno()
        except (AttributeError, io.UnsupportedOperation):
            raise SendfileNotAvailableError("not a regular file") from None
        try:
            file_size = os.fstat(fileno).st_size
        except OSError:
            raise SendfileNotAvailableError("not a regular file") from None
        # asyncio's rule: without a count, one call may send the whole file; an empty file
        # (or a pipe, whose st_size is 0) sends nothing.
        blocksize = count if count else file_size
        if not blocksize:
            return 0
        job = _SendfileJob(sock, fileno, offset, count, blocksize)
        try:
            if job.send_some():
                job.update_file_position()
                return job.total_sent
        except _NOT_READY:
            pass
        except OSError as exc:
            job.update_file_position()
            raise job.failure(exc) from None
        except BaseException:
            job.update_file_position()
            raise
        # One sendfile() per writability from now on, so that a fast reader of a large
        # file does not keep the loop in this callback.
        job.registered = True
        fut = self.create_future()
        fd = sock.fileno()
        handle = self._add_writer(fd, self._on_sendfile_writable, (fut, job))
        fut.add_done_callback(functools.partial(self._on_sendfile_done, fd, handle, job))
        _sockio.claim_fd(sock, fut)
        result: int = await fut
        return result

    async def _sock_sendfile_fallback(
        self, sock: socket.socket, file: Any, offset: int, count: int | None
    ) -> int:
        # asyncio's fallback, block by block: read in the default executor (a regular
        # file's read may block), send with sock_sendall. As in asyncio, offset 0 means
        # "from the current position" here: the file is only sought for a non-zero offset.
        if offset:
            file.seek(offset)
        readbuffer = constants.SENDFILE_FALLBACK_READBUFFER_SIZE
        blocksize = min(count, readbuffer) if count else readbuffer
        buf = bytearray(blocksize)
        total_sent = 0
        try:
            while True:
                if count:
                    blocksize = min(count - total_sent, blocksize)
                    if blocksize <= 0:
                        break
                view = memoryview(buf)[:blocksize]
                read = await self.run_in_executor(None, file.readinto, view)
                if not read:
                    break  # end of file
                await self.sock_sendall(sock, view[:read])
                total_sent += read
            return total_sent
        finally:
            if total_sent > 0 and hasattr(file, "seek"):
                file.seek(offset + total_sent)

    # -- callbacks fired by the kernel ----------------------------------------------------

    def _on_ready(
        self,
        fd: int,
        fut: asyncio.Future[Any],
        op: Callable[..., Any],
        args: tuple[Any, ...],
    ) -> None:
        if fut.done():
            # Cancelled, with this call already queued: the done callback has removed us.
            return
        try:
            result = op(*args)
        except _NOT_READY:
            # A spurious wake-up: wait on. An edge-triggered registration needs nothing (the
            # next data brings the next edge); a one-shot one (the wait took over a
            # pollable's on the same fd, and its mode) must be re-armed.
            self._rearm(fd)
            return
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            fut.set_exception(exc)
        else:
            fut.set_result(result)

    def _on_sendall_writable(
        self, fut: asyncio.Future[None], sock: socket.socket, pending: _PendingSend
    ) -> None:
        if fut.done():
            return
        try:
            sent = sock.send(pending.view[pending.sent :])
        except _NOT_READY:
            return
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            fut.set_exception(exc)
            return
        pending.sent += sent
        if pending.sent == len(pending.view):
            fut.set_result(None)

    def _on_connect_writable(
        self, fut: asyncio.Future[None], sock: socket.socket, address: Any
    ) -> None:
        if fut.done():
            return
        try:
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err != 0:
                raise OSError(err, f"Connect call failed {address}")
        except _NOT_READY:
            pass
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            fut.set_exception(exc)
        else:
            fut.set_result(None)
        finally:
            # As in sock_connect: the error's traceback holds this frame.
            del fut

    def _on_sendfile_writable(self, fut: asyncio.Future[int], job: _SendfileJob) -> None:
        if fut.done():
            return
        try:
            finished = job.send_some()
        except _NOT_READY:
            return
        except OSError as exc:
            fut.set_exception(job.failure(exc))
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            fut.set_exception(exc)
        else:
            if finished:
                fut.set_result(job.total_sent)

    # Done callbacks of the operations' futures: the only places their registrations go.

    def _on_reader_done(self, fd: int, handle: Handle, fut: asyncio.Future[Any]) -> None:
        if not handle.cancelled():
            self._remove_reader(fd)

    def _on_writer_done(self, fd: int, handle: Handle, fut: asyncio.Future[Any]) -> None:
        if not handle.cancelled():
            self._remove_writer(fd)

    def _on_sendfile_done(
        self, fd: int, handle: Handle, job: _SendfileJob, fut: asyncio.Future[int]
    ) -> None:
        if not handle.cancelled():
            self._remove_writer(fd)
        # Also when cancelled: the file position says how far the transfer got.
        job.update_file_position()
