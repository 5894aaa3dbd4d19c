"""cq sockets over TLS: bursts of records, every read format, interop, close, bad input.

Certificates come from trustme (one CA for the module, a certificate for "localhost" and
127.0.0.1). The peers are real TLS stacks: stock asyncio's TLS streams (on the loop under
test), Python's blocking ssl sockets in a thread, Debian's `openssl s_client` (a
subprocess on 127.0.0.1), another cq socket, and, where the test
needs exact control of the bytes on the wire (records in one TCP segment, a close_notify
behind data, a FIN or a reset inside a record, garbage), a peer in a thread driving an
ssl.SSLObject over memory BIOs (`WirePeer`). Threads and subprocesses are waited for
with asyncio.to_thread; every socket carries a timeout, so a stall fails the test
instead of hanging it.

Payloads: 1 MB in one write (lines of 1 to 199 bytes, so every format has something
to find), 1,000 short lines back to back, and a mix of both; a MIME-shaped payload
(1,000 header fields, then bodies between boundaries) for the header and boundary
formats. Each is read back whole with one format and compared byte for byte, and the
end of stream after it must read as None with eof() reporting it.
"""

from __future__ import annotations

import asyncio
import random
import select
import socket as pysocket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trustme

from cqloop import socket as cqsocket

HOST = "127.0.0.1"
TIMEOUT = 20.0  # seconds: every wait in this file is bounded by it
SO_LINGER_RESET = struct.pack("ii", 1, 0)  # close() sends RST instead of FIN


def _big_payload(size: int, seed: int = 7) -> bytes:
    rng = random.Random(seed)
    letters = b"0123456789 .,:;-+=()[]"
    table = bytes(letters[i % len(letters)] for i in range(256))
    out = bytearray()
    while len(out) < size:
        out += rng.randbytes(rng.randrange(1, 200)).translate(table) + b"\n"
    return bytes(out)


BIG = _big_payload(1 << 20)
LINES = b"".join(b"line %d\n" % i for i in range(1000))
MIX = LINES[:4000] + BIG[: 256 * 1024] + LINES[4000:]
PAYLOADS = {"1MB": BIG, "lines": LINES, "mix": MIX}
MIME = (
    b"".join(b"X-Field-%d: value %d\n" % (i, i) for i in range(1000))
    + b"\n"
    + BIG[:200_000]
    + b"\n--frontier\n"
    + LINES
    + b"\n--frontier--\n"
)
STREAM_FORMATS = ["*l", "*L", "*a", 5000, -4096]
MIME_FORMATS = ["*h", "*H", "--frontier"]


# -- certificates ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def cert(ca: trustme.CA) -> trustme.LeafCert:
    return ca.issue_cert("localhost", "127.0.0.1")


@pytest.fixture
def server_ctx(cert: trustme.LeafCert) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    return ctx


@pytest.fixture
def client_ctx(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


@pytest.fixture(scope="module")
def pem_files(ca: trustme.CA, cert: trustme.LeafCert, tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("pem")
    paths = {"ca": str(folder / "ca.pem"), "chain": str(folder / "chain.pem")}
    ca.cert_pem.write_to_path(paths["ca"])
    cert.private_key_and_cert_chain_pem.write_to_path(paths["chain"])
    return paths


# -- reading a whole stream back in one format -----------------------------------------------


async def read_back(con: cqsocket.Socket, fmt: str | int) -> bytes:
    """Everything up to the end of stream, read with fmt and put back together; checks
    that the end of stream reads as None and that eof() reports it."""
    con.setmode("b", "b")
    if fmt in MIME_FORMATS:
        got = await _read_mime(con, fmt)
    else:
        pieces = []
        while (piece := await con.read(fmt)) is not None:
            assert piece, fmt
            pieces.append(piece + b"\n" if fmt == "*l" else piece)
        got = b"".join(pieces)
    assert await con.read("*a") is None
    assert con.eof("r") == (True,)
    return got


async def _read_mime(con: cqsocket.Socket, fmt: str | int) -> bytes:
    out = bytearray()
    if fmt in ("*h", "*H"):
        while (field := await con.read(fmt)) is not None:
            out += field + b"\n" if fmt == "*h" else field
        out += await con.read("*L")  # the blank line
        out += await con.read(len(MIME) - len(out))
        return bytes(out)
    out += await con.read(MIME.index(b"\n\n") + 2)
    for _ in range(2):
        body = bytearray()
        while (chunk := await con.read(fmt)) is not None:
            body += chunk
        out += body + b"\n" + await con.read("*L")
    return bytes(out)


def _formats_and_payloads() -> list[Any]:
    cases = [
        pytest.param(fmt, name, id=f"{fmt}-{name}") for fmt in STREAM_FORMATS for name in PAYLOADS
    ]
    cases += [pytest.param(fmt, "mime", id=f"{fmt}-mime") for fmt in MIME_FORMATS]
    return cases


def _payload(name: str) -> bytes:
    return MIME if name == "mime" else PAYLOADS[name]


# -- peers -----------------------------------------------------------------------------------


class WirePeer:
    """A TLS peer over a blocking socket, in a thread, that decides which bytes go on
    the wire in which TCP segment (an ssl.SSLObject over memory BIOs)."""

    def __init__(self, sock: pysocket.socket, ctx: ssl.SSLContext, *, server_side: bool):
        self.sock = sock
        sock.settimeout(TIMEOUT)
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        hostname = None if server_side else "localhost"
        self.tls = ctx.wrap_bio(
            self.incoming, self.outgoing, server_side=server_side, server_hostname=hostname
        )

    def handshake(self) -> None:
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.sock.sendall(self.outgoing.read())
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionError("peer closed during the handshake") from None
                self.incoming.write(data)
        self.sock.sendall(self.outgoing.read())

    def wait_for(self, line: bytes) -> None:
        """Read until the plaintext line arrives (so the other side is waiting to read
        when what we send next arrives)."""
        got = b""
        while line not in got:
            try:
                got += self.tls.read(65536)
            except ssl.SSLWantReadError:
                self.incoming.write(self.sock.recv(65536))

    def records(self, data: bytes) -> bytes:
        """data as TLS records, not sent."""
        self.tls.write(data)
        return self.outgoing.read()

    def close_notify(self) -> bytes:
        try:
            self.tls.unwrap()
        except ssl.SSLWantReadError:
            pass
        return self.outgoing.read()

    def read_to_end(self) -> tuple[bytes, str]:
        """Plaintext until the peer's close ("close_notify" or "fin"), or the error."""
        got = bytearray()
        while True:
            try:
                while chunk := self.tls.read(65536):
                    got += chunk
                return bytes(got), "close_notify"  # an SSLObject reads it as b""
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:
                return bytes(got), "close_notify"
            except ssl.SSLError as exc:
                return bytes(got), f"error: {exc}"
            data = self.sock.recv(65536)
            if not data:
                return bytes(got), "fin"
            self.incoming.write(data)


class ThreadListener:
    """A listening socket whose one connection is served by fn(conn) in a thread."""

    def __init__(self, fn: Callable[[pysocket.socket], Any]):
        self.listener = pysocket.create_server((HOST, 0))
        self.listener.settimeout(TIMEOUT)
        self.port = self.listener.getsockname()[1]
        self.fn = fn

    def _serve(self) -> Any:
        conn, _ = self.listener.accept()
        with conn:
            return self.fn(conn)

    def start(self) -> Awaitable[Any]:
        return asyncio.ensure_future(asyncio.to_thread(self._serve))

    def close(self) -> None:
        self.listener.close()

    def __enter__(self) -> ThreadListener:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _client_ctx_for_thread(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


async def _run_thread(fn: Callable[[], Any]) -> Any:
    return await asyncio.wait_for(asyncio.to_thread(fn), TIMEOUT)


def _cq_client(port: int, client_ctx: ssl.SSLContext) -> cqsocket.Socket:
    con = cqsocket.connect(HOST, port, context=client_ctx)
    con.settimeout(TIMEOUT)
    return con


async def _cq_accept(server: cqsocket.Socket) -> cqsocket.Socket:
    con = await server.accept(timeout=TIMEOUT)
    con.settimeout(TIMEOUT)
    return con


def _cq_listen(server_ctx: ssl.SSLContext) -> tuple[cqsocket.Socket, int]:
    server = cqsocket.listen(HOST, 0, context=server_ctx)
    return server, server.localname()[2]


# -- bursts: every record that arrived is read --------------------------------------------------


@pytest.mark.parametrize("size", [60_000, 100_000, 1 << 20])
async def test_records_arriving_in_one_burst_are_all_read(server_ctx, client_ctx, size):
    data = BIG[:size]

    def serve(conn: pysocket.socket) -> None:
        peer = WirePeer(conn, server_ctx, server_side=True)
        peer.handshake()
        peer.wait_for(b"go")
        conn.sendall(peer.records(data))  # every record in one send
        peer.read_to_end()

    with ThreadListener(serve) as listener:
        serving = listener.start()
        async with _cq_client(listener.port, client_ctx) as con:
            await con.write("go\n")
            assert await con.read(size) == data
        await asyncio.wait_for(serving, TIMEOUT)


async def test_two_lines_in_one_segment_are_both_read(server_ctx, client_ctx):
    def serve(conn: pysocket.socket) -> None:
        peer = WirePeer(conn, server_ctx, server_side=True)
        peer.handshake()
        peer.wait_for(b"go")
        conn.sendall(peer.records(b"first\n") + peer.records(b"second\n"))
        peer.read_to_end()

    with ThreadListener(serve) as listener:
        serving = listener.start()
        async with _cq_client(listener.port, client_ctx) as con:
            await con.write("go\n")
            assert await con.read("*l") == b"first"
            assert await con.read("*l") == b"second"
        await asyncio.wait_for(serving, TIMEOUT)


async def test_records_behind_the_handshake_are_read_without_another_packet(server_ctx, client_ctx):
    # The server's first data rides in the segment that finishes the handshake (TLS 1.2:
    # the server's Finished is the handshake's last message): no fd event follows it, so
    # a read, recv() and a poll must find it where TLS holds it.
    from cqloop import poll

    server_ctx.maximum_version = ssl.TLSVersion.TLSv1_2

    def serve(conn: pysocket.socket) -> None:
        peer = WirePeer(conn, server_ctx, server_side=True)
        conn.settimeout(TIMEOUT)
        while True:
            try:
                peer.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                conn.sendall(peer.outgoing.read())
                peer.incoming.write(conn.recv(65536))
        conn.sendall(peer.outgoing.read() + peer.records(b"hello\nworld\n"))
        peer.read_to_end()

    with ThreadListener(serve) as listener:
        serving = listener.start()
        async with _cq_client(listener.port, client_ctx) as con:
            await con.connect()
            # After connect, events() is "": only the input TLS holds can make this poll
            # return before its timeout (the socket's own timeout would too: none here).
            con.settimeout(None)
            assert await poll(con, timeout=TIMEOUT) == (con,)
            assert con.recv("*l") == b"hello"
            assert con.recv("*l") == b"world"
        await asyncio.wait_for(serving, TIMEOUT)


# -- every format, against asyncio's TLS streams, both sides ------------------------------------


@pytest.mark.parametrize(("fmt", "name"), _formats_and_payloads())
async def test_reads_every_format_from_asyncio_tls_server(server_ctx, client_ctx, fmt, name):
    payload = _payload(name)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(payload)
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(handle, HOST, 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        async with _cq_client(port, client_ctx) as con:
            assert await read_back(con, fmt) == payload
    finally:
        server.close()
        await asyncio.wait_for(server.wait_closed(), TIMEOUT)


@pytest.mark.parametrize(("fmt", "name"), _formats_and_payloads())
async def test_reads_every_format_from_asyncio_tls_client(server_ctx, client_ctx, fmt, name):
    payload = _payload(name)
    server, port = _cq_listen(server_ctx)
    try:

        async def send() -> None:
            _reader, writer = await asyncio.open_connection(
                HOST, port, ssl=client_ctx, server_hostname="localhost"
            )
            writer.write(payload)
            await writer.drain()
            writer.close()
            await writer.wait_closed()

        sending = asyncio.ensure_future(send())
        async with await _cq_accept(server) as con:
            assert await read_back(con, fmt) == payload
        await asyncio.wait_for(sending, TIMEOUT)
    finally:
        server.close()


@pytest.mark.parametrize("name", list(PAYLOADS))
async def test_asyncio_tls_server_reads_all_a_cq_client_writes(server_ctx, client_ctx, name):
    payload = PAYLOADS[name]
    received: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.set_result(await reader.read())
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(handle, HOST, 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        async with _cq_client(port, client_ctx) as con:
            con.setmode(None, "bf")
            await con.write(payload)
        assert await asyncio.wait_for(received, TIMEOUT) == payload
    finally:
        server.close()
        await asyncio.wait_for(server.wait_closed(), TIMEOUT)


# -- starttls mid-stream with pushback ----------------------------------------------------------


@pytest.mark.parametrize("fmt", ["*l", "*a", 5000])
async def test_starttls_server_side_after_plaintext_with_pushback(server_ctx, client_ctx, fmt):
    # The client sends its line and its ClientHello back to back: the hello is in the
    # cq socket's input buffer when starttls() starts, and pushback hands it to TLS.
    server = cqsocket.listen(HOST, 0)
    port = server.localname()[2]
    try:

        async def client() -> None:
            _reader, writer = await asyncio.open_connection(HOST, port)
            writer.write(b"STARTTLS\n")
            await writer.start_tls(client_ctx, server_hostname="localhost")
            writer.write(MIX)
            await writer.drain()
            writer.close()
            await writer.wait_closed()

        talking = asyncio.ensure_future(client())
        async with await _cq_accept(server) as con:
            assert await con.read("*l") == b"STARTTLS"
            await con.starttls(server_ctx, TIMEOUT, server_side=True)
            assert await read_back(con, fmt) == MIX
        await asyncio.wait_for(talking, TIMEOUT)
    finally:
        server.close()


@pytest.mark.parametrize("fmt", ["*l", -4096])
async def test_starttls_client_side_after_plaintext(server_ctx, client_ctx, fmt):
    def serve(conn: pysocket.socket) -> str:
        conn.settimeout(TIMEOUT)
        conn.sendall(b"220 ready\n")
        # One byte at a time: the ClientHello may follow the line in the same segment, and
        # it must stay in the kernel for the TLS wrapper to read.
        line = bytearray()
        while not line.endswith(b"\n"):
            byte = conn.recv(1)
            assert byte, f"EOF after {bytes(line)!r}"
            line += byte
        assert line == b"STARTTLS\n"
        tls = server_ctx.wrap_socket(conn, server_side=True, suppress_ragged_eofs=False)
        tls.sendall(MIX)
        tls.unwrap()  # close_notify, then the client's
        return "closed"

    with ThreadListener(serve) as listener:
        serving = listener.start()
        con = cqsocket.connect(HOST, listener.port)
        con.settimeout(TIMEOUT)
        con.setmode("b", "b")
        async with con:
            assert await con.read("*l") == b"220 ready"
            await con.write("STARTTLS\n")
            await con.starttls(client_ctx, server_hostname="localhost")
            assert await read_back(con, fmt) == MIX
        assert await asyncio.wait_for(serving, TIMEOUT) == "closed"


# -- Python's blocking ssl sockets -------------------------------------------------------------


@pytest.mark.parametrize("name", list(PAYLOADS))
@pytest.mark.parametrize("fmt", ["*l", 5000])
async def test_blocking_ssl_server_to_cq_client_closes_both_ways(server_ctx, client_ctx, name, fmt):
    payload = PAYLOADS[name]

    def serve(conn: pysocket.socket) -> bytes:
        conn.settimeout(TIMEOUT)
        tls = server_ctx.wrap_socket(conn, server_side=True, suppress_ragged_eofs=False)
        tls.sendall(payload)
        tls.unwrap()  # sends close_notify and waits for the client's
        return b"unwrapped"

    with ThreadListener(serve) as listener:
        serving = listener.start()
        async with _cq_client(listener.port, client_ctx) as con:
            assert await read_back(con, fmt) == payload
        assert await asyncio.wait_for(serving, TIMEOUT) == b"unwrapped"


@pytest.mark.parametrize("name", list(PAYLOADS))
async def test_cq_server_echoes_a_blocking_ssl_client(server_ctx, ca, name):
    payload = PAYLOADS[name]
    server, port = _cq_listen(server_ctx)
    ctx = _client_ctx_for_thread(ca)

    def client() -> tuple[bytes, bytes]:
        # One thread, non-blocking: an ssl.SSLSocket must not be read in one thread while
        # another writes it (OpenSSL's SSL objects are not safe for that).
        with pysocket.create_connection((HOST, port), timeout=TIMEOUT) as raw:
            tls = ctx.wrap_socket(raw, server_hostname="localhost", suppress_ragged_eofs=False)
            tls.setblocking(False)
            echoed = bytearray()
            rest = memoryview(payload)
            deadline = time.monotonic() + TIMEOUT
            while time.monotonic() < deadline:
                try:
                    if rest:
                        rest = rest[tls.send(rest[:65536]) :]
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    pass
                try:
                    chunk = tls.recv(65536)  # SSLEOFError unless close_notify came
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    select.select([tls], [tls] if rest else [], [], 0.1)
                    continue
                if not chunk:
                    return bytes(echoed), b"clean"
                echoed.extend(chunk)
            raise AssertionError(f"no close_notify within {TIMEOUT} s ({len(echoed)} echoed)")

    try:
        talking = asyncio.ensure_future(_run_thread(client))
        async with await _cq_accept(server) as con:
            con.setmode("b", "bf")
            got = 0
            while got < len(payload):
                chunk = await con.read(-65536)
                got += len(chunk)
                await con.write(chunk)
        echoed, how = await talking
        assert echoed == payload
        assert how == b"clean"
    finally:
        server.close()


# -- openssl s_client ------------------------------------------------------------------------


def _openssl(*args: str, stdin: bytes) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        ["openssl", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert proc.stdin is not None

    def feed() -> None:
        try:
            proc.stdin.write(stdin)  # type: ignore[union-attr]
        finally:
            proc.stdin.close()  # type: ignore[union-attr]

    threading.Thread(target=feed, daemon=True).start()
    return proc


@pytest.mark.parametrize("name", list(PAYLOADS))
async def test_reads_all_from_openssl_s_client(pem_files, server_ctx, name):
    # s_client -no_ign_eof sends its stdin and a close_notify at its end.
    payload = PAYLOADS[name]
    server, port = _cq_listen(server_ctx)
    proc = _openssl(
        "s_client",
        "-connect",
        f"{HOST}:{port}",
        "-CAfile",
        pem_files["ca"],
        "-quiet",
        "-no_ign_eof",
        "-nocommands",
        stdin=payload,
    )
    try:
        async with await _cq_accept(server) as con:
            assert await read_back(con, "*l") == payload
        assert await asyncio.to_thread(proc.wait, TIMEOUT) == 0
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
        server.close()


# -- cq to cq ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["*l", "*a", 5000])
async def test_cq_client_reads_a_cq_server_to_its_clean_close(server_ctx, client_ctx, fmt):
    server, port = _cq_listen(server_ctx)
    try:

        async def serve() -> None:
            async with await _cq_accept(server) as con:
                con.setmode(None, "bf")
                await con.write(MIX)

        serving = asyncio.ensure_future(serve())
        async with _cq_client(port, client_ctx) as con:
            assert await read_back(con, fmt) == MIX
        await asyncio.wait_for(serving, TIMEOUT)
    finally:
        server.close()


# -- close -----------------------------------------------------------------------------------


async def test_cq_close_sends_close_notify_and_waits_for_the_peers(server_ctx, client_ctx):
    def serve(conn: pysocket.socket) -> tuple[bytes, str]:
        peer = WirePeer(conn, server_ctx, server_side=True)
        peer.handshake()
        got = peer.read_to_end()
        conn.sendall(peer.close_notify())
        return got

    with ThreadListener(serve) as listener:
        serving = listener.start()
        con = _cq_client(listener.port, client_ctx)
        con.setmode("b", "b")
        await con.write("bye\n")
        await con.aclose()
        assert con.eof("r") == (True,)
        assert await asyncio.wait_for(serving, TIMEOUT) == (b"bye\n", "close_notify")


async def test_sync_close_sends_close_notify_when_it_can_go_at_once(server_ctx, client_ctx):
    def serve(conn: pysocket.socket) -> tuple[bytes, str]:
        peer = WirePeer(conn, server_ctx, server_side=True)
        peer.handshake()
        return peer.read_to_end()

    with ThreadListener(serve) as listener:
        serving = listener.start()
        con = _cq_client(listener.port, client_ctx)
        con.setmode("b", "b")
        await con.write("bye\n")
        con.close()
        assert await asyncio.wait_for(serving, TIMEOUT) == (b"bye\n", "close_notify")


@pytest.mark.parametrize("together", [True, False], ids=["with-data", "alone"])
async def test_peer_close_notify_reads_as_end_of_stream(server_ctx, client_ctx, together):
    def serve(conn: pysocket.socket) -> tuple[bytes, str]:
        peer = WirePeer(conn, server_ctx, server_side=True)
        peer.handshake()
        data = peer.records(b"last line\n")
        if together:
            conn.sendall(data + peer.close_notify())  # one TCP segment
        else:
            conn.sendall(data)
            conn.sendall(peer.close_notify())
        return peer.read_to_end()

    with ThreadListener(serve) as listener:
        serving = listener.start()
        async with _cq_client(listener.port, client_ctx) as con:
            assert await con.read("*l") == b"last line"
            assert await con.read("*l") is None
            assert con.eof() == (True, False)
        assert await asyncio.wait_for(serving, TIMEOUT) == (b"", "close_notify")


async def test_peer_fin_without_close_notify_is_end_of_stream_and_sends_no_alert(
    server_ctx, client_ctx
):
    # asyncio's reading (and the ssl module's suppress_ragged_eofs default): a FIN
    # at a record boundary ends the stream. No alert goes back: the peer's next bytes
    # from us are our own close_notify.
    def serve(conn: pysocket.socket) -> tuple[bytes, str]:
        peer = WirePeer(conn, server_ctx, server_side=True)
        peer.handshake()
        conn.sendall(peer.records(b"half\n"))
        conn.shutdown(pysocket.SHUT_WR)
        return peer.read_to_end()

    with ThreadListener(serve) as listener:
        serving = listener.start()
        async with _cq_client(listener.port, client_ctx) as con:
            con.setmode("b", "b")
            assert await con.read("*l") == b"half"
            assert await con.read("*l") is None
            assert con.eof("r") == (True,)
            await con.write("still writing\n")
        assert await asyncio.wait_for(serving, TIMEOUT) == (b"still writing\n", "close_notify")


async def test_asyncio_tls_server_close_reads_as_end_of_stream(server_ctx, client_ctx):
    closed = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"one\ntwo\n")
        writer.close()
        await writer.wait_closed()
        closed.set()

    server = await asyncio.start_server(handle, HOST, 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        async with _cq_client(port, client_ctx) as con:
            assert await con.read("*l") == b"one"
            assert await con.read("*l") == b"two"
            assert await con.read("*l") is None
            assert con.eof() == (True, False)
        await asyncio.wait_for(closed.wait(), TIMEOUT)
    finally:
        server.close()
        await asyncio.wait_for(server.wait_closed(), TIMEOUT)


async def test_asyncio_tls_server_wait_closed_returns_when_a_cq_client_closes(
    server_ctx, client_ctx
):
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readline())
        assert await reader.read() == b""
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(handle, HOST, 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    async with _cq_client(port, client_ctx) as con:
        await con.write("ping\n")
        assert await con.read("*l") == b"ping"
    server.close()
    await asyncio.wait_for(server.wait_closed(), 5)


# -- bad input -------------------------------------------------------------------------------


async def _bad_peer(
    server_ctx, client_ctx, misbehave: Callable[[WirePeer], None], first: bytes | None = None
) -> list:
    """The two errors the cq client's reads meet after misbehave(peer), once the client
    has read a good line (and then `first`, what arrived before the bad bytes)."""

    def serve(conn: pysocket.socket) -> None:
        peer = WirePeer(conn, server_ctx, server_side=True)
        peer.handshake()
        conn.sendall(peer.records(b"good\n"))
        peer.wait_for(b"ok")  # the client has read the good line
        misbehave(peer)

    listener = ThreadListener(serve)
    serving = listener.start()
    errors = []
    try:
        con = _cq_client(listener.port, client_ctx)
        try:
            assert await con.read("*l") == b"good"
            await con.write("ok\n")
            if first is not None:
                assert await con.read("*l") == first
            for _ in range(2):
                with pytest.raises(OSError) as caught:
                    await con.read("*l")
                errors.append(caught.value)
        finally:
            con.close()
        await asyncio.wait_for(serving, TIMEOUT)
    finally:
        listener.close()
    return errors


async def test_garbage_instead_of_a_record_is_a_sticky_ssl_error(server_ctx, client_ctx):
    def misbehave(peer: WirePeer) -> None:
        # A good record and garbage in one segment: the record is read first.
        peer.sock.sendall(peer.records(b"fine\n") + b"this is not a TLS record\n" * 10)
        peer.read_to_end()

    first, second = await _bad_peer(server_ctx, client_ctx, misbehave, b"fine")
    assert isinstance(first, ssl.SSLError)
    assert first.strerror.startswith("socket:read:")
    assert second is first


async def test_reset_inside_a_record_is_a_sticky_connection_reset(server_ctx, client_ctx):
    def misbehave(peer: WirePeer) -> None:
        record = peer.records(b"a line that will not arrive whole\n")
        peer.sock.sendall(record[:10])
        peer.sock.setsockopt(pysocket.SOL_SOCKET, pysocket.SO_LINGER, SO_LINGER_RESET)

    first, second = await _bad_peer(server_ctx, client_ctx, misbehave)
    assert isinstance(first, ConnectionResetError)
    assert first.strerror.startswith("socket:read:")
    assert second is first


async def test_fin_inside_a_record_is_a_sticky_truncation_error(server_ctx, client_ctx):
    def misbehave(peer: WirePeer) -> None:
        record = peer.records(b"a line that will not arrive whole\n")
        peer.sock.sendall(record[:10])
        peer.sock.shutdown(pysocket.SHUT_WR)
        peer.sock.recv(1)

    first, second = await _bad_peer(server_ctx, client_ctx, misbehave)
    assert isinstance(first, ssl.SSLEOFError)
    assert first.strerror.startswith("socket:read:")
    assert "inside a TLS record" in str(first)
    assert second is first
