"""Signal handlers (add_signal_handler/remove_signal_handler) and Ctrl-C, on cqloop, asyncio
and uvloop (conftest parametrises the async tests).

Handlers that a test installs in this process are removed before it ends. What a signal does
to a whole program (KeyboardInterrupt out of run_forever, run_until_complete and
cqloop.run(), a SIGTERM handler, the default disposition restored) is tested in a child
Python process, on cqloop and on asyncio (the oracle).
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import signal
import subprocess
import sys
import textwrap
import threading

import pytest

from tests.conftest import is_uvloop, skip_where_uvloop_differs

CHILD_TIMEOUT_S = 30
FACTORIES = {"cqloop": "cqloop.new_event_loop", "asyncio": "asyncio.new_event_loop"}

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="none")


# -- in this process ----------------------------------------------------------------------------


async def test_handler_runs_in_the_loop_with_args_and_context() -> None:
    loop = asyncio.get_running_loop()
    seen: asyncio.Future[tuple[object, ...]] = loop.create_future()

    def handler(*args: object) -> None:
        seen.set_result(
            (*args, asyncio.get_running_loop() is loop, threading.current_thread().name)
        )

    token = request_id.set("at add time")
    loop.add_signal_handler(signal.SIGUSR1, handler, "a", 1)
    request_id.reset(token)
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert await seen == ("a", 1, True, "MainThread")
    finally:
        assert loop.remove_signal_handler(signal.SIGUSR1)
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


async def test_handler_sees_the_context_of_add_signal_handler() -> None:
    loop = asyncio.get_running_loop()
    if is_uvloop(loop):
        pytest.skip("uvloop runs signal handlers in the context current at dispatch")
    seen: asyncio.Future[str] = loop.create_future()
    token = request_id.set("at add time")
    loop.add_signal_handler(signal.SIGUSR2, lambda: seen.set_result(request_id.get()))
    request_id.reset(token)
    try:
        os.kill(os.getpid(), signal.SIGUSR2)
        assert await seen == "at add time"
    finally:
        loop.remove_signal_handler(signal.SIGUSR2)


async def test_each_signal_runs_the_handler_again_and_replacing_works() -> None:
    loop = asyncio.get_running_loop()
    calls: list[str] = []
    got = asyncio.Event()

    def record(name: str) -> None:
        calls.append(name)
        got.set()

    loop.add_signal_handler(signal.SIGUSR1, record, "first")
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        await got.wait()
        got.clear()
        loop.add_signal_handler(signal.SIGUSR1, record, "second")  # replaces
        os.kill(os.getpid(), signal.SIGUSR1)
        await got.wait()
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)
    assert calls == ["first", "second"]


def test_signal_wakes_an_idle_loop(loop: asyncio.AbstractEventLoop) -> None:
    """A loop blocked with nothing to do (no timer, no fd) wakes for a signal."""
    caught: list[int] = []

    def handler() -> None:
        caught.append(1)
        loop.stop()

    loop.add_signal_handler(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.01)
        loop.run_forever()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        loop.remove_signal_handler(signal.SIGALRM)
    assert caught == [1]


async def test_remove_restores_default_disposition() -> None:
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, lambda: None)
    loop.add_signal_handler(signal.SIGTERM, lambda: None)
    assert signal.getsignal(signal.SIGINT) not in (signal.default_int_handler, signal.SIG_DFL)
    assert loop.remove_signal_handler(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert loop.remove_signal_handler(signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    assert not loop.remove_signal_handler(signal.SIGTERM)


async def test_argument_errors() -> None:
    loop = asyncio.get_running_loop()

    async def coro() -> None:
        pass

    with pytest.raises(TypeError):
        loop.add_signal_handler("SIGINT", lambda: None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        loop.remove_signal_handler("SIGINT")  # type: ignore[arg-type]
    for bad in (0, -1, signal.NSIG + 1):
        with pytest.raises(ValueError):
            loop.add_signal_handler(bad, lambda: None)
        with pytest.raises(ValueError):
            loop.remove_signal_handler(bad)
    for uncatchable in (signal.SIGKILL, signal.SIGSTOP):
        with pytest.raises(RuntimeError):
            loop.add_signal_handler(uncatchable, lambda: None)
        assert not loop.remove_signal_handler(uncatchable)
    with pytest.raises(TypeError):
        loop.add_signal_handler(signal.SIGUSR1, coro)
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


def test_closed_loop_refuses(loop: asyncio.AbstractEventLoop) -> None:
    loop.close()
    with pytest.raises(RuntimeError):
        loop.add_signal_handler(signal.SIGUSR1, lambda: None)


def test_only_from_the_main_thread(loop: asyncio.AbstractEventLoop) -> None:
    skip_where_uvloop_differs(loop, "it raises ValueError, not RuntimeError")
    errors: list[BaseException] = []

    def other_thread() -> None:
        try:
            loop.add_signal_handler(signal.SIGUSR1, lambda: None)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join()
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError), errors
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


def test_close_removes_handlers_and_the_wakeup_fd(loop: asyncio.AbstractEventLoop) -> None:
    skip_where_uvloop_differs(loop, "close() leaves the signal handlers installed")
    loop.add_signal_handler(signal.SIGUSR1, lambda: None)
    loop.close()
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
    assert signal.set_wakeup_fd(-1) == -1


# -- in a child process: what a signal does to a program ---------------------------------------


def run_child(kind: str, body: str, send: int | None = None) -> subprocess.CompletedProcess[str]:
    """Run `body` in a child with LOOP_FACTORY set to the loop kind's factory; when it prints
    'ready', send it `send`. Returns the finished process (stdout and stderr as text)."""
    code = (
        "import asyncio, os, signal, sys\nimport cqloop\n"
        f"LOOP_FACTORY = {FACTORIES[kind]}\n" + textwrap.dedent(body)
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        if send is not None:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line == "ready\n", (line, proc.stderr.read() if proc.stderr else "")
            proc.send_signal(send)
        out, err = proc.communicate(timeout=CHILD_TIMEOUT_S)
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


KINDS = pytest.mark.parametrize("kind", list(FACTORIES))


@KINDS
def test_ctrl_c_during_run_cancels_tasks_and_raises_keyboard_interrupt(kind: str) -> None:
    body = """
    async def worker():
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            print("worker cancelled", flush=True)
            raise

    tasks = []  # a task nobody references may be collected before it is cancelled

    async def main():
        tasks.append(asyncio.get_running_loop().create_task(worker()))
        await asyncio.sleep(0)
        print("ready", flush=True)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            print("main cancelled", flush=True)
            raise

    try:
        if LOOP_FACTORY is cqloop.new_event_loop:
            cqloop.run(main())
        else:
            with asyncio.Runner(loop_factory=LOOP_FACTORY) as runner:
                runner.run(main())
    except KeyboardInterrupt:
        print("KeyboardInterrupt", flush=True)
        sys.exit(17)
    """
    result = run_child(kind, body, send=signal.SIGINT)
    assert result.returncode == 17, result
    lines = result.stdout.splitlines()
    assert lines[0] == "main cancelled", result
    assert set(lines[1:]) == {"worker cancelled", "KeyboardInterrupt"}, result


@KINDS
@pytest.mark.parametrize("how", ["run_forever", "run_until_complete"])
def test_ctrl_c_during_run_forever_and_run_until_complete(kind: str, how: str) -> None:
    body = f"""
    loop = LOOP_FACTORY()
    loop.call_soon(lambda: print("ready", flush=True))
    try:
        if {how!r} == "run_forever":
            loop.run_forever()
        else:
            loop.run_until_complete(loop.create_future())
    except KeyboardInterrupt:
        print("KeyboardInterrupt", flush=True)
        loop.close()
        sys.exit(17)
    """
    result = run_child(kind, body, send=signal.SIGINT)
    assert (result.returncode, result.stdout) == (17, "KeyboardInterrupt\n"), result


@KINDS
def test_sigterm_handler_runs_in_the_loop_and_removal_restores_default(kind: str) -> None:
    body = """
    import threading

    async def main():
        loop = asyncio.get_running_loop()
        got = loop.create_future()

        def on_term(tag):
            got.set_result((tag, asyncio.get_running_loop() is loop,
                            threading.current_thread() is threading.main_thread()))

        loop.add_signal_handler(signal.SIGTERM, on_term, "term")
        print("ready", flush=True)
        print(*(await got), flush=True)
        assert loop.remove_signal_handler(signal.SIGTERM)
        print(signal.getsignal(signal.SIGTERM) == signal.SIG_DFL, flush=True)
        os.kill(os.getpid(), signal.SIGTERM)  # the default disposition: this kills us
        await asyncio.sleep(30)
        print("still alive", flush=True)

    with asyncio.Runner(loop_factory=LOOP_FACTORY) as runner:
        runner.run(main())
    """
    result = run_child(kind, body, send=signal.SIGTERM)
    assert result.returncode == -signal.SIGTERM, result
    assert result.stdout == "term True True\nTrue\n", result


@KINDS
def test_sigint_handler_replaces_keyboard_interrupt(kind: str) -> None:
    body = """
    async def main():
        loop = asyncio.get_running_loop()
        got = loop.create_future()
        loop.add_signal_handler(signal.SIGINT, got.set_result, "handled")
        print("ready", flush=True)
        print(await got, flush=True)
        loop.remove_signal_handler(signal.SIGINT)
        print(signal.getsignal(signal.SIGINT) is signal.default_int_handler, flush=True)

    with asyncio.Runner(loop_factory=LOOP_FACTORY) as runner:
        runner.run(main())
    """
    result = run_child(kind, body, send=signal.SIGINT)
    assert (result.returncode, result.stdout) == (0, "handled\nTrue\n"), result


@KINDS
def test_ctrl_c_arriving_while_only_compiled_code_runs_is_not_lost(kind: str) -> None:
    """Regression: a SIGINT delivered while the loop ran a callback written in C (no bytecode
    ran afterwards to call the Python-level handler) left cqloop blocked in epoll_wait; the
    poller now runs pending handlers before it waits, as asyncio's loop runs them at its
    last bytecode before select(). The signal comes from another process, as Ctrl-C does.
    (A signal landing between that check and the wait itself, a window of a few
    instructions, is seen only at the next wake-up, by asyncio's loop as by cqloop's.)"""
    body = """
    import subprocess
    loop = LOOP_FACTORY()
    sender = subprocess.Popen(["sh", "-c", f"sleep 0.1; kill -INT {os.getpid()}"])
    # sum() over a range runs in C for a second or so: the signal lands during it.
    loop.call_soon(sum, range(5 * 10**7))
    try:
        loop.run_forever()
    except KeyboardInterrupt:
        print("KeyboardInterrupt", flush=True)
    sender.wait()
    """
    result = run_child(kind, body)
    assert (result.returncode, result.stdout) == (0, "KeyboardInterrupt\n"), result
