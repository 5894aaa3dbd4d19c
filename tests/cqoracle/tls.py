"""TLS in the differential harness: the socket under test talks TLS to a scripted peer.

Certificates: one trustme CA and a certificate for "localhost" and 127.0.0.1, made once
per test session (`certificates()`), written as PEM files that the Lua side loads with
luaossl (openssl.x509.store for the CA; the peer, in Python, holds the key).

The socket under test gets into TLS by starttls() (StartTLS step): cqueues 20200726's
socket.connect{} has no TLS option, so a Lua case connects and calls
`s:starttls(ctx)`; the Python half does the same, or (TLSSocketCase.tls_at_connect)
passes the context to connect() and reports the StartTLS step's "ok" from the
connect. Plaintext steps may come first (STARTTLS after a plaintext exchange).

TLSPeer is the harness's Peer speaking TLS, in a thread, over an ssl.SSLObject on memory
BIOs, so the test decides what goes on the wire in which TCP segment. It is the TLS server,
or the client where the socket under test takes the server's part
(TLSSocketCase.tls_server: StartTLSServer, luaossl loading the key and certificate).
Script steps, besides the plain ones (bytes, Expect, EOF, SIGNAL; no RESET):
- STARTTLS: the handshake (as the server: bytes the client sent with its ClientHello are
  kept); HelloAfter(data), as the client: data and the ClientHello in one send;
- after it, bytes are sent as TLS records (one write: records of up to 16 KiB back to
  back, in one send), Expect waits for plaintext;
- Records(data, size): data in size-byte records, each record its own send;
- Segments(data, size): data as records (one write), the ciphertext sent size bytes per
  send, so records are cut across TCP segments;
- CloseNotify(data): data's records and our close_notify in one TCP segment (alone
  without data); CutRecord(data, keep): the first `keep` bytes of data's record, then
  nothing (a FIN after it is truncation); Raw(data): bytes that are not a record.
The peer's report: the plaintext it received (before and after STARTTLS), and, when the
case asks (report_end), how the stream from the socket under test ended: "close_notify",
"fin" (a FIN without close_notify), "reset", or "alert" (the socket under test sent an
alert, or otherwise broke the session).

Errors from TLS itself have no errno: both sides report them as {"error": "TLS"}
(Python's ssl.SSLError; what cqueues throws for them names OpenSSL's reason, "error:...:SSL
routines::wrong version number", or says "Unknown TLS/SSL error").
"""

from __future__ import annotations

import atexit
import shutil
import socket
import ssl
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.cqoracle import (
    EOF,
    SIGNAL,
    Expect,
    Peer,
    PeerStep,
    Recorder,
    SocketCase,
    Step,
    WaitPeer,
    lua_repr,
)

TLS_ERROR = {"error": "TLS"}


# -- certificates -----------------------------------------------------------------------


@dataclass(frozen=True)
class Certificates:
    ca_pem: str  # the CA's certificate
    chain_pem: str  # the server's key and certificate chain
    cert_pem: str  # the server's certificate alone (for luaossl)
    key_pem: str  # the server's key alone (for luaossl)

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.chain_pem)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_pem)


_CERTIFICATES: list[Certificates] = []


def certificates() -> Certificates:
    """The session's CA and server certificate, as PEM files (removed at exit)."""
    if not _CERTIFICATES:
        import trustme

        ca = trustme.CA()
        leaf = ca.issue_cert("localhost", "127.0.0.1")
        folder = Path(tempfile.mkdtemp(prefix="cqoracle-tls-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        certs = Certificates(
            *(str(folder / f"{name}.pem") for name in ("ca", "chain", "cert", "key"))
        )
        ca.cert_pem.write_to_path(certs.ca_pem)
        leaf.private_key_and_cert_chain_pem.write_to_path(certs.chain_pem)
        leaf.cert_chain_pems[0].write_to_path(certs.cert_pem)
        leaf.private_key_pem.write_to_path(certs.key_pem)
        _CERTIFICATES.append(certs)
    return _CERTIFICATES[0]


# -- the peer -----------------------------------------------------------------------------


class _TLSMarker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


STARTTLS = _TLSMarker("STARTTLS")  # peer step: the server handshake


@dataclass(frozen=True)
class CloseNotify:
    """Peer step (under TLS): data's records and our close_notify, in one send."""

    data: bytes = b""


@dataclass(frozen=True)
class Raw:
    """Peer step (under TLS): bytes on the wire as they are (not a record)."""

    data: bytes


@dataclass(frozen=True)
class Records:
    """Peer step (under TLS): data in size-byte records, one send each."""

    data: bytes
    size: int


@dataclass(frozen=True)
class Segments:
    """Peer step (under TLS): data as records, the ciphertext sent size bytes per send."""

    data: bytes
    size: int


@dataclass(frozen=True)
class CutRecord:
    """Peer step (under TLS): only the first `keep` bytes of data's record."""

    data: bytes
    keep: int


@dataclass(frozen=True)
class HelloAfter:
    """Peer step, as the TLS client: data, then the ClientHello in the same send, then the
    rest of the handshake (the socket under test must push the hello back into TLS)."""

    data: bytes


TLSPeerStep = (
    PeerStep | _TLSMarker | Records | Segments | CutRecord | CloseNotify | Raw | HelloAfter
)


class TLSPeer(Peer):
    """Peer whose script may switch to TLS (see the module docstring)."""

    def __init__(self, script: Sequence[TLSPeerStep], *, client: bool = False) -> None:
        self.tls: ssl.SSLObject | None = None
        self.end: str | None = None
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        # The peer takes the client's part when the socket under test is the TLS server.
        self._client = client
        certs = certificates()
        self._context = certs.client_context() if client else certs.server_context()
        super().__init__(script)  # type: ignore[arg-type]

    def _run(self, conn: socket.socket) -> bool:
        expected_from = 0
        for step in self.script:
            if isinstance(step, Expect):
                while (at := self.received.find(step.data, expected_from)) < 0:
                    if not self._receive(conn):
                        return False
                expected_from = at + len(step.data)
            elif isinstance(step, HelloAfter):
                # The plaintext and the ClientHello in one TCP segment.
                self.tls = self._wrap()
                try:
                    self.tls.do_handshake()
                except ssl.SSLWantReadError:
                    pass
                conn.sendall(step.data + self._outgoing.read())
                if not self._handshake(conn):
                    return False
                expected_from = len(self.received)
            elif step is STARTTLS:
                # What came after the last expected plaintext is the ClientHello.
                self._incoming.write(bytes(self.received[expected_from:]))
                del self.received[expected_from:]
                if not self._handshake(conn):
                    return False
                expected_from = len(self.received)
            elif isinstance(step, bytes):
                conn.sendall(step if self.tls is None else self._records(step))
            elif isinstance(step, Records):
                for i in range(0, len(step.data), step.size):
                    conn.sendall(self._records(step.data[i : i + step.size]))
            elif isinstance(step, Segments):
                wire = self._records(step.data)
                for i in range(0, len(wire), step.size):
                    conn.sendall(wire[i : i + step.size])
            elif isinstance(step, CutRecord):
                conn.sendall(self._records(step.data)[: step.keep])
            elif isinstance(step, CloseNotify):
                wire = self._records(step.data) if step.data else b""
                try:
                    self.tls.unwrap()  # type: ignore[union-attr]
                except ssl.SSLWantReadError:
                    pass  # queued; the other side's has not come
                conn.sendall(wire + self._outgoing.read())
            elif isinstance(step, Raw):
                conn.sendall(step.data)
            elif step is EOF:
                conn.shutdown(socket.SHUT_WR)
            elif step is SIGNAL:
                self.signalled.set()
            else:
                raise TypeError(f"TLSPeer cannot run {step!r}")
        return True

    def _wrap(self) -> ssl.SSLObject:
        if self._client:
            return self._context.wrap_bio(
                self._incoming, self._outgoing, server_hostname="localhost"
            )
        return self._context.wrap_bio(self._incoming, self._outgoing, server_side=True)

    def _handshake(self, conn: socket.socket) -> bool:
        if self.tls is None:
            self.tls = self._wrap()
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                conn.sendall(self._outgoing.read())
                chunk = conn.recv(65536)
                if not chunk:
                    self.end = "fin"
                    return False
                self._incoming.write(chunk)
            except ssl.SSLError:
                self.end = "alert"
                conn.sendall(self._outgoing.read())
                return False
        conn.sendall(self._outgoing.read())
        return True

    def _records(self, data: bytes) -> bytes:
        assert self.tls is not None, "TLS data before STARTTLS"
        self.tls.write(data)
        return self._outgoing.read()

    def _receive(self, conn: socket.socket) -> bool:
        """Take what has come into `received` (decrypted under TLS), reading the
        socket only when the session held nothing; False once the stream ended
        (self.end says how)."""
        if self.tls is not None:
            size = len(self.received)
            while True:
                try:
                    chunk = self.tls.read(65536)
                except ssl.SSLWantReadError:
                    break
                except ssl.SSLZeroReturnError:
                    self.end = "close_notify"
                    return False
                except ssl.SSLError:
                    self.end = "alert"
                    return False
                if not chunk:
                    self.end = "close_notify"
                    return False
                self.received += chunk
            if len(self.received) > size:
                return True
        try:
            raw = conn.recv(65536)
        except ConnectionResetError:
            self.end = "reset"
            return False
        if not raw:
            self.end = "fin"
            return False
        if self.tls is None:
            self.received += raw
        else:
            self._incoming.write(raw)
        return True

    def _drain(self, conn: socket.socket) -> None:
        while self.end is None and self._receive(conn):
            pass


# -- the socket under test ------------------------------------------------------------------


LUA_CONTEXT = """local ssl_context = require "openssl.ssl.context"
local x509_store = require "openssl.x509.store"
local tls_ctx = ssl_context.new("TLS", false)
local tls_store = x509_store.new()
tls_store:add({ca})
tls_ctx:setStore(tls_store)
tls_ctx:setVerify(ssl_context.VERIFY_PEER)
"""


LUA_SERVER_CONTEXT = """local ssl_context = require "openssl.ssl.context"
local x509 = require "openssl.x509"
local pkey = require "openssl.pkey"
local function slurp(path)
    local f = assert(io.open(path))
    local text = f:read("a")
    f:close()
    return text
end
local tls_ctx = ssl_context.new("TLS", true)
tls_ctx:setCertificate(x509.new(slurp({cert})))
tls_ctx:setPrivateKey(pkey.new(slurp({key})))
"""


@dataclass(frozen=True)
class StartTLS:
    """starttls() with the session's client context (the CA's trust, the peer's name
    checked by the Python half: 127.0.0.1 is in the certificate)."""

    def lua(self) -> str:
        return 'step("starttls", "ok", s.starttls, s, tls_ctx)'

    async def python(self, s: Any, out: Recorder) -> None:
        context = certificates().client_context()
        await out.call("starttls", s.starttls(context), ok=True)


@dataclass(frozen=True)
class StartTLSServer:
    """starttls() as the TLS server, with the session's server context and no other word:
    both sides take the server's part from the context (cqueues always does; cq sockets
    for a context made for one side)."""

    def lua(self) -> str:
        return 'step("starttls", "ok", s.starttls, s, tls_ctx)'

    async def python(self, s: Any, out: Recorder) -> None:
        await out.call("starttls", s.starttls(certificates().server_context()), ok=True)


@dataclass
class TLSSocketCase(SocketCase):
    """A SocketCase against a TLSPeer, with StartTLS steps; `report_end` adds how the
    stream from the socket under test ended to the peer's report ("peer end"). With
    tls_at_connect, the Python half's socket is made by connect(..., context=) and its
    first step must be StartTLS (reported "ok" once connect() finished the handshake)."""

    report_end: bool = False
    tls_at_connect: bool = False
    # The socket under test is the TLS server (StartTLSServer), the peer the client.
    tls_server: bool = False

    def make_peer(self) -> Peer:
        return TLSPeer(self.peer, client=self.tls_server)

    def peer_report(self, peer: Peer, received: bytes) -> list[list[Any]]:
        records = super().peer_report(peer, received)
        if self.report_end:
            assert isinstance(peer, TLSPeer)
            records.append(["peer end", [peer.end]])
        return records

    def lua(self, port: int) -> str:
        certs = certificates()
        if self.tls_server:
            context = LUA_SERVER_CONTEXT.format(
                cert=lua_repr(certs.cert_pem), key=lua_repr(certs.key_pem)
            )
        else:
            context = LUA_CONTEXT.format(ca=lua_repr(certs.ca_pem))
        return context + super().lua(port)

    async def python(self, peer: Peer, out: Recorder) -> None:
        from cqloop import socket as cqsocket

        steps: list[Step] = list(self.steps)
        if self.tls_at_connect:
            assert isinstance(steps[0], StartTLS), f"{self.name}: the first step is not StartTLS"
            s = cqsocket.connect("127.0.0.1", peer.port, context=certificates().client_context())
            await out.call("starttls", s.connect(), ok=True)
            steps = steps[1:]
        else:
            s = cqsocket.connect("127.0.0.1", peer.port)
        try:
            if not self.tls_at_connect:
                await s.connect()
            for step in steps:
                if isinstance(step, WaitPeer):
                    await step.python(s, out, peer)
                else:
                    await step.python(s, out)  # type: ignore[union-attr]
        finally:
            s.close()


__all__ = [
    "STARTTLS",
    "TLS_ERROR",
    "CloseNotify",
    "CutRecord",
    "HelloAfter",
    "Raw",
    "Records",
    "Segments",
    "StartTLS",
    "StartTLSServer",
    "TLSPeer",
    "TLSSocketCase",
    "certificates",
]
