"""cqloop.worker_events._sigwake: signals as loop callbacks, through signal.set_wakeup_fd.

Owns `SignalReader` and `watch_signals()`. The cqloop.workers supervisor uses SignalReader
itself: it must know every fd it holds, to close them in each worker it forks, and a
loop's own signal machinery keeps its fds to itself. Workers and the standalone broker use
watch_signals(): the loop's add_signal_handler where the loop has it (so an app's own
signal handlers on the same loop keep working), else a SignalReader.

Why set_wakeup_fd and not a flag set by a Python handler: a Python-level handler runs only
when the interpreter gets control, and a signal that lands just before the loop enters
epoll_wait would wait for the next unrelated wake-up. The C-level handler CPython installs
writes the signal number to the wakeup socket at once, so the loop's reader sees it. The
Python handler we install is a no-op: it only has to exist for CPython to install its C
handler (and it keeps SIGINT from raising KeyboardInterrupt in the middle of a callback).

Main thread only (set_wakeup_fd's rule). One SignalReader per process at a time.
"""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Callable
from typing import Any

__all__ = ["SignalReader", "watch_signals"]

# Signal numbers are single bytes on the wakeup socket; read them in batches of this many.
READ_CHUNK_BYTES = 256


def _ignore_in_python(signum: int, frame: Any) -> None:
    """The wakeup socket carries the signal; nothing to do here."""


class SignalReader:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        signals: tuple[signal.Signals, ...],
        callback: Callable[[int], object],
    ) -> None:
        self._loop = loop
        self._callback = callback
        self._rsock, self._wsock = socket.socketpair()
        self._rsock.setblocking(False)
        self._wsock.setblocking(False)
        self._previous = {sig: signal.signal(sig, _ignore_in_python) for sig in signals}
        self._previous_wakeup = signal.set_wakeup_fd(
            self._wsock.fileno(), warn_on_full_buffer=False
        )
        loop.add_reader(self._rsock.fileno(), self._on_readable)

    def fds(self) -> tuple[int, int]:
        return self._rsock.fileno(), self._wsock.fileno()

    def close(self) -> None:
        if self._rsock.fileno() < 0:
            return
        self._loop.remove_reader(self._rsock.fileno())
        signal.set_wakeup_fd(self._previous_wakeup)
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._rsock.close()
        self._wsock.close()

    def _on_readable(self) -> None:
        try:
            data = self._rsock.recv(READ_CHUNK_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        for signum in data:
            self._callback(signum)


def watch_signals(
    loop: asyncio.AbstractEventLoop,
    signals: tuple[signal.Signals, ...],
    callback: Callable[[int], object],
) -> Callable[[], None]:
    """Call `callback(signum)` on the loop for each of `signals`; returns the undo."""
    added: list[signal.Signals] = []
    try:
        for sig in signals:
            loop.add_signal_handler(sig, callback, int(sig))
            added.append(sig)
    except NotImplementedError:
        for sig in added:
            loop.remove_signal_handler(sig)
        return SignalReader(loop, signals, callback).close

    def undo() -> None:
        for sig in added:
            loop.remove_signal_handler(sig)

    return undo
