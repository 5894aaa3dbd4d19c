"""cqloop's benchmarks, installed as cqloop._bench so that `python -m cqloop bench` runs them.

    python -m cqloop bench [--quick] [--rounds N] [--loops L] [--json PATH] [--plot PNG]
        every suite in turn with the options they share; --json PATH writes PATH's name
        with the suite's added (results.json: results-micro.json, results-echo.json, ...);
        --plot PNG draws cqloop against the best peer for every echo and http cell
        (plot.py, with matplotlib)
    python -m cqloop bench SUITE [options]    one suite (--help lists its options)

Suites:
    micro          the loop core: callbacks, timers, futures, tasks (micro.py)
    echo           echo servers over TCP and Unix sockets against a C ceiling (echo/)
    lines          line echo: cq sockets' read("*l") against asyncio streams' readline()
                   on each loop (echo/ with its line modes)
    tls            TLS echo, 1 KiB, 10 connections (tls_echo.py)
    cqtls          cq sockets over TLS against asyncio streams over TLS on each loop: line
                   echo (read("*l")/write against readline()/write()) and 1 MiB echoes
                   (cqtls.py)
    http           HTTP servers (a bare Protocol with httptools, uvicorn with httptools and
                   with h11, aiohttp.web) driven by wrk (http.py)
    scale          costs as they grow: memory per idle connection and echoes per second at
                   10 to 10,000 connections, memory and cost per timer up to 1,000,000
                   pending timers (scale.py)
    worker_events  deliveries per second across 4 worker processes (worker_events.py)

A tool beside the suites:
    python -m cqloop._bench.callgrind --loop L (--echo MODE | --http APP)
                   one server's user-space instructions per echoed message or per HTTP
                   request, counted by callgrind (callgrind.py)

Run only when named (not part of the full run):
    soak           a fault soak per loop: resets, cancellations, EMFILE, subprocesses and
                   cross-thread wake-ups for --duration seconds, then an fd, byte and log
                   account (soak.py)
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Callable

SUITES = ("micro", "echo", "lines", "tls", "cqtls", "http", "scale", "worker_events")
NAMED_ONLY = ("soak",)


# The suites whose results the chart draws.
PLOTTED = ("echo", "http")


def main(argv: list[str]) -> int:
    if argv and argv[0] in SUITES + NAMED_ONLY:
        return _suite(argv[0])(argv[1:])
    args = _parse_shared(argv)
    status = 0
    with tempfile.TemporaryDirectory() as scratch:
        json_stem, json_ext = os.path.splitext(args.json or os.path.join(scratch, "results"))
        written = []
        for number, name in enumerate(SUITES):
            if number:
                print()
            suite_argv = list(args.shared)
            if args.json or args.plot:
                path = f"{json_stem}-{name}{json_ext or '.json'}"
                suite_argv += ["--json", path]
                if name in PLOTTED:
                    written.append(path)
            status = max(status, _suite(name)(suite_argv))
        if args.plot:
            from cqloop._bench import plot

            print()
            plot.plot(args.plot, [path for path in written if os.path.exists(path)])
    return status


def _suite(name: str) -> Callable[[list[str]], int]:
    if name == "micro":
        from cqloop._bench import micro

        return micro.main
    if name == "tls":
        from cqloop._bench import tls_echo

        return tls_echo.main
    if name == "cqtls":
        from cqloop._bench import cqtls

        return cqtls.main
    if name == "http":
        from cqloop._bench import http

        return http.main
    if name == "scale":
        from cqloop._bench import scale

        return scale.main
    if name == "soak":
        from cqloop._bench import soak

        return soak.main
    if name == "worker_events":
        from cqloop._bench import worker_events

        return worker_events.main
    from cqloop._bench import echo

    if name == "lines":
        return lambda argv: echo.main(["--modes", "readline,cqsocket", "--sizes", "1", *argv])
    return echo.main


def _parse_shared(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m cqloop bench",
        description="Run cqloop's benchmarks against asyncio, uvloop and rloop, suite by "
        f"suite ({', '.join(SUITES)}). `bench SUITE ...` runs one of them with all of its "
        "options.",
    )
    parser.add_argument("--quick", action="store_true", help="a short smoke run of each")
    parser.add_argument("--rounds", type=int, help="measured rounds of each")
    parser.add_argument("--loops", help="comma-separated loops (default: all installed)")
    parser.add_argument("--json", metavar="PATH", help="write results (one file per suite)")
    parser.add_argument("--plot", metavar="PNG", help="draw cqloop against the best peer")
    args = parser.parse_args(argv)
    shared = ["--quick"] if args.quick else []
    if args.rounds is not None:
        shared += ["--rounds", str(args.rounds)]
    if args.loops is not None:
        shared += ["--loops", args.loops]
    args.shared = shared
    return args
