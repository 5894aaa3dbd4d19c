"""cqloop.loop: Loop, the asyncio event loop API on cqloop's kernel queue.

Owns the policy half of the loop: argument checking, run_forever/run_until_complete set-up,
tasks and the task factory, executors, async generator hooks, the exception handler API,
debug-mode formatting, and nesting (step, nest_in, the pollable trio). The hot half
(scheduling, timers, fd registrations, the run-once step) is the compiled Kernel this class
extends; see cqloop/_core/kernel.pyx and docs/design.md.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import errno
import logging
import os
import sys
import threading
import traceback
import warnings
import weakref
from asyncio import constants, coroutines, events, format_helpers, futures, tasks
from collections.abc import Callable
from typing import Any, TypeVar, TypeVarTuple, Unpack

from cqloop._core.kernel import Kernel
from cqloop.controller import ControllerMixin
from cqloop.nesting import NestingMixin
from cqloop.transports.datagram import DatagramMixin
from cqloop.transports.flow import set_result_unless_cancelled
from cqloop.transports.pipes import PipesMixin
from cqloop.transports.process import ProcessMixin
from cqloop.transports.signals import SignalsMixin
from cqloop.transports.sockops import SockOpsMixin
from cqloop.transports.streams import StreamsMixin

__all__ = ["Loop"]

# Rounds of ready callbacks one step() runs at most (see Loop.step): enough for the
# callback chains that resume a coroutine and finish the coroutines it wakes, few enough
# that callbacks which keep queueing callbacks hand control back to the outer poller.
STEP_MAX_ROUNDS = 64

# The "asyncio" logger, so that users' logging set-up applies as it is.
logger = logging.getLogger("asyncio")

_Ts = TypeVarTuple("_Ts")
_T = TypeVar("_T")


def _fileobj_to_fd(fileobj: Any) -> int:
    """An fd from an int or an object with fileno(), as asyncio accepts them."""
    if isinstance(fileobj, int):
        fd = fileobj
    else:
        try:
            fd = int(fileobj.fileno())
        except (AttributeError, TypeError, ValueError):
            raise ValueError(f"Invalid file object: {fileobj!r}") from None
    if fd < 0:
        raise ValueError(f"Invalid file descriptor: {fd}")
    return fd


def _format_handle(handle: Any) -> str:
    callback = getattr(handle, "_callback", None)
    owner = getattr(callback, "__self__", None)
    if isinstance(owner, asyncio.Task):
        # A task's step: the task says more than its bound method does.
        return repr(owner)
    return str(handle)


def _debug_mode_requested() -> bool:
    # asyncio's rule: -X dev, or PYTHONASYNCIODEBUG unless -E.
    return sys.flags.dev_mode or (
        not sys.flags.ignore_environment and bool(os.environ.get("PYTHONASYNCIODEBUG"))
    )


def _run_until_complete_cb(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        exc = fut.exception()
        if isinstance(exc, (SystemExit, KeyboardInterrupt)):
            # The exception propagates from run_forever; stopping would mask it.
            return
    fut.get_loop().stop()


# The compiled handles are not asyncio.Handle subclasses (as uvloop's are not), so mypy sees
# Kernel's call_soon/call_later/call_at as incompatible with AbstractEventLoop's.
class Loop(  # type: ignore[misc]
    Kernel,
    ControllerMixin,
    NestingMixin,
    StreamsMixin,
    DatagramMixin,
    SockOpsMixin,
    PipesMixin,
    ProcessMixin,
    SignalsMixin,
    asyncio.AbstractEventLoop,
):
    """An asyncio event loop on epoll, and a cqueues controller: its fd is pollable and
    `step()` runs one cqueues step (one poll), so it nests inside any other loop."""

    def __init__(self, engine: str | None = None) -> None:
        # `engine` ("auto", "epoll", "io_uring"; None: CQLOOP_ENGINE or "auto") was taken
        # by the kernel when the instance was made; `self.engine` says which one runs.
        self._default_executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._executor_shutdown_called = False
        self._exception_handler: Callable[..., Any] | None = None
        self._task_factory: Callable[..., Any] | None = None
        self._asyncgens: weakref.WeakSet[Any] = weakref.WeakSet()
        self._asyncgens_shutdown_called = False
        self._coroutine_origin_tracking_enabled = False
        self._coroutine_origin_tracking_saved_depth: int | None = None
        # The loop this one was nested into with nest_in(), so close() can leave it.
        self._outer: asyncio.AbstractEventLoop | None = None
        self._outer_fd = -1
        # The controller's wrapped coroutines and their uncollected errors (controller.py).
        self._wrapped: set[asyncio.Task[Any]] = set()
        self._wrapped_errors: collections.deque[Any] = collections.deque()
        # The process whose kernel queue this is (see "fork" below).
        self._pid = os.getpid()
        _LOOPS.add(self)
        self.set_debug(_debug_mode_requested())

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} running={self.is_running()} "
            f"closed={self.is_closed()} debug={self.get_debug()}>"
        )

    def __del__(self, _warn: Callable[..., Any] = warnings.warn) -> None:
        if "_outer" not in self.__dict__:
            return  # never made: the kernel refused its engine before __init__ ran
        if not self.is_closed():
            _warn(f"unclosed event loop {self!r}", ResourceWarning, source=self)
            if not self.is_running():
                self.close()

    # -- running and stopping --------------------------------------------------------

    def _check_running(self) -> None:
        if self._forked:
            raise RuntimeError(self._forked_message())
        if self.is_running():
            raise RuntimeError("This event loop is already running")
        if events._get_running_loop() is not None:
            raise RuntimeError("Cannot run the event loop while another loop is running")

    def run_forever(self) -> None:
        """Run until stop() is called."""
        self._check_closed_py()
        self._check_running()
        self._set_coroutine_origin_tracking(self.get_debug())
        saved = self._begin_running()
        try:
            self._run_until_stopped()
        finally:
            self._end_running(saved)
            self._set_coroutine_origin_tracking(False)
            self._refresh_pollfd()
        if self._forked:
            # Forked from one of its callbacks: the at-fork hook stopped it in the child.
            raise RuntimeError(self._forked_message())

    def run_until_complete(self, future: Any) -> Any:
        """Run until `future` (a future, task or coroutine) is done; return its result."""
        self._check_closed_py()
        self._check_running()
        new_task = not futures.isfuture(future)
        future = tasks.ensure_future(future, loop=self)
        if new_task:
            # An exception in a task we made is raised here; don't also log it as
            # never retrieved.
            future._log_destroy_pending = False
        future.add_done_callback(_run_until_complete_cb)
        try:
            self.run_forever()
        except BaseException:
            if new_task and future.done() and not future.cancelled():
                # Retrieve the exception so it is not logged as never retrieved.
                future.exception()
            raise
        finally:
            future.remove_done_callback(_run_until_complete_cb)
        if not future.done():
            raise RuntimeError("Event loop stopped before Future completed.")
        return future.result()

    def _begin_running(self) -> tuple[Any, Any]:
        """Make this loop the running loop of this thread, with its async generator hooks
        (run_forever's and step's set-up). Returns what _end_running puts back."""
        saved = (events._get_running_loop(), sys.get_asyncgen_hooks())
        sys.set_asyncgen_hooks(
            firstiter=self._asyncgen_firstiter_hook,
            finalizer=self._asyncgen_finalizer_hook,
        )
        self._enter_running()
        events._set_running_loop(self)
        return saved

    def _end_running(self, saved: tuple[Any, Any]) -> None:
        previous_loop, agen_hooks = saved
        self._exit_running()
        events._set_running_loop(previous_loop)
        sys.set_asyncgen_hooks(*agen_hooks)

    def stop(self) -> None:
        """Stop run_forever after the current iteration."""
        self._stopping = True

    def close(self) -> None:
        """Close the loop: drop pending callbacks, shut down the default executor without
        waiting, leave an outer loop it was nested into, and release every fd."""
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        if self.is_closed():
            return
        if self.get_debug():
            logger.debug("Close %r", self)
        self.unnest()
        self._report_uncollected_errors()
        self._close_process_watchers()
        self._close_signal_handlers()
        self._executor_shutdown_called = True
        executor = self._default_executor
        if executor is not None:
            self._default_executor = None
            executor.shutdown(wait=False)
        self._close_kernel()

    # -- fork ---------------------------------------------------------------------------

    def reset(self) -> None:
        """Make a loop inherited across fork() usable in the child (cqueues' reset()).

        A forked child's copy of a loop shares its kernel queue (epoll fd, eventfd,
        timerfd) with the parent's loop, so running or stepping it raises RuntimeError until
        the child calls reset(). reset() gives the loop a queue of its own and drops every
        fd registration inherited from the parent (add_reader/add_writer callbacks, and
        transports: their fds are shared with the parent, so they are not usable in the
        child), the pidfds of the parent's child processes, and the default executor (its
        threads were not forked). Ready callbacks, timers and tasks are kept; signal
        handlers are kept and re-armed on a wakeup socket of the child's own."""
        self._check_closed_py()
        if not self._forked:
            raise RuntimeError(
                "reset() is for a loop inherited across fork(); this loop was made in this "
                "process, or reset() already ran"
            )
        if self.is_running():
            raise RuntimeError("Cannot reset a running event loop")
        # While the kernel still knows it is forked, removals leave the parent's epoll set
        # alone.
        self._close_process_watchers()
        self._outer, self._outer_fd = None, -1
        self._default_executor = None
        self._reset_kernel()
        self._reset_signal_wakeup()
        self._pid = os.getpid()

    def _forked_message(self) -> str:
        return (
            f"this event loop was made in process {self._pid} and this is process "
            f"{os.getpid()}, a child forked from it: the loop's kernel queue (epoll fd, "
            "eventfd, timerfd) still belongs to the parent. Call loop.reset() in the child "
            "to give the loop its own (it drops the fd registrations inherited from the "
            "parent), or make a new loop."
        )

    def _check_closed_py(self) -> None:
        if self.is_closed():
            raise RuntimeError("Event loop is closed")

    # -- nesting: the loop as a pollable object ----------------------------------------

    def step(self, timeout: float | None = 0) -> None:
        """Run one step, cqueues' unit of work, and return; never block past `timeout`
        seconds (0: don't wait; None: wait until there is work). A step polls once (the
        only wait), then runs the callbacks ready then and those they make ready, up to
        STEP_MAX_ROUNDS rounds: every coroutine whose wait ended before the step began is
        resumed, and so is every coroutine those wake-ups make ready (a finished
        coroutine has left count() when the step returns). Timers and fd waits that start
        during the step end in a later one, so `await cqloop.sleep(0)` takes one step, as
        in cqueues. run_forever keeps asyncio's iteration (callbacks scheduled during an
        iteration run in the next). During the step asyncio.get_running_loop() is this
        loop; afterwards it is whatever it was before (the outer loop, or none)."""
        self._check_closed_py()
        if self._forked:
            raise RuntimeError(self._forked_message())
        if self.is_running():
            raise RuntimeError(
                "step() called on a loop that is already running "
                "(from inside its own run_forever or step)"
            )
        saved = self._begin_running()
        try:
            self._step_once(timeout, STEP_MAX_ROUNDS)
        finally:
            self._end_running(saved)

    def pollfd(self) -> int:
        """cqueues' name for fileno(): the fd an outside poller watches for readability."""
        return self.fileno()

    def events(self) -> str:
        """cqueues' pollable protocol: a loop is polled for reading."""
        return "r"

    def nest_in(self, outer: asyncio.AbstractEventLoop | None = None) -> None:
        """Drive this loop from `outer` (default: the running loop): the outer loop steps
        this one whenever it has work. close() undoes it; so does unnest()."""
        if outer is None:
            outer = events.get_running_loop()
        if outer is self:
            raise ValueError("a loop cannot be nested in itself")
        if self._outer is not None:
            raise RuntimeError(f"{self!r} is already nested in {self._outer!r}")
        ancestor: Any = outer
        while isinstance(ancestor, Loop):
            # A cycle of loops, refused on either engine (an epoll set refuses itself with
            # ELOOP; a ring polling a ring has no such check).
            if ancestor is self:
                raise OSError(
                    errno.ELOOP,
                    f"cannot nest {self!r} in {outer!r}: it would make a cycle of loops",
                )
            ancestor = ancestor._outer
        fd = self.fileno()
        try:
            outer.add_reader(fd, self._on_outer_readable)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                # Linux refuses an epoll set inside itself, and nesting deeper than
                # EP_MAX_NESTS (4) epoll sets below an epoll-based outermost loop.
                raise OSError(
                    errno.ELOOP,
                    f"cannot nest {self!r} in {outer!r}: it would make a cycle of loops or "
                    "nest epoll instances deeper than Linux allows (4 below the outermost)",
                ) from exc
            raise
        self._outer = outer
        self._outer_fd = fd

    def unnest(self) -> None:
        """Stop being driven by the loop nest_in() attached this one to."""
        outer, self._outer = self._outer, None
        if outer is not None and not outer.is_closed():
            outer.remove_reader(self._outer_fd)
        self._outer_fd = -1

    def _on_outer_readable(self) -> None:
        if not self.is_closed():
            self.step(0)

    # -- tasks and futures --------------------------------------------------------------

    def set_task_factory(self, factory: Callable[..., Any] | None) -> None:
        if factory is not None and not callable(factory):
            raise TypeError("task factory must be a callable or None")
        self._task_factory = factory

    def get_task_factory(self) -> Callable[..., Any] | None:
        return self._task_factory

    # -- fd watching ----------------------------------------------------------------------

    def add_reader(self, fd: Any, callback: Callable[[Unpack[_Ts]], object], *args: *_Ts) -> None:
        """Call callback(*args) whenever fd is readable, replacing any earlier reader."""
        self._check_closed_py()
        self._add_reader(_fileobj_to_fd(fd), callback, args)

    def remove_reader(self, fd: Any) -> bool:
        """Stop watching fd for reading; True if it was watched. Works on an fd closed
        meanwhile."""
        return bool(self._remove_reader(_fileobj_to_fd(fd)))

    def add_writer(self, fd: Any, callback: Callable[[Unpack[_Ts]], object], *args: *_Ts) -> None:
        """Call callback(*args) whenever fd is writable, replacing any earlier writer."""
        self._check_closed_py()
        self._add_writer(_fileobj_to_fd(fd), callback, args)

    def remove_writer(self, fd: Any) -> bool:
        """Stop watching fd for writing; True if it was watched."""
        return bool(self._remove_writer(_fileobj_to_fd(fd)))

    # -- executors ------------------------------------------------------------------------

    def run_in_executor(
        self,
        executor: concurrent.futures.Executor | None,
        func: Callable[[Unpack[_Ts]], _T],
        *args: *_Ts,
    ) -> asyncio.Future[_T]:
        """Run func(*args) in `executor` (default: the loop's thread pool)."""
        self._check_closed_py()
        if self.get_debug():
            self._check_callback(func, "run_in_executor")
        if executor is None:
            if self._executor_shutdown_called:
                raise RuntimeError("Executor shutdown has been called")
            executor = self._default_executor
            if executor is None:
                executor = concurrent.futures.ThreadPoolExecutor(thread_name_prefix="asyncio")
                self._default_executor = executor
        return futures.wrap_future(executor.submit(func, *args), loop=self)

    def set_default_executor(self, executor: Any) -> None:
        if not isinstance(executor, concurrent.futures.ThreadPoolExecutor):
            raise TypeError("executor must be ThreadPoolExecutor")
        self._default_executor = executor

    async def shutdown_default_executor(self, timeout: float | None = None) -> None:
        """Shut down the default executor, waiting up to `timeout` seconds for its threads
        (None: as long as it takes)."""
        self._executor_shutdown_called = True
        if self._default_executor is None:
            return
        future = self.create_future()
        thread = threading.Thread(target=self._do_shutdown, args=(future,))
        thread.start()
        try:
            async with asyncio.timeout(timeout):
                await future
        except TimeoutError:
            warnings.warn(
                f"The executor did not finishing joining its threads within {timeout} seconds.",
                RuntimeWarning,
                stacklevel=2,
            )
            self._default_executor.shutdown(wait=False)
        else:
            thread.join()

    def _do_shutdown(self, future: asyncio.Future[None]) -> None:
        try:
            assert self._default_executor is not None
            self._default_executor.shutdown(wait=True)
            if not self.is_closed():
                self.call_soon_threadsafe(set_result_unless_cancelled, future, None)
        except Exception as ex:
            if not self.is_closed() and not future.cancelled():
                self.call_soon_threadsafe(future.set_exception, ex)

    # -- async generators -----------------------------------------------------------------

    def _asyncgen_finalizer_hook(self, agen: Any) -> None:
        self._asyncgens.discard(agen)
        if not self.is_closed():
            self.call_soon_threadsafe(self.create_task, agen.aclose())

    def _asyncgen_firstiter_hook(self, agen: Any) -> None:
        if self._asyncgens_shutdown_called:
            warnings.warn(
                f"asynchronous generator {agen!r} was scheduled after "
                f"loop.shutdown_asyncgens() call",
                ResourceWarning,
                source=self,
                stacklevel=2,
            )
        self._asyncgens.add(agen)

    async def shutdown_asyncgens(self) -> None:
        """Close every async generator that is still open."""
        self._asyncgens_shutdown_called = True
        if not len(self._asyncgens):
            return
        closing = list(self._asyncgens)
        self._asyncgens.clear()
        results = await asyncio.gather(*[ag.aclose() for ag in closing], return_exceptions=True)
        for result, agen in zip(results, closing, strict=True):
            if isinstance(result, Exception):
                self.call_exception_handler(
                    {
                        "message": "an error occurred during closing of "
                        f"asynchronous generator {agen!r}",
                        "exception": result,
                        "asyncgen": agen,
                    }
                )

    # -- errors ---------------------------------------------------------------------------

    def get_exception_handler(self) -> Callable[..., Any] | None:
        return self._exception_handler

    def set_exception_handler(self, handler: Callable[..., Any] | None) -> None:
        if handler is not None and not callable(handler):
            raise TypeError(f"A callable object or None is expected, got {handler!r}")
        self._exception_handler = handler

    def default_exception_handler(self, context: dict[str, Any]) -> None:
        """Log `context` to the "asyncio" logger, in asyncio's format."""
        message = context.get("message") or "Unhandled exception in event loop"
        exception = context.get("exception")
        exc_info: Any = False
        if exception is not None:
            exc_info = (type(exception), exception, exception.__traceback__)
        log_lines = [message]
        for key in sorted(context):
            if key in {"message", "exception"}:
                continue
            value = context[key]
            if key == "source_traceback":
                tb = "".join(traceback.format_list(value))
                value = "Object created at (most recent call last):\n" + tb.rstrip()
            elif key == "handle_traceback":
                tb = "".join(traceback.format_list(value))
                value = "Handle created at (most recent call last):\n" + tb.rstrip()
            else:
                value = repr(value)
            log_lines.append(f"{key}: {value}")
        logger.error("\n".join(log_lines), exc_info=exc_info)

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        """Hand `context` to the exception handler (or the default one); an error in the
        handler itself is logged, never raised, except SystemExit and KeyboardInterrupt."""
        if self._exception_handler is None:
            try:
                self.default_exception_handler(context)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException:
                logger.error("Exception in default exception handler", exc_info=True)
            return
        try:
            # Run the handler in the context of what failed, as asyncio 3.12+ does.
            owner = context.get("task") or context.get("future") or context.get("handle")
            get_context = getattr(owner, "get_context", None)
            ctx = get_context() if get_context is not None else None
            if ctx is not None and hasattr(ctx, "run"):
                ctx.run(self._exception_handler, self, context)
            else:
                self._exception_handler(self, context)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            try:
                self.default_exception_handler(
                    {
                        "message": "Unhandled error in exception handler",
                        "exception": exc,
                        "context": context,
                    }
                )
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException:
                logger.error(
                    "Exception in default exception handler while handling an "
                    "unexpected error in custom exception handler",
                    exc_info=True,
                )

    # -- debug ----------------------------------------------------------------------------

    def set_debug(self, enabled: bool) -> None:
        Kernel.set_debug(self, enabled)
        if self.is_running():
            self.call_soon_threadsafe(self._set_coroutine_origin_tracking, enabled)

    def _set_coroutine_origin_tracking(self, enabled: bool) -> None:
        if bool(enabled) == bool(self._coroutine_origin_tracking_enabled):
            return
        if enabled:
            self._coroutine_origin_tracking_saved_depth = sys.get_coroutine_origin_tracking_depth()
            sys.set_coroutine_origin_tracking_depth(constants.DEBUG_STACK_DEPTH)
        elif self._coroutine_origin_tracking_saved_depth is not None:
            sys.set_coroutine_origin_tracking_depth(self._coroutine_origin_tracking_saved_depth)
        self._coroutine_origin_tracking_enabled = enabled

    def _check_callback(self, callback: Any, method: str) -> None:
        if coroutines.iscoroutine(callback) or coroutines.iscoroutinefunction(callback):
            raise TypeError(f"coroutines cannot be used with {method}()")
        if not callable(callback):
            raise TypeError(f"a callable object was expected by {method}(), got {callback!r}")

    def _source_traceback(self) -> Any:
        # Called by the kernel in debug mode: the kernel's compiled frames are invisible,
        # so frame 1 is the code that scheduled the callback.
        return format_helpers.extract_stack(sys._getframe(1))

    def _on_slow_callback(self, handle: Any, duration: float) -> None:
        logger.warning("Executing %s took %.3f seconds", _format_handle(handle), duration)

    # -- statistics -----------------------------------------------------------------------

    def statistics(self) -> dict[str, Any]:
        """Counts of what the loop holds now: ready callbacks, timers, watched fds."""
        stats: dict[str, Any] = self._kernel_statistics()
        stats["nested_in"] = repr(self._outer) if self._outer is not None else None
        return stats


# -- fork -----------------------------------------------------------------------------
# After fork() the child's loops share their kernel queues with the parent's loops. Rather
# than compare os.getpid() on every run (a system call) or every iteration, a hook that
# runs in the child of every os.fork() marks them; the kernel then leaves the parent's
# epoll set, eventfd and timerfd alone, and run/step refuse until loop.reset(). A loop
# forked from inside one of its own callbacks is stopped at the end of that iteration in
# the child, before it could poll the parent's queue; run_forever then raises there.
# subprocess.Popen without preexec_fn runs no at-fork hooks (and execs at once).

_LOOPS: weakref.WeakSet[Loop] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for loop in list(_LOOPS):
        if loop.is_closed():
            continue
        loop._forked = True
        if loop.is_running():
            loop._stopping = True
        loop._disarm_signal_wakeup()


os.register_at_fork(after_in_child=_after_fork_in_child)
