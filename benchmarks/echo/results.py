"""The echo benchmark's plan and results, and how they are printed and written out.

A Plan is what one run measures (loops, modes, transports, sizes, connections, timing,
pinning); its Table has a Row per mode, transport, size and connection count, and in each
row an EchoCell per loop and one for the C ceiling. The ceiling does not depend on the mode,
so the rows of one transport, size and connection count share one ceiling cell.

The table is printed in micro.py's format, with its helpers: medians with their spread, then
ratios of cqloop to each other column and to the best of uvloop and rloop, the last also
taken round by round (cq/paired). run.py fills the cells and calls print_table() and
write_json(); nothing else calls into this module.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import sys
from collections.abc import Iterator
from typing import Any

from .. import micro

CEILING = "ceiling"  # the C echo server's column
PAIRED = "paired"  # the ratio to the best fast peer taken round by round: see _paired_best
GENERATOR_BUSY_FRACTION = 0.9  # generator CPU from which a figure is marked `*`
LATENCY_BOUND_FRACTION = 0.8  # server and generator both less busy: see _cpu_summary
KIB = 1024
ROW_WIDTH = 22
NOTE_WIDTH = 100

Load = tuple[int, int]  # (message bytes, connections)


@dataclasses.dataclass(frozen=True)
class Row:
    """One row of the table: one way of serving, one load."""

    transport: str
    mode: str
    size: int  # bytes per message
    conns: int

    @property
    def name(self) -> str:
        return f"{self.transport} {self.mode} {format_load((self.size, self.conns))}"


@dataclasses.dataclass
class EchoCell(micro.Cell):
    """micro's Cell (rates, error, median, spread) plus what the echo benchmark adds."""

    # The share of one CPU that the generator and the server used, per measured round.
    generator_cpu: list[float] = dataclasses.field(default_factory=list)
    server_cpu: list[float] = dataclasses.field(default_factory=list)
    unavailable: bool = False  # `error` says why the loop cannot serve: n/a, not a failure

    @property
    def generator_busy(self) -> bool:
        return _median_or_zero(self.generator_cpu) >= GENERATOR_BUSY_FRACTION

    def per_server_cpu(self) -> EchoCell:
        """Echoes per second of the server's CPU time, per round, as a cell of their own:
        what the server could answer with a whole CPU to itself. Where the generator is the
        limit every server's rate is the generator's, and this is the server's own figure.
        No figures unless every round has both its rate and the server's CPU share."""
        cell = EchoCell(error=self.error, unavailable=self.unavailable)
        if len(self.server_cpu) == len(self.rates) and all(self.server_cpu):
            cell.rates = [rate / cpu for rate, cpu in zip(self.rates, self.server_cpu, strict=True)]
        return cell


Table = dict[Row, dict[str, EchoCell]]


@dataclasses.dataclass(frozen=True)
class Plan:
    loops: list[micro.LoopInfo]
    modes: list[str]
    transports: list[str]
    sizes: list[int]
    conns: list[int]
    rounds: int
    duration_s: float  # counted time of one measurement
    warmup_s: float  # load on each server before its first measurement
    generator_warmup_s: float  # each generator's own uncounted start
    ceiling: bool
    server_core: int | None  # the CPU the servers are pinned to, if any
    generator_core: int | None  # the CPU the generator is pinned to, if any

    @property
    def columns(self) -> list[str]:
        return [lp.name for lp in self.loops] + ([CEILING] if self.ceiling else [])

    @property
    def loads(self) -> list[Load]:
        return [(size, conns) for size in self.sizes for conns in self.conns]

    def rows(self, transport: str) -> Iterator[Row]:
        for mode in self.modes:
            for size, conns in self.loads:
                yield Row(transport, mode, size, conns)

    def new_table(self) -> Table:
        """Empty cells for every row; one shared ceiling cell per transport and load."""
        table: Table = {}
        for transport in self.transports:
            ceiling = {load: EchoCell() for load in self.loads}
            for row in self.rows(transport):
                table[row] = {lp.name: EchoCell() for lp in self.loops}
                if self.ceiling:
                    table[row][CEILING] = ceiling[(row.size, row.conns)]
        return table

    def cells_of(
        self, table: Table, name: str, mode: str | None, transport: str
    ) -> dict[Load, EchoCell]:
        """Where the figures of one server go, by load (the ceiling's: any mode's row)."""
        row_mode = self.modes[0] if mode is None else mode
        return {load: table[Row(transport, row_mode, *load)][name] for load in self.loads}


def format_size(size: int) -> str:
    return f"{size // KIB}K" if size % KIB == 0 else f"{size}B"


def format_load(load: Load) -> str:
    return f"{format_size(load[0])} x{load[1]}"


def _median_or_zero(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


# --------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------


def print_table(plan: Plan, table: Table) -> None:
    notes: dict[str, int] = {}  # numbered across both tables
    _print_rows(plan, table, "echo (msg/s)", notes)
    if PAIRED in _ratio_names(plan):
        print(
            _wrap(
                f"cq/{PAIRED}: the median of the rounds' ratios of cqloop to the best of "
                f"{' and '.join(micro.FAST_PEERS)} in the same round, which a burst of "
                "outside load upsets less than a ratio of medians",
                indent=2,
            )
        )
    busy = {row: cells for row, cells in table.items() if _generator_bound(cells)}
    if busy:
        print(
            _wrap(
                "Where the generator was the limit (rows with a `*`), each server's echoes "
                "per second of its own CPU time, the ratios as above (higher is better):",
                indent=0,
            )
        )
        print()
        per_cpu = {
            row: {name: cell.per_server_cpu() for name, cell in cells.items()}
            for row, cells in busy.items()
        }
        _print_rows(plan, per_cpu, "echo (msg/CPU-s)", notes, marks=False)
    for line in _line_echo_summary(plan, table):
        print(_wrap(line, indent=2))
    for line in _cpu_summary(plan, table):
        print(_wrap(line, indent=2))


def _generator_bound(cells: dict[str, EchoCell]) -> bool:
    """A row in which the generator was busy for some loop: its rates may all be the
    generator's."""
    return any(cell.generator_busy for name, cell in cells.items() if name != CEILING)


def _print_rows(
    plan: Plan,
    table: Table,
    title: str,
    notes: dict[str, int],
    marks: bool = True,
) -> None:
    """One table: a line per row, medians and ratios, then its notes (numbered across
    tables through `notes`). `marks`: flag cells whose generator was busy."""
    columns, ratio_names = plan.columns, _ratio_names(plan)
    header = f"{title:<{ROW_WIDTH}}"
    header += "".join(f"{name:>{micro.CELL_WIDTH}}" for name in columns)
    header += "".join(f"{'cq/' + name:>{micro.RATIO_WIDTH}}" for name in ratio_names)
    print(header)
    print("-" * len(header))
    shown = len(notes)
    previous: Row | None = None
    for row in table:  # in the plan's order: transport, mode, size, connections
        if previous is not None and row.transport != previous.transport:
            print()
        previous = row
        cells = table[row]
        line = f"{row.name:<{ROW_WIDTH}}"
        line += "".join(
            f"{_cell_text(name, cells[name], notes, marks):>{micro.CELL_WIDTH}}" for name in columns
        )
        ratios = _ratios(cells)
        for name in ratio_names:
            value = ratios.get(name)
            line += f"{'-' if value is None else f'{value:.2f}':>{micro.RATIO_WIDTH}}"
        print(line)
    print()
    for note, number in list(notes.items())[shown:]:
        print(_wrap(f"[{number}] {note}", indent=len(f"[{number}] ")))
    if marks and any(cell.generator_busy for cells in table.values() for cell in cells.values()):
        print(
            f"* the load generator was at least {GENERATOR_BUSY_FRACTION:.0%} busy: the figure "
            "may be the generator's limit, not the server's"
        )


def _line_echo_summary(plan: Plan, table: Table) -> list[str]:
    """The line echo's own comparison (cq sockets against asyncio streams): the cqsocket
    row on cqloop over the readline row on each fast peer. The table's ratios compare one
    mode across loops, and cq sockets run compiled on every loop."""
    if not {"readline", "cqsocket"} <= set(plan.modes):
        return []
    lines = []
    for transport in plan.transports:
        for size, conns in plan.loads:
            cq = table[Row(transport, "cqsocket", size, conns)].get(micro.REFERENCE_LOOP)
            streams = table[Row(transport, "readline", size, conns)]
            if cq is None or cq.median is None:
                continue
            parts = []
            for peer in micro.FAST_PEERS:
                peer_median = streams[peer].median if peer in streams else None
                if peer_median:
                    parts.append(f"{cq.median / peer_median:.2f} over {peer}")
            if parts:
                lines.append(
                    f"{transport} {format_load((size, conns))}: cq socket on cqloop against "
                    f"readline (asyncio streams): {', '.join(parts)}"
                )
    return lines


def _ratios(cells: dict[str, EchoCell]) -> dict[str, float | None]:
    """micro's ratios (cqloop's median over each other column's, and over `best`), and
    the PAIRED one."""
    as_cells: dict[str, micro.Cell] = dict(cells)
    ratios = micro.ratios_for(as_cells)
    if "best" in ratios:
        ratios[PAIRED] = _paired_best(cells)
    return ratios


def _paired_best(cells: dict[str, EchoCell]) -> float | None:
    """The median over rounds of cqloop's rate over the best fast peer's rate in the same
    round. A round runs the servers of one mode next to each other, so a burst of outside
    load weighs on both sides of each of these ratios, which it does not on a ratio of
    medians taken over all rounds. None unless every server has a rate for every round."""
    ref = cells.get(micro.REFERENCE_LOOP)
    peers = [cells[n] for n in micro.FAST_PEERS if n in cells and cells[n].median is not None]
    if ref is None or ref.median is None or not peers:
        return None
    rounds = len(ref.rates)
    if any(len(peer.rates) != rounds for peer in peers):
        return None
    return statistics.median(
        rate / max(peer.rates[i] for peer in peers) for i, rate in enumerate(ref.rates)
    )


def _ratio_names(plan: Plan) -> list[str]:
    if not any(lp.name == micro.REFERENCE_LOOP for lp in plan.loops):
        return []
    names = [name for name in plan.columns if name != micro.REFERENCE_LOOP]
    if any(lp.name in micro.FAST_PEERS for lp in plan.loops):
        names += ["best", PAIRED]
    return names


def _cell_text(name: str, cell: EchoCell, notes: dict[str, int], marks: bool = True) -> str:
    """A cell of the table; the reason for an n/a or a failure becomes a numbered note."""
    if cell.error is not None:
        number = notes.setdefault(f"{name}: {cell.error}", len(notes) + 1)
        return f"{'n/a' if cell.unavailable else 'failed'} [{number}]"
    if not cell.rates:
        return "-"
    text = micro._format_rate(cell.median, cell.spread)
    return text + "*" if marks and cell.generator_busy else text


def _cpu_summary(plan: Plan, table: Table) -> list[str]:
    """How busy each side was (ranges over the cells of their per-round medians).

    A server near 100% and a generator well below it mean the figure is the server's. When
    both are well below 100% the figure is bound by latency instead: mostly the time it
    takes to wake a process sleeping on another CPU, very long on some virtual machines. A
    faster loop then spends its lead waiting, and the ratios between loops shrink towards 1.
    Pinning both sides to one CPU (--pin same) trades that for a share of the generator's
    CPU time in every figure."""
    lines = []
    for label, is_ceiling in (("the ceiling", True), ("the loops", False)):
        cells = [
            cell
            for row_cells in table.values()
            for name, cell in row_cells.items()
            if (name == CEILING) == is_ceiling and cell.error is None and cell.rates
        ]
        ranges = []
        for side in ("server", "generator"):
            medians = [_median_or_zero(getattr(cell, f"{side}_cpu")) for cell in cells]
            if medians:
                ranges.append(f"{side} {min(medians):.0%}-{max(medians):.0%}")
        if ranges:
            lines.append(f"CPU use (share of one CPU) against {label}: {', '.join(ranges)}")
    split = plan.server_core is not None and plan.server_core != plan.generator_core
    idle = [
        cell
        for row_cells in table.values()
        for name, cell in row_cells.items()
        if name != CEILING
        and cell.rates
        and cell.server_cpu
        and _median_or_zero(cell.server_cpu) < LATENCY_BOUND_FRACTION
        and _median_or_zero(cell.generator_cpu) < LATENCY_BOUND_FRACTION
    ]
    if split and idle:
        lines.append(
            f"note: in {len(idle)} loop cell(s) neither the server nor the generator was "
            f"{LATENCY_BOUND_FRACTION:.0%} busy: those figures are bound by waking processes "
            "across CPUs more than by the loops, which compresses the ratios; compare with "
            "--pin same"
        )
    return lines


def _wrap(text: str, indent: int) -> str:
    lines, line = [], ""
    for word in text.split(" "):
        if line.strip() and len(line) + 1 + len(word) > NOTE_WIDTH:
            lines.append(line)
            line = " " * indent + word
        else:
            line = f"{line} {word}" if line else word
    lines.append(line)
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# JSON
# --------------------------------------------------------------------------------------------


def write_json(path: str, plan: Plan, table: Table, quick: bool, elapsed: float) -> None:
    results = []
    for row in table:
        cells = table[row]
        results.append(
            {
                "transport": row.transport,
                "mode": row.mode,
                "message_bytes": row.size,
                "connections": row.conns,
                "servers": {
                    name: {
                        "median_msgs_per_s": cell.median,
                        "mad_fraction": cell.spread,
                        "rounds_msgs_per_s": cell.rates,
                        "generator_cpu_fraction": cell.generator_cpu,
                        "server_cpu_fraction": cell.server_cpu,
                        "error": cell.error,
                        "unavailable": cell.unavailable,
                    }
                    for name, cell in cells.items()
                },
                "ratios": _ratios(cells),
            }
        )
    document: dict[str, Any] = {
        "python": sys.version,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loops": {lp.name: lp.version for lp in plan.loops},
        "rounds": plan.rounds,
        "duration_s": plan.duration_s,
        "server_warmup_s": plan.warmup_s,
        "generator_warmup_s": plan.generator_warmup_s,
        "server_core": plan.server_core,
        "generator_core": plan.generator_core,
        "quick": quick,
        "elapsed_s": elapsed,
        "results": results,
    }
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(document, fh, indent=2)
        fh.write("\n")
