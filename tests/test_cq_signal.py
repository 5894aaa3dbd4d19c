"""cqloop.signal: signalfd listeners, the signal mask and dispositions.

Signal masks and dispositions are process-wide or per-thread state, so every test that
listens, blocks, raises or changes a disposition runs in a child interpreter
(`run_child`), which prints OK when all its assertions held. Loop-dependent tests run
once per loop kind (cqloop, stock asyncio, uvloop): the kind is handed to the child, which
makes its own loop of that kind. Tests of pure functions run in this process.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cqloop import signal
from cqloop._core import osext
from tests.conftest import LOOP_FACTORIES

CHILD_TIMEOUT_S = 60

PRELUDE = """
import asyncio, os, select, sys, threading
import signal as stdsignal
from cqloop import signal

KIND = sys.argv[1]

def new_loop():
    if KIND == "cqloop":
        import cqloop
        return cqloop.new_event_loop()
    if KIND == "uvloop":
        import uvloop
        return uvloop.new_event_loop()
    return asyncio.new_event_loop()

def run(coro):
    loop = new_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()

def blocked():
    return stdsignal.pthread_sigmask(stdsignal.SIG_BLOCK, [])

def fds():
    return set(os.listdir("/proc/self/fd"))
"""


def run_child(body: str, kind: str = "asyncio", returncode: int = 0) -> str:
    code = PRELUDE + textwrap.dedent(body)
    proc = subprocess.run(
        [sys.executable, "-c", code, kind],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
    )
    detail = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == returncode, detail
    if returncode == 0:
        assert proc.stdout.strip().endswith("OK"), detail
    return proc.stdout


def kind_of(loop_factory: Callable[[], object]) -> str:
    return next(name for name, factory in LOOP_FACTORIES.items() if factory is loop_factory)


# -- listeners on each loop kind -----------------------------------------------------------


def test_wait_returns_signal_sent_while_waiting(loop_factory) -> None:
    run_child(
        """
        async def main():
            with signal.listen(signal.SIGUSR1, signal.SIGUSR2) as listener:
                loop = asyncio.get_running_loop()
                waiting = asyncio.ensure_future(listener.wait())
                # Runs after the task's first step, which leaves it parked in poll().
                loop.call_soon(os.kill, os.getpid(), signal.SIGUSR2)
                assert await waiting == signal.SIGUSR2
                assert listener.get_nowait() is None
                assert listener.statistics()["received"] == 1
        run(main())
        print("OK")
        """,
        kind_of(loop_factory),
    )


def test_listen_blocks_sigterm_so_it_is_reported_not_fatal(loop_factory) -> None:
    run_child(
        """
        async def main():
            listener = signal.listen(signal.SIGTERM)
            assert signal.SIGTERM in blocked()
            os.kill(os.getpid(), signal.SIGTERM)
            assert await listener.wait() == signal.SIGTERM
            listener.close()
        run(main())
        print("OK")
        """,
        kind_of(loop_factory),
    )


def test_wait_times_out_with_none_then_reports_a_later_signal(loop_factory) -> None:
    # cqueues' examples/signal.wait: a listener waited on with a timeout, in a loop.
    run_child(
        """
        async def main():
            with signal.listen(signal.SIGHUP) as listener:
                assert await listener.wait(0.01) is None
                assert await listener.wait(0) is None
                os.kill(os.getpid(), signal.SIGHUP)
                assert await listener.wait(30) == signal.SIGHUP
        run(main())
        print("OK")
        """,
        kind_of(loop_factory),
    )


def test_await_listener_is_wait(loop_factory) -> None:
    run_child(
        """
        async def main():
            with signal.listen(signal.SIGUSR1) as listener:
                os.kill(os.getpid(), signal.SIGUSR1)
                assert await listener == signal.SIGUSR1
        run(main())
        print("OK")
        """,
        kind_of(loop_factory),
    )


def test_signals_pending_before_the_wait_are_each_reported(loop_factory) -> None:
    run_child(
        """
        async def main():
            with signal.listen(signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP) as listener:
                for signo in (signal.SIGUSR2, signal.SIGHUP, signal.SIGUSR1):
                    os.kill(os.getpid(), signo)
                got = {await listener.wait(), await listener.wait(), await listener.wait()}
                assert got == {signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP}, got
                assert await listener.wait(0) is None
        run(main())
        print("OK")
        """,
        kind_of(loop_factory),
    )


def test_close_wakes_a_waiter_and_unblocks_the_signal(loop_factory) -> None:
    run_child(
        """
        async def main():
            before = fds()
            listener = signal.listen(signal.SIGUSR1)
            loop = asyncio.get_running_loop()
            waiting = asyncio.ensure_future(listener.wait())
            loop.call_soon(listener.close)
            try:
                await waiting
            except ValueError:
                pass
            else:
                raise AssertionError("a wait on a closed listener returned")
            assert listener.closed
            assert fds() == before
            assert signal.SIGUSR1 not in blocked()
            listener.close()  # idempotent
            assert signal.SIGUSR1 not in blocked()
        run(main())
        print("OK")
        """,
        kind_of(loop_factory),
    )


def test_polling_interval_keeps_wait_working(loop_factory) -> None:
    run_child(
        """
        async def main():
            with signal.listen(signal.SIGUSR1, signal.SIGUSR2) as listener:
                assert listener.settimeout(0.01) is None
                assert listener.timeout() == 0.01
                # Several intervals pass, each re-reading the signalfd and finding nothing.
                assert await listener.wait(0.05) is None
                loop = asyncio.get_running_loop()
                loop.call_later(0.03, os.kill, os.getpid(), signal.SIGUSR1)
                assert await listener.wait() == signal.SIGUSR1
                assert listener.settimeout(None) == 0.01
                assert listener.timeout() is None
        run(main())
        print("OK")
        """,
        kind_of(loop_factory),
    )


# -- listeners without a loop ----------------------------------------------------------------


def test_listener_is_pollable_with_select_outside_any_loop() -> None:
    run_child(
        """
        with signal.listen(signal.SIGUSR1) as listener:
            assert listener.events() == "r"
            assert listener.pollfd() == listener.fileno()
            assert select.select([listener], [], [], 0)[0] == []
            os.kill(os.getpid(), signal.SIGUSR1)
            assert select.select([listener], [], [], 30)[0] == [listener]
            assert listener.get_nowait() == signal.SIGUSR1
            assert select.select([listener.pollfd()], [], [], 0)[0] == []
        print("OK")
        """
    )


def test_timeout_is_zero_while_a_read_signal_waits_to_be_returned() -> None:
    run_child(
        """
        with signal.listen(signal.SIGUSR1, signal.SIGUSR2) as listener:
            os.kill(os.getpid(), signal.SIGUSR1)
            os.kill(os.getpid(), signal.SIGUSR2)
            first = listener.get_nowait()  # one read takes both records
            assert listener.timeout() == 0.0
            assert listener.statistics()["pending"] == 1
            second = listener.get_nowait()
            assert {first, second} == {signal.SIGUSR1, signal.SIGUSR2}
            assert listener.timeout() is None
        print("OK")
        """
    )


def test_standard_signal_sent_twice_before_a_read_is_reported_once() -> None:
    run_child(
        """
        with signal.listen(signal.SIGUSR1) as listener:
            os.kill(os.getpid(), signal.SIGUSR1)
            os.kill(os.getpid(), signal.SIGUSR1)
            assert listener.get_nowait() == signal.SIGUSR1
            assert listener.get_nowait() is None
        print("OK")
        """
    )


def test_realtime_signals_queue_and_each_is_reported() -> None:
    run_child(
        """
        rt = signal.SIGRTMIN + 2
        with signal.listen(rt) as listener:
            os.kill(os.getpid(), rt)
            os.kill(os.getpid(), rt)
            assert listener.get_nowait() == rt
            assert listener.get_nowait() == rt
            assert listener.get_nowait() is None
        print("OK")
        """
    )


def test_raise_in_the_listening_thread_is_reported() -> None:
    run_child(
        """
        with signal.listen(signal.SIGUSR2) as listener:
            signal.raise_(signal.SIGUSR2)
            assert listener.get_nowait() == signal.SIGUSR2
        print("OK")
        """
    )


def test_two_listeners_for_one_signal_the_first_reader_takes_it() -> None:
    run_child(
        """
        with signal.listen(signal.SIGUSR1) as first, signal.listen(signal.SIGUSR1) as second:
            os.kill(os.getpid(), signal.SIGUSR1)
            assert select.select([first, second], [], [], 30)[0] == [first, second]
            assert second.get_nowait() == signal.SIGUSR1
            assert first.get_nowait() is None
        print("OK")
        """
    )


def test_threads_started_after_listen_inherit_the_blocked_signals() -> None:
    run_child(
        """
        masks = {}
        ready, go = threading.Event(), threading.Event()
        def record(name, wait_first):
            if wait_first:
                ready.set()
                go.wait()
            masks[name] = blocked()
        early = threading.Thread(target=record, args=("early", True))
        early.start()
        ready.wait()
        listener = signal.listen(signal.SIGUSR1)
        late = threading.Thread(target=record, args=("late", False))
        late.start()
        late.join()
        go.set()
        early.join()
        assert signal.SIGUSR1 in masks["late"], masks
        assert signal.SIGUSR1 not in masks["early"], masks
        listener.close()
        print("OK")
        """
    )


def test_listen_refuses_uncatchable_and_invalid_signals_without_blocking() -> None:
    run_child(
        """
        before = blocked()
        for bad, error in ((signal.SIGKILL, ValueError), (signal.SIGSTOP, ValueError),
                           (0, ValueError), (100000, ValueError), ("SIGTERM", TypeError)):
            try:
                signal.listen(signal.SIGUSR1, bad)
            except error:
                pass
            else:
                raise AssertionError(f"listen accepted {bad!r}")
        try:
            signal.listen()
        except ValueError:
            pass
        else:
            raise AssertionError("listen() accepted no signals")
        assert blocked() == before
        print("OK")
        """
    )


# -- mask and dispositions -----------------------------------------------------------------


def test_block_and_unblock_change_the_calling_threads_mask() -> None:
    run_child(
        """
        assert signal.SIGUSR1 not in blocked()
        previous = signal.block(signal.SIGUSR1, signal.SIGUSR2)
        assert signal.SIGUSR1 not in previous
        assert {signal.SIGUSR1, signal.SIGUSR2} <= blocked()
        previous = signal.unblock(signal.SIGUSR2)
        assert signal.SIGUSR2 in previous
        assert signal.SIGUSR1 in blocked() and signal.SIGUSR2 not in blocked()
        print("OK")
        """
    )


def test_ignore_makes_the_signal_harmless() -> None:
    run_child(
        """
        signal.ignore(signal.SIGUSR1)
        assert stdsignal.getsignal(signal.SIGUSR1) is stdsignal.SIG_IGN
        os.kill(os.getpid(), signal.SIGUSR1)
        print("OK")
        """
    )


def test_discard_installs_a_handler_that_swallows_the_signal() -> None:
    run_child(
        """
        signal.discard(signal.SIGUSR1)
        assert callable(stdsignal.getsignal(signal.SIGUSR1))
        signal.raise_(signal.SIGUSR1)  # the handler runs before raise_ returns
        print("OK")
        """
    )


def test_default_restores_the_default_action() -> None:
    run_child(
        """
        signal.ignore(signal.SIGUSR1)
        signal.default(signal.SIGUSR1)
        assert stdsignal.getsignal(signal.SIGUSR1) is stdsignal.SIG_DFL
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGUSR1)
        print("still alive")
        """,
        returncode=-signal.SIGUSR1,
    )


# -- pure functions (no process state) -------------------------------------------------------


def test_names_map_numbers_to_names_and_attributes_map_back() -> None:
    assert signal.names[signal.SIGTERM] == "SIGTERM"
    assert signal.names[signal.SIGKILL] == "SIGKILL"
    for number, name in signal.names.items():
        assert getattr(signal, name) == number
    with pytest.raises(TypeError):
        signal.names[1] = "x"  # type: ignore[index]


def test_strsignal_describes_a_signal() -> None:
    assert signal.strsignal(signal.SIGTERM) == "Terminated"
    assert signal.strsignal(signal.SIGKILL) == "Killed"


@given(st.binary(max_size=3 * 128 + 50))
def test_decode_siginfo_takes_whole_records_only(data: bytes) -> None:
    records = osext.decode_siginfo(data)
    assert len(records) == len(data) // osext.SIGINFO_SIZE
    for index, (signo, *_rest) in enumerate(records):
        offset = index * osext.SIGINFO_SIZE
        assert signo == int.from_bytes(data[offset : offset + 4], sys.byteorder)


# -- closing a listener gives its signals back ----------------------------------------------


def test_sigint_works_again_after_a_with_listen_block(loop_factory) -> None:
    # Ctrl-C after `with signal.listen(SIGINT)` must raise KeyboardInterrupt again, and a
    # child started afterwards must not inherit SIGINT blocked.
    run_child(
        """
        async def main():
            with signal.listen(signal.SIGINT) as listener:
                os.kill(os.getpid(), signal.SIGINT)
                assert await listener.wait(timeout=30) == signal.SIGINT
        run(main())
        assert signal.SIGINT not in blocked()
        import subprocess
        child_mask = subprocess.run(
            ["grep", "SigBlk", "/proc/self/status"], capture_output=True, text=True
        ).stdout.split()[1]
        assert int(child_mask, 16) & (1 << (signal.SIGINT - 1)) == 0, child_mask
        try:
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):
                pass
        except KeyboardInterrupt:
            print("OK")
        """,
        kind_of(loop_factory),
    )


def test_a_signal_blocked_before_listen_stays_blocked_after_close() -> None:
    run_child(
        """
        signal.block(signal.SIGUSR2)
        with signal.listen(signal.SIGUSR1, signal.SIGUSR2):
            assert {signal.SIGUSR1, signal.SIGUSR2} <= blocked()
        assert signal.SIGUSR2 in blocked()
        assert signal.SIGUSR1 not in blocked()
        print("OK")
        """
    )


def test_several_listeners_of_a_signal_unblock_it_when_the_last_closes() -> None:
    run_child(
        """
        first = signal.listen(signal.SIGUSR1)
        second = signal.listen(signal.SIGUSR1, signal.SIGUSR2)
        first.close()
        assert {signal.SIGUSR1, signal.SIGUSR2} <= blocked()
        third = signal.listen(signal.SIGUSR2)
        second.close()
        assert signal.SIGUSR1 not in blocked()
        assert signal.SIGUSR2 in blocked()
        third.close()
        assert not {signal.SIGUSR1, signal.SIGUSR2} & blocked()
        # Reopened after the last closed: blocked again, and given back again.
        with signal.listen(signal.SIGUSR1):
            assert signal.SIGUSR1 in blocked()
        assert signal.SIGUSR1 not in blocked()
        print("OK")
        """
    )


def test_a_signal_left_unread_at_close_goes_to_its_disposition() -> None:
    # Unblocking delivers a pending signal at once: a handler sees it, nothing is lost.
    run_child(
        """
        seen = []
        stdsignal.signal(signal.SIGUSR1, lambda signo, frame: seen.append(signo))
        with signal.listen(signal.SIGUSR1) as listener:
            os.kill(os.getpid(), signal.SIGUSR1)
            assert select.select([listener], [], [], 30)[0] == [listener]
        assert seen == [signal.SIGUSR1], seen
        print("OK")
        """
    )


def test_a_listener_collected_unclosed_unblocks_its_signals() -> None:
    run_child(
        """
        import gc
        listener = signal.listen(signal.SIGUSR1)
        del listener
        gc.collect()
        assert signal.SIGUSR1 not in blocked()
        print("OK")
        """
    )


def test_listeners_in_two_threads_each_unblock_in_their_own() -> None:
    # The mask is per thread: a listener's hold is on the mask of the thread that made it.
    run_child(
        """
        result = {}
        def other():
            with signal.listen(signal.SIGUSR1):
                result["inside"] = signal.SIGUSR1 in blocked()
            result["after"] = signal.SIGUSR1 in blocked()
        with signal.listen(signal.SIGUSR1):
            thread = threading.Thread(target=other)
            thread.start()
            thread.join()
            assert signal.SIGUSR1 in blocked()
        assert signal.SIGUSR1 not in blocked()
        # The thread inherited the mask with SIGUSR1 blocked, so its listener found it
        # blocked already and left it so.
        assert result == {"inside": True, "after": True}, result
        print("OK")
        """
    )
