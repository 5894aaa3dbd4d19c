"""cqloop.transports.signals: add_signal_handler and remove_signal_handler.

SignalsMixin is a base of cqloop.loop.Loop. Written against the loop's public API
(add_reader/remove_reader, call_soon) and the signal module; Loop.close() calls
`_close_signal_handlers`.

How a signal reaches the loop (asyncio's way, chosen over signalfd):
- add_signal_handler installs a Python-level handler that does nothing, and points
  signal.set_wakeup_fd at the write end of a socketpair whose read end the loop watches with
  add_reader. CPython's C-level handler writes the signal number to that fd the moment the
  signal arrives, so a loop blocked in epoll_wait wakes at once, with no race against the
  check before the wait; the loop reads the numbers and queues each signal's handler as an
  ordinary callback, so it runs inside the loop, in the context add_signal_handler was
  called in, like any other callback.
- signalfd was the alternative. It needs the signal blocked in *every* thread, or a thread
  that has it unblocked takes it instead; a Python process cannot promise that (threads
  started before the loop, by libraries or the executor, keep their masks), and a blocked
  signal also stays blocked across exec in every child the program spawns. The wakeup fd
  has neither problem, and it is what asyncio's users already rely on (one wakeup fd per
  process, set from the main thread only).
- The socketpair is made on the first add_signal_handler and lives until close(); the
  wakeup fd is set while any handler is installed and reset to -1 when the last goes.

Ctrl-C: add_signal_handler(SIGINT) replaces default_int_handler, so no KeyboardInterrupt is
raised while it is installed; remove_signal_handler(SIGINT) puts default_int_handler back
(other signals go back to SIG_DFL), as asyncio does. Without a SIGINT handler of the loop's,
Ctrl-C raises KeyboardInterrupt from wherever the main thread is: a blocking epoll_wait is
interrupted (EINTR) and the poller runs Python's signal handlers at once (poller.pyx), so
run_forever, run_until_complete and cqloop.run() (asyncio.Runner's own SIGINT handler,
which cancels the main task) behave as on asyncio's loop.

Rules, as asyncio's: only from the main thread (RuntimeError otherwise, from
set_wakeup_fd's refusal); SIGKILL and SIGSTOP cannot be caught (RuntimeError); a signal
number must be an int (TypeError) and a valid signal (ValueError); coroutines are refused
(TypeError); a closed loop refuses (RuntimeError).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
import socket
import sys
import warnings
from asyncio import coroutines
from collections.abc import Callable
from typing import Any, cast

from cqloop._core.handles import Handle

__all__ = ["SignalsMixin"]

logger = logging.getLogger("asyncio")

# Signal numbers are read from the wakeup socket in chunks of this many bytes (one a signal).
WAKEUP_READ_BYTES = 4096


def _ignore_signal(signum: int, frame: Any) -> None:
    """The Python-level handler of a signal the loop handles: the C-level handler has
    already written the number to the wakeup fd, which is all the loop needs."""


def _check_signal(sig: Any) -> None:
    if not isinstance(sig, int):
        raise TypeError(f"sig must be an int, not {sig!r}")
    if sig not in signal.valid_signals():
        raise ValueError(f"invalid signal number {sig}")


class SignalsMixin:
    """add_signal_handler and remove_signal_handler, for cqloop.loop.Loop."""

    # Created on first use (Loop.__init__ does not call the mixins').
    _signal_handlers: dict[int, Handle] | None = None
    _signal_socks: tuple[socket.socket, socket.socket] | None = None

    def add_signal_handler(self, sig: int, callback: Callable[..., object], *args: Any) -> None:
        """Call callback(*args) in the loop whenever signal `sig` arrives, replacing any
        earlier handler of it. Main thread only."""
        loop = cast(asyncio.AbstractEventLoop, self)
        if coroutines.iscoroutine(callback) or coroutines.iscoroutinefunction(callback):
            raise TypeError("coroutines cannot be used with add_signal_handler()")
        _check_signal(sig)
        if loop.is_closed():
            raise RuntimeError("Event loop is closed")
        _, wsock = self._signal_wakeup_socks()
        try:
            # Refused outside the main thread (ValueError): the loop then cannot hear signals.
            signal.set_wakeup_fd(wsock.fileno(), warn_on_full_buffer=False)
        except (ValueError, OSError) as exc:
            raise RuntimeError(str(exc)) from None

        handlers = self._signal_handlers
        if handlers is None:
            handlers = self._signal_handlers = {}
        handlers[sig] = Handle(callback, args, loop, None)
        try:
            signal.signal(sig, _ignore_signal)
            # Let system calls the signal interrupts restart (PEP 475 retries them anyway).
            signal.siginterrupt(sig, False)
        except OSError as exc:
            del handlers[sig]
            if not handlers:
                self._reset_wakeup_fd()
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f"sig {sig:d} cannot be caught") from None
            raise

    def remove_signal_handler(self, sig: int) -> bool:
        """Remove the handler of `sig` and restore the default disposition
        (default_int_handler for SIGINT). True if there was a handler."""
        _check_signal(sig)
        handlers = self._signal_handlers
        if not handlers or sig not in handlers:
            return False
        del handlers[sig]
        default = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
        try:
            signal.signal(sig, default)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f"sig {sig} cannot be caught") from None
            raise
        if not handlers:
            self._reset_wakeup_fd()
        return True

    # -- private ----------------------------------------------------------------------------

    def _signal_wakeup_socks(self) -> tuple[socket.socket, socket.socket]:
        socks = self._signal_socks
        if socks is None:
            rsock, wsock = socket.socketpair()
            rsock.setblocking(False)
            # set_wakeup_fd requires a non-blocking fd: a full buffer must not block the
            # C-level signal handler.
            wsock.setblocking(False)
            try:
                cast(asyncio.AbstractEventLoop, self).add_reader(
                    rsock.fileno(), self._on_signal_wakeup
                )
            except BaseException:
                rsock.close()
                wsock.close()
                raise
            socks = self._signal_socks = (rsock, wsock)
        return socks

    def _reset_wakeup_fd(self) -> None:
        try:
            signal.set_wakeup_fd(-1)
        except (ValueError, OSError) as exc:
            logger.info("set_wakeup_fd(-1) failed: %s", exc)

    def _on_signal_wakeup(self) -> None:
        socks = self._signal_socks
        if socks is None:
            return
        while True:
            try:
                data = socks[0].recv(WAKEUP_READ_BYTES)
            except (BlockingIOError, InterruptedError):
                return
            if not data:
                return
            for signum in data:
                self._on_signal(signum)

    def _on_signal(self, sig: int) -> None:
        handlers = self._signal_handlers
        handle = None if handlers is None else handlers.get(sig)
        if handle is None:
            return  # a signal whose handler was removed meanwhile, or someone else's
        if handle.cancelled():
            self.remove_signal_handler(sig)
            return
        # Through the ready queue, so the handler runs as an ordinary callback (in the
        # context the handle captured: _run_handle enters it).
        cast(asyncio.AbstractEventLoop, self).call_soon(handle._run_handle)

    def _disarm_signal_wakeup(self) -> None:
        """In a forked child (the at-fork hook): the wakeup fd is the parent's socket, so a
        signal to the child would wake the parent's loop. Stop writing there; reset()
        re-arms a socket of the child's own."""
        socks = self._signal_socks
        if socks is None:
            return
        try:
            previous = signal.set_wakeup_fd(-1)
            if previous not in (-1, socks[1].fileno()):
                signal.set_wakeup_fd(previous)  # someone else's: put it back
        except (ValueError, OSError):
            pass  # not the main thread: nothing can be done from here

    def _reset_signal_wakeup(self) -> None:
        """Loop.reset(), after the kernel's own reset: a wakeup socketpair of this process's
        own, watched by the new kernel queue, and the wakeup fd pointed at it again if any
        handler is installed."""
        socks, self._signal_socks = self._signal_socks, None
        if socks is not None:
            # The parent's sockets are shared: close only our copies; the watcher went
            # with the kernel's reset.
            for sock in socks:
                sock.close()
        if self._signal_handlers:
            _, wsock = self._signal_wakeup_socks()
            signal.set_wakeup_fd(wsock.fileno(), warn_on_full_buffer=False)

    def _close_signal_handlers(self) -> None:
        """Loop.close(): remove every handler (restoring default dispositions) and close
        the wakeup socketpair."""
        if self._signal_handlers:
            if sys.is_finalizing():
                # Signal handlers cannot be changed during interpreter shutdown.
                warnings.warn(
                    f"Closing the loop {self!r} on interpreter shutdown stage, "
                    "skipping signal handlers removal",
                    ResourceWarning,
                    source=self,
                    stacklevel=2,
                )
                self._signal_handlers.clear()
            else:
                for sig in list(self._signal_handlers):
                    self.remove_signal_handler(sig)
        socks, self._signal_socks = self._signal_socks, None
        if socks is not None:
            rsock, wsock = socks
            cast(asyncio.AbstractEventLoop, self).remove_reader(rsock.fileno())
            rsock.close()
            wsock.close()
