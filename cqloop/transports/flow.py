"""Flow control and callback context shared by the Python transports (datagram.py, pipes.py).

CallbackContext holds the contextvars.Context a transport was made in and the two ways into
it: `_soon` (call_soon in it) and `_in_context` (call now in it). Every protocol callback
goes through one of them, or runs from a reader/writer handle added through `_in_context`
(the handle captures the context current when it is added), so that a call from another
task (write, close, resume_reading) never runs the protocol in that task's context.

ReadFlowMixin gives is_reading/pause_reading/resume_reading on top of a transport's
`_start_reading`/`_stop_reading` (which add and remove its fd's reader); WriteFlowMixin
gives the write buffer limits and the pause_writing/resume_writing calls on top of its
`get_write_buffer_size()`. Both read the attributes every such transport has: `_loop`,
`_protocol`, `_closing`, and `_paused` (reading) or `_high_water`, `_low_water`,
`_protocol_paused` (writing).

The compiled stream transport has its own copy of the same rules in stream.pyx, where a
Python call would cost more than the rule itself.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable
from typing import Any

from cqloop._core.contexts import run_in_context
from cqloop._core.stream import water_marks

__all__ = [
    "CallbackContext",
    "ReadFlowMixin",
    "WriteFlowMixin",
    "call_flow_control",
    "report_fatal_error",
    "set_result_unless_cancelled",
]

logger = logging.getLogger("asyncio")


def set_result_unless_cancelled(fut: asyncio.Future[Any], result: Any) -> None:
    """Resolve a transport's waiter, which its creator may have cancelled meanwhile."""
    if not fut.cancelled():
        fut.set_result(result)


def report_fatal_error(transport: Any, exc: BaseException, message: str, *, expected: bool) -> None:
    """Report an error that ends a transport, as asyncio does: an expected one (the
    peer's or the system's news: EPIPE, a reset, a pty's EIO) is logged only in debug
    mode; anything else is a bug, reported to the loop's exception handler. Called from
    the except block that caught `exc` (the debug log shows its traceback)."""
    loop = transport._loop
    if expected:
        if loop.get_debug():
            logger.debug("%r: %s", transport, message, exc_info=True)
        return
    loop.call_exception_handler(
        {
            "message": message,
            "exception": exc,
            "transport": transport,
            "protocol": transport._protocol,
        }
    )


def call_flow_control(transport: Any, name: str) -> None:
    """Call transport._protocol.pause_writing() or resume_writing(). An error in it is
    the protocol's: it goes to the loop's exception handler, as asyncio reports it, and
    never up into the transport's write path. SystemExit and KeyboardInterrupt pass."""
    protocol = transport._protocol
    try:
        run_in_context(transport._context, getattr(protocol, name))
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as exc:
        transport._loop.call_exception_handler(
            {
                "message": f"protocol.{name}() failed",
                "exception": exc,
                "transport": transport,
                "protocol": protocol,
            }
        )


class CallbackContext:
    """The context a transport's protocol callbacks run in: the one current when it was
    made (see the module docstring)."""

    _loop: Any
    _context: contextvars.Context

    def _capture_context(self) -> None:
        self._context = contextvars.copy_context()

    def _soon(self, callback: Callable[..., object], *args: Any) -> None:
        self._loop.call_soon(callback, *args, context=self._context)

    def _in_context(self, callback: Callable[..., Any], *args: Any) -> Any:
        return run_in_context(self._context, callback, *args)


class ReadFlowMixin:
    """pause_reading/resume_reading, as asyncio's transports have them."""

    _loop: Any
    _closing: bool
    _paused: bool

    def _start_reading(self) -> None:
        raise NotImplementedError

    def _stop_reading(self) -> None:
        raise NotImplementedError

    def is_reading(self) -> bool:
        return not self._paused and not self._closing

    def pause_reading(self) -> None:
        if not self.is_reading():
            return
        self._paused = True
        self._stop_reading()
        if self._loop.get_debug():
            logger.debug("%r pauses reading", self)

    def resume_reading(self) -> None:
        if self._closing or not self._paused:
            return
        self._paused = False
        self._start_reading()
        if self._loop.get_debug():
            logger.debug("%r resumes reading", self)


class WriteFlowMixin:
    """Write buffer limits and the protocol's pause_writing/resume_writing."""

    _high_water: int
    _low_water: int
    _protocol_paused: bool

    def get_write_buffer_size(self) -> int:
        raise NotImplementedError

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (self._low_water, self._high_water)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """pause_writing() is called when the buffer grows past `high` bytes, and
        resume_writing() when it shrinks to `low` (defaults: 64 KiB, and high // 4)."""
        self._high_water, self._low_water = water_marks(high, low)
        self._maybe_pause_protocol()

    def _maybe_pause_protocol(self) -> None:
        if self.get_write_buffer_size() <= self._high_water or self._protocol_paused:
            return
        self._protocol_paused = True
        call_flow_control(self, "pause_writing")

    def _maybe_resume_protocol(self) -> None:
        if self._protocol_paused and self.get_write_buffer_size() <= self._low_water:
            self._protocol_paused = False
            call_flow_control(self, "resume_writing")
