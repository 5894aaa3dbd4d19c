"""cqloop.thread: cqueues' thread module: a function in a new OS thread, a socket to talk
to it, and a pollable, awaitable handle to join it.

    async def worker(sock, n):          # runs in the new thread, on its own cqloop loop
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(sock, str(n * n).encode())

    thr, sock = thread.start(worker, 7)
    data = await asyncio.get_running_loop().sock_recv(sock, 100)
    await thr.join()
    sock.close()

Owns: `Thread` (the threading.Thread, an eventfd that turns readable when the function
has finished, and the function's outcome) and `start`. The caller's end of the socket
pair is the caller's to close; the thread's end is closed when the function returns.

Contract:
- `start(fn, *args)` makes a connected AF_UNIX stream socket pair and calls
  `fn(child_socket, *args)` in a new thread. When fn is a coroutine function (or returns a
  coroutine), the coroutine runs to completion on a new cqloop loop of the thread's own,
  with asyncio.run()'s clean-up (async generators, the default executor), and the
  thread's end of the socket is non-blocking; for a plain function it is blocking. The
  caller's end is always non-blocking (it is meant for the caller's loop: sock_recv,
  sock_sendall, or a cq socket wrapped around it). Arguments are passed as they are,
  not copied.
- The new thread starts with every signal blocked, as cqueues' threads do (its mask is
  set in the starting thread for the instant of the start, then restored): a signal
  meant for a cqloop.signal listener is then never taken by this thread. Programs the
  thread starts inherit that mask.
- `await thr.join(timeout=None)` returns what fn returned, or raises what fn raised
  (any exception, SystemExit included: a thread that died is reported, never waited on
  forever); after `timeout` seconds it raises TimeoutError (errno ETIMEDOUT) and the
  thread runs on. Joining the thread from itself raises RuntimeError. Several tasks may
  join at once, and join again later: each gets the same outcome.
- The Thread is pollable (`pollfd()` the eventfd, `events()` "r") while it runs, and ready
  once fn has finished. The first join to return closes the eventfd; from then on
  `pollfd()` is None and `timeout()` 0, so polling a finished thread returns at once.
  A Thread dropped unjoined closes its eventfd when collected, and logs an exception
  fn raised that nobody retrieved.
- `current()` (cqueues' `thread.self()`) is the Thread running the calling code, or None
  outside threads start() made.
- The thread is a daemon thread: as with cqueues' threads in C, the process does not wait
  for it at exit (a thread left blocked on its socket would otherwise hang the exit).
  Join it to wait for it.

Who calls in: application code on any loop (cqloop, asyncio, uvloop), or none (start()
needs no loop; join() needs one). A Thread's methods are for the thread that started it.
"""

from __future__ import annotations

import asyncio
import errno
import inspect
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable, Generator
from typing import Any

from cqloop.pollable import cancel, poll

__all__ = ["Thread", "current", "start"]

logger = logging.getLogger(__name__)

_local = threading.local()


def current() -> Thread | None:
    """The Thread running the calling code, or None outside threads start() made."""
    return getattr(_local, "thread", None)


# cqueues' name for current().
self = current


def start(fn: Callable[..., Any], *args: Any) -> tuple[Thread, socket.socket]:
    """Call fn(child_socket, *args) in a new thread; returns the Thread and the caller's
    end of the socket pair."""
    if not callable(fn):
        raise TypeError(f"start: {fn!r} is not callable")
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    thread = None
    try:
        parent.setblocking(False)
        child.setblocking(not inspect.iscoroutinefunction(fn))
        thread = Thread(fn, child, args)
        thread._start()
    except BaseException:
        parent.close()
        child.close()
        if thread is not None:
            thread._close_fd()
        raise
    return thread, parent


class Thread:
    """A function running in its own OS thread; pollable until it ends, then joinable."""

    def __init__(self, fn: Callable[..., Any], child: socket.socket, args: tuple[Any, ...]):
        self._fn = fn
        self._child = child
        self._args = args
        self._done_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._finished = False
        self._result: Any = None
        self._exception: BaseException | None = None
        self._retrieved = False
        self._joining = 0
        self._thread = threading.Thread(
            target=self._run, name=f"cqloop.thread:{getattr(fn, '__qualname__', fn)!s}"
        )
        self._thread.daemon = True

    # -- the pollable protocol --

    def pollfd(self) -> int | None:
        """The eventfd that turns readable when fn has finished; None once joined."""
        return self._done_fd if self._done_fd >= 0 else None

    def fileno(self) -> int:
        if self._done_fd < 0:
            raise ValueError("the thread has been joined: its eventfd is closed")
        return self._done_fd

    def events(self) -> str:
        return "r"

    def timeout(self) -> float | None:
        return 0.0 if self._finished else None

    # -- state --

    @property
    def name(self) -> str:
        return self._thread.name

    @property
    def ident(self) -> int | None:
        return self._thread.ident

    def done(self) -> bool:
        """True once fn has finished (returned or raised)."""
        return self._finished

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    # -- joining --

    async def join(self, timeout: float | None = None) -> Any:
        """Wait for fn to finish; return its result or raise its exception. Raises
        TimeoutError (errno ETIMEDOUT) after `timeout` seconds."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("a thread cannot join itself")
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + max(0.0, timeout)
        self._joining += 1
        try:
            while not self._finished:
                if deadline is None:
                    await poll(self)
                else:
                    remaining = deadline - loop.time()
                    if remaining <= 0.0:
                        raise TimeoutError(
                            errno.ETIMEDOUT, f"thread {self.name!r} did not finish in {timeout} s"
                        )
                    await poll(self, timeout=remaining)
        finally:
            self._joining -= 1
        # fn has finished and the thread is about to end: its last act was the eventfd
        # write, so this blocks only for the moments the interpreter takes to retire it.
        self._thread.join()
        if self._joining == 0 and self._done_fd >= 0:
            # Another task may be polling this thread together with other objects; wake
            # it (the thread is done: that is the truth) and drop its registration before
            # the fd goes.
            cancel(self._done_fd)
            self._close_fd()
        self._retrieved = True
        if self._exception is not None:
            raise self._exception
        return self._result

    def __await__(self) -> Generator[Any, None, Any]:
        return self.join().__await__()

    def __repr__(self) -> str:
        state = "finished" if self._finished else "running"
        return f"<cqloop.thread.Thread {self.name!r} {state}>"

    def __del__(self) -> None:
        exception = getattr(self, "_exception", None)
        if exception is not None and not self._retrieved:
            logger.error(
                "cqloop.thread %r raised and was never joined",
                self.name,
                exc_info=exception,
            )
        self._close_fd()

    # -- private --

    def _close_fd(self) -> None:
        fd, self._done_fd = getattr(self, "_done_fd", -1), -1
        if fd >= 0:
            os.close(fd)

    def _start(self) -> None:
        # The new thread inherits the mask of the thread that starts it: block everything
        # for the instant of the start (signals arriving meanwhile wait, pending) and
        # restore the caller's mask. SIGKILL and SIGSTOP are left out by the kernel.
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        try:
            self._thread.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    def _run(self) -> None:
        """The new thread's whole life. Its last act is the eventfd write."""
        _local.thread = self
        fn, args, child = self._fn, self._args, self._child
        self._fn = self._args = None  # type: ignore[assignment]
        try:
            result = fn(child, *args)
            if inspect.iscoroutine(result):
                child.setblocking(False)
                result = _run_on_own_loop(result)
            self._result = result
        except BaseException as exc:  # every outcome goes to join()
            self._exception = exc
        finally:
            child.close()
            self._child = None  # type: ignore[assignment]
            _local.thread = None
            self._finished = True
            os.eventfd_write(self._done_fd, 1)


def _run_on_own_loop(coro: Any) -> Any:
    # Imported here: cqloop's package imports this module's siblings, not the reverse.
    from cqloop.policy import new_event_loop

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(coro)
