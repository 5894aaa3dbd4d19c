"""Datagram cq sockets (cqloop.socket with type SOCK_DGRAM) on cqloop, stock asyncio and
uvloop: reads within one datagram, writes as datagrams, UDP connect and listen, Unix
datagram pairs, and bad input (oversized datagrams both ways, a peer that is gone, a
closed socket, a cancelled read, DTLS). The semantics are held to Lua's cqueues by
tests/test_cq_oracle_dgram.py; these tests hold what the oracle cannot drive."""

from __future__ import annotations

import asyncio
import errno
import os
import select
import socket as pysocket

import pytest

from cqloop import poll
from cqloop import socket as cqsocket

# Longer than cqueues' 4096-byte buffer and than a stream read's chunk, within the
# default SO_SNDBUF of a Unix datagram socket.
LONG_DATAGRAM_BYTES = 100_000


@pytest.fixture
def dgram_pair():
    a, b = cqsocket.pair(cqsocket.SOCK_DGRAM, mode="bn")
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def raw_dgram_pair():
    """A datagram cq socket and a plain non-blocking datagram socket at the other end."""
    a, b = pysocket.socketpair(pysocket.AF_UNIX, pysocket.SOCK_DGRAM)
    b.setblocking(False)
    con = cqsocket.fdopen(a.detach(), mode="bn")
    yield con, b
    con.close()
    b.close()


def _free_udp_port() -> int:
    with pysocket.socket(pysocket.AF_INET, pysocket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- reading ---------------------------------------------------------------------------


async def test_a_read_never_takes_bytes_of_two_datagrams(raw_dgram_pair):
    con, peer = raw_dgram_pair
    for datagram in (b"abcdef", b"one\ntwo", b"xy", b"last"):
        peer.send(datagram)
    assert await con.read(4) == b"abcd"
    assert con.pending() == (2, 0)
    assert await con.read(4) == b"ef"  # the rest of the datagram, not 2 bytes of the next
    assert await con.read("*l", "*l") == (b"one", b"two")
    assert await con.read(-10) == b"xy"
    assert await con.read("*a") == b"last"


async def test_a_read_waits_for_the_next_datagram(dgram_pair):
    a, b = dgram_pair
    reading = asyncio.ensure_future(b.read("*a"))
    await asyncio.sleep(0)
    assert not reading.done()
    await a.write(b"late")
    assert await asyncio.wait_for(reading, 10) == b"late"


async def test_a_long_datagram_is_read_whole(raw_dgram_pair):
    con, peer = raw_dgram_pair
    datagram = os.urandom(LONG_DATAGRAM_BYTES)
    peer.send(datagram)
    peer.send(b"next")
    assert await con.read(3) == datagram[:3]
    assert await con.read("*a") == datagram[3:]
    assert await con.read("*a") == b"next"


async def test_a_zero_length_datagram_reads_as_none_once(raw_dgram_pair):
    con, peer = raw_dgram_pair
    peer.send(b"a")
    peer.send(b"")
    assert [d async for d in con.lines("*a")] == [b"a"]  # the empty datagram ends it
    assert con.eof("r") == (False,)
    reading = asyncio.ensure_future(con.read("*a"))
    await asyncio.sleep(0)
    assert not reading.done()  # no sticky EOF: the next read waits
    peer.send(b"b")
    assert await asyncio.wait_for(reading, 10) == b"b"


async def test_recv_takes_one_datagram_without_waiting(raw_dgram_pair):
    con, peer = raw_dgram_pair
    with pytest.raises(BlockingIOError):
        con.recv("*a")
    peer.send(b"p\nq")
    peer.send(b"r")
    assert con.recv("*l") == b"p"
    assert con.recv("*l") == b"q"
    assert con.recv("*a") == b"r"


async def test_unget_goes_in_front_of_the_next_datagram(raw_dgram_pair):
    con, peer = raw_dgram_pair
    peer.send(b"one")
    peer.send(b"two")
    assert await con.read("*a") == b"one"
    con.unget(b"pre-")
    assert await con.read("*a") == b"pre-two"


async def test_a_cancelled_read_loses_no_datagram(dgram_pair):
    a, b = dgram_pair
    reading = asyncio.ensure_future(b.read("*a"))
    await asyncio.sleep(0)
    reading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reading
    await a.write(b"kept")
    assert await b.xread("*a", None, 10) == b"kept"


async def test_a_datagram_makes_the_socket_poll_ready(dgram_pair):
    a, b = dgram_pair
    with pytest.raises(TimeoutError):
        await b.xread("*a", None, 0.001)
    b.clearerr()
    await a.write(b"x")
    assert await poll(b, timeout=10) == (b,)
    assert await b.read("*a") == b"x"


# -- writing ---------------------------------------------------------------------------


async def test_one_write_in_mode_n_is_one_datagram(raw_dgram_pair):
    con, peer = raw_dgram_pair
    long_piece = b"z" * 5000  # longer than the output buffer (4096)
    await con.write(b"head:", long_piece, b":tail")
    await con.write(b"second")
    loop = asyncio.get_running_loop()
    assert await loop.sock_recv(peer, 65536) == b"head:" + long_piece + b":tail"
    assert await loop.sock_recv(peer, 65536) == b"second"


async def test_line_mode_sends_each_flush_decision_as_a_datagram(raw_dgram_pair):
    con, peer = raw_dgram_pair
    con.setmode(None, "bl")
    await con.write(b"a\nb")
    await con.write(b"\nc")
    await con.flush()
    loop = asyncio.get_running_loop()
    assert [await loop.sock_recv(peer, 100) for _ in range(3)] == [b"a\n", b"b\n", b"c"]


async def test_a_datagram_too_long_to_send_raises_and_carries_it(dgram_pair):
    a, b = dgram_pair
    too_long = b"x" * (a._sock.getsockopt(pysocket.SOL_SOCKET, pysocket.SO_SNDBUF) + 1)
    with pytest.raises(OSError) as raised:
        await a.write(too_long)
    assert raised.value.errno == errno.EMSGSIZE
    assert raised.value.unsent == too_long
    assert a.pending() == (0, 0)
    assert a.error("w") == (None,)  # not sticky: the socket goes on
    await a.write(b"fits")
    assert await b.xread("*a", None, 10) == b"fits"


async def test_send_of_a_datagram_too_long_raises_and_carries_it(dgram_pair):
    a, b = dgram_pair
    too_long = b"y" * (a._sock.getsockopt(pysocket.SOL_SOCKET, pysocket.SO_SNDBUF) + 1)
    with pytest.raises(OSError) as raised:
        a.send(too_long)
    assert raised.value.errno == errno.EMSGSIZE
    assert raised.value.unsent == too_long
    assert (a.pending(), a.error("w")) == ((0, 0), (None,))
    assert a.send(b"fits") == 4
    assert await b.xread("*a", None, 10) == b"fits"


# -- UDP connect and listen ------------------------------------------------------------


async def test_udp_connect_and_listen_exchange_datagrams():
    server = cqsocket.listen("127.0.0.1", 0, type="dgram", mode="bn")
    family, host, port = server.localname()
    client = cqsocket.connect("127.0.0.1", port, type=cqsocket.SOCK_DGRAM, mode="bn")
    try:
        assert isinstance(server, cqsocket.DatagramSocket)
        assert isinstance(client, cqsocket.DatagramSocket)
        await client.write(b"ping\nmore")
        assert await server.xread("*l", None, 10) == b"ping"
        assert await server.read("*a") == b"more"
        assert client.peername() == (family, host, port)
        assert client.localname()[0] == pysocket.AF_INET
    finally:
        client.close()
        server.close()


async def test_unix_datagram_connect_and_listen_by_path(tmp_path):
    path = str(tmp_path / "dgram.sock")
    server = cqsocket.listen(path=path, type="dgram", mode="bn")
    client = cqsocket.connect(path=path, type="dgram", mode="bn")
    try:
        await client.write(b"by path")
        assert await server.xread("*a", None, 10) == b"by path"
        assert client.peername() == (pysocket.AF_UNIX, path)
    finally:
        client.close()
        server.close()


async def test_a_datagram_listener_neither_accepts_nor_writes():
    server = cqsocket.listen("127.0.0.1", 0, type=cqsocket.SOCK_DGRAM, mode="bn")
    try:
        with pytest.raises(OSError) as raised:
            await server.accept(timeout=1)
        assert raised.value.errno == errno.EOPNOTSUPP
        with pytest.raises(OSError) as raised:
            await server.write(b"nowhere")
        assert raised.value.errno == errno.EDESTADDRREQ
    finally:
        server.close()


@pytest.fixture
def client_of_a_gone_peer():
    """A UDP cq socket connected to a port nobody listens on."""
    client = cqsocket.connect("127.0.0.1", _free_udp_port(), type="dgram", mode="bn")
    yield client
    client.close()


async def test_a_peer_that_is_gone_is_connection_refused_and_sticks(client_of_a_gone_peer):
    client = client_of_a_gone_peer
    await client.write(b"anyone?")
    with pytest.raises(ConnectionRefusedError, match="socket:read"):
        await client.xread("*a", None, 10)
    with pytest.raises(ConnectionRefusedError):
        await client.read("*a")  # sticky, as every I/O error
    assert client.clearerr("r")[0].errno == errno.ECONNREFUSED
    with pytest.raises(TimeoutError):
        await client.xread("*a", None, 0.01)


async def test_a_write_refused_returns_its_datagram_in_the_error(client_of_a_gone_peer):
    client = client_of_a_gone_peer
    await client.write(b"first")
    # The port unreachable comes back at once on loopback; select() sees it pending.
    assert select.select([client.fileno()], [], [], 10)[0]
    with pytest.raises(ConnectionRefusedError, match="socket:write") as raised:
        await client.write(b"second")
    assert raised.value.unsent == b"second"
    assert client.pending() == (0, 0)
    sticky = client.error("w")[0]
    assert sticky.errno == errno.ECONNREFUSED
    assert not hasattr(sticky, "unsent")


async def test_dup_and_fdopen_of_a_udp_socket_are_datagram_sockets():
    with pysocket.socket(pysocket.AF_INET, pysocket.SOCK_DGRAM) as raw:
        raw.bind(("127.0.0.1", 0))
        dup = cqsocket.dup(raw, mode="bn")
    try:
        assert isinstance(dup, cqsocket.DatagramSocket)
        sender = cqsocket.connect("127.0.0.1", dup.localname()[2], type="dgram", mode="bn")
        try:
            await sender.write(b"a")
            await sender.write(b"b")
            assert await dup.xread(5, None, 10) == b"a"
            assert await dup.xread(5, None, 10) == b"b"
        finally:
            sender.close()
    finally:
        dup.close()


# -- closed sockets and bad input --------------------------------------------------------


async def test_close_wakes_a_waiting_datagram_read(dgram_pair):
    _, b = dgram_pair
    reading = asyncio.ensure_future(b.read("*a"))
    await asyncio.sleep(0)
    b.close()
    with pytest.raises(OSError) as raised:
        await asyncio.wait_for(reading, 10)
    assert raised.value.errno == errno.EBADF
    with pytest.raises(OSError, match="closed"):
        await b.read("*a")


async def test_dtls_is_refused_clearly(dgram_pair):
    with pytest.raises(NotImplementedError, match="DTLS"):
        cqsocket.connect("127.0.0.1", 9, type="dgram", tls=True)
    a, _ = dgram_pair
    with pytest.raises(NotImplementedError, match="DTLS"):
        await a.starttls()


def test_an_unknown_socket_type_is_refused():
    with pytest.raises(ValueError, match="SOCK_STREAM or SOCK_DGRAM"):
        cqsocket.connect("127.0.0.1", 9, type=pysocket.SOCK_RAW)
    with pytest.raises(ValueError, match="'stream' or 'dgram'"):
        cqsocket.pair("seqpacket")
    with pytest.raises(ValueError, match="'stream' or 'dgram'"):
        cqsocket.listen("127.0.0.1", 0, type="datagram")
