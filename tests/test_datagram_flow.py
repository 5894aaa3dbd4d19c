"""The datagram transport's write buffer and flow control, checked on cqloop against stock
asyncio (the oracle) and uvloop: what is buffered when the socket is full and in what order
it leaves, pause_writing/resume_writing at the water marks, get_write_buffer_size, close
and abort with data buffered, and sendto once the transport is closing. A full socket buffer is
made with a Unix datagram socket whose peer does not read (datagram_harness.SilentPeer).

How the tests run, and how they treat the places where uvloop or asyncio knowingly
differs: see test_datagram.py.
"""

from __future__ import annotations

import asyncio
import asyncio.selector_events
import logging
import socket

import pytest

from tests.conftest import skip_where_uvloop_differs
from tests.datagram_harness import (
    LOOPBACK,
    PY313,
    WAIT_S,
    Recorder,
    close_all,
    fill_until_buffered,
    handled_errors,
    numbered,
    silent_peer,  # noqa: F401
    skip_where_asyncio_never_drains_its_header_count,
    skip_where_asyncio_trips,
)

# The harness's fixtures are imported by name and taken as parameters:
# ruff: noqa: F811


# -- the write buffer and flow control --------------------------------------------------------


async def test_default_write_buffer_limits():
    loop = asyncio.get_running_loop()
    skip_where_uvloop_differs(loop, "its default low-water mark is 16 bytes, not 16 KiB")
    transport, protocol = await loop.create_datagram_endpoint(Recorder, family=socket.AF_INET)
    try:
        assert transport.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
    finally:
        await close_all(protocol)


async def test_set_write_buffer_limits():
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(Recorder, family=socket.AF_INET)
    try:
        transport.set_write_buffer_limits(high=100)
        assert transport.get_write_buffer_limits() == (25, 100)
        transport.set_write_buffer_limits(low=10)
        assert transport.get_write_buffer_limits() == (10, 40)
        transport.set_write_buffer_limits(high=0)
        assert transport.get_write_buffer_limits() == (0, 0)
        with pytest.raises(ValueError, match="must be >="):
            transport.set_write_buffer_limits(high=1, low=2)
        with pytest.raises(ValueError, match="must be >="):
            transport.set_write_buffer_limits(high=10, low=-1)
        # An empty buffer never pauses the protocol, whatever the limits.
        assert "pause_writing" not in protocol.events
    finally:
        await close_all(protocol)


async def test_full_socket_buffers_datagrams_and_flow_control_pauses_and_resumes(silent_peer):
    loop = asyncio.get_running_loop()
    skip_where_asyncio_never_drains_its_header_count(loop)
    transport, protocol = await loop.create_datagram_endpoint(
        Recorder, sock=silent_peer.make_sender()
    )
    try:
        transport.set_write_buffer_limits(high=4096, low=1024)
        sent = fill_until_buffered(transport, numbered)
        assert not protocol.paused.done()
        while not protocol.paused.done():
            data = numbered(len(sent))
            transport.sendto(data)
            sent.append(data)
        assert transport.get_write_buffer_size() > 4096

        received = await silent_peer.read_until(len(sent))
        await asyncio.wait_for(asyncio.shield(protocol.resumed), WAIT_S)
        assert received == sent  # every datagram, in order
        assert transport.get_write_buffer_size() == 0
        assert protocol.events == ["made", "pause_writing", "resume_writing"]
    finally:
        await close_all(protocol)


async def test_buffered_datagram_is_a_copy_of_what_sendto_was_given(silent_peer):
    loop = asyncio.get_running_loop()
    skip_where_uvloop_differs(
        loop, "it keeps a view of the caller's buffer and sends what it holds later"
    )
    transport, protocol = await loop.create_datagram_endpoint(
        Recorder, sock=silent_peer.make_sender()
    )
    try:
        sent = fill_until_buffered(transport, numbered)
        # 3.13 counts 8 bytes of header per buffered datagram (gh-113812).
        header_bytes = 8 if PY313 else 0
        assert transport.get_write_buffer_size() == len(sent[-1]) + header_bytes
        reused = bytearray(numbered(len(sent)))
        transport.sendto(reused)
        sent.append(bytes(reused))
        reused[:] = b"overwritten".ljust(len(reused), b"!")
        assert await silent_peer.read_until(len(sent)) == sent
    finally:
        await close_all(protocol)


async def test_setting_a_lower_high_water_mark_pauses_a_protocol_with_a_full_buffer(silent_peer):
    loop = asyncio.get_running_loop()
    skip_where_asyncio_never_drains_its_header_count(loop)
    transport, protocol = await loop.create_datagram_endpoint(
        Recorder, sock=silent_peer.make_sender()
    )
    try:
        sent = fill_until_buffered(transport, numbered)
        assert not protocol.paused.done()
        transport.set_write_buffer_limits(high=1)
        assert protocol.paused.done()
        await silent_peer.read_until(len(sent))
        await asyncio.wait_for(asyncio.shield(protocol.resumed), WAIT_S)
    finally:
        await close_all(protocol)


async def test_pause_writing_error_goes_to_the_exception_handler(silent_peer):
    class BrokenPause(Recorder):
        def pause_writing(self) -> None:
            super().pause_writing()
            raise RuntimeError("pause_writing broke")

    loop = asyncio.get_running_loop()
    errors = handled_errors(loop)
    transport, protocol = await loop.create_datagram_endpoint(
        BrokenPause, sock=silent_peer.make_sender()
    )
    try:
        transport.set_write_buffer_limits(high=0)
        sent = fill_until_buffered(transport, numbered)
        assert protocol.paused.done()
        assert [c["message"] for c in errors] == ["protocol.pause_writing() failed"]
        assert isinstance(errors[0]["exception"], RuntimeError)
        assert not transport.is_closing()
        await silent_peer.read_until(len(sent))
    finally:
        await close_all(protocol)


async def test_close_sends_the_buffer_before_connection_lost(silent_peer):
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        Recorder, sock=silent_peer.make_sender()
    )
    sent = fill_until_buffered(transport, numbered)
    for _ in range(3):
        sent.append(numbered(len(sent)))
        transport.sendto(sent[-1])
    transport.close()
    assert transport.is_closing()
    assert transport.get_write_buffer_size() > 0
    # The peer starts reading only now: connection_lost must wait for the buffer.
    received = await silent_peer.read_until(len(sent))
    assert await protocol.wait_lost() is None
    assert received == sent
    assert protocol.events[-1] == "lost"


async def test_abort_drops_the_buffer_and_calls_connection_lost(silent_peer):
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        Recorder, sock=silent_peer.make_sender()
    )
    sent = fill_until_buffered(transport, numbered)
    transport.sendto(numbered(len(sent)))
    transport.abort()
    assert transport.is_closing()
    assert await protocol.wait_lost() is None
    # Only what the socket took before it refused the first datagram reached the peer.
    assert silent_peer.read_available() == sent[:-1]


async def test_abort_empties_the_write_buffer_size(silent_peer):
    loop = asyncio.get_running_loop()
    skip_where_asyncio_trips(loop, "get_write_buffer_size() still counts what abort() dropped")
    transport, protocol = await loop.create_datagram_endpoint(
        Recorder, sock=silent_peer.make_sender()
    )
    fill_until_buffered(transport, numbered)
    transport.abort()
    assert await protocol.wait_lost() is None
    assert transport.get_write_buffer_size() == 0


@pytest.mark.cqloop_only
async def test_sendto_after_a_close_that_drained_the_buffer_is_dropped(silent_peer, caplog):
    # asyncio then sends on no socket and raises AttributeError from sendto(); uvloop
    # raises RuntimeError (the handle is closed). Neither counts the close as a write to a
    # lost connection, as they do when close() finds the buffer empty.
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        Recorder, sock=silent_peer.make_sender()
    )
    sent = fill_until_buffered(transport, numbered)
    transport.close()
    await silent_peer.read_until(len(sent))
    await protocol.wait_lost()
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        for _ in range(5):
            transport.sendto(b"too late")
    assert "socket.send() raised exception." in caplog.messages


async def test_unconnected_sendto_after_the_socket_is_closed_is_dropped():
    loop = asyncio.get_running_loop()
    skip_where_asyncio_trips(loop, "its transport then sends on no socket: AttributeError")
    receiver_tr, receiver = await loop.create_datagram_endpoint(Recorder, local_addr=(LOOPBACK, 0))
    sender_tr, sender = await loop.create_datagram_endpoint(Recorder, family=socket.AF_INET)
    receiver_addr = receiver_tr.get_extra_info("sockname")
    await close_all(sender)
    try:
        sender_tr.sendto(b"too late", receiver_addr)
        # Loopback queues a datagram at the receiver during sendto(): the marker, sent
        # after, is the first datagram to arrive.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
            other.sendto(b"marker", receiver_addr)
        assert (await receiver.next_datagram())[0] == b"marker"
    finally:
        await close_all(receiver)


async def test_close_and_abort_are_idempotent():
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(Recorder, family=socket.AF_INET)
    transport.close()
    transport.close()
    transport.abort()
    assert await protocol.wait_lost() is None
    transport.close()
    transport.abort()
    assert protocol.events == ["made", "lost"]
