"""The cq TLS benchmark's harness (benchmarks/cqtls.py): the ratios against the best peer's
streams, and one tiny real run of every row. (The figures are the benchmark's business.)"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cqloop._bench import cqtls, tls_echo
from cqloop._bench.echo import native


def rows() -> list[cqtls.Row]:
    args = cqtls._parse_args([])
    args.generator_core = None
    return cqtls.make_rows(args)


def result(*rates: float) -> tls_echo.Result:
    return tls_echo.Result(rates=list(rates), by_round=dict(enumerate(rates)))


def test_ratios_are_against_the_fastest_streams_loop_but_cqloop_round_by_round():
    row = rows()[0]
    results = {
        ("cqloop", "cqlines"): result(120, 90, 100),
        ("cqloop", "readline"): result(200, 200, 200),
        ("asyncio", "readline"): result(50, 50, 50),
        ("uvloop", "readline"): result(100, 100, 60),
        ("rloop", "readline"): tls_echo.Result(error="n/a", unavailable=True),
    }
    summary = cqtls.row_summary(row, list(tls_echo.LOOPS), ["cqloop"], results)
    assert summary["best_peer"] == "uvloop"  # medians 100 against asyncio's 50
    figures = summary["cq"]["cqloop"]
    assert figures["ratio_to_best_peer"] == pytest.approx(100 / 100)
    # Round by round against the faster peer of that round: 120/100, 90/100, 100/60.
    assert figures["paired_ratio_to_best_peer"] == pytest.approx(1.2)
    assert figures["ratio_to_streams_on_cqloop"] == pytest.approx(0.5)


def test_a_failed_cq_server_has_no_ratio():
    row = rows()[1]
    results = {
        ("cqloop", "cqbulk"): tls_echo.Result(rates=[5.0], error="crashed"),
        ("uvloop", "streams"): result(10),
    }
    assert cqtls.row_summary(row, ["uvloop"], ["cqloop"], results)["cq"] == {}


def test_a_tiny_real_run_measures_both_rows(tmp_path):
    try:
        native.build_tls_loadgen()
    except native.NativeUnavailable as exc:
        pytest.skip(f"no C compiler or OpenSSL headers: {exc}")
    out = tmp_path / "cqtls.json"
    argv = [sys.executable, "-m", "cqloop._bench.cqtls", "--rounds", "1", "--duration", "0.1"]
    argv += ["--warmup", "0", "--loops", "asyncio", "--line-conns", "2", "--line-size", "20000"]
    argv += ["--bulk-size", str(256 * 1024), "--json", str(out)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "cq on cqloop / streams on the best peer (asyncio)" in done.stdout
    report = json.loads(out.read_text())
    for row in report["rows"]:
        assert row["summary"]["cq"]["cqloop"]["ratio_to_best_peer"] > 0
    rates = {(r["loop"], r["mode"]): r["rates"] for r in report["results"]}
    assert set(rates) == {
        ("asyncio", "readline"),
        ("cqloop", "cqlines"),
        ("asyncio", "streams"),
        ("cqloop", "cqbulk"),
    }
    # Lines past cqueues' default maxline (4096) come back whole: the servers raise it.
    assert all(r and r[0] > 0 for r in rates.values())
