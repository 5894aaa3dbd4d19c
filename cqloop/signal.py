"""cqloop.signal: cqueues' signal module: signal listeners on signalfd, and the process's
signal dispositions and the thread's signal mask.

Example (a whole program; it runs as it is):

    import asyncio
    import os

    from cqloop import signal


    async def main():
        with signal.listen(signal.SIGTERM, signal.SIGHUP) as listener:
            os.kill(os.getpid(), signal.SIGHUP)  # as `kill -HUP` from a shell would
            os.kill(os.getpid(), signal.SIGTERM)
            while (signo := await listener.wait(timeout=10)) != signal.SIGTERM:
                assert signo == signal.SIGHUP  # reload the configuration, say
        # Closed: SIGTERM and SIGHUP are unblocked again (see below).


    asyncio.run(main())

Owns: `Listener` (a signalfd, the signals read from it but not yet returned, and a
polling interval) and thin wrappers over the standard library's signal functions. A
Listener is pollable (`pollfd`/`events`/`timeout`), awaitable (`await listener` is
`await listener.wait()`), usable on cqloop, stock asyncio and uvloop through
cqloop.pollable.poll, and from outside any loop with select() on `fileno()`.

Who calls in: application code. A Listener belongs to one thread: the one that called
listen() (see below); it is not thread-safe.

Why listen() blocks the signals, and what that means for threads
----------------------------------------------------------------
A signalfd does not catch signals. It reports the signals that are *pending*, and a signal
stays pending only while every thread that could take it blocks it: an unblocked thread
takes it at once and the signalfd never sees it (the disposition acts instead: a Python
handler, or the default action, which for SIGTERM ends the process). So listen() blocks
its signals in the calling thread for as long as the listener is open. Closing it (or the
end of its `with` block, or its collection) unblocks them again in that thread, unless
they were already blocked when the first listener took them: listeners of one thread
count, per signal, and the last one to close gives the signal back. A signal that arrived
and was not read by then is delivered at once, to its disposition (Ctrl-C raises
KeyboardInterrupt, SIGTERM's default action ends the process): unblocking loses nothing.
`block()`/`unblock()` change the mask directly and are not counted.

The mask is per thread. While a listener is open:
- threads created meanwhile inherit the calling thread's mask and block the signals too,
  and keep them blocked after the listener closes (closing changes the mask of the
  listener's own thread only). A listener made in such a thread finds its signals already
  blocked and so leaves them blocked when it closes;
- threads that already existed do not block them: a signal sent to the process (kill,
  Ctrl-C) may be delivered to one of them and never reach the listener. So call listen()
  early, in the thread that runs the loop, before other threads start. This includes
  threads a loop starts on demand, as work comes: the default executor's workers
  (run_in_executor, getaddrinfo on asyncio and cqloop) and libuv's thread pool (uvloop's
  getaddrinfo) copy the mask of the thread that starts them;
- cqloop.thread.start() starts threads with every signal blocked, as cqueues' does, so
  they never take a signal meant for a listener.

Close a listener in the thread that made it: closed from another thread (or collected
there), it cannot change its own thread's mask, and its signals stay blocked there.

Thread-directed signals (`raise_()`, which is raise(3), pthread_kill, a fault) are pending
for that thread only, and a signalfd reports them only when read from that thread: read a
listener in the thread that created it. Process-directed ones (kill(2), the terminal) are
seen from any thread.

Other facts:
- Two listeners for one signal both poll readable until one of them reads it; then the
  other sees nothing. Give each signal to one listener (one listener may take many).
- A standard signal sent twice before it is read is reported once (the kernel keeps one
  pending instance); real-time signals queue, and each is reported.
- Child processes inherit the mask across fork and exec: a program started while a
  listener for SIGTERM is open starts with SIGTERM blocked. Start children after the
  listener closes, or unblock it in the child (preexec_fn, or the program's own
  start-up), when that matters.
- SIGKILL and SIGSTOP cannot be blocked, caught or listened for; listen() refuses them.
- ignore(), default() and discard() set dispositions through the standard library, so
  `signal.getsignal` stays truthful; like `signal.signal`, they work only in the main
  thread. block(), unblock() and raise_() work in any thread.
"""

from __future__ import annotations

import errno as _errno
import os
import signal as _signal
import threading
from collections import deque
from collections.abc import Generator, Iterable, Mapping
from signal import (
    SIGABRT,
    SIGALRM,
    SIGBUS,
    SIGCHLD,
    SIGCONT,
    SIGFPE,
    SIGHUP,
    SIGILL,
    SIGINT,
    SIGIO,
    SIGKILL,
    SIGPIPE,
    SIGPROF,
    SIGPWR,
    SIGQUIT,
    SIGRTMAX,
    SIGRTMIN,
    SIGSEGV,
    SIGSTKFLT,
    SIGSTOP,
    SIGSYS,
    SIGTERM,
    SIGTRAP,
    SIGTSTP,
    SIGTTIN,
    SIGTTOU,
    SIGURG,
    SIGUSR1,
    SIGUSR2,
    SIGVTALRM,
    SIGWINCH,
    SIGXCPU,
    SIGXFSZ,
)
from types import FrameType, MappingProxyType
from typing import Any

from cqloop._core import osext
from cqloop.pollable import FdPollable, poll_until

__all__ = [
    "SIGABRT",
    "SIGALRM",
    "SIGBUS",
    "SIGCHLD",
    "SIGCONT",
    "SIGFPE",
    "SIGHUP",
    "SIGILL",
    "SIGINT",
    "SIGIO",
    "SIGKILL",
    "SIGPIPE",
    "SIGPROF",
    "SIGPWR",
    "SIGQUIT",
    "SIGRTMAX",
    "SIGRTMIN",
    "SIGSEGV",
    "SIGSTKFLT",
    "SIGSTOP",
    "SIGSYS",
    "SIGTERM",
    "SIGTRAP",
    "SIGTSTP",
    "SIGTTIN",
    "SIGTTOU",
    "SIGURG",
    "SIGUSR1",
    "SIGUSR2",
    "SIGVTALRM",
    "SIGWINCH",
    "SIGXCPU",
    "SIGXFSZ",
    "Listener",
    "block",
    "default",
    "discard",
    "ignore",
    "listen",
    "names",
    "raise_",
    "strsignal",
    "unblock",
]

# Signal number -> name ("SIGTERM"); the name -> number direction is this module's
# attributes, as cqueues' signal table has both.
names: Mapping[int, str] = MappingProxyType({int(s): s.name for s in _signal.Signals})

# Signals no process can block or catch.
_UNCATCHABLE = frozenset({int(SIGKILL), int(SIGSTOP)})
# How many signalfd records one read takes at most.
_READ_BATCH_RECORDS = 16


def _as_signal(signo: int) -> int:
    """signo as a Signals member when it has a name (prints as SIGTERM), else the int (a
    real-time signal such as SIGRTMIN + 3)."""
    try:
        return _signal.Signals(signo)
    except ValueError:
        return int(signo)


def _check_signals(signals: Iterable[int], what: str) -> list[int]:
    checked = []
    valid = _signal.valid_signals()
    for signo in signals:
        if not isinstance(signo, int) or isinstance(signo, bool):
            raise TypeError(f"{what}: a signal is an int, not {type(signo).__name__}")
        if signo not in valid:
            raise ValueError(f"{what}: not a signal number: {signo}")
        checked.append(int(signo))
    return checked


# -- the thread's mask and the process's dispositions -------------------------------------


def block(*signals: int) -> set[int]:
    """Block `signals` in the calling thread; returns the set blocked before."""
    return _signal.pthread_sigmask(_signal.SIG_BLOCK, _check_signals(signals, "block"))


def unblock(*signals: int) -> set[int]:
    """Unblock `signals` in the calling thread; returns the set blocked before. A signal
    pending meanwhile is delivered at once (its disposition acts)."""
    return _signal.pthread_sigmask(_signal.SIG_UNBLOCK, _check_signals(signals, "unblock"))


def ignore(*signals: int) -> None:
    """Set the disposition of `signals` to SIG_IGN (main thread only). An ignored signal
    is discarded on arrival, so a listener never sees it either."""
    for signo in _check_signals(signals, "ignore"):
        _signal.signal(signo, _signal.SIG_IGN)


def default(*signals: int) -> None:
    """Set the disposition of `signals` to SIG_DFL (main thread only)."""
    for signo in _check_signals(signals, "default"):
        _signal.signal(signo, _signal.SIG_DFL)


def _discarded(signo: int, frame: FrameType | None) -> None:
    """The handler discard() installs: it does nothing, but its being there makes the
    signal interrupt blocking system calls, which SIG_IGN does not."""


def discard(*signals: int) -> None:
    """Install a do-nothing handler for `signals` (main thread only): the signals are
    swallowed, yet still interrupt a blocking system call, as cqueues' discard does."""
    for signo in _check_signals(signals, "discard"):
        _signal.signal(signo, _discarded)


def raise_(*signals: int) -> None:
    """raise(3) each of `signals`: send it to the calling thread. Blocked, it stays pending
    for this thread (a listener read from this thread reports it)."""
    for signo in _check_signals(signals, "raise_"):
        _signal.raise_signal(signo)


def strsignal(signo: int) -> str | None:
    """The system's description of signal `signo` ("Terminated"), or None if it has none."""
    return _signal.strsignal(signo)


# -- listeners ----------------------------------------------------------------------------


class _ThreadHolds(threading.local):
    """What the open listeners of this thread hold of its signal mask: per signal, how
    many of them listen for it, and which signals the first of them had to block (those
    the last one unblocks)."""

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.blocked_by_us: set[int] = set()


_holds = _ThreadHolds()


def _hold(signals: Iterable[int]) -> tuple[_ThreadHolds, int]:
    """Block `signals` in this thread for a new listener; returns the thread's holds and
    its id, which _release needs."""
    holds = _holds
    before = _signal.pthread_sigmask(_signal.SIG_BLOCK, signals)
    for signo in signals:
        count = holds.counts.get(signo, 0)
        if count == 0 and signo not in before:
            holds.blocked_by_us.add(signo)
        holds.counts[signo] = count + 1
    return holds, threading.get_ident()


def _release(holds: _ThreadHolds, thread_id: int, signals: Iterable[int]) -> None:
    """A listener of `thread_id` closed: unblock the signals no other listener of that
    thread holds and that a listener blocked. From another thread the mask is out of
    reach: those signals stay blocked in their thread and count as the user's."""
    here = threading.get_ident() == thread_id
    give_back = []
    for signo in signals:
        count = holds.counts.get(signo, 0) - 1
        if count > 0:
            holds.counts[signo] = count
            continue
        holds.counts.pop(signo, None)
        if signo in holds.blocked_by_us:
            holds.blocked_by_us.discard(signo)
            if here:
                give_back.append(signo)
    if give_back:
        _signal.pthread_sigmask(_signal.SIG_UNBLOCK, give_back)


def listen(*signals: int) -> Listener:
    """A listener for `signals`, which are blocked in the calling thread until it closes
    (the module docstring says why, and what it means for other threads)."""
    return Listener(*signals)


class Listener(FdPollable):
    """A signalfd for a set of signals. `await wait()` returns the next one."""

    __slots__ = ("_holds", "_interval", "_pending", "_signals", "_stats")
    _WHAT = "signal listener"

    def __init__(self, *signals: int) -> None:
        self._fd = -1
        checked = _check_signals(signals, "listen")
        if not checked:
            raise ValueError("listen: no signals given")
        refused = sorted(set(checked) & _UNCATCHABLE)
        if refused:
            raise ValueError(
                f"listen: {', '.join(names[s] for s in refused)} cannot be blocked or caught"
            )
        self._signals = frozenset(checked)
        self._pending: deque[int] = deque()
        self._interval: float | None = None
        self._stats = {"received": 0, "reads": 0, "waits": 0}
        self._holds: tuple[_ThreadHolds, int] | None = None
        # Block first: a signal sent between the two calls then waits, pending, for the
        # signalfd, instead of being delivered.
        self._holds = _hold(self._signals)
        try:
            self._fd = osext.signalfd(-1, checked)
        except BaseException:
            self._release_signals()
            raise

    # -- the pollable protocol (the rest is FdPollable's) --

    def timeout(self) -> float | None:
        """0 while signals already read wait to be returned; otherwise the interval set
        by settimeout() (None: no timeout)."""
        if self._pending:
            return 0.0
        return self._interval

    def settimeout(self, timeout: float | None) -> float | None:
        """Set the polling interval: a wait re-reads the signalfd at least this often, as
        cqueues' settimeout does on systems without signalfd (here the fd always wakes
        the wait, so the interval only adds checks). Returns the previous one."""
        if timeout is not None:
            timeout = float(timeout)
            if not timeout > 0.0:  # also refuses NaN
                raise ValueError(f"settimeout: not a positive interval: {timeout}")
        previous, self._interval = self._interval, timeout
        return previous

    # -- reading --

    @property
    def signals(self) -> frozenset[int]:
        """The signals this listener reports."""
        return self._signals

    def get_nowait(self) -> int | None:
        """The next signal if one has arrived, else None; never waits (the non-blocking
        twin of wait(), cqueues' C-level `signal:get`)."""
        self._check_open()
        if not self._pending:
            self._read()
        if self._pending:
            return _as_signal(self._pending.popleft())
        return None

    async def wait(self, timeout: float | None = None) -> int | None:
        """Wait for one of the signals and return its number (a `signal.Signals` member
        where it has a name), or None when `timeout` seconds pass first."""
        self._check_open()
        self._stats["waits"] += 1
        return await poll_until(self, self.get_nowait, timeout)

    def __await__(self) -> Generator[Any, None, int | None]:
        return self.wait().__await__()

    def statistics(self) -> dict[str, int]:
        """Counts since creation: signals received, reads of the signalfd, waits begun,
        and how many signals were read but not yet returned."""
        return {**self._stats, "pending": len(self._pending)}

    # -- lifecycle --

    def close(self) -> None:
        """Close the signalfd and unblock the signals this listener blocked, unless
        another listener of this thread still listens for them (see the module
        docstring). Waits in progress wake and raise ValueError (at once on this thread's
        loops, at their next iteration on other threads'). Idempotent."""
        super().close()

    def _on_close(self) -> None:
        self._pending.clear()
        self._release_signals()

    def __del__(self) -> None:
        super().__del__()
        self._release_signals()

    def __repr__(self) -> str:
        state = "closed" if self._fd < 0 else f"fd={self._fd}"
        listened = ",".join(names.get(s, str(s)) for s in sorted(self._signals))
        return f"<cqloop.signal.Listener {listened} {state}>"

    # -- private --

    def _release_signals(self) -> None:
        holds = getattr(self, "_holds", None)
        if holds is not None:
            self._holds = None
            _release(holds[0], holds[1], self._signals)

    def _read(self) -> None:
        try:
            data = os.read(self._fd, osext.SIGINFO_SIZE * _READ_BATCH_RECORDS)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno == _errno.EINTR:  # pragma: no cover - os.read retries EINTR
                return
            raise
        self._stats["reads"] += 1
        for signo, _code, _pid, _uid, _status in osext.decode_siginfo(data):
            self._pending.append(signo)
            self._stats["received"] += 1
