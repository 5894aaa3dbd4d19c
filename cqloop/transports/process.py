"""cqloop.transports.process: subprocess transports, subprocess_exec and subprocess_shell.

ProcessMixin is a base of cqloop.loop.Loop and gives it subprocess_exec and subprocess_shell
(and through them asyncio.create_subprocess_exec/_shell). SubprocessTransport is the
asyncio.SubprocessTransport they return. Written against the loop's public API plus its
connect_read_pipe/connect_write_pipe (cqloop.transports.pipes), looked up on the loop at each
call, as asyncio does, so that a test or library that replaces them on the loop is obeyed.

Spawning: subprocess.Popen, with every option it takes (pass_fds, preexec_fn,
start_new_session, cwd, env, user, group, umask, process_group ...). Popen spawns through
_posixsubprocess.fork_exec (vfork or posix_spawn where it can), which does not run
os.register_at_fork hooks: a program's at-fork hooks do not fire for every child, as they
do under uvloop, which forks through libuv around PyOS_BeforeFork/AfterFork. The one
exception is Popen's own: with preexec_fn, CPython runs the hooks, because the child runs
Python code before exec.

Exit detection, the part that differs from asyncio: each child gets a pidfd
(os.pidfd_open, Linux 5.3+) registered with the loop's add_reader. A pidfd turns readable
when its process exits, so the exit is an ordinary fd event in the kernel queue: no SIGCHLD
handler (which would be process-wide, and need the main thread), no watcher thread, no
polling. The child is then reaped with waitpid(pid, WNOHANG) at once, so none is left a
zombie, and the pidfd is closed. Signals are sent through the pidfd too
(signal.pidfd_send_signal), which cannot hit a recycled pid.

Fallback: where pidfd_open fails (ENOSYS on kernels before 5.3, EPERM under some seccomp
sandboxes) each child gets a daemon thread blocked in waitpid(pid, 0), which hands the exit
status to the loop with call_soon_threadsafe: asyncio's ThreadedChildWatcher, the only
general way to learn of a child's exit without a SIGCHLD handler and without polling. It is
used only then; signals then go through os.kill.

Someone else may reap the child first (a user calling Popen.wait() or poll() on
get_extra_info("subprocess"), which Popen.send_signal does on 3.11): waitpid then fails with
ECHILD and the status Popen recorded is used; if there is none, 255, with a warning, as
asyncio reports an unknown child.

Order of protocol callbacks, as asyncio's base_subprocess guarantees it: connection_made once
the pipes are connected (stdin, then stdout, then stderr); pipe_data_received and
pipe_connection_lost and process_exited as they happen, none before connection_made; then
connection_lost, once, after the process has exited *and* every pipe is disconnected.
`_wait()` (which asyncio.subprocess.Process.wait() calls) returns the exit status at that
moment.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import errno
import logging
import os
import signal
import subprocess
import threading
import warnings
import weakref
from collections.abc import Callable
from typing import Any, TypeVar, cast

__all__ = ["ProcessMixin", "SubprocessTransport"]

logger = logging.getLogger("asyncio")

_ProtocolT = TypeVar("_ProtocolT", bound=asyncio.BaseProtocol)

# The status reported for a child that someone else reaped without recording its status
# (asyncio's choice).
UNKNOWN_RETURNCODE = 255
# pidfd_open failures that mean "no pidfds here" rather than a bug: the fallback takes over.
_NO_PIDFD_ERRNOS = frozenset({errno.ENOSYS, errno.EPERM, errno.EACCES, errno.EINVAL})


def _pidfd_open(pid: int) -> int | None:
    """A pidfd for `pid`, or None where this system has none to give."""
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None:
        return None
    try:
        fd: int = pidfd_open(pid)
    except OSError as exc:
        if exc.errno in _NO_PIDFD_ERRNOS:
            return None
        raise
    return fd


def _reap(pid: int, proc: Any) -> int | None:
    """Reap `pid` without blocking; its return code, or None if it is still running."""
    try:
        reaped, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        # Someone else reaped it (Popen.wait()/poll() on the Popen object, most likely).
        returncode = getattr(proc, "returncode", None)
        if returncode is None:
            logger.warning(
                "Unknown child process pid %d, will report returncode %d", pid, UNKNOWN_RETURNCODE
            )
            return UNKNOWN_RETURNCODE
        return int(returncode)
    if reaped == 0:
        return None
    return os.waitstatus_to_exitcode(status)


def _wait_in_thread(pid: int, loop: asyncio.AbstractEventLoop, transport_ref: Any) -> None:
    """The fallback's thread body: block until `pid` exits, then tell the loop."""
    try:
        _, status = os.waitpid(pid, 0)
        returncode = os.waitstatus_to_exitcode(status)
    except ChildProcessError:
        returncode = UNKNOWN_RETURNCODE
    try:
        loop.call_soon_threadsafe(_exited_from_thread, transport_ref, returncode)
    except RuntimeError:
        # The loop was closed meanwhile; the child is reaped all the same.
        pass


def _exited_from_thread(transport_ref: Any, returncode: int) -> None:
    transport = transport_ref()
    if transport is not None:
        transport._on_exit_status(returncode)


class _PipeProto(asyncio.Protocol):
    """The protocol of one of the child's pipes: forwards to the subprocess transport."""

    def __init__(self, owner: SubprocessTransport, fd: int) -> None:
        self.owner: SubprocessTransport | None = owner
        self.fd = fd
        self.pipe: Any = None
        self.disconnected = False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} fd={self.fd} pipe={self.pipe!r}>"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.pipe = transport

    def connection_lost(self, exc: BaseException | None) -> None:
        self.disconnected = True
        owner, self.owner = self.owner, None
        if owner is not None:
            owner._on_pipe_lost(self.fd, exc)

    def data_received(self, data: bytes) -> None:
        if self.owner is not None:
            self.owner._on_pipe_data(self.fd, data)

    def pause_writing(self) -> None:
        if self.owner is not None:
            self.owner._protocol.pause_writing()

    def resume_writing(self) -> None:
        if self.owner is not None:
            self.owner._protocol.resume_writing()


class SubprocessTransport(asyncio.SubprocessTransport):
    """A child process and its pipes as an asyncio SubprocessTransport. Made by
    subprocess_exec and subprocess_shell."""

    _extra: dict[str, Any]  # set by BaseTransport.__init__ (a slot there)
    # Read by __del__, which may run on an instance whose __init__ failed.
    _closed = True

    def __init__(
        self,
        loop: Any,
        protocol: asyncio.SubprocessProtocol,
        args: Any,
        shell: bool,
        stdin: Any,
        stdout: Any,
        stderr: Any,
        bufsize: int,
        waiter: asyncio.Future[None] | None = None,
        extra: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(extra)
        self._closed = False
        self._loop: Any = loop
        self._protocol: Any = protocol
        self._proc: Any = None
        self._pid: int | None = None
        self._returncode: int | None = None
        self._exit_waiters: list[asyncio.Future[int]] | None = []
        # Protocol calls made before connection_made, run right after it; None once it has.
        self._pending_calls: collections.deque[tuple[Callable[..., Any], tuple[Any, ...]]] | None
        self._pending_calls = collections.deque()
        # fd (0, 1, 2) -> its pipe's protocol, None until connected.
        self._pipes: dict[int, _PipeProto | None] = {}
        self._finished = False
        self._pidfd = -1
        self._exit_thread: threading.Thread | None = None
        # The protocol's callbacks run in the context the transport was made in, whatever
        # sets them off (the exit fallback's thread has a context of its own).
        self._context = contextvars.copy_context()

        if stdin == subprocess.PIPE:
            self._pipes[0] = None
        if stdout == subprocess.PIPE:
            self._pipes[1] = None
        if stderr == subprocess.PIPE:
            self._pipes[2] = None

        try:
            # subprocess.Popen looked up now, so that it can be replaced (CPython's tests do).
            self._proc = subprocess.Popen(
                args,
                shell=shell,
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                universal_newlines=False,
                bufsize=bufsize,
                **kwargs,
            )
        except BaseException:
            self.close()
            raise
        self._pid = self._proc.pid
        self._extra["subprocess"] = self._proc
        self._watch_exit()

        if loop.get_debug():
            program = args if isinstance(args, (bytes, str)) else args[0]
            logger.debug("process %r created: pid %s", program, self._pid)
        loop.create_task(self._connect_pipes(waiter))

    def __repr__(self) -> str:
        info = [type(self).__name__]
        if self._closed:
            info.append("closed")
        if self._pid is not None:
            info.append(f"pid={self._pid}")
        if self._returncode is not None:
            info.append(f"returncode={self._returncode}")
        elif self._pid is not None:
            info.append("running")
        else:
            info.append("not started")
        stdin = self._pipes.get(0)
        if stdin is not None:
            info.append(f"stdin={stdin.pipe}")
        stdout = self._pipes.get(1)
        stderr = self._pipes.get(2)
        if stdout is not None and stderr is stdout:
            info.append(f"stdout=stderr={stdout.pipe}")
        else:
            if stdout is not None:
                info.append(f"stdout={stdout.pipe}")
            if stderr is not None:
                info.append(f"stderr={stderr.pipe}")
        return "<{}>".format(" ".join(info))

    def __del__(self, _warn: Callable[..., Any] = warnings.warn) -> None:
        if not self._closed:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            self.close()

    # -- public API -----------------------------------------------------------------------

    def get_pid(self) -> int:
        # Set once Popen has returned: a transport exists only for a started process.
        assert self._pid is not None
        return self._pid

    def get_returncode(self) -> int | None:
        return self._returncode

    def get_pipe_transport(self, fd: int) -> Any:
        proto = self._pipes.get(fd)
        return None if proto is None else proto.pipe

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> Any:
        return self._protocol

    def is_closing(self) -> bool:
        return self._closed

    def send_signal(self, signal: int) -> None:
        """Send `signal` to the child; nothing if it has already exited. Through the pidfd
        where there is one, so a recycled pid can never receive it."""
        self._check_proc()
        if self._returncode is not None:
            return
        try:
            if self._pidfd >= 0:
                _pidfd_send_signal(self._pidfd, signal)
            else:
                os.kill(self._proc.pid, signal)
        except ProcessLookupError:
            pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def close(self) -> None:
        """Close the pipes, and kill the child if it is still running (asyncio's rule)."""
        if self._closed:
            return
        self._closed = True
        for proto in self._pipes.values():
            if proto is not None and proto.pipe is not None:
                proto.pipe.close()
        if (
            self._proc is not None
            and self._returncode is None
            # Exited, but the exit not yet seen by the loop? Then leave it be.
            and self._proc.poll() is None
        ):
            if self._loop is not None and self._loop.get_debug():
                logger.warning("Close running child process: kill %r", self)
            try:
                self._proc.kill()
            except (ProcessLookupError, PermissionError):
                # Gone already, or setuid: nothing more to do.
                pass

    # -- private, called by asyncio.subprocess.Process -------------------------------------

    async def _wait(self) -> int:
        """The exit status, once the process has exited and every pipe is closed."""
        if self._returncode is not None:
            return self._returncode
        assert self._exit_waiters is not None
        waiter: asyncio.Future[int] = self._loop.create_future()
        self._exit_waiters.append(waiter)
        return await waiter

    # -- private ----------------------------------------------------------------------------

    def _check_proc(self) -> None:
        if self._proc is None:
            raise ProcessLookupError()

    def _watch_exit(self) -> None:
        """Learn of the child's exit: a pidfd in the loop, or the fallback's thread."""
        assert self._pid is not None
        pidfd = _pidfd_open(self._pid)
        if pidfd is not None:
            self._pidfd = pidfd
            self._loop.add_reader(pidfd, self._on_pidfd_readable)
            _live_pidfds(self._loop).add(self)
            return
        thread = threading.Thread(
            target=_wait_in_thread,
            args=(self._pid, self._loop, weakref.ref(self)),
            name=f"cqloop-waitpid-{self._pid}",
            daemon=True,
        )
        self._exit_thread = thread
        thread.start()

    def _release_pidfd(self) -> None:
        """Stop watching and close the pidfd (the process exited, or the loop is closing)."""
        pidfd, self._pidfd = self._pidfd, -1
        if pidfd < 0:
            return
        loop = self._loop
        if loop is not None:
            _live_pidfds(loop).discard(self)
            if not loop.is_closed():
                loop.remove_reader(pidfd)
        os.close(pidfd)

    def _on_pidfd_readable(self) -> None:
        assert self._pid is not None
        returncode = _reap(self._pid, self._proc)
        if returncode is None:
            return  # not yet (a spurious wake-up)
        self._release_pidfd()
        self._on_exit_status(returncode)

    def _on_exit_status(self, returncode: int) -> None:
        if self._returncode is not None:
            return
        if self._loop.get_debug():
            logger.info("%r exited with return code %r", self, returncode)
        self._returncode = returncode
        if self._proc.returncode is None:
            # Tell the Popen object too: it then neither warns that the process is still
            # running nor tries to reap it again.
            self._proc.returncode = returncode
        self._call(self._protocol.process_exited)
        self._try_finish()

    async def _connect_pipes(self, waiter: asyncio.Future[None] | None) -> None:
        try:
            proc = self._proc
            loop = self._loop
            if proc.stdin is not None:
                _, proto = await loop.connect_write_pipe(lambda: _PipeProto(self, 0), proc.stdin)
                self._pipes[0] = proto
            if proc.stdout is not None:
                _, proto = await loop.connect_read_pipe(lambda: _PipeProto(self, 1), proc.stdout)
                self._pipes[1] = proto
            if proc.stderr is not None:
                _, proto = await loop.connect_read_pipe(lambda: _PipeProto(self, 2), proc.stderr)
                self._pipes[2] = proto
            assert self._pending_calls is not None
            loop.call_soon(self._protocol.connection_made, self, context=self._context)
            for callback, data in self._pending_calls:
                loop.call_soon(callback, *data, context=self._context)
            self._pending_calls = None
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            if waiter is not None and not waiter.cancelled():
                waiter.set_exception(exc)
        else:
            if waiter is not None and not waiter.cancelled():
                waiter.set_result(None)

    def _call(self, callback: Callable[..., Any], *data: Any) -> None:
        if self._pending_calls is not None:
            self._pending_calls.append((callback, data))
        else:
            self._loop.call_soon(callback, *data, context=self._context)

    def _on_pipe_lost(self, fd: int, exc: BaseException | None) -> None:
        self._call(self._protocol.pipe_connection_lost, fd, exc)
        self._try_finish()

    def _on_pipe_data(self, fd: int, data: bytes) -> None:
        self._call(self._protocol.pipe_data_received, fd, data)

    def _try_finish(self) -> None:
        if self._finished or self._returncode is None:
            return
        if all(p is not None and p.disconnected for p in self._pipes.values()):
            self._finished = True
            self._call(self._call_connection_lost, None)

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        try:
            self._protocol.connection_lost(exc)
        finally:
            waiters, self._exit_waiters = self._exit_waiters, None
            returncode = self._returncode
            assert returncode is not None  # connection_lost comes after the exit
            for waiter in waiters or ():
                if not waiter.cancelled():
                    waiter.set_result(returncode)
            self._loop = None
            self._proc = None
            self._protocol = None


def _pidfd_send_signal(pidfd: int, sig: int) -> None:
    signal.pidfd_send_signal(pidfd, sig)


# The transports whose pidfd a loop watches, so that closing the loop closes them.
_PIDFDS: weakref.WeakKeyDictionary[Any, weakref.WeakSet[SubprocessTransport]] = (
    weakref.WeakKeyDictionary()
)


def _live_pidfds(loop: Any) -> weakref.WeakSet[SubprocessTransport]:
    found = _PIDFDS.get(loop)
    if found is None:
        found = _PIDFDS[loop] = weakref.WeakSet()
    return found


# -- the loop's methods -------------------------------------------------------------------------


class ProcessMixin:
    """subprocess_exec and subprocess_shell, for cqloop.loop.Loop."""

    async def subprocess_exec(
        self,
        protocol_factory: Callable[[], _ProtocolT],
        program: Any,
        *args: Any,
        stdin: Any = subprocess.PIPE,
        stdout: Any = subprocess.PIPE,
        stderr: Any = subprocess.PIPE,
        universal_newlines: bool = False,
        shell: bool = False,
        bufsize: int = 0,
        encoding: str | None = None,
        errors: str | None = None,
        text: bool | None = None,
        **kwargs: Any,
    ) -> tuple[SubprocessTransport, _ProtocolT]:
        """Run `program` with `args` (no shell); every other subprocess.Popen keyword is
        passed through. Returns (transport, protocol) once the pipes are connected."""
        if universal_newlines:
            raise ValueError("universal_newlines must be False")
        if shell:
            raise ValueError("shell must be False")
        _check_binary(bufsize, text, encoding, errors)
        protocol = protocol_factory()
        debug_log = f"execute program {program!r}" if self._loop_debug() else None
        transport = await self._make_subprocess_transport(
            protocol, (program, *args), False, stdin, stdout, stderr, bufsize, **kwargs
        )
        if debug_log is not None:
            logger.info("%s: %r", debug_log, transport)
        return transport, protocol

    async def subprocess_shell(
        self,
        protocol_factory: Callable[[], _ProtocolT],
        cmd: str | bytes,
        *,
        stdin: Any = subprocess.PIPE,
        stdout: Any = subprocess.PIPE,
        stderr: Any = subprocess.PIPE,
        universal_newlines: bool = False,
        shell: bool = True,
        bufsize: int = 0,
        encoding: str | None = None,
        errors: str | None = None,
        text: bool | None = None,
        **kwargs: Any,
    ) -> tuple[SubprocessTransport, _ProtocolT]:
        """Run `cmd` with the shell; otherwise as subprocess_exec."""
        if not isinstance(cmd, (bytes, str)):
            raise ValueError("cmd must be a string")
        if universal_newlines:
            raise ValueError("universal_newlines must be False")
        if not shell:
            raise ValueError("shell must be True")
        _check_binary(bufsize, text, encoding, errors)
        protocol = protocol_factory()
        debug_log = f"run shell command {cmd!r}" if self._loop_debug() else None
        transport = await self._make_subprocess_transport(
            protocol, cmd, True, stdin, stdout, stderr, bufsize, **kwargs
        )
        if debug_log is not None:
            logger.info("%s: %r", debug_log, transport)
        return transport, protocol

    def _loop_debug(self) -> bool:
        return bool(cast(asyncio.AbstractEventLoop, self).get_debug())

    async def _make_subprocess_transport(
        self,
        protocol: asyncio.BaseProtocol,
        args: Any,
        shell: bool,
        stdin: Any,
        stdout: Any,
        stderr: Any,
        bufsize: int,
        extra: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> SubprocessTransport:
        loop = cast(asyncio.AbstractEventLoop, self)
        waiter = loop.create_future()
        transport = SubprocessTransport(
            loop,
            cast(asyncio.SubprocessProtocol, protocol),
            args,
            shell,
            stdin,
            stdout,
            stderr,
            bufsize,
            waiter=waiter,
            extra=extra,
            **kwargs,
        )
        try:
            await waiter
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException:
            # Cancelled, or a pipe could not be connected: kill the child and wait for the
            # transport to finish, so that nothing outlives this call.
            transport.close()
            await transport._wait()
            raise
        return transport

    def _close_process_watchers(self) -> None:
        """Loop.close(): close the pidfds of children still running. They are left to
        their Popen objects, which reap them (subprocess's own clean-up) when collected."""
        for transport in list(_live_pidfds(self)):
            transport._release_pidfd()


def _check_binary(
    bufsize: int, text: bool | None, encoding: str | None, errors: str | None
) -> None:
    if bufsize != 0:
        raise ValueError("bufsize must be 0")
    if text:
        raise ValueError("text must be False")
    if encoding is not None:
        raise ValueError("encoding must be None")
    if errors is not None:
        raise ValueError("errors must be None")
