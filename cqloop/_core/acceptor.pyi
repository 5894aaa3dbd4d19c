import asyncio
import socket
from collections.abc import Callable
from typing import Any

from cqloop._core.kernel import Kernel

class Acceptor:
    def __init__(
        self,
        loop: Kernel,
        server: Any,
        sock: socket.socket,
        family: int,
        kind: int,
        proto: int,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        transport_class: type,
        backlog: int,
        clients: set[Any],
    ) -> None: ...
    def __call__(self) -> None: ...
    def stop(self) -> None: ...
