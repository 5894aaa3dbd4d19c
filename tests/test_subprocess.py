"""Subprocesses: subprocess_exec/subprocess_shell and asyncio.create_subprocess_* on cqloop,
asyncio and uvloop (conftest parametrises the async tests), plus cqloop's own promises:
exit detection through a pidfd in the kernel queue (no SIGCHLD handler, no thread), the
waitpid-thread fallback where pidfds are missing, no at-fork hooks run by a spawn, and a
soak of 1,000 children leaving no zombie and no fd behind.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import is_cqloop, is_uvloop, skip_where_uvloop_differs

PY = sys.executable
TRUE = shutil.which("true") or "/bin/true"
SOAK_CHILDREN = 1000
SOAK_CONCURRENCY = 50


class RecordingProtocol(asyncio.SubprocessProtocol):
    """Records every callback in order; `done` resolves at connection_lost."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self.data: dict[int, bytearray] = {1: bytearray(), 2: bytearray()}
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.events.append("made")

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:
        assert isinstance(data, bytes)
        self.data[fd] += data

    def pipe_connection_lost(self, fd: int, exc: BaseException | None) -> None:
        self.events.append(("pipe_lost", fd))

    def process_exited(self) -> None:
        self.events.append("exited")

    def connection_lost(self, exc: BaseException | None) -> None:
        self.events.append("lost")
        self.done.set_result(None)


def zombie_children() -> list[int]:
    """Pids of this process's children that have exited but were not reaped."""
    zombies = []
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as f:
                pids = [int(p) for p in f.read().split()]
        except FileNotFoundError:
            continue
        for pid in pids:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
            except FileNotFoundError:
                continue
            if state == "Z":
                zombies.append(pid)
    return zombies


# -- the asyncio API, on every loop ------------------------------------------------------------


async def test_exec_stdin_stdout_stderr() -> None:
    code = (
        "import sys; data = sys.stdin.buffer.read(); "
        "sys.stdout.buffer.write(data.upper()); sys.stderr.write('err'); sys.exit(3)"
    )
    proc = await asyncio.create_subprocess_exec(
        PY,
        "-c",
        code,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await proc.communicate(b"payload")
    assert (out, err, proc.returncode) == (b"PAYLOAD", b"err", 3)


async def test_shell_with_stderr_to_stdout() -> None:
    proc = await asyncio.create_subprocess_shell(
        "echo out; echo err 1>&2", stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    out, err = await proc.communicate()
    assert err is None
    assert sorted(out.split()) == [b"err", b"out"]
    assert proc.returncode == 0


async def test_cwd_and_env() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        proc = await asyncio.create_subprocess_exec(
            PY,
            "-c",
            "import os; print(os.getcwd(), os.environ['CQLOOP_TEST_VAR'])",
            stdout=subprocess.PIPE,
            cwd=tmp,
            env={**os.environ, "CQLOOP_TEST_VAR": "set"},
        )
        out, _ = await proc.communicate()
        assert out.split() == [os.path.realpath(tmp).encode(), b"set"]


async def test_umask_and_process_group() -> None:
    skip_where_uvloop_differs(asyncio.get_running_loop(), "it refuses umask and process_group")
    proc = await asyncio.create_subprocess_exec(
        PY,
        "-c",
        "import os; print(oct(os.umask(0)), os.getpgid(0) == os.getpid())",
        stdout=subprocess.PIPE,
        umask=0o077,
        process_group=0,
    )
    out, _ = await proc.communicate()
    assert out.split() == [b"0o77", b"True"]


async def test_pass_fds() -> None:
    rfd, wfd = os.pipe()
    try:
        proc = await asyncio.create_subprocess_exec(
            PY, "-c", f"import os; os.write({wfd}, b'via pass_fds')", pass_fds=(wfd,)
        )
        assert await proc.wait() == 0
        assert os.read(rfd, 100) == b"via pass_fds"
    finally:
        os.close(rfd)
        os.close(wfd)


async def test_preexec_fn_and_start_new_session() -> None:
    rfd, wfd = os.pipe()
    try:
        proc = await asyncio.create_subprocess_exec(
            PY,
            "-c",
            "import os; print(os.getsid(0) == os.getpid(), os.environ.get('PREEXEC'))",
            stdout=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=lambda: os.environ.__setitem__("PREEXEC", "ran"),
        )
        out, _ = await proc.communicate()
        assert out.split() == [b"True", b"ran"]
    finally:
        os.close(rfd)
        os.close(wfd)


async def test_devnull_and_inherited_fds() -> None:
    with tempfile.TemporaryFile() as f:
        proc = await asyncio.create_subprocess_exec(
            PY,
            "-c",
            "import sys; print(len(sys.stdin.read()))",
            stdin=subprocess.DEVNULL,
            stdout=f,
            stderr=subprocess.DEVNULL,
        )
        assert await proc.wait() == 0
        f.seek(0)
        assert f.read().strip() == b"0"


async def test_kill_terminate_and_send_signal() -> None:
    for method, expected in (
        ("kill", -signal.SIGKILL),
        ("terminate", -signal.SIGTERM),
        ("send_signal", -signal.SIGUSR1),
    ):
        proc = await asyncio.create_subprocess_exec(
            PY,
            "-c",
            "import signal, sys, time; "
            "signal.signal(signal.SIGUSR1, signal.SIG_DFL); print('up', flush=True); "
            "time.sleep(60)",
            stdout=subprocess.PIPE,
        )
        assert proc.stdout is not None
        assert await proc.stdout.readline() == b"up\n"
        if method == "send_signal":
            proc.send_signal(signal.SIGUSR1)
        else:
            getattr(proc, method)()
        assert await proc.wait() == expected
        if not is_uvloop(asyncio.get_running_loop()):
            # Once wait() has returned the transport has let go of the process.
            with pytest.raises(ProcessLookupError):
                proc.kill()


async def test_protocol_callback_order() -> None:
    loop = asyncio.get_running_loop()
    skip_where_uvloop_differs(loop, "its stdin pipe transport is no asyncio.WriteTransport")
    transport, proto = await loop.subprocess_exec(
        RecordingProtocol,
        PY,
        "-c",
        "import sys; sys.stdout.write('o'); sys.stderr.write('e'); sys.exit(5)",
        stdin=subprocess.PIPE,
    )
    assert transport.get_pid() > 0
    stdin = transport.get_pipe_transport(0)
    assert isinstance(stdin, asyncio.WriteTransport)
    assert isinstance(transport.get_pipe_transport(1), asyncio.ReadTransport)
    assert transport.get_pipe_transport(3) is None
    await proto.done
    assert transport.get_returncode() == 5
    assert proto.events[0] == "made"
    assert proto.events[-1] == "lost"
    middle = proto.events[1:-1]
    assert sorted(middle, key=str) == sorted(
        ["exited", ("pipe_lost", 0), ("pipe_lost", 1), ("pipe_lost", 2)], key=str
    )
    assert (bytes(proto.data[1]), bytes(proto.data[2])) == (b"o", b"e")
    transport.close()


async def test_close_kills_a_running_child() -> None:
    loop = asyncio.get_running_loop()
    skip_where_uvloop_differs(loop, "is_closing() stays False after close()")
    transport, proto = await loop.subprocess_exec(
        RecordingProtocol, PY, "-c", "import time; time.sleep(60)", stdin=None, stdout=None
    )
    assert transport.get_returncode() is None
    transport.close()
    assert transport.is_closing()
    await proto.done
    assert transport.get_returncode() == -signal.SIGKILL


@pytest.mark.cqloop_only
async def test_exit_seen_when_child_reaped_by_popen_first() -> None:
    """A child reaped behind the loop's back (Popen.wait() on get_extra_info("subprocess"))
    still reports its real status: Popen recorded it. asyncio's child watchers report 255
    ("unknown child") here; cqloop does better on purpose."""
    loop = asyncio.get_running_loop()
    transport, proto = await loop.subprocess_exec(
        RecordingProtocol, PY, "-c", "import sys; sys.exit(9)", stdin=None, stdout=None, stderr=None
    )
    popen = transport.get_extra_info("subprocess")
    assert popen.wait() == 9  # reaps it behind the loop's back
    await proto.done
    assert transport.get_returncode() == 9
    transport.close()


async def test_popen_failure_leaves_nothing_behind() -> None:
    loop = asyncio.get_running_loop()
    with pytest.raises(FileNotFoundError):
        await loop.subprocess_exec(asyncio.SubprocessProtocol, "/nonexistent/program")


async def test_spawn_does_not_run_at_fork_hooks() -> None:
    """Regression (uvloop runs os.register_at_fork hooks for every child it spawns): a
    spawn without preexec_fn runs none, as subprocess.Popen runs none."""
    loop = asyncio.get_running_loop()
    skip_where_uvloop_differs(loop, "uvloop runs at-fork hooks around its spawns")
    code = (
        "import asyncio, os, sys\n"
        "import cqloop\n"
        "calls = []\n"
        "os.register_at_fork(before=lambda: calls.append('before'),\n"
        "                    after_in_parent=lambda: calls.append('parent'),\n"
        "                    after_in_child=lambda: os.write(1, b'child-hook '))\n"
        "async def main():\n"
        "    p = await asyncio.create_subprocess_exec(sys.executable, '-c', 'pass')\n"
        "    await p.wait()\n"
        "    p = await asyncio.create_subprocess_shell('true')\n"
        "    await p.wait()\n"
        f"with asyncio.Runner(loop_factory={_factory_expr(loop)}) as r: r.run(main())\n"
        "print('calls', calls)\n"
    )
    out = subprocess.run([PY, "-c", code], capture_output=True, check=True, timeout=60)
    assert out.stdout.strip() == b"calls []", out


def _factory_expr(loop: asyncio.AbstractEventLoop) -> str:
    if is_cqloop(loop):
        return "cqloop.new_event_loop"
    return "asyncio.new_event_loop"


# -- cqloop's exit detection ---------------------------------------------------------------------


@pytest.mark.cqloop_only
async def test_exit_detection_needs_no_sigchld_handler_and_no_thread() -> None:
    before_handler = signal.getsignal(signal.SIGCHLD)
    before_threads = set(threading.enumerate())
    proc = await asyncio.create_subprocess_exec(PY, "-c", "pass")
    during = set(threading.enumerate()) - before_threads
    assert await proc.wait() == 0
    assert signal.getsignal(signal.SIGCHLD) is before_handler
    assert during == set()
    assert asyncio.get_running_loop().statistics()["fds"] == 0  # the pidfd is gone


@pytest.fixture
def no_pidfd(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    def refuse(pid: int, flags: int = 0) -> int:
        raise OSError(errno.ENOSYS, "pidfd_open: Function not implemented")

    monkeypatch.setattr(os, "pidfd_open", refuse)
    yield


@pytest.mark.cqloop_only
@pytest.mark.usefixtures("no_pidfd")
async def test_fallback_without_pidfd_uses_a_waitpid_thread() -> None:
    zombies_before = set(zombie_children())
    proc = await asyncio.create_subprocess_exec(
        PY, "-c", "import sys; print('fallback'); sys.exit(4)", stdout=subprocess.PIPE
    )
    waiters = [t for t in threading.enumerate() if t.name == f"cqloop-waitpid-{proc.pid}"]
    out, _ = await proc.communicate()
    assert (out, proc.returncode) == (b"fallback\n", 4)
    for thread in waiters:
        thread.join()
    proc2 = await asyncio.create_subprocess_exec(PY, "-c", "import time; time.sleep(60)")
    proc2.kill()  # without a pidfd the signal goes through os.kill
    assert await proc2.wait() == -signal.SIGKILL
    assert set(zombie_children()) <= zombies_before


@pytest.mark.cqloop_only
def test_closing_the_loop_releases_pidfds_of_running_children() -> None:
    import cqloop

    loop = cqloop.new_event_loop()
    try:
        proc = loop.run_until_complete(
            asyncio.create_subprocess_exec(PY, "-c", "import time; time.sleep(60)")
        )
    finally:
        loop.close()  # the conftest fd check sees the pidfd closed
    popen = proc._transport.get_extra_info("subprocess")  # type: ignore[attr-defined]
    popen.kill()
    assert popen.wait() == -signal.SIGKILL


# -- soak ------------------------------------------------------------------------------------


@pytest.mark.cqloop_only
async def test_soak_thousand_children_no_zombie_no_fd_leak() -> None:
    """1,000 children, 50 at a time, half of them with a stdout pipe: every one is reaped
    (no zombie) and every pipe and pidfd is closed (conftest's fd check, and the loop's
    watched-fd count)."""
    loop = asyncio.get_running_loop()
    zombies_before = set(zombie_children())  # another loop's leftovers are not ours
    sem = asyncio.Semaphore(SOAK_CONCURRENCY)

    async def one(i: int) -> int:
        async with sem:
            if i % 2:
                proc = await asyncio.create_subprocess_exec(
                    TRUE, stdin=None, stdout=subprocess.PIPE, stderr=None
                )
                await proc.communicate()
            else:
                proc = await asyncio.create_subprocess_exec(TRUE)
                await proc.wait()
            assert proc.returncode is not None
            return proc.returncode

    codes = await asyncio.gather(*(one(i) for i in range(SOAK_CHILDREN)))
    assert codes == [0] * SOAK_CHILDREN
    assert set(zombie_children()) <= zombies_before
    assert loop.statistics()["fds"] == 0  # type: ignore[attr-defined]
