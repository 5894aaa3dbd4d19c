"""The benchmark chart (benchmarks/plot.py): which cells become bars, and a PNG drawn."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cqloop._bench import plot

ECHO = {
    "results": [
        {"transport": "tcp", "mode": "protocol", "message_bytes": 1024, "ratios": {"best": 1.1}},
        {"transport": "unix", "mode": "sock", "message_bytes": 102400, "ratios": {"best": 0.9}},
        {"transport": "tcp", "mode": "streams", "message_bytes": 1024, "ratios": {}},
    ]
}
HTTP = {
    "servers": [
        {"app": "aiohttp", "loop": "cqloop", "summary": {"rps": 120.0}},
        {"app": "aiohttp", "loop": "uvloop", "summary": {"rps": 100.0}},
        {"app": "aiohttp", "loop": "rloop", "summary": {"rps": 80.0}},
        {"app": "aiohttp", "loop": "asyncio", "summary": {"rps": 500.0}},
        {"app": "protocol", "loop": "cqloop", "summary": {"rps": 10.0}},
        {"app": "protocol", "loop": "asyncio", "summary": {"rps": 9.0}},
    ]
}


def test_echo_and_http_results_become_ratio_bars():
    assert plot.bars_of(ECHO) == [("echo tcp protocol 1K", 1.1), ("echo unix sock 100K", 0.9)]
    # Against the faster peer (uvloop), never asyncio; an app without a peer has no bar.
    assert plot.bars_of(HTTP) == [("http aiohttp", 1.2)]


def test_the_chart_is_written_as_a_png(tmp_path: Path):
    pytest.importorskip("matplotlib")
    paths = []
    for name, document in (("echo", ECHO), ("http", HTTP)):
        path = tmp_path / f"results-{name}.json"
        path.write_text(json.dumps(document))
        paths.append(str(path))
    out = tmp_path / "chart.png"
    # In a child process: matplotlib keeps its font files open for the life of a process.
    proc = subprocess.run(
        [sys.executable, "-m", "cqloop._bench.plot", str(out), *paths],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stdout and "(3 cells)" in proc.stdout
    assert out.read_bytes().startswith(b"\x89PNG")
