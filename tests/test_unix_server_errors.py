"""create_unix_server's failures leave nothing open.

A failure between making the listening socket and handing it to the Server (the stale
socket file check, bind, the inode read for cleanup_socket) must close the socket it made,
whatever the error: a socket left to the garbage collector warns (ResourceWarning) in
whatever test or request happens to collect it. asyncio leaves it to the GC when the stale
file check raises something other than OSError (a NUL in the path), so the check of that
case runs on cqloop alone; the others hold on every loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import tempfile
import warnings
from collections.abc import Iterator

import pytest


@contextlib.contextmanager
def _no_unclosed_socket_warning() -> Iterator[None]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        yield
        gc.collect()
    unclosed = [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert not unclosed, [str(w.message) for w in unclosed]


@pytest.mark.cqloop_only
async def test_create_unix_server_closes_its_socket_when_the_path_check_raises() -> None:
    loop = asyncio.get_running_loop()
    with _no_unclosed_socket_warning(), pytest.raises(ValueError, match="null"):
        await loop.create_unix_server(asyncio.Protocol, "bad\0path")


async def test_create_unix_server_closes_its_socket_when_bind_fails() -> None:
    loop = asyncio.get_running_loop()
    with tempfile.TemporaryDirectory() as tmp:
        missing_dir = os.path.join(tmp, "missing", "server.sock")
        with _no_unclosed_socket_warning(), pytest.raises(FileNotFoundError):
            await loop.create_unix_server(asyncio.Protocol, missing_dir)
