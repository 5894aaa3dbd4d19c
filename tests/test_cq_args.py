"""Argument errors of cqloop.socket and cqloop.dns: each bad argument fails at the call,
with an exception that names the argument (not an internal function, not at the first
I/O), and a bad call leaves nothing open; and errors of the I/O carry the `socket:OP:`
prefix.
"""

from __future__ import annotations

import errno

import pytest

from cqloop import dns, socket

BAD_PORTS = [
    (99999, ValueError),
    (-1, ValueError),
    (65536, ValueError),
    (80.5, TypeError),
    (80.0, TypeError),
    (True, TypeError),
    (b"80", TypeError),
    ("no-such-service-name", ValueError),
    ("", ValueError),
]


@pytest.mark.parametrize(("port", "error"), BAD_PORTS, ids=repr)
def test_listen_refuses_a_bad_port_at_the_call(port, error):
    with pytest.raises(error, match="port"):
        socket.listen("127.0.0.1", port)


@pytest.mark.parametrize(("port", "error"), BAD_PORTS, ids=repr)
def test_connect_refuses_a_bad_port_at_the_call(port, error):
    with pytest.raises(error, match="port"):
        socket.connect("127.0.0.1", port)


def test_connect_and_listen_refuse_an_out_of_range_port_alike():
    with pytest.raises(ValueError) as listening:
        socket.listen("127.0.0.1", 99999)
    with pytest.raises(ValueError) as connecting:
        socket.connect("127.0.0.1", 99999)
    assert "99999" in str(listening.value) and "99999" in str(connecting.value)


def test_connect_refuses_port_zero():
    with pytest.raises(ValueError, match="port"):
        socket.connect("127.0.0.1", 0)


def test_numeric_and_service_ports_are_accepted():
    socket.listen("127.0.0.1", "0").close()
    socket.connect("127.0.0.1", "http").close()
    socket.connect("127.0.0.1", "8080").close()


@pytest.mark.parametrize("host", [b"localhost", 5, "", ["localhost"]], ids=repr)
def test_connect_refuses_a_host_that_is_not_a_name_at_the_call(host):
    with pytest.raises((TypeError, ValueError), match="host") as raised:
        socket.connect(host, 80)
    assert "resolve_host" not in str(raised.value)


def test_connect_names_bytes_hosts_and_says_to_decode():
    with pytest.raises(TypeError, match="decode"):
        socket.connect(b"localhost", 80)


@pytest.mark.parametrize("host", [b"127.0.0.1", 5], ids=repr)
def test_listen_refuses_a_host_that_is_not_a_name(host):
    with pytest.raises(TypeError, match="host"):
        socket.listen(host, 0)


def test_connect_needs_host_and_port_or_path():
    with pytest.raises(ValueError, match="path"):
        socket.connect("127.0.0.1")
    with pytest.raises(TypeError, match="path"):
        socket.connect(path=5)


async def test_dns_query_refuses_a_name_that_is_not_a_str():
    with pytest.raises(TypeError, match="name") as raised:
        await dns.query(123)
    assert "iterable" not in str(raised.value)


async def test_dns_query_refuses_a_type_that_is_not_a_str():
    with pytest.raises(TypeError, match="type"):
        await dns.query("example.org", 123)


async def test_dns_resolve_host_refuses_a_bad_port():
    with pytest.raises(TypeError, match="port"):
        await dns.resolve_host("127.0.0.1", 80.5)


@pytest.mark.parametrize("mode", ["bn", "bf"])
async def test_a_write_to_a_closed_peer_names_the_operation(mode):
    # Unbuffered, write() sends and meets EPIPE; fully buffered, flush() does.
    a, b = socket.pair(mode=mode)
    b.close()
    try:
        with pytest.raises(BrokenPipeError) as raised:
            await a.write(b"x" * 100)
            await a.flush()
        op = "write" if mode == "bn" else "flush"
        assert str(raised.value) == f"[Errno 32] socket:{op}: Broken pipe"
        assert raised.value.errno == errno.EPIPE
    finally:
        a.close()


def test_xlines_has_a_docstring():
    doc = socket.Socket.xlines.__doc__
    assert doc and "xread" in doc


# -- mode= on the constructors ----------------------------------------------------------------


async def test_pair_mode_b_sends_newlines_as_they_are():
    a, b = socket.pair(mode="b")
    try:
        await a.write(b"one\ntwo\r\n")
        await a.flush()
        assert await b.xread(9, None, 30) == b"one\ntwo\r\n"
        assert a.setmode() == ("b-p", "bla")  # cqueues' mode strings
    finally:
        a.close()
        b.close()


async def test_the_default_text_mode_sends_newlines_as_crlf():
    a, b = socket.pair()
    try:
        await a.write(b"one\n")
        await a.flush()
        assert await b.xread(5, "b", 30) == b"one\r\n"  # read as it is, in binary
    finally:
        a.close()
        b.close()


async def test_connect_listen_and_accept_take_mode():
    server = socket.listen("127.0.0.1", 0, mode="bn")
    try:
        port = server.localname()[2]
        client = socket.connect("127.0.0.1", port, mode="bn")
        try:
            await client.write(b"ping\n")  # "n": sent at once, no flush needed
            conn = await server.accept(timeout=30)
            try:
                assert conn.setmode()[1].startswith("bn")  # accepted: the listener's modes
                assert await conn.xread("*L", None, 30) == b"ping\n"
            finally:
                conn.close()
        finally:
            client.close()
    finally:
        server.close()


async def test_fdopen_and_dup_take_mode():
    import socket as stdsocket

    left, right = stdsocket.socketpair()
    a = socket.fdopen(left.detach(), mode="b")
    b = socket.dup(right, mode="b")
    right.close()
    try:
        await a.write(b"x\n")
        await a.flush()
        assert await b.xread(2, None, 30) == b"x\n"
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize(
    ("mode", "error"), [("q", ValueError), ("bz", ValueError), (1.5, TypeError)]
)
def test_constructors_refuse_a_bad_mode_at_the_call(mode, error):
    import os

    before = set(os.listdir("/proc/self/fd"))
    for make in (
        lambda: socket.pair(mode=mode),
        lambda: socket.connect("127.0.0.1", 80, mode=mode),
        lambda: socket.listen("127.0.0.1", 0, mode=mode) if not isinstance(mode, int) else None,
    ):
        with pytest.raises(error, match="mode"):
            make()
    assert set(os.listdir("/proc/self/fd")) == before


def test_listen_takes_an_int_mode_as_the_unix_socket_permissions(tmp_path):
    import os
    import stat

    path = tmp_path / "s"
    server = socket.listen(path=str(path), mode=0o600)
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    finally:
        server.close()
    with pytest.raises(ValueError, match="permission"):
        socket.listen("127.0.0.1", 0, mode=0o600)


async def test_a_read_error_names_the_operation():
    a, b = socket.pair(mode="b")
    try:
        await a.write(b"x\n")  # b has unread input: closing it then resets the connection
        b.close()
        with pytest.raises(ConnectionResetError, match=r"socket:read: "):
            await a.xread("*a", None, 10)
        # Sticky, with the same words.
        with pytest.raises(ConnectionResetError, match=r"socket:read: "):
            await a.xread("*a", None, 10)
    finally:
        a.close()


def test_module_setmode_sets_the_defaults_as_socket_setmode_does():
    previous = socket.setmode("bP", "bfA")
    try:
        assert previous == ("t-p", "tla")  # cqueues' initial modes
        a, b = socket.pair()
        try:
            assert a.getmode() == ("b-P", "bfA")
        finally:
            a.close()
            b.close()
        # Each string is applied to the initial mode, not to the current defaults.
        assert socket.setmode(None, "n") == ("b-P", "bfA")
        assert socket.setmode() == ("b-P", "tna")
        with pytest.raises(ValueError, match="unknown socket mode flag"):
            socket.setmode("b", "x")
        assert socket.setmode() == ("b-P", "tna")  # a bad string changed nothing
    finally:
        socket.setmode(*previous)
    assert socket.setmode() == ("t-p", "tla")
