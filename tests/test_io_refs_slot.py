"""How the compiled sock_* waits find a socket's `_io_refs` (cqloop/_core/sockio.pyx): at
import, the offset of socket.socket's `_io_refs` slot is checked against a real socket
object (values written through the attribute must be what is found at the offset), and a
slot the check does not trust is read by name instead. The by-name path is the one every
socket subclass takes; the last test shows it keeps the fd claim's promise (a close under
a pending operation fails it with EBADF, and the fd closes when it has ended).

cqloop only: this is cqloop's own fast path, with no asyncio counterpart.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket

import pytest

from cqloop._core import sockio

pytestmark = pytest.mark.cqloop_only

SAFETY_TIMEOUT_S = 10


class Slotted:
    __slots__ = ("_io_refs",)


class OtherLayout:
    """Carries Slotted's member descriptor: an offset that belongs to another class's
    layout, which no instance of this class may be read at."""

    __slots__ = ("first", "second")
    _io_refs = Slotted.__dict__["_io_refs"]


class ByProperty:
    @property
    def _io_refs(self) -> int:
        return 0


class NeedsArguments:
    __slots__ = ("_io_refs",)

    def __new__(cls, required: int) -> NeedsArguments:
        return super().__new__(cls)


class SubclassedSocket(socket.socket):
    __slots__ = ()


def test_the_socket_slot_passes_the_import_check() -> None:
    offset = sockio.slot_offset(socket.socket, "_io_refs")
    assert offset > 0
    assert sockio.io_refs_offset() == offset


def test_a_plain_slot_of_a_python_class_is_read_in_place() -> None:
    assert sockio.slot_offset(Slotted, "_io_refs") > 0


@pytest.mark.parametrize(
    ("cls", "name"),
    [
        (OtherLayout, "_io_refs"),
        (ByProperty, "_io_refs"),
        (Slotted, "no_such_slot"),
        (SubclassedSocket, "_io_refs"),  # the slot is socket.socket's, not the subclass's
        (NeedsArguments, "_io_refs"),  # no instance to check the offset on
    ],
    ids=["another-class-layout", "property", "missing", "inherited", "no-probe-instance"],
)
def test_a_slot_the_check_cannot_trust_is_read_by_name(cls: type, name: str) -> None:
    assert sockio.slot_offset(cls, name) == -1


async def test_a_socket_whose_io_refs_is_read_by_name_keeps_its_fd_claim() -> None:
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    sock = SubclassedSocket(fileno=a.detach())
    sock.setblocking(False)
    fd = sock.fileno()
    try:
        pending = asyncio.ensure_future(loop.sock_recv(sock, 100))
        await asyncio.sleep(0)  # the receive runs up to its wait
        assert not pending.done()
        sock.close()
        with pytest.raises(OSError) as raised:
            await asyncio.wait_for(pending, SAFETY_TIMEOUT_S)
        assert raised.value.errno == errno.EBADF
        # The claim released the fd when the operation ended: the number is free again.
        with pytest.raises(OSError) as fstat_error:
            os.fstat(fd)
        assert fstat_error.value.errno == errno.EBADF
        assert sock._io_refs == 0
    finally:
        sock.close()
        b.close()
