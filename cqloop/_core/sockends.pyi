from socket import socket
from typing import Any

from cqloop._core.watchers import FdWatcher

class SocketEnds(FdWatcher):
    _sock: socket | None
    _open: bool
    _extra: dict[str, Any]
    def socket_object(self) -> socket | None: ...
    def fill_socket_info(self) -> None: ...
