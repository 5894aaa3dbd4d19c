"""Protocols shared by the transport tests (streams, TLS)."""

from __future__ import annotations

import asyncio
from typing import Any


class Collect(asyncio.Protocol):
    """Records what the transport delivers, in order, with futures to await each step
    (`made`, `eof`, `lost`, `enough` once `wanted` bytes are in) and `writable` following
    pause_writing/resume_writing. A second connection_lost shows as a second "lost" in
    `events`."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.transport: Any = None
        self.events: list[str] = []
        self.data = bytearray()
        self.made = loop.create_future()
        self.lost = loop.create_future()
        self.eof = loop.create_future()
        self.wanted = 0
        self.enough = loop.create_future()
        self.paused = 0
        self.resumed = 0
        self.writable = asyncio.Event()
        self.writable.set()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.events.append("made")
        self.made.set_result(None)

    def data_received(self, data: bytes) -> None:
        if not self.events or self.events[-1] != "data":
            self.events.append("data")
        self.data += data
        if self.wanted and len(self.data) >= self.wanted and not self.enough.done():
            self.enough.set_result(None)

    def eof_received(self) -> bool | None:
        self.events.append("eof")
        self.eof.set_result(None)
        return None

    def pause_writing(self) -> None:
        self.paused += 1
        self.writable.clear()

    def resume_writing(self) -> None:
        self.resumed += 1
        self.writable.set()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.events.append("lost")
        if not self.lost.done():
            self.lost.set_result(exc)

    async def wait_for_bytes(self, n: int) -> bytes:
        self.wanted = n
        if len(self.data) >= n and not self.enough.done():
            self.enough.set_result(None)
        await self.enough
        return bytes(self.data)
