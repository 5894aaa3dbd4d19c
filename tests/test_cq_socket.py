"""cqloop.socket on cqloop, stock asyncio and uvloop: set-up, formats through real sockets,
buffering modes, sticky errors, timeouts, TLS, descriptor passing and credentials.

The format scanners' own exhaustive tests (every split of the input, bad input, memory
bounds) are in test_cqbuf.py; here the same formats go through sockets, with the input
split across sends at random points (hypothesis).
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket as pysocket
import ssl
import subprocess
import sys
import textwrap

import pytest
import trustme
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cqloop import socket as cqsocket


@pytest.fixture
def raw_pair():
    """A cq socket and a plain non-blocking socket at the other end."""
    a, b = pysocket.socketpair()
    b.setblocking(False)
    con = cqsocket.fdopen(os.dup(a.fileno()))
    a.close()
    yield con, b
    con.close()
    b.close()


async def _send_raw(sock: pysocket.socket, data: bytes) -> None:
    await asyncio.get_running_loop().sock_sendall(sock, data)


async def _recv_raw(sock: pysocket.socket, n: int) -> bytes:
    loop = asyncio.get_running_loop()
    out = b""
    while len(out) < n:
        chunk = await loop.sock_recv(sock, n - len(out))
        if not chunk:
            break
        out += chunk
    return out


# -- set-up ------------------------------------------------------------------------------


async def test_pair_line_round_trip_in_default_text_mode(pair):
    a, b = pair
    await a.write("hello\n", b"world\n")
    assert await b.read("*l") == b"hello"
    # Text output sent the LF as CRLF; binary input shows it, text input translates back.
    assert await b.xread("*L", "b") == b"world\r\n"


async def test_connect_is_lazy_and_listen_binds_at_once():
    server = cqsocket.listen("127.0.0.1", 0)
    family, host, port = server.localname()
    assert (family, host) == (pysocket.AF_INET, "127.0.0.1") and port > 0
    client = cqsocket.connect("127.0.0.1", port)
    assert client.pollfd() is None  # nothing happened yet
    try:

        async def serve():
            con = await server.accept(timeout=10)
            try:
                line = await con.read("*l")
                await con.write(line.upper(), "\n")
            finally:
                con.close()

        serving = asyncio.ensure_future(serve())
        await client.write("ping\n")
        assert await client.read("*l") == b"PING"
        await serving
        assert client.peername()[2] == port
    finally:
        client.close()
        server.close()


async def test_unix_path_connect_and_listen(tmp_path):
    path = str(tmp_path / "cq.sock")
    server = cqsocket.listen(path=path)
    client = cqsocket.connect(path=path)
    try:
        await client.connect(timeout=10)
        con = await server.accept(timeout=10)
        await client.write("over unix\n")
        assert await con.read("*l") == b"over unix"
        assert con.peereid() == (os.geteuid(), os.getegid())
        assert con.peerpid() == os.getpid()
        con.close()
    finally:
        client.close()
        server.close()


async def test_connect_refused_is_a_clear_error_and_sticks():
    probe = pysocket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    client = cqsocket.connect("127.0.0.1", port)
    try:
        with pytest.raises(ConnectionRefusedError):
            await client.write("x\n")
        with pytest.raises(ConnectionRefusedError):
            await client.read("*l")
    finally:
        client.close()


async def test_clients_iterates_accepts():
    server = cqsocket.listen("127.0.0.1", 0)
    port = server.localname()[2]
    clients = [cqsocket.connect("127.0.0.1", port) for _ in range(3)]
    try:
        for client in clients:
            await client.connect(timeout=10)
        seen = 0
        async for con in server.clients(timeout=10):
            con.close()
            seen += 1
            if seen == 3:
                break
    finally:
        for client in clients:
            client.close()
        server.close()


# -- reading -------------------------------------------------------------------------------


async def test_read_several_formats_returns_a_tuple_and_stops_at_eof(raw_pair):
    con, peer = raw_pair
    await _send_raw(peer, b"one\r\ntwo\nabcdefgh")
    peer.shutdown(pysocket.SHUT_WR)
    assert await con.read("*l", "*L", 3) == (b"one", b"two\n", b"abc")
    assert await con.read(100) == b"defgh"  # fewer only at EOF
    assert await con.read("*l", "*l") == ()
    assert con.eof("r") == (True,)


async def test_negative_count_returns_what_is_there(raw_pair):
    con, peer = raw_pair
    await _send_raw(peer, b"abc")
    assert await con.read(-100) == b"abc"


async def test_read_all_until_eof(raw_pair):
    con, peer = raw_pair
    await _send_raw(peer, b"x" * 100000)
    peer.shutdown(pysocket.SHUT_WR)
    assert await con.read("*a") == b"x" * 100000


async def test_lines_iterates_until_eof(raw_pair):
    con, peer = raw_pair
    await _send_raw(peer, b"a\nb\r\nc")
    peer.shutdown(pysocket.SHUT_WR)
    assert [line async for line in con.lines("*l")] == [b"a", b"b", b"c"]


async def test_headers_then_body(raw_pair):
    con, peer = raw_pair
    await _send_raw(peer, b"Host: x\r\nX-Folded: a\r\n b\r\n\r\nbody")
    peer.shutdown(pysocket.SHUT_WR)
    headers = [h async for h in con.xlines("*h")]
    assert len(headers) == 2 and headers[0].startswith(b"Host")
    assert await con.read("*l") == b""  # the blank line that ended the block
    assert await con.read("*a") == b"body"


async def test_xread_binary_mode_keeps_crlf(raw_pair):
    con, peer = raw_pair
    await _send_raw(peer, b"raw\r\n")
    assert await con.xread("*L", "b") == b"raw\r\n"


async def test_unget_and_pending(raw_pair):
    con, peer = raw_pair
    await _send_raw(peer, b"tail\n")
    con.unget(b"head ")
    assert con.pending()[0] == 5
    assert await con.read("*l") == b"head tail"


async def test_recv_does_not_wait(raw_pair):
    con, peer = raw_pair
    with pytest.raises(BlockingIOError):
        con.recv("*l")
    await _send_raw(peer, b"now\n")
    await asyncio.sleep(0)
    for _ in range(100):
        try:
            assert con.recv("*l") == b"now"
            break
        except BlockingIOError:
            await asyncio.sleep(0)
    else:
        pytest.fail("the line never became readable")


async def test_fill_buffers_without_consuming(raw_pair):
    con, peer = raw_pair
    await _send_raw(peer, b"12345")
    assert await con.fill(5, timeout=10) is True
    assert con.pending()[0] == 5
    peer.shutdown(pysocket.SHUT_WR)
    assert await con.fill(6, timeout=10) is False


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.binary(max_size=300).map(lambda b: b.replace(b"\r", b"")),
    cuts=st.lists(st.integers(min_value=0, max_value=300), max_size=6),
)
async def test_lines_are_the_same_however_the_input_is_split(data, cuts):
    a, b = pysocket.socketpair()
    b.setblocking(False)
    con = cqsocket.fdopen(os.dup(a.fileno()))
    a.close()
    con.setmode("b")
    try:

        async def feed():
            points = sorted({c for c in cuts if c < len(data)})
            start = 0
            for point in [*points, len(data)]:
                await _send_raw(b, data[start:point])
                start = point
                await asyncio.sleep(0)
            b.shutdown(pysocket.SHUT_WR)

        feeding = asyncio.ensure_future(feed())
        got = [line async for line in con.lines("*L")]
        await feeding
    finally:
        con.close()
        b.close()
    assert b"".join(got) == data
    assert all(line.endswith(b"\n") for line in got[:-1])


_PIECES = st.sampled_from(
    [
        b"line\n",
        b"crlf line\r\n",
        b"Name: value\r\n",
        b"X-Folded: a\r\n b\r\n",
        b"\r\n",
        b"\n",
        b"--BOUND\r\n",
        b"--BOUND--\r\n",
        b"body bytes ",
        b"\r",
        b"\x00\xff",
    ]
)
_FORMATS = ["*l", "*L", "*a", "*h", "*H", 5, -5, "--BOUND"]


def _read_all_at_once(data: bytes, fmt: str | int, mode: str) -> list[bytes]:
    """The oracle: the same format read in a loop from a buffer given everything at once."""
    from cqloop._core.cqbuf import NEED_MORE, InputBuffer

    buffer = InputBuffer(text=mode == "t")
    buffer.feed(data)
    buffer.feed_eof()
    results = []
    while (value := buffer.get(fmt)) is not None:
        assert value is not NEED_MORE
        results.append(value)
    return results


@pytest.mark.parametrize("mode", ["t", "b"])
@pytest.mark.parametrize("fmt", _FORMATS, ids=str)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pieces=st.lists(_PIECES, max_size=12),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=5),
)
async def test_every_format_reads_the_same_however_the_input_is_split(fmt, mode, pieces, cuts):
    # Every read format and mode, through a real socket on each loop, with the input cut
    # at arbitrary points (a line, a header or a boundary may be cut anywhere, and EOF
    # may fall in the middle of any of them): what the reads return is what the same
    # reads return from a buffer that had everything at once. For -n (whatever is there)
    # only the bytes are the same, not where they were cut.
    data = b"".join(pieces)
    a, b = pysocket.socketpair()
    b.setblocking(False)
    con = cqsocket.fdopen(os.dup(a.fileno()))
    a.close()
    con.setmode(mode)
    try:

        async def feed():
            points = sorted({c for c in cuts if c < len(data)})
            start = 0
            for point in [*points, len(data)]:
                await _send_raw(b, data[start:point])
                start = point
                await asyncio.sleep(0)
            b.shutdown(pysocket.SHUT_WR)

        feeding = asyncio.ensure_future(feed())
        got = []
        while (value := await con.xread(fmt, None, 30)) is not None:
            got.append(value)
        await feeding
    finally:
        con.close()
        b.close()
    expected = _read_all_at_once(data, fmt, mode)
    if fmt == -5:
        assert b"".join(got) == b"".join(expected)
    else:
        assert got == expected


async def test_an_endless_line_comes_in_maxline_pieces_with_memory_bounded(raw_pair):
    # cqueues' maxline is a hard limit that ends a line as if EOF came there: a peer
    # that never sends LF gets pieces, never an unbounded buffer.
    con, peer = raw_pair
    con.setmaxline(1000)
    total = 300_000

    async def flood():
        await _send_raw(peer, b"x" * total)
        await _send_raw(peer, b"\nafter\n")

    flooding = asyncio.ensure_future(flood())
    got = 0
    while got < total:
        piece = await con.xread("*l", None, 30)
        assert 0 < len(piece) <= 1000
        got += len(piece)
        assert con.pending()[0] <= cqsocket.INPUT_HIGH_WATER_BYTES + cqsocket.RECV_CHUNK_BYTES
    assert got == total
    assert await con.xread("*l", None, 30) == b""  # the rest of that line: its LF
    assert await con.xread("*l", None, 30) == b"after"
    await flooding


async def test_endless_header_and_missing_boundary_are_bounded(raw_pair):
    con, peer = raw_pair
    con.setmaxline(100)
    con.setbufsiz(100)
    await _send_raw(peer, b"X-Long: " + b"y" * 500 + b"\r\n\r\n")
    # A header longer than maxline is not a header: None, nothing consumed.
    assert await con.xread("*h", None, 30) is None
    assert con.pending()[0] > 0
    line = await con.xread("*l", None, 30)
    assert len(line) <= 100
    con.unget(b"")
    await _send_raw(peer, b"z" * 1000)
    peer.shutdown(pysocket.SHUT_WR)
    chunks = []
    while (chunk := await con.xread("--NEVER", None, 30)) is not None:
        assert len(chunk) <= 200
        chunks.append(chunk)
    assert b"z" * 1000 in b"".join(chunks)


async def test_binary_garbage_in_text_mode_is_returned_not_refused(raw_pair):
    con, peer = raw_pair
    garbage = bytes(range(256)).replace(b"\n", b"")
    await _send_raw(peer, garbage + b"\r\n")
    assert await con.xread("*l", "t", 30) == garbage  # bytes as they came, CRLF trimmed


# -- writing -------------------------------------------------------------------------------


async def test_full_buffering_holds_output_until_flush(raw_pair):
    con, peer = raw_pair
    con.setmode(None, "bf")
    await con.write("held\n")
    assert con.pending()[1] == 5
    await con.flush()
    assert await _recv_raw(peer, 5) == b"held\n"


async def test_line_buffering_sends_complete_lines(raw_pair):
    con, peer = raw_pair
    con.setmode(None, "bl")
    await con.write("one\ntw")
    assert await _recv_raw(peer, 4) == b"one\n"
    assert con.pending()[1] == 2


async def test_autoflush_sends_output_before_a_read(raw_pair):
    con, peer = raw_pair
    con.setmode(None, "bf")
    await con.write("question\n")

    async def answer():
        assert await _recv_raw(peer, 9) == b"question\n"
        await _send_raw(peer, b"answer\n")

    answering = asyncio.ensure_future(answer())
    assert await con.read("*l") == b"answer"
    await answering


# -- errors and timeouts -------------------------------------------------------------------


async def test_read_timeout_is_sticky_until_clearerr(raw_pair):
    con, peer = raw_pair
    with pytest.raises(TimeoutError) as caught:
        await con.xread("*l", None, 0.01)
    assert caught.value.errno == errno.ETIMEDOUT
    await _send_raw(peer, b"late\n")
    with pytest.raises(TimeoutError):  # repeated until cleared
        await con.read("*l")
    assert con.error("r")[0] is caught.value
    con.clearerr()
    assert await con.read("*l") == b"late"


async def test_onerror_handler_turns_errors_into_values_up_to_maxerrs(raw_pair):
    con, _ = raw_pair
    seen = []

    def handler(sock, op, error):
        seen.append((op, error.errno))
        return "handled"

    con.onerror(handler)
    con.setmaxerrs("r", 2)
    assert await con.xread("*l", None, 0.001) == "handled"
    assert await con.read("*l") == "handled"  # the sticky error, through the handler
    with pytest.raises(TimeoutError):
        await con.read("*l")  # past the limit: raised regardless
    assert seen == [("read", errno.ETIMEDOUT)] * 2


async def test_write_to_a_closed_peer_is_a_sticky_broken_pipe(raw_pair):
    con, peer = raw_pair
    peer.close()
    with pytest.raises((BrokenPipeError, ConnectionResetError)):
        for _ in range(100):
            await con.write(b"x" * 65536 + b"\n")
    with pytest.raises((BrokenPipeError, ConnectionResetError)):
        await con.write("again\n")


async def test_close_wakes_a_waiting_read(raw_pair):
    con, _ = raw_pair
    reading = asyncio.ensure_future(con.read("*l"))
    await asyncio.sleep(0)
    con.close()
    with pytest.raises(OSError) as caught:
        await reading
    assert caught.value.errno == errno.EBADF


async def test_socket_is_pollable(raw_pair):
    from cqloop import poll

    con, peer = raw_pair
    with pytest.raises(TimeoutError):
        await con.xread("*l", None, 0.001)
    con.clearerr()
    assert con.events() == "r"
    await _send_raw(peer, b"x\n")
    assert await poll(con, timeout=10) == (con,)


# -- TLS -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture
def tls_contexts(ca):
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    return server_ctx, client_ctx


async def test_tls_verified_client_and_server_with_sni(tls_contexts):
    server_ctx, client_ctx = tls_contexts
    names = []
    server_ctx.sni_callback = lambda sslobj, name, ctx: names.append(name)
    server = cqsocket.listen("127.0.0.1", 0, context=server_ctx)
    port = server.localname()[2]
    client = cqsocket.connect("localhost", port, context=client_ctx)
    try:

        async def serve():
            con = await server.accept(timeout=10)
            try:
                await con.write(b"secret: ", await con.read("*l"), "\n")
                await con.flush()
            finally:
                con.close()

        serving = asyncio.ensure_future(serve())
        await client.write("hi\n")
        assert await client.read("*l") == b"secret: hi"
        assert client.checktls() is not None
        assert client.checktls().version().startswith("TLS")
        await serving
    finally:
        client.close()
        server.close()
    assert names == ["localhost"]


async def test_tls_wrong_hostname_is_rejected(tls_contexts):
    server_ctx, client_ctx = tls_contexts
    server = cqsocket.listen("127.0.0.1", 0, context=server_ctx)
    port = server.localname()[2]
    client = cqsocket.connect("127.0.0.1", port, context=client_ctx, sendname="wrong.example")
    try:

        async def serve():
            con = await server.accept(timeout=10)
            try:
                with pytest.raises(OSError):
                    await con.read("*l")
            finally:
                con.close()

        serving = asyncio.ensure_future(serve())
        with pytest.raises(ssl.SSLCertVerificationError):
            await client.connect(timeout=10)
        client.close()
        await serving
    finally:
        client.close()
        server.close()


async def test_tls_is_verified_by_default(tls_contexts):
    server_ctx, _ = tls_contexts
    server = cqsocket.listen("127.0.0.1", 0, context=server_ctx)
    port = server.localname()[2]
    client = cqsocket.connect("localhost", port, tls=True)  # the system's trust store
    unverified = cqsocket.connect("localhost", port, tls=True, verify=False)
    try:

        async def serve(times):
            for _ in range(times):
                con = await server.accept(timeout=10)
                con.settimeout(10)
                try:
                    await con.write("ok\n")
                except OSError:
                    pass
                finally:
                    con.close()

        serving = asyncio.ensure_future(serve(2))
        with pytest.raises(ssl.SSLCertVerificationError):
            await client.connect(timeout=10)
        client.close()
        assert await unverified.xread("*l", None, 10) == b"ok"
        await serving
    finally:
        client.close()
        unverified.close()
        server.close()


async def test_starttls_pushback_does_not_smuggle_plaintext(tls_contexts):
    # The STARTTLS injection case: a line sent in the clear right behind STARTTLS must not
    # come out of the TLS session as if it had been protected. With pushback (the
    # default) it is fed to the TLS layer, where it is not a TLS record: the handshake
    # fails instead.
    server_ctx, _ = tls_contexts
    a, b = pysocket.socketpair()
    b.setblocking(False)
    con = cqsocket.fdopen(os.dup(a.fileno()))
    a.close()
    try:
        await _send_raw(b, b"STARTTLS\r\nINJECTED\r\n")
        assert await con.read("*l") == b"STARTTLS"
        assert con.pending()[0] == len(b"INJECTED\r\n")
        with pytest.raises(ssl.SSLError):
            await con.starttls(server_ctx, 10, server_side=True)
        assert con.pending()[0] == 0
    finally:
        con.close()
        b.close()


# -- descriptor passing -------------------------------------------------------------------


_CHILD_SERVER = textwrap.dedent(
    """
    import asyncio, os, sys
    import cqloop
    from cqloop import socket as cqsocket

    async def main():
        channel = cqsocket.fdopen(int(sys.argv[1]))
        msg, listener = await channel.recvfd(timeout=30)
        assert msg == b"take this", msg
        con = await listener.accept(timeout=30)
        await con.write(b"served by ", str(os.getpid()), "\\n")
        await con.flush()
        con.close()
        listener.close()
        channel.close()

    cqloop.run(main())
    """
)


async def test_sendfd_hands_a_listening_socket_to_another_process():
    parent_end, child_end = pysocket.socketpair(pysocket.AF_UNIX, pysocket.SOCK_STREAM)
    listener = cqsocket.listen("127.0.0.1", 0)
    port = listener.localname()[2]
    channel = cqsocket.fdopen(os.dup(parent_end.fileno()))
    parent_end.close()
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD_SERVER, str(child_end.fileno())],
        pass_fds=[child_end.fileno()],
    )
    child_end.close()
    client = cqsocket.connect("127.0.0.1", port)
    try:
        await channel.sendfd("take this", listener, timeout=30)
        listener.close()  # the child holds the only copy now
        reply = await client.xread("*l", None, 30)
        assert reply == f"served by {child.pid}".encode()
    finally:
        client.close()
        channel.close()
        listener.close()
        await asyncio.get_running_loop().run_in_executor(None, child.wait, 30)
    assert child.returncode == 0


# -- names and receiving -------------------------------------------------------------------


async def test_connect_resolves_through_cqloop_dns():
    from cqloop import dns
    from tests.dnsserver import DNSServer

    server = cqsocket.listen("127.0.0.1", 0)
    port = server.localname()[2]
    with DNSServer() as names:
        names.add("service.cqloop.test", "A", "127.0.0.1")
        resolver = dns.Resolver(servers=[names.nameserver], timeout=1, tries=1)
        client = cqsocket.connect("service.cqloop.test", port, resolver=resolver)
        numeric = cqsocket.connect("127.0.0.1", port, resolver=resolver)
        try:
            await client.connect(timeout=10)
            await numeric.connect(timeout=10)
            assert names.count("service.cqloop.test", "A") >= 1
            assert names.count("127.0.0.1") == 0  # numeric hosts are never queried
            missing = cqsocket.connect("missing.cqloop.test", port, resolver=resolver)
            with pytest.raises(dns.NameNotFound):
                await missing.connect(timeout=10)
            missing.close()
        finally:
            client.close()
            numeric.close()
            server.close()
            resolver.close()


async def test_input_received_on_its_own_makes_the_socket_poll_ready(raw_pair):
    from cqloop import poll

    con, peer = raw_pair
    with pytest.raises(TimeoutError):  # a read that waited: the socket now receives
        await con.xread("*l", None, 0.001)
    con.clearerr()
    await _send_raw(peer, b"arrived\n")
    assert await poll(con, timeout=10) == (con,)
    assert con.recv("*l") == b"arrived"


async def test_receiving_stops_at_the_high_water_mark(raw_pair):
    con, peer = raw_pair
    con.setmode("b")
    with pytest.raises(TimeoutError):
        await con.xread("*l", None, 0.001)
    con.clearerr()
    chunk = b"x" * 65536
    loop = asyncio.get_running_loop()
    sent = 0
    # Nobody reads: the socket buffers up to the mark, then the kernel's buffers fill
    # and the sender is pushed back (bounded memory).
    while True:
        try:
            sent += peer.send(chunk)
        except BlockingIOError:
            if con.pending()[0] >= cqsocket.INPUT_HIGH_WATER_BYTES:
                break
            await asyncio.sleep(0)  # let the socket receive what is there
            continue
    assert con.pending()[0] < cqsocket.INPUT_HIGH_WATER_BYTES + 4 * len(chunk)
    assert loop is asyncio.get_running_loop()
    got = len(await con.read(con.pending()[0]))
    while got < sent:
        got += len(await con.read(-len(chunk)))
    assert got == sent


async def test_send_slices_like_lua_and_does_not_wait(raw_pair):
    con, peer = raw_pair
    con.setmode(None, "bn")
    assert con.send("hello world", 1, 5) == 5
    assert con.send(b"hello world", -5) == 5
    assert await _recv_raw(peer, 10) == b"helloworld"


async def test_pack_and_unpack_bits(pair):
    a, b = pair
    a.setmode(None, "bf")
    await a.pack(0b101, 3)
    await a.pack(0x1F, 5)
    await a.pack(0xABCD, 16)
    await a.flush()
    assert await b.unpack(3) == 0b101
    assert await b.unpack(5) == 0x1F
    assert await b.unpack(16) == 0xABCD


async def test_pack_mode_sends_in_that_calls_buffering_only(raw_pair):
    con, peer = raw_pair
    con.setmode(None, "bf")
    await con.pack(0x41, 8)  # full buffering: held
    assert con.pending() == (0, 1)
    await con.pack(0x42, 8, "n")  # this call unbuffered: both bytes go
    assert con.pending() == (0, 0)
    assert await _recv_raw(peer, 2) == b"AB"
    await con.pack(0x43, 8)  # the socket's own mode again
    assert con.pending() == (0, 1)


async def test_pack_with_a_bad_mode_raises_and_buffers_nothing(raw_pair):
    con, _ = raw_pair
    with pytest.raises(ValueError, match="mode flag"):
        await con.pack(0x41, 8, "x")
    assert con.pending() == (0, 0)
    assert con.error("w") == (None,)


async def test_seterror_makes_a_channel_fail_until_clearerr(pair):
    a, b = pair
    a.seterror("w", errno.ECONNABORTED)
    with pytest.raises(ConnectionAbortedError):
        await a.write("x\n")
    assert a.clearerr("w")[0].errno == errno.ECONNABORTED
    await a.write("x\n")
    assert await b.read("*l") == b"x"


async def test_tls_mutual_authentication(ca, tls_contexts):
    server_ctx, client_ctx = tls_contexts
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    ca.configure_trust(server_ctx)
    ca.issue_cert("client.cqloop.test").configure_cert(client_ctx)
    server = cqsocket.listen("127.0.0.1", 0, context=server_ctx)
    port = server.localname()[2]
    client = cqsocket.connect("localhost", port, context=client_ctx)
    try:

        async def serve():
            con = await server.accept(timeout=10)
            try:
                await con.connect(timeout=10)
                peer = con.checktls().getpeercert()
                names = [value for kind, value in peer["subjectAltName"]]
                await con.write(names[0], "\n")
            finally:
                con.close()

        serving = asyncio.ensure_future(serve())
        assert await client.xread("*l", None, 10) == b"client.cqloop.test"
        await serving
    finally:
        client.close()
        server.close()
