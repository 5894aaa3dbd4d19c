"""The ways a program gets a cqloop loop: cqloop.run (asyncio.run's contract),
new_event_loop as a loop factory, EventLoopPolicy/install. (`python -m cqloop run`:
test_cli.py.)"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap

import pytest

import cqloop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY312 = sys.version_info >= (3, 12)


def run_python(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
    )


def test_run_returns_the_result_on_a_cqloop_loop():
    async def main():
        await asyncio.sleep(0)
        return type(asyncio.get_running_loop())

    assert cqloop.run(main()) is cqloop.Loop


def test_run_cancels_leftover_tasks_and_closes_the_loop():
    seen = {}

    async def leftover():
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            seen["cancelled"] = True
            raise

    async def main():
        asyncio.get_running_loop().create_task(leftover())
        await asyncio.sleep(0)
        seen["loop"] = asyncio.get_running_loop()

    cqloop.run(main())
    assert seen["cancelled"] is True
    assert seen["loop"].is_closed()


def test_run_passes_debug():
    async def main():
        return asyncio.get_running_loop().get_debug()

    assert cqloop.run(main(), debug=True) is True
    assert cqloop.run(main(), debug=False) is False


def test_run_propagates_the_exception():
    async def main():
        raise LookupError("from main")

    with pytest.raises(LookupError, match="from main"):
        cqloop.run(main())


def test_run_refuses_to_run_inside_a_running_loop():
    async def outer():
        coro = asyncio.sleep(0)
        try:
            cqloop.run(coro)
        finally:
            coro.close()

    with pytest.raises(RuntimeError, match="cannot be called from a running event loop"):
        cqloop.run(outer())


def test_runner_with_the_loop_factory():
    with asyncio.Runner(loop_factory=cqloop.new_event_loop) as runner:
        assert isinstance(runner.get_loop(), cqloop.Loop)
        assert runner.run(asyncio.sleep(0, "ok")) == "ok"


@pytest.mark.skipif(not PY312, reason="asyncio.run takes loop_factory from 3.12")
def test_asyncio_run_with_the_loop_factory():
    async def main():
        return type(asyncio.get_running_loop())

    assert asyncio.run(main(), loop_factory=cqloop.new_event_loop) is cqloop.Loop


def test_policy_makes_cqloop_loops():
    policy = cqloop.EventLoopPolicy()
    loop = policy.new_event_loop()
    try:
        assert isinstance(loop, cqloop.Loop)
    finally:
        loop.close()


def test_install_makes_asyncio_run_use_cqloop():
    # The policy is process-wide state: check it in a child.
    script = textwrap.dedent(
        """
        import asyncio, cqloop
        cqloop.install()
        async def main():
            return type(asyncio.get_running_loop()).__name__
        print(asyncio.run(main()))
        """
    )
    proc = run_python("-W", "ignore::DeprecationWarning", "-c", script)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "Loop"
