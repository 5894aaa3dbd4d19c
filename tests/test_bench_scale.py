"""The scale benchmark's harness (benchmarks/scale.py): the timer measurement in its child
process, and the ratio against the best peer. (The figures are the benchmark's business.)"""

from __future__ import annotations

import json
import subprocess
import sys

from cqloop._bench import scale


def test_timer_child_reports_a_row_per_count():
    argv = [sys.executable, "-m", "cqloop._bench.scale", "--child-timers", "cqloop"]
    proc = subprocess.run(
        [*argv, "--timers", "100,1000"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)["rows"]
    assert [row["timers"] for row in rows] == [100, 1000]
    for row in rows:
        assert row["schedule_ns"] > 0 and row["cancel_ns"] > 0
        assert row["bytes_per_timer"] >= 0


def test_ratio_is_against_the_best_peer_in_the_right_direction():
    values = {"cqloop": 10.0, "uvloop": 20.0, "rloop": 5.0, "asyncio": 1.0}
    assert scale._ratio(values, higher_is_better=True) == "0.50"  # against uvloop's 20
    assert scale._ratio(values, higher_is_better=False) == "2.00"  # against rloop's 5
    assert scale._ratio({"cqloop": 1.0, "asyncio": 2.0}, higher_is_better=True) == "n/a"
