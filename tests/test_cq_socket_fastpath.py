"""The cq socket's compiled paths (cqloop/_core/cqsock.pyx) on cqloop, stock asyncio and
uvloop: a read that waits and is cancelled, a socket read from a second loop after the
first subscribed it, close() during a wait, the write fast path's piece types, and the
sticky error channels the compiled half keeps.

Behaviour only: these paths answer the common case and must do what the general path
in cqloop/_cqsocket.py does for it.
"""

from __future__ import annotations

import asyncio
import errno

import pytest

from cqloop import socket as cqsocket


async def _until_waiting(sock: cqsocket.Socket) -> None:
    # A new task's first step runs in the loop iteration after it is created; one more
    # lets a wait that it started settle.
    for _ in range(2):
        await asyncio.sleep(0)
    assert sock.events() == "r"


async def test_a_cancelled_read_leaves_the_socket_reading_the_next_line(pair):
    a, b = pair
    reading = asyncio.ensure_future(a.read("*l"))
    await _until_waiting(a)
    reading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reading
    await b.write(b"after the cancel\n")
    assert await a.read("*l") == b"after the cancel"


async def test_a_read_cancelled_by_a_timeout_context_leaves_no_waiter_behind(pair):
    a, b = pair
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await a.read("*l")
    await b.write(b"one\ntwo\n")
    assert await a.read("*l") == b"one"
    assert await a.read("*l") == b"two"


async def test_two_readers_waiting_on_one_socket_both_wake(pair):
    a, b = pair
    first = asyncio.ensure_future(a.read("*l"))
    second = asyncio.ensure_future(a.read("*l"))
    await _until_waiting(a)
    await b.write(b"x\ny\n")
    assert sorted([await first, await second]) == [b"x", b"y"]


async def test_close_during_the_inline_wait_is_ebadf_and_later_reads_fail(pair):
    a, _ = pair
    reading = asyncio.ensure_future(a.read("*l"))
    await _until_waiting(a)
    a.close()
    with pytest.raises(OSError) as caught:
        await reading
    assert caught.value.errno == errno.EBADF
    with pytest.raises(OSError):
        await a.read("*l")


def test_a_socket_subscribed_in_one_loop_reads_in_another(loop_factory):
    """The first loop's read leaves the fd subscribed there; a task of a second loop
    must still get its line (the wait moves to the loop that runs the task)."""
    a, b = cqsocket.pair()
    first = loop_factory()
    second = loop_factory()
    try:

        async def read_after_peer_writes(line: bytes) -> bytes | None:
            reading = asyncio.ensure_future(a.read("*l"))
            await _until_waiting(a)
            await b.write(line)
            return await reading

        assert first.run_until_complete(read_after_peer_writes(b"in the first\n")) == (
            b"in the first"
        )
        assert second.run_until_complete(read_after_peer_writes(b"in the second\n")) == (
            b"in the second"
        )
        # And back: the subscription follows the reads.
        assert first.run_until_complete(read_after_peer_writes(b"first again\n")) == (
            b"first again"
        )
    finally:
        a.close()
        b.close()
        first.close()
        second.close()


async def test_write_takes_bytes_str_bytearray_and_memoryview_pieces(pair):
    a, b = pair
    a.setmode(output="bn")
    await a.write(b"b", "\u00e9", bytearray(b"a"), memoryview(b"m\n"))
    assert await b.read("*l") == "b\u00e9am".encode()


async def test_write_refuses_other_types_before_sending_anything(pair):
    a, _ = pair
    with pytest.raises(TypeError, match="bytes or str"):
        await a.write(b"kept\n", 42)  # type: ignore[arg-type]
    # The piece before the bad one was buffered, as the general path does: it goes out
    # with the next write.
    assert a.pending()[1] == len(b"kept\r\n")


async def test_sticky_errors_are_per_channel_in_error_seterror_clearerr(pair):
    a, _ = pair
    assert a.error() == (None, None)
    a.seterror("w", errno.EPIPE)
    (read_error, write_error) = a.error("rw")
    assert read_error is None
    assert isinstance(write_error, BrokenPipeError)
    with pytest.raises(BrokenPipeError):
        await a.write(b"x\n")
    assert a.clearerr("w") == (write_error,)
    assert a.error("w") == (None,)
    with pytest.raises(KeyError):
        a.error("x")


async def test_an_onerror_value_comes_back_from_the_fast_write(pair):
    a, b = pair
    b.close()
    seen = []

    def handler(sock, op, error):
        seen.append((op, error.errno))
        return "handled"

    a.onerror(handler)
    assert await a.write(b"to nobody\n") == "handled"
    assert seen == [("write", errno.EPIPE)]
