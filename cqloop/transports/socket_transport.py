"""cqloop.transports.socket_transport: SocketTransport, the TCP and Unix stream transport.

The read and write paths are compiled (cqloop/_core/stream.pyx, StreamTransport); this
class adds what is policy: the extra info asyncio records, TCP_NODELAY, the three
callbacks that start a connection and the repr (the ResourceWarning for a transport
dropped unclosed is the engine's finaliser, so that closed ones cost no Python call when
they go). Being a Python class, its instances take attributes: test suites that
replace `transport.write` on an instance (aiohttp's, uvicorn's) work.
"""

from __future__ import annotations

import asyncio
import socket
from asyncio import constants
from typing import Any

from cqloop._core.stream import StreamTransport
from cqloop._core.transportmethods import bind_engine_methods
from cqloop.transports.sockutil import set_nodelay

__all__ = ["SocketTransport"]


def _set_result_unless_cancelled(fut: asyncio.Future[None], result: None) -> None:
    if not fut.cancelled():
        fut.set_result(result)


# The extra info taken from the socket, made on demand (see __init__).
_SOCKET_INFO = frozenset(("socket", "sockname", "peername"))


class SocketTransport(asyncio.Transport):
    """A connected stream socket as an asyncio transport.

    A real asyncio.Transport subclass (CPython's tests and some libraries check), driven by
    a compiled StreamTransport engine (`_core`). asyncio.Transport has a fixed instance
    layout, so the engine cannot be a base class; it is held in a slot instead, where the
    per-message methods (write, writelines, is_closing, ...: C method descriptors the
    engine's module puts on this class, bind_engine_methods below) find it at a fixed
    offset. Instances keep a __dict__ (test suites replace `transport.write` on one).
    """

    # `_loop` a slot too: set in the instance's __dict__ it made that dict (a GC-tracked
    # object) for every connection.
    __slots__ = ("__dict__", "__weakref__", "_core", "_loop")

    _extra: dict[str, Any]  # set by BaseTransport.__init__ (a slot there)
    _core: StreamTransport
    _loop: Any

    # loop.sendfile may hand the socket to os.sendfile once the write buffer is empty.
    _sendfile_compatible = constants._SendfileMode.TRY_NATIVE

    def __init__(
        self,
        loop: Any,
        sock: socket.socket,
        protocol: asyncio.BaseProtocol,
        waiter: asyncio.Future[None] | None = None,
        extra: dict[str, Any] | None = None,
        server: Any = None,
        peername: Any = None,
    ) -> None:
        # "socket", "sockname" and "peername" are filled in when first asked for, or
        # before the socket closes (the engine's fill_socket_info), not here: an idle
        # connection keeps no copy of what the kernel knows (about 200 bytes each).
        # `peername` is the address accept() gave (a server's connections), kept by the
        # engine until then.
        info = {} if extra is None else dict(extra)
        set_nodelay(sock)
        self._loop = loop
        self._core = core = StreamTransport(loop, self, sock, protocol, info, server, peername)
        # The engine's dict: get_extra_info (asyncio's) reads it.
        super().__init__(core._extra)
        if server is not None:
            server._attach(self)
        # asyncio's order: connection_made, then reading starts, then the waiter is woken.
        context = core._context
        loop.call_soon(core._connection_made, context=context)
        loop.call_soon(core._start_reading, context=context)
        if waiter is not None:
            loop.call_soon(_set_result_unless_cancelled, waiter, None, context=context)

    # A server's connections are made without __init__ (acceptor.pyx, Acceptor._make_owner).

    # -- asyncio.Transport, delegated to the engine (the per-message methods: see the
    # class docstring) ---------------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        extra = self._extra
        if name not in extra and name in _SOCKET_INFO:
            self._core.fill_socket_info()
        return extra.get(name, default)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._core.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._core.set_write_buffer_limits(high, low)

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self._core.write_eof()

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._core.get_protocol()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._core.set_protocol(protocol)

    # -- for loop.sendfile ----------------------------------------------------------------

    @property
    def _sock(self) -> socket.socket | None:
        return self._core.socket_object()

    @property
    def _protocol_paused(self) -> bool:
        return self._core._protocol_paused

    def _make_empty_waiter(self) -> asyncio.Future[None]:
        return self._core._make_empty_waiter()

    def _reset_empty_waiter(self) -> None:
        self._core._reset_empty_waiter()

    # -- the rest -----------------------------------------------------------------------

    def __repr__(self) -> str:
        core = self._core
        info = [type(self).__name__]
        if not core._open:
            info.append("closed")
        elif core.is_closing():
            info.append("closing")
        info.append(f"fd={core.fd}")
        loop = self._loop
        if loop is not None and not loop.is_closed() and core._open:
            info.append("read=polling" if core._is_polling(False) else "read=idle")
            state = "polling" if core._is_polling(True) else "idle"
            info.append(f"write=<{state}, bufsize={core.get_write_buffer_size()}>")
        return "<{}>".format(" ".join(info))


bind_engine_methods(SocketTransport)
