"""The callgrind counter (benchmarks/callgrind.py) on a real echo server and HTTP server:
it reports a per-message and a per-request count of a plausible size and leaves the
profile behind. Skipped where valgrind or a C compiler is missing."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cqloop._bench.echo import native

RUN_TIMEOUT_S = 240.0
# What one echoed KiB or one bare HTTP request costs a server in user-space instructions
# is in the thousands on every loop; a count outside this range means the division or the
# instrumentation window is wrong.
PLAUSIBLE_PER_MESSAGE = (500, 100_000)


@pytest.fixture(scope="module", autouse=True)
def _tools() -> None:
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        pytest.skip("valgrind is not installed")
    try:
        native.build()
    except native.NativeUnavailable as exc:
        pytest.skip(f"the load generator cannot be built here: {exc}")


@pytest.mark.parametrize("path", [["--echo", "protocol"], ["--http", "protocol"]])
def test_counts_instructions_per_message(tmp_path: Path, path: list[str]) -> None:
    if path[0] == "--http":
        pytest.importorskip("httptools")
    out = tmp_path / "profile.out"
    options = ["--duration", "1", "--out", str(out)]
    result = subprocess.run(
        [sys.executable, "-m", "cqloop._bench.callgrind", "--loop", "cqloop", *path, *options],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr
    match = re.search(r"count=(\d+) instructions=(\d+) per=(\d+)", result.stdout)
    assert match, result.stdout
    count, total, per = (int(group) for group in match.groups())
    assert count > 0
    assert PLAUSIBLE_PER_MESSAGE[0] <= per <= PLAUSIBLE_PER_MESSAGE[1]
    assert abs(total / count - per) < 1
    assert out.exists()
