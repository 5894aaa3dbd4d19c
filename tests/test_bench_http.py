"""The HTTP benchmark's harness (benchmarks/http.py): reading wrk's and loadgen's reports, the
ratios, short real runs of the bare Protocol server on cqloop and asyncio (with loadgen, and
with wrk when it is installed), and loadgen's HTTP mode (loadgen.c -H) against small real
servers answering with Content-Length, chunked bodies, Connection: close, non-2xx statuses
and garbage. (What the figures are is the benchmark's business; here only that it measures
and reports, and that a wrong answer fails the run clearly instead of hanging it.)
"""

# ruff: noqa: F811  # `loadgen` below is the imported fixture's name, not a redefinition
from __future__ import annotations

import json
import shutil
import socket
import socketserver
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cqloop._bench import http

# The fixture (the built generator, or a skip), used here as the tests' argument of that name.
from tests.test_bench_loadgen import loadgen  # noqa: F401

GENERATOR_TIMEOUT_S = 30.0

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


def test_a_loadgen_error_report_is_raised_with_its_text():
    report = http.parse_loadgen_report('{"requests": 5, "seconds": 1.0}\n')
    assert report == {"requests": 5, "seconds": 1.0}
    with pytest.raises(RuntimeError, match="loadgen: http: the server's answer"):
        http.parse_loadgen_report('{"error": "http: the server\'s answer does not begin"}\n')
    with pytest.raises(RuntimeError, match="printed no report"):
        http.parse_loadgen_report("", "Segmentation fault")


def _bench_http_quick(*extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
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
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "generator",
    [
        "loadgen",
        pytest.param(
            "wrk",
            marks=pytest.mark.skipif(
                shutil.which("wrk") is None, reason="wrk is missing: apt-get install wrk"
            ),
        ),
    ],
)
def test_a_short_real_run_measures_the_bare_protocol_server(generator: str):
    pytest.importorskip("httptools")
    proc = _bench_http_quick("--generator", generator)
    assert proc.returncode == 0, proc.stderr
    assert f"({generator})" in proc.stdout.splitlines()[0]
    rows = {line.split()[1]: line.split() for line in proc.stdout.splitlines()[2:4]}
    assert set(rows) == {"cqloop", "asyncio"}
    for row in rows.values():
        assert float(row[2].rstrip("*")) > 0  # requests per second


# -- loadgen's HTTP mode against small real servers ---------------------------------------

OK_LENGTH = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-length: 5\r\n\r\nhello"
OK_CHUNKED = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Trailer: 1\r\n\r\n"
)
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
CLOSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


class _Answer(socketserver.BaseRequestHandler):
    """Answers every request (read up to its blank line) with the server's `response`, one
    byte per send if `trickle`, and closes after it if the response says so."""

    server: _HttpServer

    def handle(self) -> None:
        conn: socket.socket = self.request
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pending = b""
        try:
            while data := conn.recv(4096):
                pending += data
                while b"\r\n\r\n" in pending:
                    request, _, pending = pending.partition(b"\r\n\r\n")
                    self.server.requests.append(request)
                    if self.server.trickle:
                        for i in range(len(self.server.response)):
                            conn.sendall(self.server.response[i : i + 1])
                    else:
                        conn.sendall(self.server.response)
                    if b"connection: close" in self.server.response.lower():
                        return
        except OSError:  # the generator left (it failed, or its time was up)
            pass


class _HttpServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True

    def __init__(self, response: bytes, trickle: bool) -> None:
        super().__init__(("127.0.0.1", 0), _Answer)
        self.response, self.trickle = response, trickle
        self.requests: list[bytes] = []


@pytest.fixture
def answering() -> Iterator[Callable[..., _HttpServer]]:
    servers: list[tuple[_HttpServer, threading.Thread]] = []

    def start(response: bytes, trickle: bool = False) -> _HttpServer:
        server = _HttpServer(response, trickle)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        servers.append((server, thread))
        return server

    yield start
    for server, thread in servers:
        server.shutdown()
        server.server_close()  # joins the handlers: they end as the generator's connections do
        thread.join()


def run_http(loadgen: Path, server: _HttpServer, *extra: str) -> dict[str, object]:
    port = server.server_address[1]
    argv = [str(loadgen), "-a", f"tcp:127.0.0.1:{port}", "-c", "2", "-H", "/x?y=1"]
    proc = subprocess.run(
        [*argv, "-w", "0.05", "-d", "0.3", *extra],
        capture_output=True,
        text=True,
        timeout=GENERATOR_TIMEOUT_S,
    )
    report = json.loads(proc.stdout)
    assert (proc.returncode != 0) == ("error" in report), proc.stdout
    return report


@pytest.mark.parametrize("response", [OK_LENGTH, OK_CHUNKED], ids=["content-length", "chunked"])
@pytest.mark.parametrize("trickle", [False, True], ids=["whole", "byte-by-byte"])
def test_loadgen_http_reads_delimited_responses(loadgen, answering, response, trickle):
    server = answering(response, trickle)
    report = run_http(loadgen, server)
    assert "error" not in report, report
    assert report["requests"] > 0 and report["non_2xx"] == 0
    assert 0 < report["p50_us"] <= report["p99_us"]
    assert report["cpu_seconds"] <= report["seconds"] * 1.5
    port = server.server_address[1]
    assert server.requests[0] == f"GET /x?y=1 HTTP/1.1\r\nHost: 127.0.0.1:{port}".encode()


def test_loadgen_http_counts_non_2xx_responses(loadgen, answering):
    report = run_http(loadgen, answering(NOT_FOUND))
    assert report["requests"] > 0 and report["non_2xx"] == report["requests"]


def test_loadgen_http_close_mode_opens_a_connection_per_request(loadgen, answering):
    server = answering(CLOSE)
    report = run_http(loadgen, server, "-C")
    assert "error" not in report, report
    assert report["requests"] > 2
    assert all(b"\r\nConnection: close" in request for request in server.requests)


def test_loadgen_http_keep_alive_fails_when_the_server_closes(loadgen, answering):
    report = run_http(loadgen, answering(CLOSE))
    assert "closed the connection" in str(report["error"])


@pytest.mark.parametrize(
    ("response", "why"),
    [
        (b"garbage, and no end of headers", "does not begin with HTTP/1."),
        (b"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n", "status line"),
        (b"HTTP/1.1 200 OK\r\n\r\nhello", "neither Content-Length nor"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: five\r\n\r\n", "not a number"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "hexadecimal"),
        (OK_LENGTH + b"!", "beyond the end of the response"),
    ],
    ids=["garbage", "bad-status", "undelimited", "bad-length", "bad-chunk", "extra-bytes"],
)
def test_loadgen_http_fails_clearly_on_a_wrong_answer(loadgen, answering, response, why):
    report = run_http(loadgen, answering(response))
    assert why in str(report["error"])
