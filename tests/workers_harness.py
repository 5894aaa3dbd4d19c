"""Runs tests/workers_app.py (a cqloop.workers supervisor) in a subprocess for the tests.

The supervisor and its workers report through files in a directory of the test's own;
the test waits for them by polling with a deadline (never a fixed sleep), and stops the
supervisor with a signal.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

APP = str(Path(__file__).with_name("workers_app.py"))
POLL_INTERVAL_S = 0.02
DEFAULT_DEADLINE_S = 20.0

_T = TypeVar("_T")


def wait_for(condition: Callable[[], _T], what: str, deadline_s: float = DEFAULT_DEADLINE_S) -> _T:
    """Poll `condition` until it returns something true; fail after `deadline_s`."""
    deadline = time.monotonic() + deadline_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {deadline_s} s waiting for {what}")
        time.sleep(POLL_INTERVAL_S)


def read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


class Supervisor:
    """One `python tests/workers_app.py MODE OUTDIR ...` process."""

    def __init__(self, outdir: Path, mode: str, *args: str) -> None:
        self.outdir = outdir
        self.stderr_path = outdir / "supervisor.err"
        with open(self.stderr_path, "wb") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, APP, mode, str(outdir), *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def started(self) -> list[dict[str, Any]]:
        """The started-PID.json reports of every worker so far, oldest first."""
        reports = [read_json(p) for p in glob.glob(str(self.outdir / "started-*.json"))]
        return sorted(reports, key=lambda r: (r["generation"], r["index"]))

    def wait_started(
        self, count: int, deadline_s: float = DEFAULT_DEADLINE_S
    ) -> list[dict[str, Any]]:
        def enough() -> list[dict[str, Any]] | None:
            self.check_alive()
            reports = self.started()
            return reports if len(reports) >= count else None

        return wait_for(enough, f"{count} workers to start", deadline_s)

    def done(self) -> list[int]:
        return [int(p.rsplit("-", 1)[1]) for p in glob.glob(str(self.outdir / "done-*"))]

    def logs(self) -> dict[int, dict[str, Any]]:
        return {
            int(Path(p).stem.split("-")[1]): read_json(p)
            for p in glob.glob(str(self.outdir / "log-*.json"))
        }

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise AssertionError(
                f"the supervisor exited with {self.process.returncode}:\n{self.stderr()}"
            )

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stop(self, timeout_s: float = DEFAULT_DEADLINE_S) -> tuple[int, float]:
        """SIGTERM; returns (exit status, seconds it took)."""
        start = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout_s)
        return code, time.monotonic() - start

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        # Workers that outlived a killed supervisor notice their broker connection close
        # and stop; reap nothing here (they are not our children).


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes (its parent has not reaped it yet).
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/stat") as f:
            if f.read().split(")")[-1].split()[0] == "Z":
                return False
    return True


def peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmHWM for pid {pid}")


@contextlib.contextmanager
def supervisor(outdir: Path, mode: str, *args: str) -> Iterator[Supervisor]:
    sup = Supervisor(outdir, mode, *args)
    try:
        yield sup
    finally:
        sup.kill()
