"""A cqloop loop inherited across fork(): the child gets a clear error until it calls
loop.reset(), and nothing the child does touches the parent's kernel queue.

Each test runs a script in a fresh Python process, which forks (pytest itself never
forks). The scripts print what they observe; the test compares.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.cqloop_only

CHILD_TIMEOUT_S = 30

PRELUDE = """
import asyncio, os, signal, sys
import cqloop

def child_exit(code=0):
    sys.stdout.flush()
    os._exit(code)
"""


def run_script(body: str) -> list[str]:
    code = PRELUDE + textwrap.dedent(body)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=CHILD_TIMEOUT_S
    )
    assert result.returncode == 0, result
    return result.stdout.splitlines()


def test_forked_child_must_reset_before_running() -> None:
    lines = run_script(
        """
        loop = cqloop.new_event_loop()
        pid = os.fork()
        if pid == 0:
            for how in ("run_forever", "run_until_complete", "step"):
                try:
                    if how == "run_forever":
                        loop.run_forever()
                    elif how == "run_until_complete":
                        loop.run_until_complete(loop.create_future())
                    else:
                        loop.step(0)
                except RuntimeError as exc:
                    print(how, "refused", "loop.reset()" in str(exc))
            loop.reset()
            print("after reset", loop.run_until_complete(asyncio.sleep(0, "ran")))
            loop.close()
            child_exit()
        _, status = os.waitpid(pid, 0)
        print("child status", os.waitstatus_to_exitcode(status))
        loop.close()
        """
    )
    assert lines == [
        "run_forever refused True",
        "run_until_complete refused True",
        "step refused True",
        "after reset ran",
        "child status 0",
    ]


def test_child_closing_or_using_its_copy_leaves_the_parent_loop_intact() -> None:
    """Regression: epoll_ctl in a forked child changes the parent's epoll set (the epoll fd
    is shared), and reading the shared eventfd steals the parent's wake-ups. The child's
    remove_reader, close() and call_soon_threadsafe must not reach them."""
    lines = run_script(
        """
        import threading
        loop = cqloop.new_event_loop()
        r, w = os.pipe()
        got = []
        loop.add_reader(r, lambda: got.append(os.read(r, 100)))
        pid = os.fork()
        if pid == 0:
            try:
                loop.add_reader(w, lambda: None)
            except RuntimeError:
                print("child add_reader refused")
            loop.remove_reader(r)
            loop.call_soon_threadsafe(lambda: None)
            loop.close()
            child_exit()
        os.waitpid(pid, 0)
        os.write(w, b"still watched")
        done = loop.create_future()
        def from_thread():
            loop.call_soon_threadsafe(done.set_result, "woken")
        threading.Thread(target=from_thread).start()
        print(loop.run_until_complete(done))
        loop.run_until_complete(asyncio.sleep(0.01))
        print(got)
        loop.close()
        """
    )
    assert lines == ["child add_reader refused", "woken", "[b'still watched']"]


def test_reset_drops_inherited_registrations_and_keeps_signal_handlers() -> None:
    lines = run_script(
        """
        loop = cqloop.new_event_loop()
        r, w = os.pipe()
        parent = os.getpid()
        loop.add_reader(
            r, lambda: print("reader ran in parent", os.getpid() == parent, os.read(r, 10))
        )
        seen = []
        loop.add_signal_handler(signal.SIGUSR1, seen.append, "usr1")
        pid = os.fork()
        if pid == 0:
            loop.reset()
            print("fds watched", loop.statistics()["fds"])
            os.write(w, b"x")  # the old reader is gone: nothing runs for it
            async def main():
                os.kill(os.getpid(), signal.SIGUSR1)
                for _ in range(100):
                    if seen:
                        break
                    await asyncio.sleep(0.01)
                return seen
            print("child handler", loop.run_until_complete(main()))
            loop.close()
            child_exit()
        os.waitpid(pid, 0)
        # The parent's handler and wakeup fd were not disturbed by the child.
        async def main():
            os.kill(os.getpid(), signal.SIGUSR1)
            while not seen:
                await asyncio.sleep(0.01)
            return seen
        print("parent handler", loop.run_until_complete(main()))
        loop.close()
        """
    )
    # The child watches only the signal wakeup socket it made for itself; the byte it wrote
    # is read by the parent's reader, in the parent.
    assert lines == [
        "fds watched 1",
        "child handler ['usr1']",
        "reader ran in parent True b'x'",
        "parent handler ['usr1']",
    ]


def test_fork_from_a_callback_stops_the_child_copy_before_it_polls() -> None:
    lines = run_script(
        """
        loop = cqloop.new_event_loop()
        children = []

        def fork_here():
            pid = os.fork()
            if pid == 0:
                return  # the child carries on in the loop's callback batch
            children.append(pid)

        loop.call_soon(fork_here)
        try:
            loop.run_until_complete(asyncio.sleep(0.05))
        except RuntimeError as exc:
            print("child stopped", "loop.reset()" in str(exc))
            child_exit()
        pid = children[0]
        _, status = os.waitpid(pid, 0)
        print("parent done, child status", os.waitstatus_to_exitcode(status))
        loop.close()
        """
    )
    assert lines == ["child stopped True", "parent done, child status 0"]


def test_reset_outside_a_forked_child_is_refused() -> None:
    import cqloop

    loop = cqloop.new_event_loop()
    try:
        with pytest.raises(RuntimeError, match="fork"):
            loop.reset()
    finally:
        loop.close()


def test_subprocess_spawn_does_not_mark_the_loop_forked() -> None:
    lines = run_script(
        """
        async def main():
            p = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
            await p.wait()
            # preexec_fn makes CPython run the at-fork hooks in the child only.
            p = await asyncio.create_subprocess_exec(
                sys.executable, "-c", "pass", preexec_fn=lambda: None)
            await p.wait()
            return "ok"
        loop = cqloop.new_event_loop()
        print(loop.run_until_complete(main()), loop._forked)
        loop.close()
        """
    )
    assert lines == ["ok False"]
