"""create_datagram_endpoint and datagram transports, checked on cqloop against stock asyncio
(the oracle) and uvloop: echo over UDP on IPv4 and IPv6 and over Unix datagram sockets
(paths and the abstract namespace), connected and unconnected sendto and the addresses it
takes, ICMP errors from the network, pause_reading/resume_reading, and the transport
object (instance attributes, set_protocol, debug-mode logging).

The write buffer and flow control are in test_datagram_flow.py; sock=, reuse_port,
allow_broadcast, argument errors and errors raised by protocols or sockets in
test_datagram_options.py.

Each async test runs once per loop kind (pytest-asyncio's loop factories, see conftest.py).
Everything stays on loopback. Waits are on futures and queues, bounded only as a safety net.
Where uvloop knowingly differs from asyncio, the test names the difference and skips uvloop.
Where stock asyncio trips over its own state (an AttributeError from sendto(), a stale
buffer count), cqloop does what asyncio evidently means to do; those tests name asyncio's
failure and skip asyncio (or run on cqloop alone when uvloop trips too).
"""

from __future__ import annotations

import asyncio
import asyncio.selector_events
import errno
import logging
import os
import socket
import uuid

import pytest

from tests.conftest import skip_where_uvloop_differs
from tests.datagram_harness import (
    LOOPBACK,
    NO_PAUSE_READING,
    NO_UNIX_PATHS,
    PY313,
    Echo,
    Recorder,
    close_all,
    free_udp_port,
    handled_errors,
    ipv6_loopback_works,
)

# -- echo over each family --------------------------------------------------------------------


async def test_udp_echo_over_ipv4_with_addresses_and_extra_info():
    loop = asyncio.get_running_loop()
    server_tr, server = await loop.create_datagram_endpoint(Echo, local_addr=(LOOPBACK, 0))
    server_addr = server_tr.get_extra_info("sockname")
    client_tr, client = await loop.create_datagram_endpoint(Recorder, remote_addr=server_addr)
    try:
        assert client.made.done() and client.made.result() is client_tr
        client_addr = client_tr.get_extra_info("sockname")
        assert client_addr[0] == LOOPBACK
        assert client_tr.get_extra_info("peername") == server_addr
        assert server_tr.get_extra_info("peername") is None
        assert client_tr.get_extra_info("socket").family == socket.AF_INET
        assert client_tr.get_extra_info("socket").type == socket.SOCK_DGRAM
        assert client_tr.get_extra_info("no-such-key", "default") == "default"

        client_tr.sendto(b"ping")
        assert await server.next_datagram() == (b"ping", client_addr)
        assert await client.next_datagram() == (b"ping", server_addr)
        assert client_tr.get_write_buffer_size() == 0
        assert not client_tr.is_closing()
    finally:
        await close_all(client, server)
    assert client.events == ["made", "datagram", "lost"]
    assert client.lost.result() is None


@pytest.mark.skipif(not ipv6_loopback_works(), reason="no IPv6 loopback here")
async def test_udp_echo_over_ipv6():
    loop = asyncio.get_running_loop()
    server_tr, server = await loop.create_datagram_endpoint(Echo, local_addr=("::1", 0))
    server_addr = server_tr.get_extra_info("sockname")
    assert len(server_addr) == 4
    client_tr, client = await loop.create_datagram_endpoint(Recorder, remote_addr=server_addr[:2])
    try:
        assert client_tr.get_extra_info("socket").family == socket.AF_INET6
        client_addr = client_tr.get_extra_info("sockname")
        client_tr.sendto(b"ping6")
        data, addr = await server.next_datagram()
        assert (data, addr[:2]) == (b"ping6", client_addr[:2])
        data, addr = await client.next_datagram()
        assert (data, addr[:2]) == (b"ping6", server_addr[:2])
    finally:
        await close_all(client, server)


async def test_unix_datagram_echo_between_paths(tmp_path):
    loop = asyncio.get_running_loop()
    skip_where_uvloop_differs(loop, NO_UNIX_PATHS)
    server_path, client_path = str(tmp_path / "srv"), str(tmp_path / "cli")
    server_tr, server = await loop.create_datagram_endpoint(
        Echo, local_addr=server_path, family=socket.AF_UNIX
    )
    client_tr, client = await loop.create_datagram_endpoint(
        Recorder, local_addr=client_path, remote_addr=server_path, family=socket.AF_UNIX
    )
    try:
        assert server_tr.get_extra_info("sockname") == server_path
        assert client_tr.get_extra_info("peername") == server_path
        client_tr.sendto(b"over unix")
        assert await server.next_datagram() == (b"over unix", client_path)
        assert await client.next_datagram() == (b"over unix", server_path)
        with pytest.raises(ValueError, match="Invalid address"):
            client_tr.sendto(b"elsewhere", str(tmp_path / "other"))
    finally:
        await close_all(client, server)


async def test_unix_datagram_in_the_abstract_namespace():
    loop = asyncio.get_running_loop()
    skip_where_uvloop_differs(loop, NO_UNIX_PATHS)
    tag = uuid.uuid4().hex
    server_name, client_name = f"\0cqloop-test-{tag}-srv", f"\0cqloop-test-{tag}-cli"
    _, server = await loop.create_datagram_endpoint(
        Echo, local_addr=server_name, family=socket.AF_UNIX
    )
    client_tr, client = await loop.create_datagram_endpoint(
        Recorder, local_addr=client_name, remote_addr=server_name, family=socket.AF_UNIX
    )
    try:
        client_tr.sendto(b"abstract")
        # Linux reports abstract names as bytes.
        assert await server.next_datagram() == (b"abstract", client_name.encode())
        assert await client.next_datagram() == (b"abstract", server_name.encode())
    finally:
        await close_all(client, server)


async def test_unix_datagram_endpoint_replaces_a_stale_socket_file(tmp_path):
    loop = asyncio.get_running_loop()
    skip_where_uvloop_differs(loop, NO_UNIX_PATHS)
    path = str(tmp_path / "stale")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as old:
        old.bind(path)  # closing leaves the socket file behind
    assert os.path.exists(path)
    transport, protocol = await loop.create_datagram_endpoint(
        Recorder, local_addr=path, family=socket.AF_UNIX
    )
    try:
        assert transport.get_extra_info("sockname") == path
    finally:
        await close_all(protocol)


async def test_unix_datagram_endpoint_does_not_remove_a_regular_file(tmp_path):
    loop = asyncio.get_running_loop()
    skip_where_uvloop_differs(loop, NO_UNIX_PATHS)
    path = tmp_path / "regular"
    path.write_text("keep me")
    with pytest.raises(OSError) as caught:
        await loop.create_datagram_endpoint(Recorder, local_addr=str(path), family=socket.AF_UNIX)
    assert caught.value.errno == errno.EADDRINUSE
    assert path.read_text() == "keep me"


# -- sendto and addresses ---------------------------------------------------------------------


async def test_connected_sendto_accepts_only_the_remote_address():
    loop = asyncio.get_running_loop()
    server_tr, server = await loop.create_datagram_endpoint(Recorder, local_addr=(LOOPBACK, 0))
    server_addr = server_tr.get_extra_info("sockname")
    client_tr, client = await loop.create_datagram_endpoint(Recorder, remote_addr=server_addr)
    try:
        with pytest.raises(ValueError, match="Invalid address: must be None or"):
            client_tr.sendto(b"x", (LOOPBACK, server_addr[1] + 1))
        client_tr.sendto(b"with its own address", server_addr)
        client_tr.sendto(b"with none")
        assert (await server.next_datagram())[0] == b"with its own address"
        assert (await server.next_datagram())[0] == b"with none"
        assert not client_tr.is_closing()
    finally:
        await close_all(client, server)


async def test_unconnected_sendto_reaches_each_address():
    loop = asyncio.get_running_loop()
    a_tr, a = await loop.create_datagram_endpoint(Recorder, local_addr=(LOOPBACK, 0))
    b_tr, b = await loop.create_datagram_endpoint(Recorder, local_addr=(LOOPBACK, 0))
    sender_tr, sender = await loop.create_datagram_endpoint(Recorder, family=socket.AF_INET)
    try:
        assert sender_tr.get_extra_info("peername") is None
        sender_tr.sendto(b"to a", a_tr.get_extra_info("sockname"))
        sender_tr.sendto(bytearray(b"to b"), b_tr.get_extra_info("sockname"))
        sender_tr.sendto(memoryview(b"xx to a again")[3:], a_tr.get_extra_info("sockname"))
        assert (await a.next_datagram())[0] == b"to a"
        assert (await b.next_datagram())[0] == b"to b"
        assert (await a.next_datagram())[0] == b"to a again"
    finally:
        await close_all(sender, a, b)


async def test_unconnected_sendto_without_an_address_is_a_fatal_write_error():
    loop = asyncio.get_running_loop()
    errors = handled_errors(loop)
    skip_where_uvloop_differs(
        loop, "it passes no address to the kernel and reports EDESTADDRREQ to error_received"
    )
    transport, protocol = await loop.create_datagram_endpoint(Recorder, local_addr=(LOOPBACK, 0))
    transport.sendto(b"where to?")
    exc = await protocol.wait_lost()
    assert isinstance(exc, TypeError)
    assert [c["message"] for c in errors] == ["Fatal write error on datagram transport"]
    assert errors[0]["exception"] is exc
    assert errors[0]["transport"] is transport
    assert errors[0]["protocol"] is protocol


async def test_sendto_refuses_data_that_is_not_bytes_like():
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(Recorder, family=socket.AF_INET)
    try:
        for bad in ("text", 42, [b"a list"]):
            with pytest.raises(TypeError):
                transport.sendto(bad, (LOOPBACK, 9))
    finally:
        await close_all(protocol)


async def test_sendto_of_empty_data():
    loop = asyncio.get_running_loop()
    if PY313:
        skip_where_uvloop_differs(loop, "it drops empty datagrams, as asyncio did before 3.13")
    receiver_tr, receiver = await loop.create_datagram_endpoint(Recorder, local_addr=(LOOPBACK, 0))
    sender_tr, sender = await loop.create_datagram_endpoint(
        Recorder, remote_addr=receiver_tr.get_extra_info("sockname")
    )
    try:
        sender_tr.sendto(b"")
        sender_tr.sendto(b"end")
        first, _ = await receiver.next_datagram()
        # 3.13 sends empty datagrams (gh-113812); before, asyncio dropped them.
        assert first == (b"" if PY313 else b"end")
    finally:
        await close_all(sender, receiver)


async def test_sendto_after_close_is_dropped_and_logged_past_a_threshold(caplog):
    loop = asyncio.get_running_loop()
    receiver_tr, receiver = await loop.create_datagram_endpoint(Recorder, local_addr=(LOOPBACK, 0))
    sender_tr, sender = await loop.create_datagram_endpoint(
        Recorder, remote_addr=receiver_tr.get_extra_info("sockname")
    )
    await close_all(sender)
    assert sender_tr.is_closing()

    def warnings_logged() -> int:
        return sum(r.getMessage() == "socket.send() raised exception." for r in caplog.records)

    try:
        with caplog.at_level(logging.WARNING, logger="asyncio"):
            # close() counts as the first write to a lost connection; the fifth is logged.
            for _ in range(4):
                sender_tr.sendto(b"lost")
            assert warnings_logged() == 0
            sender_tr.sendto(b"lost")
            assert warnings_logged() == 1
            sender_tr.sendto(b"lost")
            assert warnings_logged() == 2
    finally:
        await close_all(receiver)


# -- errors from the network ------------------------------------------------------------------


async def test_connection_refused_goes_to_error_received_on_a_connected_socket():
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        Recorder, remote_addr=(LOOPBACK, free_udp_port())
    )
    try:
        transport.sendto(b"anyone there?")
        exc = await protocol.next_error()
        assert isinstance(exc, ConnectionRefusedError)
        # An ICMP error is news for the protocol, not the end of the transport.
        assert not transport.is_closing()
        assert not protocol.lost.done()
    finally:
        await close_all(protocol)


# -- reading, the transport object ------------------------------------------------------------


async def test_pause_reading_holds_datagrams_until_resume_reading():
    loop = asyncio.get_running_loop()
    skip_where_uvloop_differs(loop, NO_PAUSE_READING)
    transport, protocol = await loop.create_datagram_endpoint(Recorder, local_addr=(LOOPBACK, 0))
    try:
        assert transport.is_reading()
        transport.pause_reading()
        assert not transport.is_reading()
        transport.sendto(b"while paused", transport.get_extra_info("sockname"))
        sentinel_tr, sentinel = await loop.create_datagram_endpoint(
            Recorder, local_addr=(LOOPBACK, 0)
        )
        # A second endpoint's datagram, sent after, shows the loop has had its chance.
        transport.sendto(b"sentinel", sentinel_tr.get_extra_info("sockname"))
        await sentinel.next_datagram()
        await close_all(sentinel)
        assert protocol.datagrams.empty()
        transport.resume_reading()
        assert transport.is_reading()
        assert (await protocol.next_datagram())[0] == b"while paused"
    finally:
        await close_all(protocol)
    assert not transport.is_reading()


async def test_transport_takes_instance_attributes_and_set_protocol():
    loop = asyncio.get_running_loop()
    skip_where_uvloop_differs(loop, "its transports are extension types without __dict__")
    transport, protocol = await loop.create_datagram_endpoint(Recorder, family=socket.AF_INET)
    try:
        transport.write = lambda data: None
        transport.custom = "yes"
        assert transport.custom == "yes"
        assert transport.get_protocol() is protocol
        other = Recorder()
        transport.set_protocol(other)
        assert transport.get_protocol() is other
        transport.set_protocol(protocol)
    finally:
        await close_all(protocol)


async def test_debug_mode_logs_the_new_endpoint(caplog):
    loop = asyncio.get_running_loop()
    skip_where_uvloop_differs(loop, "it logs nothing when an endpoint is created")
    loop.set_debug(True)
    with caplog.at_level(logging.DEBUG, logger="asyncio"):
        transport, protocol = await loop.create_datagram_endpoint(
            Recorder, local_addr=(LOOPBACK, 0)
        )
    try:
        created = [m for m in caplog.messages if m.startswith("Datagram endpoint ")]
        assert len(created) == 1
        assert f"local_addr=('{LOOPBACK}', 0)" in created[0]
        assert f"fd={transport.get_extra_info('socket').fileno()}" in created[0]
        assert "read=" in repr(transport) and "write=<idle, bufsize=0>" in repr(transport)
    finally:
        await close_all(protocol)
    loop.set_debug(False)
