"""cqloop._worker_listener: the listening socket of cqloop.workers' prefork workers.

Owns `Listener`: serve()'s choice among port, sock and path, the socket the supervisor makes
for it, the socket each worker serves on, and closing (and unlinking a Unix socket's path)
at the end. Only cqloop.workers calls in: `Listener.make` and `close` in the supervisor,
`for_worker` in a worker just after fork.

With reuse_port (the default where SO_REUSEPORT exists, for TCP) the supervisor binds a
socket with SO_REUSEPORT to reserve the address and never listens on it; each worker binds
and listens on its own socket to that address, and the kernel spreads connections over
them. Otherwise (reuse_port=False, a Unix socket `path`, or a `sock` passed in) the
supervisor listens and every worker accepts on the inherited socket. With SO_REUSEPORT,
connections queued on a worker that dies are reset; with the inherited socket they wait
for another worker.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from typing import Any, Literal


class Listener:
    """The address workers serve. Either the socket every worker inherits (`shared`), or a
    reservation with SO_REUSEPORT that each worker binds a socket of its own next to."""

    def __init__(self, sock: socket.socket, *, reuse_port: bool, backlog: int) -> None:
        self.sock = sock
        self.reuse_port = reuse_port
        self.backlog = backlog
        self.unix_path: str | None = None
        self.owned = True

    @classmethod
    def make(
        cls,
        *,
        host: str | None,
        port: int | None,
        sock: socket.socket | None,
        path: str | None,
        reuse_port: bool | Literal["auto"],
        backlog: int,
    ) -> Listener:
        given = [
            name for name, v in (("sock", sock), ("path", path), ("port", port)) if v is not None
        ]
        if len(given) != 1:
            raise ValueError(f"serve() needs exactly one of port, sock or path, not {given}")
        if host is not None and port is None:
            raise ValueError("host needs a port")
        if reuse_port not in (True, False, "auto"):
            raise ValueError(f"reuse_port must be True, False or 'auto', not {reuse_port!r}")
        has_reuse_port = hasattr(socket, "SO_REUSEPORT")
        if sock is not None or path is not None:
            if reuse_port is True:
                raise ValueError("reuse_port=True needs host and port (a TCP address)")
            if sock is not None:
                if sock.type != socket.SOCK_STREAM:
                    raise ValueError(f"a stream socket was expected, got {sock!r}")
                listener = cls(sock, reuse_port=False, backlog=backlog)
                listener.owned = False
                return listener
            assert path is not None
            unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                with contextlib.suppress(FileNotFoundError):
                    if stat.S_ISSOCK(os.lstat(path).st_mode):
                        os.unlink(path)  # a stale socket of an earlier run
                unix.bind(path)
                unix.listen(backlog)
            except BaseException:
                unix.close()
                raise
            listener = cls(unix, reuse_port=False, backlog=backlog)
            listener.unix_path = path
            return listener
        if reuse_port is True and not has_reuse_port:
            raise ValueError("reuse_port=True: this system has no SO_REUSEPORT")
        use_reuse_port = has_reuse_port and reuse_port is not False
        infos = socket.getaddrinfo(
            host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
        )
        family, type_, proto, _, address = infos[0]
        tcp = socket.socket(family, type_, proto)
        try:
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if use_reuse_port:
                tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            tcp.bind(address)
            if not use_reuse_port:
                tcp.listen(backlog)
        except BaseException:
            tcp.close()
            raise
        return cls(tcp, reuse_port=use_reuse_port, backlog=backlog)

    def address(self) -> Any:
        return self.sock.getsockname()

    def for_worker(self) -> socket.socket:
        """In a worker: the socket it serves on."""
        if not self.reuse_port:
            return self.sock
        reservation = self.sock
        own = socket.socket(reservation.family, reservation.type, reservation.proto)
        try:
            own.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            own.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if reservation.family == socket.AF_INET6:
                v6only = reservation.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
                own.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
            own.bind(reservation.getsockname())
            own.listen(self.backlog)
        except BaseException:
            own.close()
            raise
        reservation.close()
        return own

    def close(self) -> None:
        if self.owned:
            self.sock.close()
        if self.unix_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.unix_path)
