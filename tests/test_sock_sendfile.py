"""loop.sock_sendfile, checked on cqloop against stock asyncio (the oracle): a regular
file sent with os.sendfile, offset and count, empty files and offsets past the end, the
fallback for files without a fileno (and its refusal with fallback=False), a large file to
a slow reader, cancellation, and argument errors.

Each test runs once per loop kind, on loopback, without sleeps (see test_sock_ops.py).
uvloop has no sock_sendfile (it raises NotImplementedError); those tests say so and skip.
"""

from __future__ import annotations

import asyncio
import io
import os

import pytest

from tests.sock_ops_harness import (  # noqa: F401
    LARGE_PAYLOAD_BYTES,
    cancelled,
    data_file,
    executor,
    no_sendfile,
    nothing_registered,
    recv_exactly,
    sockpair,
    started,
    udp_pair,
    within,
)

# The harness's fixtures are imported by name and taken as parameters:
# ruff: noqa: F811


# -- sock_sendfile --------------------------------------------------------------------------


async def test_sock_sendfile_sends_a_regular_file_without_copying(sockpair, data_file, executor):
    loop = asyncio.get_running_loop()
    no_sendfile(loop)
    a, b = sockpair
    f, payload = data_file
    sending = asyncio.ensure_future(loop.sock_sendfile(a, f))
    received = await recv_exactly(loop, b, len(payload))
    assert await within(sending) == len(payload)
    assert received == payload
    assert f.tell() == len(payload)
    # os.sendfile did the work: the read-and-send fallback would have read in the executor.
    assert executor.submitted == []
    assert nothing_registered(loop, a.fileno())


async def test_sock_sendfile_honours_offset_and_count(sockpair, data_file):
    loop = asyncio.get_running_loop()
    no_sendfile(loop)
    a, b = sockpair
    f, payload = data_file
    assert await loop.sock_sendfile(a, f, 1000, 5000) == 5000
    assert await recv_exactly(loop, b, 5000) == payload[1000:6000]
    assert f.tell() == 6000


async def test_sock_sendfile_of_an_empty_file_sends_nothing(sockpair, tmp_path):
    loop = asyncio.get_running_loop()
    no_sendfile(loop)
    a, _ = sockpair
    path = tmp_path / "empty"
    path.write_bytes(b"")
    with open(path, "rb") as f:
        assert await loop.sock_sendfile(a, f) == 0
        assert f.tell() == 0


async def test_sock_sendfile_from_past_the_end_sends_nothing(sockpair, data_file):
    loop = asyncio.get_running_loop()
    no_sendfile(loop)
    a, _ = sockpair
    f, payload = data_file
    assert await loop.sock_sendfile(a, f, len(payload) + 10, 100) == 0
    assert f.tell() == 0


async def test_sock_sendfile_falls_back_for_a_file_without_fileno(sockpair, executor):
    loop = asyncio.get_running_loop()
    no_sendfile(loop)
    a, b = sockpair
    payload = os.urandom(600 * 1024)
    f = io.BytesIO(payload)
    sending = asyncio.ensure_future(loop.sock_sendfile(a, f, 100, len(payload) - 200))
    received = await recv_exactly(loop, b, len(payload) - 200)
    assert await within(sending) == len(payload) - 200
    assert received == payload[100:-100]
    assert f.tell() == len(payload) - 100
    assert executor.submitted  # the fallback read in the default executor


async def test_sock_sendfile_without_fallback_raises_for_a_file_without_fileno(sockpair):
    loop = asyncio.get_running_loop()
    no_sendfile(loop)
    a, _ = sockpair
    f = io.BytesIO(b"data")
    with pytest.raises(asyncio.SendfileNotAvailableError, match=r"^not a regular file$"):
        await loop.sock_sendfile(a, f, fallback=False)
    assert f.tell() == 0


async def test_sock_sendfile_without_fallback_raises_when_sendfile_fails(sockpair):
    # sendfile() cannot read from a pipe: with a count it fails at once (a pipe's size is 0,
    # so without one asyncio sends nothing and returns 0).
    loop = asyncio.get_running_loop()
    no_sendfile(loop)
    a, _ = sockpair
    rfd, wfd = os.pipe()
    with open(rfd, "rb", buffering=0) as r, open(wfd, "wb", buffering=0) as w:
        w.write(b"piped")
        with pytest.raises(asyncio.SendfileNotAvailableError, match=r"^os\.sendfile call failed$"):
            await loop.sock_sendfile(a, r, 0, 5, fallback=False)
        # asyncio's rule, kept: without a count the size comes from fstat(), 0 for a pipe.
        assert await loop.sock_sendfile(a, r) == 0


async def test_sock_sendfile_of_a_large_file_to_a_slow_reader(sockpair, tmp_path):
    loop = asyncio.get_running_loop()
    no_sendfile(loop)
    a, b = sockpair
    payload = os.urandom(1024) * (LARGE_PAYLOAD_BYTES // 1024)
    path = tmp_path / "large.bin"
    path.write_bytes(payload)
    with open(path, "rb") as f:
        sending = await started(loop.sock_sendfile(a, f))
        assert not sending.done()
        received = await recv_exactly(loop, b, len(payload))
        assert await within(sending) == len(payload)
        assert received == payload
        assert f.tell() == len(payload)
    assert nothing_registered(loop, a.fileno())


async def test_cancelled_sock_sendfile_leaves_no_registration(sockpair, tmp_path):
    loop = asyncio.get_running_loop()
    no_sendfile(loop)
    a, _ = sockpair
    path = tmp_path / "large.bin"
    path.write_bytes(b"z" * LARGE_PAYLOAD_BYTES)
    with open(path, "rb") as f:
        await cancelled(await started(loop.sock_sendfile(a, f)))
    assert nothing_registered(loop, a.fileno())


@pytest.mark.cqloop_only
async def test_cancelled_sock_sendfile_leaves_the_file_position_after_what_was_sent(
    sockpair, tmp_path
):
    # asyncio means to (its fallback does, and its native path when the cancellation meets
    # a queued callback); cqloop always does.
    loop = asyncio.get_running_loop()
    a, b = sockpair
    path = tmp_path / "large.bin"
    path.write_bytes(b"z" * LARGE_PAYLOAD_BYTES)
    with open(path, "rb") as f:
        await cancelled(await started(loop.sock_sendfile(a, f)))
        sent = f.tell()
        assert 0 < sent < LARGE_PAYLOAD_BYTES
        assert len(await recv_exactly(loop, b, sent)) == sent


async def test_sock_sendfile_checks_its_arguments(sockpair, data_file, tmp_path, udp_pair):
    loop = asyncio.get_running_loop()
    no_sendfile(loop)
    a, _ = sockpair
    f, _ = data_file
    text_path = tmp_path / "text.txt"
    text_path.write_text("text")
    with open(text_path) as text:
        with pytest.raises(ValueError, match=r"^file should be opened in binary mode$"):
            await loop.sock_sendfile(a, text)
    with pytest.raises(ValueError, match=r"^only SOCK_STREAM type sockets are supported$"):
        await loop.sock_sendfile(udp_pair[0], f)
    with pytest.raises(ValueError, match=r"^count must be a positive integer \(got 0\)$"):
        await loop.sock_sendfile(a, f, 0, 0)
    with pytest.raises(TypeError, match=r"^count must be a positive integer \(got '1'\)$"):
        await loop.sock_sendfile(a, f, 0, "1")
    with pytest.raises(ValueError, match=r"^offset must be a non-negative integer \(got -1\)$"):
        await loop.sock_sendfile(a, f, -1)
    with pytest.raises(TypeError, match=r"^offset must be a non-negative integer \(got 1\.5\)$"):
        await loop.sock_sendfile(a, f, 1.5)
    assert f.tell() == 0
