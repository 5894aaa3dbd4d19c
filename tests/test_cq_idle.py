"""No busy-waiting: an idle cqloop loop holding a signal listener, a directory notifier and
a sleeping coroutine uses (almost) no CPU.

Measured with resource.getrusage over 2.5 seconds of idle time, in a subprocess: the listener
blocks its signals in the calling thread (see cqloop.signal), which must not leak into the
pytest process, and the subprocess's usage is its own. The 1% bound is a property of the
loop (a loop that spins uses 100%), not a speed figure: it holds on any machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

IDLE_SECONDS = 2.5
MAX_CPU_SHARE = 0.01

_IDLE_PROGRAM = textwrap.dedent(
    """
    import asyncio, json, resource, signal, sys, tempfile
    import cqloop
    from cqloop import notify
    from cqloop import signal as cqsignal

    IDLE = float(sys.argv[1])

    def cpu_seconds():
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    async def main():
        with tempfile.TemporaryDirectory() as path:
            listener = cqsignal.listen(signal.SIGUSR1)
            notifier = notify.opendir(path)
            try:
                waits = [
                    asyncio.ensure_future(listener.wait()),
                    asyncio.ensure_future(notifier.get()),
                    asyncio.ensure_future(cqloop.sleep(IDLE * 10)),
                ]
                await asyncio.sleep(0.2)  # settle: imports, first registrations
                loop = asyncio.get_running_loop()
                before, started = cpu_seconds(), loop.time()
                await asyncio.sleep(IDLE)
                used, elapsed = cpu_seconds() - before, loop.time() - started
                for wait in waits:
                    assert not wait.done(), wait
                    wait.cancel()
                await asyncio.gather(*waits, return_exceptions=True)
            finally:
                listener.close()
                notifier.close()
        print(json.dumps({"cpu": used, "elapsed": elapsed}))

    cqloop.run(main())
    """
)


@pytest.mark.cqloop_only
def test_idle_loop_with_listener_notifier_and_sleeper_uses_under_one_percent_cpu():
    result = subprocess.run(
        [sys.executable, "-c", _IDLE_PROGRAM, str(IDLE_SECONDS)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["elapsed"] >= IDLE_SECONDS
    assert figures["cpu"] / figures["elapsed"] < MAX_CPU_SHARE, figures
