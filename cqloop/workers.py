"""cqloop.workers: prefork worker processes sharing one listening socket.

    import asyncio, cqloop.workers

    async def app(listener):
        server = await asyncio.start_server(handle, sock=listener)
        async with server:
            await server.serve_forever()     # cancelled at shutdown

    cqloop.workers.serve(app, workers=4, port=8080)

The contract of `app`: an async function `app(listener: socket.socket)`, run in each worker
on a fresh cqloop loop (cqloop.run). It serves on `listener` (loop.create_server(...,
sock=listener), asyncio.start_server(..., sock=listener)) until it is cancelled, which is
how a worker is stopped (SIGTERM or SIGINT to the worker, sent by the supervisor on its own
SIGTERM/SIGINT and during rolling restarts); cancellation should close the server, which
`async with server` does. Graceful stop: a keep-alive connection idle in
`await unless_stopping(reader.readline())` is closed as soon as the worker begins to stop,
so the grace period is left for requests in flight (on 3.12 and later the server's
`wait_closed()` waits for those; on 3.11 an app that must finish them waits for its
handlers itself). An app that returns or raises ends its worker, and the
supervisor starts another (with a growing delay if workers keep dying young); after
`max_boot_failures` young deaths of one worker in a row it stops the rest and serve()
returns EXIT_BOOT_FAILED. serve() refuses an `app` that is not an async function before it
forks anything.
cqloop.worker_events is connected in every worker before `app` starts.

Owns the supervisor: forking and reaping workers, restarts, signal handling, rolling
restarts, and the worker_events broker (one per supervisor, on the
supervisor's own cqloop loop; see cqloop/worker_events/broker.py). With
`events="redis://..."` the broker is bridged to a Redis stream shared by the supervisors
of several hosts (cqloop/worker_events/_redis_bridge.py, docs/cluster.md).

The listening socket (cqloop/_worker_listener.py): with reuse_port (the default where
SO_REUSEPORT exists, for TCP) each worker listens on a socket of its own to the address;
otherwise every worker accepts on the socket the supervisor listens on.

Forking. Workers are made with os.fork(), never while the supervisor's loop runs: the
supervisor runs its loop with run_until_complete() until it needs a worker, returns from
it, forks, and runs the loop again. The child so starts from a stack with no running loop,
builds a fresh cqloop loop, and never touches the supervisor's: an epoll instance is
shared across fork, so even closing the parent loop's registrations in the child would
remove them from the parent's epoll. The child closes the supervisor's fds it knows of
(other workers' broker sockets and pidfds, the signal socket, the port reservation),
freezes the inherited objects out of the garbage collector (gc.freeze(), so no inherited
finalizer ever runs in the child), and ends with os._exit(). The supervisor's loop's own
epoll, eventfd and timerfd stay open and unused in each worker: only the Kernel object can
close them, and it belongs to the parent. Signals are blocked across fork() so that none
reaches the child before it has reset the supervisor's handlers and wakeup fd.
Not multiprocessing: its fork context is this same os.fork() plus machinery we would have
to work around (Process objects, atexit hooks, a fork with a running loop unless we
arrange otherwise), and its spawn and forkserver contexts would require `app` to be
picklable and importable by name, which rules out closures and apps defined in a script.

Reaping: each worker has a pidfd (os.pidfd_open) registered as a reader on the
supervisor's loop; it turns readable when the worker exits, and waitpid() then returns
at once. No SIGCHLD handler, no polling.

Signals to the supervisor: SIGTERM or SIGINT stops every worker (the broker posts
"stopping", the supervisor sends SIGTERM) and waits up to `grace_period` before SIGKILL; a
second SIGTERM/SIGINT kills at once. SIGHUP restarts the workers one at a time: a new
worker, then (once its worker_events client has connected) the old one is stopped.

Who calls in: user code, `serve()` from the main thread of a process with no running
event loop and no other threads (fork with threads is unsafe, and Python 3.12 warns).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import gc
import inspect
import logging
import os
import signal
import socket
import sys
import traceback
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import cqloop
from cqloop import worker_events
from cqloop._worker_listener import Listener
from cqloop.worker_events._sigwake import SignalReader, watch_signals
from cqloop.worker_events.broker import Broker, _Peer
from cqloop.worker_events.client import Client
from cqloop.worker_events.cluster import ClusterSettings, require_redis
from cqloop.worker_events.codec import Codec
from cqloop.worker_events.limits import Limits

__all__ = ["SupervisorState", "WorkerInfo", "current_worker", "serve", "unless_stopping"]

logger = logging.getLogger("cqloop.workers")

App = Callable[[socket.socket], Awaitable[object]]
_T = TypeVar("_T")

DEFAULT_GRACE_PERIOD_S = 30.0
DEFAULT_BACKLOG = 1024
# A worker that dies sooner than this after its start counts as a crash loop...
MIN_HEALTHY_UPTIME_S = 1.0
# ...and is restarted after a delay that doubles from the first to the last of these.
RESTART_DELAY_MIN_S = 0.1
RESTART_DELAY_MAX_S = 5.0
# Exit status of a worker whose set-up (before app) failed.
EXIT_WORKER_SETUP_FAILED = 70
# How many times in a row a worker may die young (before MIN_HEALTHY_UPTIME_S) before the
# supervisor gives up, stops the others and exits with EXIT_BOOT_FAILED (gunicorn's status
# for a worker that failed to boot).
DEFAULT_MAX_BOOT_FAILURES = 5
EXIT_BOOT_FAILED = 3
SPAWN_TASK_NAME = "cqloop.workers spawn"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
SUPERVISOR_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class SupervisorState(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    ROLLING_RESTART = "rolling restart"
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclass(frozen=True)
class WorkerInfo:
    """Who this worker is: its slot (0..workers-1), how many workers that slot had before
    it, its pid and its supervisor's."""

    index: int
    generation: int
    pid: int
    supervisor_pid: int


_current: WorkerInfo | None = None
# Set when this worker begins to stop (in a worker, on its loop); see unless_stopping().
_stopping: asyncio.Event | None = None


def current_worker() -> WorkerInfo | None:
    """This worker's WorkerInfo, or None outside a cqloop.workers worker."""
    return _current


async def unless_stopping(awaitable: Awaitable[_T]) -> _T | None:
    """Await `awaitable`, unless this worker begins to stop first: then cancel it and
    return None. Outside a worker it is plain `await awaitable`.

    Made for the wait that makes a keep-alive connection idle, so that stopping closes
    idle connections at once and the grace period is left for requests in flight:

        async def handle(reader, writer):
            while request := await cqloop.workers.unless_stopping(reader.readline()):
                writer.write(await respond(request))  # in flight: finishes while stopping
                await writer.drain()
            writer.close()  # idle when the worker began to stop: closed now

    (With `async with server` the server's close then waits only for the requests in
    flight.) A worker that is already stopping returns None at once."""
    stopping = _stopping
    if stopping is None:
        return await awaitable
    if stopping.is_set():
        if inspect.iscoroutine(awaitable):
            awaitable.close()
        return None
    work = asyncio.ensure_future(awaitable)
    stop = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait([work, stop], return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        work.cancel()
        raise
    finally:
        stop.cancel()
    if not work.done():
        work.cancel()
        await asyncio.wait([work])  # what it got before the cancellation took is kept
    if work.cancelled():
        return None
    return work.result()


# -- the supervisor's record of a worker -----------------------------------------------------


class _Worker:
    def __init__(self, index: int, generation: int, pid: int, channel: socket.socket) -> None:
        self.index = index
        self.generation = generation
        self.pid = pid
        self.channel = channel  # the broker's end of the worker's socketpair
        self.pidfd = -1
        self.peer: _Peer | None = None
        self.started_at = 0.0
        self.stopping = False
        self.exit_code: int | None = None
        self.exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def describe(self) -> dict[str, Any]:
        return {"pid": self.pid, "worker": self.index, "generation": self.generation}


@dataclass
class _ForkRequest:
    index: int
    generation: int
    result: asyncio.Future[tuple[int, socket.socket]]


class _Supervisor:
    def __init__(
        self,
        app: App,
        *,
        count: int,
        listener: Listener,
        grace_period: float,
        codec: Codec,
        limits: Limits,
        worker_loop_factory: Callable[[], asyncio.AbstractEventLoop],
        max_boot_failures: int | None,
        cluster: ClusterSettings | None,
    ) -> None:
        self.app = app
        self.cluster = cluster
        self.bridge: Any = None  # a _redis_bridge.RedisBridge with `events=`
        self.max_boot_failures = max_boot_failures
        self.worker_loop_factory = worker_loop_factory
        self.count = count
        self.listener = listener
        self.grace_period = grace_period
        self.codec = codec
        self.limits = limits
        self.state = SupervisorState.STARTING
        self.loop: asyncio.AbstractEventLoop = cqloop.new_event_loop()
        self.slots: list[_Worker | None] = [None] * count
        self.generations = [0] * count
        self.restart_delays = [0.0] * count
        self.boot_failures = [0] * count  # young deaths in a row, per slot
        self.exit_status = 0
        self.workers: dict[int, _Worker] = {}  # every live worker by pid, retiring ones too
        self.broker: Broker | None = None
        self.signals: SignalReader | None = None
        self.fork_requests: deque[_ForkRequest] = deque()
        self.wakeup: asyncio.Event | None = None
        self.stopped: asyncio.Future[None] | None = None
        self.tasks: set[asyncio.Task[Any]] = set()
        self.rolling: asyncio.Task[None] | None = None
        self.saved_mask: set[int | signal.Signals] = set()

    # -- the main loop: run the event loop until a fork is due, fork, repeat --

    def run(self) -> int:
        loop = self.loop
        try:
            loop.run_until_complete(self._start())
            while True:
                request = loop.run_until_complete(self._next_request())
                if request is None:
                    break
                self._fork(request)
            return self.exit_status
        finally:
            self._close()

    async def _start(self) -> None:
        self.wakeup = asyncio.Event()
        self.stopped = self.loop.create_future()
        self.broker = Broker(codec=self.codec, limits=self.limits, allow_pickle=True)
        if self.cluster is not None:
            from cqloop.worker_events._redis_bridge import RedisBridge

            self.bridge = RedisBridge(self.cluster, self.broker)
            self.broker.set_upstream(self.bridge)
            self.bridge.start()
        self.signals = SignalReader(self.loop, SUPERVISOR_SIGNALS, self._on_signal)
        self.state = SupervisorState.RUNNING
        for index in range(self.count):
            self._spawn_soon(index)
        logger.info(
            "cqloop.workers: supervisor %d serving %s with %d workers (%s)",
            os.getpid(),
            self.listener.address(),
            self.count,
            "SO_REUSEPORT" if self.listener.reuse_port else "shared socket",
        )

    async def _next_request(self) -> _ForkRequest | None:
        assert self.wakeup is not None and self.stopped is not None
        while not self.fork_requests:
            if self.stopped.done():
                return None
            self.wakeup.clear()
            waiter = self.loop.create_task(self.wakeup.wait())
            try:
                pending: list[asyncio.Future[Any]] = [waiter, self.stopped]
                await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
        return self.fork_requests.popleft()

    def _fork(self, request: _ForkRequest) -> None:
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.saved_mask = signal.pthread_sigmask(signal.SIG_BLOCK, SUPERVISOR_SIGNALS)
        try:
            pid = os.fork()
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_SETMASK, self.saved_mask)
            parent_end.close()
            child_end.close()
            request.result.set_exception(exc)
            return
        if pid == 0:
            self._child(request, child_end, parent_end)  # never returns
        signal.pthread_sigmask(signal.SIG_SETMASK, self.saved_mask)
        child_end.close()
        request.result.set_result((pid, parent_end))

    # -- in the child ------------------------------------------------------------------

    def _child(
        self, request: _ForkRequest, channel: socket.socket, parent_end: socket.socket
    ) -> None:
        global _current
        status = EXIT_WORKER_SETUP_FAILED
        try:
            gc.freeze()
            signal.set_wakeup_fd(-1)
            for sig in STOP_SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
            # A terminal's hangup reaches the whole process group: it is the supervisor's.
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            signal.pthread_sigmask(signal.SIG_SETMASK, self.saved_mask)
            parent_end.close()
            self._close_inherited_fds(keep=channel.fileno())
            _current = WorkerInfo(request.index, request.generation, os.getpid(), os.getppid())
            listener = self.listener.for_worker()
            main = _worker_main(self.app, listener, channel, self.codec, self.limits)
            with asyncio.Runner(loop_factory=self.worker_loop_factory) as runner:
                status = runner.run(main)
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
            status = 1
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            os._exit(status)

    def _close_inherited_fds(self, keep: int) -> None:
        """Close, in a new worker, the supervisor's fds it knows of. By fd number: the
        Python objects stay as they are (frozen, never finalized in the child). Numbers
        are read from the live objects now (a closed socket says -1), never remembered:
        a number the supervisor closed may already be reused, by this worker's own
        channel for one."""
        fds: list[int] = []
        if self.signals is not None:
            fds += self.signals.fds()
        for worker in self.workers.values():
            fds += [worker.channel.fileno(), worker.pidfd]
        if self.bridge is not None:
            fds += self.bridge.fds()
        for fd in fds:
            if fd >= 0 and fd != keep:
                with contextlib.suppress(OSError):
                    os.close(fd)

    # -- workers -----------------------------------------------------------------------

    def _spawn_soon(self, index: int, delay: float = 0.0) -> None:
        task = self.loop.create_task(self._spawn(index, delay), name=SPAWN_TASK_NAME)
        self._track(task)

    async def _spawn(self, index: int, delay: float = 0.0) -> _Worker | None:
        if delay:
            await asyncio.sleep(delay)
        if self.state in (SupervisorState.STOPPING, SupervisorState.STOPPED):
            return None
        assert self.wakeup is not None and self.broker is not None
        self.generations[index] += 1
        result: asyncio.Future[tuple[int, socket.socket]] = self.loop.create_future()
        self.fork_requests.append(_ForkRequest(index, self.generations[index], result))
        self.wakeup.set()
        try:
            pid, channel = await result
        except OSError as exc:
            logger.error("cqloop.workers: cannot fork worker %d: %s", index, exc)
            self._spawn_soon(index, self._next_delay(index, 0.0))
            return None
        worker = _Worker(index, self.generations[index], pid, channel)
        worker.started_at = self.loop.time()
        self.workers[pid] = worker
        self.slots[index] = worker
        worker.peer = await self.broker.add_peer(
            channel, worker=index, pid=pid, details={"generation": worker.generation}
        )
        # After add_peer: _after_exit needs the peer. A worker that died meanwhile is a
        # zombie until reaped, and its pidfd is readable at once.
        worker.pidfd = os.pidfd_open(pid)
        self.loop.add_reader(worker.pidfd, self._on_worker_exit, worker)
        return worker

    def _on_worker_exit(self, worker: _Worker) -> None:
        self.loop.remove_reader(worker.pidfd)
        os.close(worker.pidfd)
        worker.pidfd = -1
        _, status = os.waitpid(worker.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        worker.exit_code = code
        worker.exited.set_result(code)
        self._track(self.loop.create_task(self._after_exit(worker, code)))

    async def _after_exit(self, worker: _Worker, code: int) -> None:
        assert self.broker is not None
        if worker.peer is not None:
            # "exited" follows every event the worker posted: wait until the broker has
            # read its connection to the end. (A process the worker forked may still hold
            # its end open; then the grace period is all it gets.)
            lost: asyncio.Future[None] = worker.peer.lost
            await asyncio.wait([lost], timeout=self.grace_period)
            if not lost.done() and worker.peer.transport is not None:
                worker.peer.transport.abort()
                await lost
        else:
            worker.channel.close()
        self.workers.pop(worker.pid, None)
        self.broker.post_system_after_posts("exited", {**worker.describe(), "exitcode": code})
        if self.slots[worker.index] is not worker:
            return  # replaced (rolling restart) or never installed
        self.slots[worker.index] = None
        if worker.stopping or self.state in (SupervisorState.STOPPING, SupervisorState.STOPPED):
            return
        uptime = self.loop.time() - worker.started_at
        how = f"signal {-code}" if code < 0 else f"status {code}"
        if self._boot_failed(worker.index, uptime):
            logger.error(
                "cqloop.workers: worker %d (pid %d) failed to boot %d times in a row "
                "(the last exited with %s after %.1f s); stopping",
                worker.index,
                worker.pid,
                self.boot_failures[worker.index],
                how,
                uptime,
            )
            self.exit_status = EXIT_BOOT_FAILED
            await self._shutdown("boot failures")
            return
        delay = self._next_delay(worker.index, uptime)
        logger.warning(
            "cqloop.workers: worker %d (pid %d) exited with %s after %.1f s; restarting it%s",
            worker.index,
            worker.pid,
            how,
            uptime,
            f" in {delay:.1f} s" if delay else "",
        )
        self._spawn_soon(worker.index, delay)

    def _boot_failed(self, index: int, uptime: float) -> bool:
        """Count a young death of slot `index`; True once there were too many in a row."""
        if uptime >= MIN_HEALTHY_UPTIME_S:
            self.boot_failures[index] = 0
            return False
        self.boot_failures[index] += 1
        limit = self.max_boot_failures
        return limit is not None and self.boot_failures[index] >= limit

    def _next_delay(self, index: int, uptime: float) -> float:
        if uptime >= MIN_HEALTHY_UPTIME_S:
            self.restart_delays[index] = 0.0
        else:
            previous = self.restart_delays[index]
            self.restart_delays[index] = min(
                RESTART_DELAY_MAX_S, previous * 2 if previous else RESTART_DELAY_MIN_S
            )
        return self.restart_delays[index]

    async def _stop_worker(self, worker: _Worker, reason: str) -> None:
        """SIGTERM, then SIGKILL after the grace period; returns once it is reaped."""
        assert self.broker is not None
        if worker.exited.done():
            return
        worker.stopping = True
        self.broker.post_system("stopping", {**worker.describe(), "reason": reason})
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(worker.exited), self.grace_period)
        except TimeoutError:
            logger.warning(
                "cqloop.workers: worker %d (pid %d) did not stop within %.1f s; killing it",
                worker.index,
                worker.pid,
                self.grace_period,
            )
            self._kill(worker)
            await worker.exited

    def _kill(self, worker: _Worker) -> None:
        if not worker.exited.done():
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGKILL)

    # -- signals -----------------------------------------------------------------------

    def _on_signal(self, signum: int) -> None:
        if signum in STOP_SIGNALS:
            if self.state is SupervisorState.STOPPING:
                logger.warning("cqloop.workers: second stop signal; killing the workers")
                for worker in list(self.workers.values()):
                    self._kill(worker)
                return
            if self.state is not SupervisorState.STOPPED:
                reason = signal.Signals(signum).name
                self._track(self.loop.create_task(self._shutdown(reason)))
        elif signum == signal.SIGHUP:
            if self.state is SupervisorState.RUNNING:
                self.rolling = self.loop.create_task(self._rolling_restart())
                self._track(self.rolling)
            else:
                logger.warning("cqloop.workers: SIGHUP ignored while %s", self.state.value)

    async def _shutdown(self, reason: str) -> None:
        assert self.stopped is not None and self.broker is not None
        if self.state in (SupervisorState.STOPPING, SupervisorState.STOPPED):
            return
        self.state = SupervisorState.STOPPING
        logger.info(
            "cqloop.workers: %s: stopping %d workers (grace period %.1f s)",
            reason,
            len(self.workers),
            self.grace_period,
        )
        if self.rolling is not None:
            self.rolling.cancel()
        # Requests not forked yet are dropped: their spawns see the state.
        while self.fork_requests:
            request = self.fork_requests.popleft()
            request.result.cancel()
        workers = list(self.workers.values())
        await asyncio.gather(*(self._stop_worker(w, "shutdown") for w in workers))
        # Restarts waiting out their delay are moot; the "exited" events of the last
        # workers reach nobody, but let those tasks finish.
        for task in self.tasks:
            if task.get_name() == SPAWN_TASK_NAME:
                task.cancel()
        pending = [t for t in self.tasks if t is not asyncio.current_task()]
        await asyncio.gather(*pending, return_exceptions=True)
        if self.bridge is not None:
            # The workers' last posts reach the stream, if Redis answers in time.
            await self.bridge.close(self.grace_period)
        self.broker.close()
        self.state = SupervisorState.STOPPED
        self.stopped.set_result(None)

    async def _rolling_restart(self) -> None:
        assert self.broker is not None
        self.state = SupervisorState.ROLLING_RESTART
        logger.info("cqloop.workers: SIGHUP: restarting %d workers one by one", self.count)
        try:
            for index in range(self.count):
                old = self.slots[index]
                new = await self._spawn(index)
                if new is None:
                    return
                assert new.peer is not None
                started: asyncio.Future[Any] = new.peer.started
                either: list[asyncio.Future[Any]] = [started, new.exited]
                done, _ = await asyncio.wait(
                    either,
                    timeout=self.grace_period,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if started not in done:
                    logger.error(
                        "cqloop.workers: the new worker %d (pid %d) did not start; rolling "
                        "restart abandoned",
                        index,
                        new.pid,
                    )
                    return
                if old is not None:
                    await self._stop_worker(old, "restart")
        finally:
            if self.state is SupervisorState.ROLLING_RESTART:
                self.state = SupervisorState.RUNNING
            self.rolling = None

    # -- tidy ---------------------------------------------------------------------------

    def _track(self, task: asyncio.Task[Any]) -> None:
        self.tasks.add(task)
        task.add_done_callback(self._on_task_done)

    def _on_task_done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.loop.call_exception_handler(
                {"message": "cqloop.workers supervisor task failed", "exception": task.exception()}
            )

    def _close(self) -> None:
        loop = self.loop
        for worker in list(self.workers.values()):
            # Only after an error in the supervisor itself: do not leave orphans.
            self._kill(worker)
            if worker.pidfd >= 0:
                with contextlib.suppress(OSError):
                    os.waitpid(worker.pid, 0)
                loop.remove_reader(worker.pidfd)
                os.close(worker.pidfd)
        if self.signals is not None:
            self.signals.close()
        if self.broker is not None:
            self.broker.close()
        for task in list(self.tasks):
            task.cancel()
        if self.bridge is not None and not loop.is_closed():
            loop.run_until_complete(self.bridge.close())
        if not loop.is_closed():
            loop.run_until_complete(asyncio.sleep(0))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
        self.listener.close()


# -- in a worker -----------------------------------------------------------------------


async def _worker_main(
    app: App, listener: socket.socket, channel: socket.socket, codec: Codec, limits: Limits
) -> int:
    global _stopping
    loop = asyncio.get_running_loop()
    stopping = False
    app_task: asyncio.Task[object] | None = None
    stopping_event = _stopping = asyncio.Event()

    def stop(why: str) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            logger.debug("cqloop.workers: worker %d stopping: %s", os.getpid(), why)
            stopping_event.set()
            if app_task is not None:
                app_task.cancel()

    def on_signal(signum: int) -> None:
        stop(signal.Signals(signum).name)

    def on_broker_lost(_: object) -> None:
        # The supervisor is gone (its end of our socketpair closed): do not linger.
        stop("the supervisor is gone")

    # Before app runs: from its first line on, SIGTERM means "cancel app", never the
    # default action (which would skip app's clean-up).
    unwatch_signals = watch_signals(loop, STOP_SIGNALS, on_signal)
    # The client is in place (posts queue in it) before app starts, and connects after
    # app's first step has run (the app task is scheduled first): callbacks app registers
    # before its first await miss no event.
    client = Client(codec=codec, limits=limits, registry=worker_events._registry_for_workers())
    worker_events._set_client(client)
    try:
        awaitable = app(listener)
        if not inspect.isawaitable(awaitable):
            raise TypeError(f"app must be an async function of the listener, got {app!r}")

        async def run_app() -> object:
            return await awaitable

        app_task = loop.create_task(run_app(), name="cqloop.workers app")
        try:
            await client.connect(sock=channel)
        except BaseException:
            app_task.cancel()
            raise
        client._closed.add_done_callback(on_broker_lost)
        if stopping:
            app_task.cancel()
        try:
            await app_task
        except asyncio.CancelledError:
            if not stopping:
                raise
        finally:
            client._closed.remove_done_callback(on_broker_lost)
    finally:
        unwatch_signals()
        await client.close()
        worker_events._set_client(None)
    return 0


# -- the entry point -------------------------------------------------------------------


def serve(
    app: App,
    *,
    workers: int | None = None,
    host: str | None = None,
    port: int | None = None,
    sock: socket.socket | None = None,
    path: str | None = None,
    reuse_port: bool | Literal["auto"] = "auto",
    backlog: int = DEFAULT_BACKLOG,
    grace_period: float = DEFAULT_GRACE_PERIOD_S,
    codec: Codec | str = Codec.JSON,
    limits: Limits | None = None,
    worker_loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
    max_boot_failures: int | None = DEFAULT_MAX_BOOT_FAILURES,
    events: str | None = None,
) -> int:
    """Run `app` in `workers` processes (default: one per CPU) on one listening address
    (exactly one of port [with host], sock or path) until SIGTERM or SIGINT; returns the
    exit status (0). See the module docstring for the contract of `app`, the socket modes
    and the signals. `codec` and `limits` configure cqloop.worker_events between them.
    `worker_loop_factory` (default cqloop.new_event_loop) makes the workers' loops; it is
    there so that benchmarks can compare loops, and the supervisor's loop is cqloop's.

    A worker that dies within MIN_HEALTHY_UPTIME_S of its start `max_boot_failures` times
    in a row (None: never give up) stops the supervisor: the other workers are stopped and
    serve() returns EXIT_BOOT_FAILED (3), after logging why.

    `events="redis://[:PASSWORD@]HOST:PORT/DB?stream=NAME"` (or `rediss://` for TLS)
    bridges this supervisor's worker_events to one Redis stream shared with the
    supervisors of other hosts: broadcasts reach every worker of every host, in the
    stream's order, and unique events one worker of the whole fleet (docs/cluster.md;
    needs `pip install 'cqloop[cluster]'`, and the JSON codec)."""
    if not _is_async_function(app):
        raise TypeError(f"app must be an async function of the listener, not {app!r}")
    if max_boot_failures is not None and (
        isinstance(max_boot_failures, bool)
        or not isinstance(max_boot_failures, int)
        or max_boot_failures < 1
    ):
        raise ValueError(
            f"max_boot_failures must be an int >= 1 or None, not {max_boot_failures!r}"
        )
    count = os.cpu_count() or 1 if workers is None else workers
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"workers must be an int >= 1, not {workers!r}")
    if not isinstance(grace_period, int | float) or grace_period <= 0:
        raise ValueError(f"grace_period must be a positive number, not {grace_period!r}")
    if asyncio.events._get_running_loop() is not None:
        raise RuntimeError("cqloop.workers.serve() cannot be called from a running event loop")
    codec = Codec(codec)
    cluster = None
    if events is not None:
        cluster = ClusterSettings.from_url(events)
        if codec is not Codec.JSON:
            raise ValueError(
                "worker_events across hosts speaks JSON: pickle is only ever spoken "
                "between the workers of one supervisor"
            )
        require_redis()
    listener = Listener.make(
        host=host, port=port, sock=sock, path=path, reuse_port=reuse_port, backlog=backlog
    )
    try:
        supervisor = _Supervisor(
            app,
            count=count,
            listener=listener,
            grace_period=float(grace_period),
            codec=codec,
            limits=limits if limits is not None else Limits(),
            worker_loop_factory=worker_loop_factory or cqloop.new_event_loop,
            max_boot_failures=max_boot_failures,
            cluster=cluster,
        )
    except BaseException:
        listener.close()
        raise
    return supervisor.run()


def _is_async_function(app: object) -> bool:
    """An async function, a functools.partial of one, or an object whose __call__ is one."""
    while isinstance(app, functools.partial):
        app = app.func
    return inspect.iscoroutinefunction(app) or inspect.iscoroutinefunction(
        getattr(app, "__call__", None)  # noqa: B004
    )
