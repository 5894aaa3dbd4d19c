"""Stub for cqloop._core.cqsock: the compiled half of a cq socket (cqloop/_cqsocket.py's
Socket derives from SocketCore; see cqsock.pyx for what runs compiled and why)."""

import asyncio
import enum
from typing import Any, Final, Self

from cqloop._core.cqbuf import InputBuffer
from cqloop._core.cqoutbuf import OutputBuffer

INPUT_HIGH_WATER_BYTES: Final[int]

class SocketState(enum.Enum):
    NEW = "new"
    CONNECTED = "connected"
    READY = "ready"
    LISTENING = "listening"
    CLOSED = "closed"

class _Handled(Exception):
    value: Any
    def __init__(self, value: Any) -> None: ...

class SocketCore:
    _ibuf: InputBuffer
    _obuf: OutputBuffer
    _fd: int
    _state: SocketState
    _rerror: OSError | None
    _werror: OSError | None
    _tls: Any
    _raw_out: bytearray
    _autoflush: bool
    _timeout: float | None
    _events: str | None
    _receiving: asyncio.AbstractEventLoop | None
    _input_waiters: list[asyncio.Future[bool]]
    _input_fresh: bool
    _recv_error: OSError | None
    _eof_in: bool
    _sent: int
    _rcvd: int
    def _sticky(self, channel: str) -> OSError | None: ...
    def _set_sticky(self, channel: str, error: OSError | None) -> None: ...
    async def read(self, *formats: str | int) -> Any: ...
    async def write(self, *data: bytes | bytearray | memoryview | str) -> Self: ...
    def _tls_fill(self) -> None: ...
    def _on_readable(self) -> None: ...
    def _events_past_input(self) -> None: ...
    def _wake_input_waiters(self) -> None: ...

def _to_bytes(data: Any) -> bytes: ...
def _fills_to_maxline(fmt: object) -> bool: ...
