"""The HTTP benchmark's harness (benchmarks/http.py): reading wrk's report, the ratios, and
one short real run of the bare Protocol server on cqloop and asyncio when wrk is installed.
(What the figures are is the benchmark's business; here only that it measures and reports.)
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from cqloop._bench import http

WRK_REPORT = """\
Running 5s test @ http://127.0.0.1:40000/
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.90ms  512.00us  12.02ms   90.00%
    Req/Sec    26.40k     1.20k   28.00k    70.00%
  Latency Distribution
     50%  815.00us
     75%    1.02ms
     90%    2.20ms
     99%   10.50ms
  131400 requests in 5.00s, 10.40MB read
  Socket errors: connect 0, read 3, write 0, timeout 1
  Non-2xx or 3xx responses: 2
Requests/sec:  26280.00
Transfer/sec:      2.08MB
"""


def sample(rps: float, cpu: float | None = 10.0) -> http.Sample:
    return http.Sample(rps=rps, p50_ms=1, p99_ms=2, cpu_us=cpu, generator_busy=0.5, errors=0)


def test_wrk_report_fields_are_read():
    assert http._field(r"Requests/sec:\s+([\d.]+)", WRK_REPORT) == "26280.00"
    assert http._field(r"(\d+) requests in", WRK_REPORT) == "131400"
    assert http._latency(WRK_REPORT, "50%") == pytest.approx(0.815)
    assert http._latency(WRK_REPORT, "99%") == pytest.approx(10.5)
    with pytest.raises(RuntimeError, match=r"no 90\.0% latency"):
        http._latency(WRK_REPORT, "90.0%")


def test_ratios_are_against_the_faster_peer_round_by_round():
    group = {
        "cqloop": http.Server("protocol", "cqloop", samples=[sample(110), sample(90, 8.0)]),
        "uvloop": http.Server("protocol", "uvloop", samples=[sample(100), sample(100)]),
        "rloop": http.Server("protocol", "rloop", samples=[sample(50), sample(120)]),
        "asyncio": http.Server("protocol", "asyncio", samples=[sample(500), sample(500)]),
    }
    ratios = http.ratios(group)
    # Medians: cqloop 100, uvloop 100, rloop 85: the best peer is uvloop (asyncio is no peer).
    assert ratios["cq/best"] == pytest.approx(1.0)
    # Round by round: 110/100 and 90/120.
    assert ratios["paired"] == pytest.approx((1.1 + 0.75) / 2)
    assert ratios["cpu"] == pytest.approx(9.0 / 10.0)


def test_ratios_without_a_peer_are_none():
    group = {"cqloop": http.Server("protocol", "cqloop", samples=[sample(1)])}
    assert http.ratios(group) == {"cq/best": None, "paired": None, "cpu": None}


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is missing: apt-get install wrk")
def test_a_short_real_run_measures_the_bare_protocol_server():
    pytest.importorskip("httptools")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cqloop",
            "bench",
            "http",
            "--quick",
            "--apps",
            "protocol",
            "--loops",
            "cqloop,asyncio",
            "--pin",
            "none",
            "--conns",
            "4",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[1]: line.split() for line in proc.stdout.splitlines()[2:4]}
    assert set(rows) == {"cqloop", "asyncio"}
    for row in rows.values():
        assert float(row[2].rstrip("*")) > 0  # requests per second
