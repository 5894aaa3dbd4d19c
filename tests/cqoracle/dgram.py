"""The differential harness for datagram cq sockets: Lua's cqueues against cqloop.socket.

A DgramCase is a SocketCase (tests/cqoracle/__init__.py) whose socket under test is a
connected UDP socket, `socket.connect{host=, port=, type=socket.SOCK_DGRAM}` in Lua and
`socket.connect(host, port, type=SOCK_DGRAM)` in Python, talking to a DgramPeer: a plain
blocking UDP socket on 127.0.0.1, run by the test in a thread. The socket under test
first sends one datagram ("hello", mode "n"), from which the peer learns its address;
then both run their script. Peer steps:

- bytes: send them as one datagram (b"" is a zero-length datagram);
- Datagrams(n): wait until n datagrams (not counting the hello) have arrived;
- SIGNAL: let a WaitPeer step of the socket under test go on (datagrams sent before it
  are in the socket's receive queue by then: loopback delivers at once);
- GONE: close the peer's socket, so that what the socket under test sends next is
  refused (an ICMP port unreachable, reported as ECONNREFUSED by a later call).

The peer records every datagram it received; the report ends with them as "peer" (one
string per datagram), so datagram boundaries are compared, not only bytes.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tests.cqoracle import CASE_TIMEOUT_S, SIGNAL, SocketCase, _Marker

GONE = _Marker("GONE")  # peer step: close the peer's socket (later sends are refused)
HELLO = b"hello"  # what the socket under test sends first, so the peer learns its address


@dataclass(frozen=True)
class Datagrams:
    """Peer step: wait until this many datagrams (after the hello) have arrived."""

    count: int


DgramPeerStep = bytes | Datagrams | _Marker


class DgramPeer:
    """The scripted UDP peer (see the module docstring)."""

    def __init__(self, script: Sequence[DgramPeerStep]) -> None:
        self.script = list(script)
        self.received: list[bytes] = []
        self.error: BaseException | None = None
        self.signalled = threading.Event()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(CASE_TIMEOUT_S)
        self.port = self._sock.getsockname()[1]
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="cqoracle-dgram", daemon=True)
        self._thread.start()

    def join(self) -> list[bytes]:
        """Stop (the socket under test is closed) and return what arrived."""
        self._done.set()
        self._thread.join(CASE_TIMEOUT_S)
        self.signalled.set()
        if self._sock.fileno() >= 0 and self.error is None:
            # What the socket under test sent last is queued here (loopback delivers at
            # once): take it too.
            self._sock.setblocking(False)
            while True:
                try:
                    self.received.append(self._sock.recv(65536))
                except BlockingIOError:
                    break
        self._sock.close()
        if self._thread.is_alive():
            raise AssertionError("the datagram peer did not finish its script")
        if self.error is not None:
            raise AssertionError(f"the datagram peer failed: {self.error!r}")
        return list(self.received)

    def _serve(self) -> None:
        try:
            hello, address = self._sock.recvfrom(65536)
            if hello != HELLO:
                raise AssertionError(f"the first datagram is {hello!r}, not {HELLO!r}")
            self._sock.connect(address)
            self._run()
            # Keep what arrives until the case is over.
            self._sock.settimeout(0.05)
            while not self._done.is_set() and self._sock.fileno() >= 0:
                self._take()
        except OSError as exc:
            if self._sock.fileno() >= 0 and not self._done.is_set():
                self.error = exc

    def _take(self) -> None:
        try:
            self.received.append(self._sock.recv(65536))
        except TimeoutError:
            pass

    def _run(self) -> None:
        for step in self.script:
            if isinstance(step, bytes):
                self._sock.send(step)
            elif isinstance(step, Datagrams):
                self._sock.settimeout(CASE_TIMEOUT_S)
                while len(self.received) < step.count:
                    self.received.append(self._sock.recv(65536))
            elif step is SIGNAL:
                self.signalled.set()
            elif step is GONE:
                self._sock.close()
            else:
                raise TypeError(f"unknown datagram peer step {step!r}")


@dataclass
class DgramCase(SocketCase):
    """A SocketCase whose socket under test is a connected UDP socket, against a
    DgramPeer running `peer` (see the module docstring); the peer's record is one value
    per datagram."""

    peer: Sequence[DgramPeerStep]

    LUA_CONNECT = 'socket.connect{{host = "127.0.0.1", port = {port}, type = socket.SOCK_DGRAM}}'
    LUA_OPENED = f'\n    assert(s:xwrite("{HELLO.decode()}", "n"))'

    def make_peer(self) -> DgramPeer:
        return DgramPeer(self.peer)

    async def open_python(self, peer: Any) -> Any:
        from cqloop import socket as cqsocket

        s = cqsocket.connect("127.0.0.1", peer.port, type=cqsocket.SOCK_DGRAM)
        await s.connect()
        await s.xwrite(HELLO, "n")
        return s

    def peer_values(self, received: Any) -> list[bytes]:
        return list(received)
