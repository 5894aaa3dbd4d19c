"""The cq TLS benchmark: cq sockets over TLS against asyncio streams over TLS on each loop.

    python -m cqloop bench cqtls [--quick] [--rounds N] [--loops L] [--json PATH]
                                 [--duration S] [--warmup S] [--cq-loops L]
                                 [--line-size B] [--line-conns N]
                                 [--bulk-size B] [--bulk-conns N] [--pin split|same|none]
    python -m cqloop._bench.cqtls ...     the same, directly

What is measured, in two rows, each an echo server over TLS (TLS 1.3, the server's default
cipher) driven by the TLS benchmark's C load generator (echo/loadgen.c with -t), which plays
ping-pong on its connections and counts echoes per second:

    lines  CRLF-terminated lines of `--line-size` bytes on `--line-conns` connections: a cq
           socket server (cqloop.socket.listen(context=...), mode "b", `read("*l")` then
           `write(line, "\\n")`, line-buffered so that every line goes out at once) against
           asyncio.start_server(ssl=...) doing `readline()`, `write()`, `drain()`;
    bulk   messages of `--bulk-size` bytes (1 MiB) on `--bulk-conns` connections: a cq
           socket server doing `read(-65536)` and an unbuffered `write()` against asyncio
           streams doing `read(65536)`, `write()`, `drain()`.

The streams servers run on every loop (cqloop, asyncio, uvloop; rloop shows n/a while it
has no TLS); the cq socket servers on cqloop (`--cq-loops` adds others: cq sockets run on
any asyncio loop). Under each row: `cq/best streams`, the cq socket server's median over
the best peer loop's (the fastest streams loop but cqloop), `paired`, the median over the
rounds of the cq figure divided by the best peer's figure of the same round, and the ratio
to streams on cqloop; beside each figure, the server's CPU share and CPU time per echo.

Method, as in the TLS echo benchmark (tls_echo.py, whose servers, generator and helpers
this reuses): every server starts first, each is warmed up with `--warmup` seconds of
load, then rounds measure every server once in a freshly shuffled order, and the median
of the rounds is reported with its spread; servers are pinned to one CPU, the generator to
another. The exit status is 0, or 1 if a cq socket server failed. Without a C compiler or
OpenSSL's headers the benchmark is skipped with a message.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from typing import Any

from cqloop._bench import micro, tls_echo
from cqloop._bench.echo import run as echo_run

KIB = 1024
MIB = 1024 * KIB
DEFAULT_LINE_SIZE = 1 * KIB
DEFAULT_LINE_CONNS = 10
DEFAULT_BULK_SIZE = 1 * MIB
DEFAULT_BULK_CONNS = 1
DEFAULT_ROUNDS = 7
DEFAULT_DURATION_S = 0.5
DEFAULT_WARMUP_S = 2.0
DEFAULT_CQ_LOOPS = ("cqloop",)
PERCENT = 100
US_PER_S = 1e6
LABEL_WIDTH = 24


@dataclasses.dataclass
class Row:
    """One comparison: a cq socket mode against an asyncio streams mode, on one load."""

    name: str
    cq_mode: str
    streams_mode: str
    load: argparse.Namespace  # what tls_echo.measure reads: size, conns, lines, generator_core

    @property
    def title(self) -> str:
        size = self.load.size
        shown = f"{size // MIB} MiB" if size % MIB == 0 else f"{size} B"
        return f"{self.name} {shown} x{self.load.conns} (echoes/s)"


def make_rows(args: argparse.Namespace) -> list[Row]:
    def load(size: int, conns: int, lines: bool) -> argparse.Namespace:
        return argparse.Namespace(
            size=size, conns=conns, lines=lines, generator_core=args.generator_core
        )

    return [
        Row("lines", "cqlines", "readline", load(args.line_size, args.line_conns, True)),
        Row("bulk", "cqbulk", "streams", load(args.bulk_size, args.bulk_conns, False)),
    ]


def _pairs(rows: list[Row], loops: list[str], cq_loops: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for row in rows:
        pairs += [(name, row.streams_mode) for name in loops]
        pairs += [(name, row.cq_mode) for name in cq_loops]
    return pairs


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _cell(result: tls_echo.Result) -> str:
    if result.unavailable:
        return "n/a"
    if result.error is not None:
        return "failed"
    cell = micro.Cell(rates=list(result.rates))
    return micro._format_rate(cell.median, cell.spread)


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _cpu_per_echo(result: tls_echo.Result) -> str:
    """Server CPU time per echo: its CPU share over the echo rate."""
    share, rate = _median(result.server_cpu), _median(result.rates)
    if share is None or not rate or result.error is not None:
        return ""
    return f"CPU {share * PERCENT:3.0f}%, {share / rate * US_PER_S:6.1f} us/echo"


def row_summary(
    row: Row,
    loops: list[str],
    cq_loops: list[str],
    results: dict[tuple[str, str], tls_echo.Result],
) -> dict[str, Any]:
    """The row's figures: the best streams loop among the peers (every loop but cqloop)
    and each cq server's ratios to it, and to streams on cqloop."""
    streams = {
        name: results[(name, row.streams_mode)]
        for name in loops
        if (name, row.streams_mode) in results
    }
    medians = {
        name: statistics.median(r.rates)
        for name, r in streams.items()
        if r.rates and r.error is None
    }
    peers = [name for name in medians if name != micro.REFERENCE_LOOP]
    best = max(peers, key=medians.__getitem__) if peers else None
    summary: dict[str, Any] = {"best_peer": best, "cq": {}}
    for name in cq_loops:
        ours = results.get((name, row.cq_mode))
        if ours is None or ours.error is not None or not ours.rates:
            continue
        mine = statistics.median(ours.rates)
        paired = []
        for round_no, rate in ours.by_round.items():
            theirs = [streams[p].by_round.get(round_no) for p in peers]
            if any(theirs):
                paired.append(rate / max(t for t in theirs if t))
        on_cqloop = medians.get(micro.REFERENCE_LOOP)
        summary["cq"][name] = {
            "ratio_to_best_peer": mine / medians[best] if best else None,
            "paired_ratio_to_best_peer": statistics.median(paired) if paired else None,
            "ratio_to_streams_on_cqloop": mine / on_cqloop if on_cqloop else None,
        }
    return summary


def print_results(
    rows: list[Row],
    loops: list[str],
    cq_loops: list[str],
    results: dict[tuple[str, str], tls_echo.Result],
) -> None:
    for row in rows:
        print(row.title)
        entries = [(f"cq sockets on {name}", (name, row.cq_mode)) for name in cq_loops]
        entries += [(f"streams on {name}", (name, row.streams_mode)) for name in loops]
        for label, key in entries:
            result = results.get(key)
            if result is None:
                continue
            print(f"  {label:<{LABEL_WIDTH}}{_cell(result):>14}   {_cpu_per_echo(result)}")
        summary = row_summary(row, loops, cq_loops, results)
        for name, figures in summary["cq"].items():
            print(
                f"  cq on {name} / streams on the best peer ({summary['best_peer']}): "
                f"{_ratio(figures['ratio_to_best_peer'])}, paired by round "
                f"{_ratio(figures['paired_ratio_to_best_peer'])}; / streams on cqloop: "
                f"{_ratio(figures['ratio_to_streams_on_cqloop'])}"
            )
        print()
    for (name, mode), result in results.items():
        if result.unavailable:
            print(f"  {name} {mode}: n/a ({result.error})")
        elif result.error:
            print(f"  {name} {mode}: failed ({result.error})")
    generator = max(
        (statistics.median(r.generator_cpu) for r in results.values() if r.generator_cpu),
        default=0.0,
    )
    busy = " (near 100%: the generator may be the limit)" if generator >= 0.9 else ""
    print(f"  load generator CPU, busiest median: {generator * PERCENT:.0f}%{busy}")


def write_json(
    path: str,
    rows: list[Row],
    loops: list[Any],
    names: list[str],
    cq_loops: list[str],
    results: dict[tuple[str, str], tls_echo.Result],
    args: argparse.Namespace,
) -> None:
    out = {
        "benchmark": "cqtls",
        "rounds": args.rounds,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "loops": {info.name: info.version for info in loops},
        "rows": [
            {
                "name": row.name,
                "size": row.load.size,
                "conns": row.load.conns,
                "cq_mode": row.cq_mode,
                "streams_mode": row.streams_mode,
                "summary": row_summary(row, names, cq_loops, results),
            }
            for row in rows
        ],
        "results": [tls_echo.result_record(name, mode, r) for (name, mode), r in results.items()],
    }
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(out, fh, indent=2)


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m cqloop bench cqtls",
        description="cq sockets over TLS against asyncio streams over TLS on each loop.",
    )
    tls_echo.add_timing_args(parser, DEFAULT_ROUNDS)
    parser.add_argument("--loops", default=",".join(tls_echo.LOOPS), help="streams loops")
    parser.add_argument(
        "--cq-loops", default=",".join(DEFAULT_CQ_LOOPS), help="loops the cq servers run on"
    )
    parser.add_argument("--line-size", type=int, default=DEFAULT_LINE_SIZE, help="bytes/line")
    parser.add_argument("--line-conns", type=int, default=DEFAULT_LINE_CONNS)
    parser.add_argument("--bulk-size", type=int, default=DEFAULT_BULK_SIZE, help="bytes/echo")
    parser.add_argument("--bulk-conns", type=int, default=DEFAULT_BULK_CONNS)
    args = parser.parse_args(argv)
    tls_echo.apply_timing_defaults(args, DEFAULT_ROUNDS, DEFAULT_DURATION_S, DEFAULT_WARMUP_S)
    counts = (args.rounds, args.line_size - 2, args.line_conns, args.bulk_size, args.bulk_conns)
    if min(counts) < 1 or args.duration <= 0 or args.warmup < 0:
        parser.error("--rounds, --duration, sizes and conns must be positive (lines >= 3 B)")
    args.loop_names = [name for name in args.loops.split(",") if name]
    args.cq_loop_names = [name for name in args.cq_loops.split(",") if name]
    for word in (*args.loop_names, *args.cq_loop_names):
        if word not in tls_echo.LOOPS:
            parser.error(f"unknown loop {word!r}")
    return args


def main(argv: list[str]) -> int:
    """`python -m cqloop bench cqtls`: see the module docstring."""
    args = _parse_args(argv)
    print("cq TLS benchmark: cq sockets against asyncio streams, over TLS")
    args.loadgen = tls_echo.loadgen_or_skip("the cq TLS benchmark")
    if args.loadgen is None:
        return micro.EXIT_OK
    loops = micro.installed_loops(list(dict.fromkeys(args.loop_names + args.cq_loop_names)))
    installed = {info.name for info in loops}
    loop_names = [name for name in args.loop_names if name in installed]
    cq_loops = [name for name in args.cq_loop_names if name in installed]
    server_core = tls_echo.print_setup(args)
    rows = make_rows(args)
    loads = {mode: row.load for row in rows for mode in (row.cq_mode, row.streams_mode)}
    try:
        results = tls_echo.run_servers(
            _pairs(rows, loop_names, cq_loops),
            server_core,
            lambda serving, got: tls_echo.run_rounds(args.loadgen, serving, got, args, loads),
        )
    except KeyboardInterrupt:
        print("interrupted")
        return echo_run.EXIT_INTERRUPTED
    print()
    print_results(rows, loop_names, cq_loops, results)
    if args.json:
        write_json(args.json, rows, loops, loop_names, cq_loops, results, args)
        print(f"results written to {args.json}")
    failed = any(
        r.error is not None and not r.unavailable
        for (_, mode), r in results.items()
        if mode in tls_echo.CQ_TLS_MODES and mode.startswith("cq")
    )
    return micro.EXIT_FAILED if failed else micro.EXIT_OK


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
