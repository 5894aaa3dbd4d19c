"""create_datagram_endpoint's options and refusals, checked on cqloop against stock asyncio
(the oracle) and uvloop: sock=, reuse_port, allow_broadcast, the argument errors, and errors
raised by protocols and by sockets.

How the tests run, and how they treat the places where uvloop or asyncio knowingly
differs: see test_datagram.py.
"""

from __future__ import annotations

import asyncio
import asyncio.selector_events
import errno
import socket
from typing import Any

import pytest

from tests.conftest import skip_where_uvloop_differs
from tests.datagram_harness import (
    LOOPBACK,
    NO_UNIX_PATHS,
    READS_WITH_LIBUV,
    WAIT_S,
    Echo,
    Recorder,
    close_all,
    handled_errors,
    ipv6_loopback_works,
    skip_where_asyncio_trips,
)

# -- sock=, reuse_port, allow_broadcast -------------------------------------------------------


async def test_sock_argument_uses_the_socket_and_close_closes_it():
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOOPBACK, 0))
    server_tr, server = await loop.create_datagram_endpoint(Echo, sock=sock)
    client_tr, client = await loop.create_datagram_endpoint(
        Recorder, remote_addr=sock.getsockname()
    )
    try:
        assert server_tr.get_extra_info("sockname") == sock.getsockname()
        assert server_tr.get_extra_info("socket").fileno() == sock.fileno()
        assert not sock.getblocking()
        client_tr.sendto(b"via sock=")
        assert (await client.next_datagram())[0] == b"via sock="
    finally:
        await close_all(client, server)
    assert sock.fileno() == -1


async def test_sock_argument_with_a_connected_unnamed_unix_socket():
    loop = asyncio.get_running_loop()
    skip_where_asyncio_trips(
        loop,
        "it takes a connected socket whose peer address is '' (a socketpair) for "
        "unconnected and calls sendto(data, None): a fatal TypeError",
    )
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        transport, protocol = await loop.create_datagram_endpoint(Recorder, sock=mine)
        transport.sendto(b"to the other end")
        theirs.send(b"and back")
        assert (await protocol.next_datagram())[0] == b"and back"
        theirs.settimeout(WAIT_S)
        assert theirs.recv(100) == b"to the other end"
        await close_all(protocol)
    finally:
        theirs.close()


async def test_reuse_port_lets_two_endpoints_share_a_port():
    loop = asyncio.get_running_loop()
    first_tr, first = await loop.create_datagram_endpoint(
        Recorder, local_addr=(LOOPBACK, 0), reuse_port=True
    )
    addr = first_tr.get_extra_info("sockname")
    second_tr, second = await loop.create_datagram_endpoint(
        Recorder, local_addr=addr, reuse_port=True
    )
    try:
        assert second_tr.get_extra_info("sockname") == addr
        for transport in (first_tr, second_tr):
            sock = transport.get_extra_info("socket")
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
    finally:
        await close_all(first, second)


async def test_without_reuse_port_a_bound_port_is_refused():
    loop = asyncio.get_running_loop()
    skip_where_uvloop_differs(loop, "its bind error is a new OSError without errno")
    first_tr, first = await loop.create_datagram_endpoint(Recorder, local_addr=(LOOPBACK, 0))
    try:
        with pytest.raises(OSError) as caught:
            await loop.create_datagram_endpoint(
                Recorder, local_addr=first_tr.get_extra_info("sockname")
            )
        assert caught.value.errno == errno.EADDRINUSE
    finally:
        await close_all(first)


def both_loopbacks_on_one_port() -> tuple[Any, Any, int]:
    """Host None resolves to both loopbacks: the first and the last addrinfo of a port
    that is free (for now) in both families."""
    if not ipv6_loopback_works():
        pytest.skip("no IPv6 loopback here")
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
        probe.bind(("::1", 0))
        port = int(probe.getsockname()[1])
    choices = socket.getaddrinfo(None, port, 0, socket.SOCK_DGRAM)
    assert {info[0] for info in choices} == {socket.AF_INET, socket.AF_INET6}
    return choices[0], choices[-1], port


async def test_each_resolved_address_is_tried_until_one_binds():
    loop = asyncio.get_running_loop()
    first, second, port = both_loopbacks_on_one_port()
    with socket.socket(first[0], socket.SOCK_DGRAM) as blocker:
        blocker.bind(first[4])
        transport, protocol = await loop.create_datagram_endpoint(Recorder, local_addr=(None, port))
        try:
            assert transport.get_extra_info("socket").family == second[0]
            assert transport.get_extra_info("sockname")[:2] == second[4][:2]
        finally:
            await close_all(protocol)


async def test_when_no_resolved_address_binds_the_first_error_is_raised():
    loop = asyncio.get_running_loop()
    skip_where_uvloop_differs(loop, "its bind error is a new OSError without errno")
    first, second, port = both_loopbacks_on_one_port()
    with (
        socket.socket(first[0], socket.SOCK_DGRAM) as first_blocker,
        socket.socket(second[0], socket.SOCK_DGRAM) as second_blocker,
    ):
        first_blocker.bind(first[4])
        second_blocker.bind(second[4])
        with pytest.raises(OSError) as caught:
            await loop.create_datagram_endpoint(Recorder, local_addr=(None, port))
    assert caught.value.errno == errno.EADDRINUSE


async def test_host_names_are_resolved():
    loop = asyncio.get_running_loop()
    receiver_tr, receiver = await loop.create_datagram_endpoint(
        Recorder, local_addr=("localhost", 0), family=socket.AF_INET
    )
    port = receiver_tr.get_extra_info("sockname")[1]
    sender_tr, sender = await loop.create_datagram_endpoint(
        Recorder, remote_addr=("localhost", port), family=socket.AF_INET
    )
    try:
        assert receiver_tr.get_extra_info("sockname")[0] == LOOPBACK
        assert sender_tr.get_extra_info("peername") == (LOOPBACK, port)
        sender_tr.sendto(b"by name")
        assert (await receiver.next_datagram())[0] == b"by name"
    finally:
        await close_all(sender, receiver)


async def test_allow_broadcast_sets_so_broadcast():
    loop = asyncio.get_running_loop()
    plain_tr, plain = await loop.create_datagram_endpoint(Recorder, local_addr=(LOOPBACK, 0))
    broadcast_tr, broadcast = await loop.create_datagram_endpoint(
        Recorder, local_addr=(LOOPBACK, 0), allow_broadcast=True
    )
    try:
        option = (socket.SOL_SOCKET, socket.SO_BROADCAST)
        assert broadcast_tr.get_extra_info("socket").getsockopt(*option)
        assert not plain_tr.get_extra_info("socket").getsockopt(*option)
    finally:
        await close_all(plain, broadcast)


async def test_allow_broadcast_with_remote_addr_leaves_the_socket_unconnected():
    loop = asyncio.get_running_loop()
    skip_where_uvloop_differs(loop, "it connects the socket to remote_addr anyway")
    receiver_tr, receiver = await loop.create_datagram_endpoint(Recorder, local_addr=(LOOPBACK, 0))
    receiver_addr = receiver_tr.get_extra_info("sockname")
    sender_tr, sender = await loop.create_datagram_endpoint(
        Recorder, remote_addr=receiver_addr, allow_broadcast=True
    )
    try:
        assert sender_tr.get_extra_info("peername") is None
        sender_tr.sendto(b"to remote_addr")
        assert (await receiver.next_datagram())[0] == b"to remote_addr"
        # Not connected, but sendto() still takes only remote_addr.
        with pytest.raises(ValueError, match="Invalid address"):
            sender_tr.sendto(b"x", (LOOPBACK, receiver_addr[1] + 1))
    finally:
        await close_all(sender, receiver)


# -- argument errors --------------------------------------------------------------------------

ARGUMENT_ERRORS = [
    pytest.param({}, ValueError, "unexpected address family", id="no-address-no-family"),
    pytest.param({"local_addr": "not a tuple"}, TypeError, None, id="local-addr-not-a-tuple"),
    pytest.param(
        {"remote_addr": (LOOPBACK, 9, 0)}, TypeError, None, id="remote-addr-not-a-2-tuple"
    ),
]


@pytest.mark.parametrize(("kwargs", "error", "message"), ARGUMENT_ERRORS)
async def test_argument_errors(kwargs, error, message):
    loop = asyncio.get_running_loop()
    with pytest.raises(error, match=message):
        await loop.create_datagram_endpoint(Recorder, **kwargs)


async def test_unix_family_wants_string_addresses():
    loop = asyncio.get_running_loop()
    skip_where_uvloop_differs(loop, NO_UNIX_PATHS)
    with pytest.raises(TypeError, match="string is expected"):
        await loop.create_datagram_endpoint(
            Recorder, local_addr=(LOOPBACK, 0), family=socket.AF_UNIX
        )
    with pytest.raises(TypeError, match="string is expected"):
        await loop.create_datagram_endpoint(
            Recorder, remote_addr=b"/bytes/path", family=socket.AF_UNIX
        )


async def test_local_and_remote_addresses_of_different_families_are_refused():
    loop = asyncio.get_running_loop()
    skip_where_uvloop_differs(loop, "it raises OSError('could not bind to remote_addr ...')")
    with pytest.raises(ValueError, match="can not get address information"):
        await loop.create_datagram_endpoint(
            Recorder, local_addr=(LOOPBACK, 0), remote_addr=("::1", 9)
        )


async def test_sock_must_be_a_datagram_socket():
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as stream:
        with pytest.raises(ValueError, match=r"(?i)socket was expected"):
            await loop.create_datagram_endpoint(Recorder, sock=stream)


@pytest.mark.parametrize(
    "modifier",
    [
        {"local_addr": (LOOPBACK, 0)},
        {"remote_addr": (LOOPBACK, 9)},
        {"family": socket.AF_INET},
        {"proto": socket.IPPROTO_UDP},
        {"flags": socket.AI_PASSIVE},
        {"reuse_port": True},
        {"allow_broadcast": True},
    ],
    ids=lambda modifier: next(iter(modifier)),
)
async def test_sock_refuses_socket_modifiers(modifier):
    loop = asyncio.get_running_loop()
    (name,) = modifier
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        with pytest.raises(ValueError, match=f"when sock is specified. .*{name}="):
            await loop.create_datagram_endpoint(Recorder, sock=sock, **modifier)


async def test_reuse_address_is_gone():
    loop = asyncio.get_running_loop()
    skip_where_uvloop_differs(
        loop, "it still takes reuse_address: ValueError for True, DeprecationWarning for False"
    )
    # Removed in 3.11 (deprecated since 3.8.1): an unknown keyword argument.
    for value in (True, False):
        with pytest.raises(TypeError, match="reuse_address"):
            await loop.create_datagram_endpoint(
                Recorder, local_addr=(LOOPBACK, 0), reuse_address=value
            )


async def test_protocol_factory_error_propagates_and_leaves_no_socket_open():
    loop = asyncio.get_running_loop()

    def broken_factory() -> Recorder:
        raise RuntimeError("no protocol today")

    with pytest.raises(RuntimeError, match="no protocol today"):
        await loop.create_datagram_endpoint(broken_factory, local_addr=(LOOPBACK, 0))


async def test_cancelled_while_waiting_for_connection_made_closes_the_transport():
    loop = asyncio.get_running_loop()
    skip_where_uvloop_differs(
        loop, "it leaves the transport open when the call is cancelled after connection_made"
    )
    holder: dict[str, Any] = {}

    class CancelsItsCreator(Recorder):
        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            holder["protocol"] = self
            holder["task"].cancel()

    holder["task"] = loop.create_task(
        loop.create_datagram_endpoint(CancelsItsCreator, local_addr=(LOOPBACK, 0))
    )
    with pytest.raises(asyncio.CancelledError):
        await holder["task"]
    protocol = holder["protocol"]
    assert protocol.transport.is_closing()
    assert await protocol.wait_lost() is None


# -- errors raised by protocols and sockets ---------------------------------------------------


async def test_error_in_datagram_received_goes_to_the_exception_handler():
    loop = asyncio.get_running_loop()
    errors = handled_errors(loop)

    class Broken(Recorder):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            super().datagram_received(data, addr)
            if data == b"break":
                raise ZeroDivisionError("datagram_received broke")

    transport, protocol = await loop.create_datagram_endpoint(Broken, local_addr=(LOOPBACK, 0))
    addr = transport.get_extra_info("sockname")
    try:
        transport.sendto(b"break", addr)
        transport.sendto(b"after", addr)
        assert (await protocol.next_datagram())[0] == b"break"
        assert (await protocol.next_datagram())[0] == b"after"
        assert len(errors) == 1
        assert isinstance(errors[0]["exception"], ZeroDivisionError)
        assert not transport.is_closing()
    finally:
        await close_all(protocol)


class FaultySocket(socket.socket):
    """A datagram socket whose recvfrom or sendto fails with a non-OSError."""

    fail_recvfrom = False
    fail_sendto = False

    def recvfrom(self, *args: Any) -> Any:
        if self.fail_recvfrom:
            raise RuntimeError("recvfrom broke")
        return super().recvfrom(*args)

    def sendto(self, *args: Any) -> Any:
        if self.fail_sendto:
            raise RuntimeError("sendto broke")
        return super().sendto(*args)


@pytest.mark.parametrize(
    ("direction", "message"),
    [("recvfrom", "Fatal read error"), ("sendto", "Fatal write error")],
)
async def test_non_os_error_from_the_socket_is_fatal(direction, message):
    loop = asyncio.get_running_loop()
    errors = handled_errors(loop)
    skip_where_uvloop_differs(loop, READS_WITH_LIBUV)
    sock = FaultySocket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOOPBACK, 0))
    setattr(sock, f"fail_{direction}", True)
    transport, protocol = await loop.create_datagram_endpoint(Recorder, sock=sock)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as outsider:
        outsider.sendto(b"incoming", sock.getsockname())
        transport.sendto(b"outgoing", outsider.getsockname())
        exc = await protocol.wait_lost()
    assert isinstance(exc, RuntimeError) and str(exc) == f"{direction} broke"
    assert [c["message"] for c in errors] == [f"{message} on datagram transport"]
    assert errors[0]["exception"] is exc
    assert transport.is_closing()
    assert sock.fileno() == -1
