"""cqloop's benchmarks, installed as cqloop._bench so that `python -m cqloop bench` runs them.

    python -m cqloop bench [--quick] [--rounds N] [--loops L] [--json PATH]
        both suites, micro then echo, with the options they share; --json PATH writes
        PATH's name with -micro and -echo added (results.json: results-micro.json, ...)
    python -m cqloop bench micro [options]    micro.py alone (--help lists its options)
    python -m cqloop bench echo [options]     echo/ alone (--help lists its options)

micro.py measures the loop core (callbacks, timers, futures, tasks); echo/ measures echo
servers over TCP and Unix sockets against a C ceiling.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

SUITES = ("micro", "echo")


def main(argv: list[str]) -> int:
    if argv and argv[0] in SUITES:
        return _suite(argv[0])(argv[1:])
    args = _parse_shared(argv)
    status = 0
    for number, name in enumerate(SUITES):
        if number:
            print()
        suite_argv = list(args.shared)
        if args.json:
            stem, ext = os.path.splitext(args.json)
            suite_argv += ["--json", f"{stem}-{name}{ext or '.json'}"]
        status = max(status, _suite(name)(suite_argv))
    return status


def _suite(name: str) -> Callable[[list[str]], int]:
    if name == "micro":
        from cqloop._bench import micro

        return micro.main
    from cqloop._bench import echo

    return echo.main


def _parse_shared(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m cqloop bench",
        description="Run cqloop's benchmarks against asyncio, uvloop and rloop: the loop-core "
        "micro-benchmarks, then the echo server benchmark. `bench micro ...` or "
        "`bench echo ...` runs one of them with all of its options.",
    )
    parser.add_argument("--quick", action="store_true", help="a short smoke run of each")
    parser.add_argument("--rounds", type=int, help="measured rounds of each")
    parser.add_argument("--loops", help="comma-separated loops (default: all installed)")
    parser.add_argument("--json", metavar="PATH", help="write results (one file per suite)")
    args = parser.parse_args(argv)
    shared = ["--quick"] if args.quick else []
    if args.rounds is not None:
        shared += ["--rounds", str(args.rounds)]
    if args.loops is not None:
        shared += ["--loops", args.loops]
    args.shared = shared
    return args
