"""Micro-benchmarks of the event loop core: cqloop against asyncio, uvloop and rloop.

Run it as `python -m cqloop bench [options]` (installed) or `python benchmarks/micro.py
[options]` (from a checkout). `--help` lists the options; `--quick` is a CI smoke run.

What is measured
----------------
Each benchmark is a coroutine `body(loop, n)` that does `n` operations of one kind and
returns how many it did; the harness checks that count (and each body checks its own
invariants: values in order, cancelled timers never run, ...), so a broken loop cannot post
a fast number. The benchmarks:

  call_soon chain    one callback that reschedules itself with call_soon, n times
  call_soon x100     100 such chains in flight at once, n callbacks in all
  call_later chain   one callback that reschedules itself with call_later(0), n times
  call_later batch   n timers scheduled at once with distinct small delays, 1 in 4 cancelled
  future pingpong    two tasks passing a value through loop.create_future(), n round trips
  tasks              n tasks that each await asyncio.sleep(0) a few times, gathered
  queue              producer and consumer through an asyncio.Queue(maxsize=100), n items

Method
------
The machine this runs on is assumed to be shared and noisy, so:

* every loop runs in the same process and the measurements are interleaved: each round runs
  each benchmark on each loop, rotating the order of the loops from round to round, so that
  a burst of outside load spreads over all loops instead of landing on one;
* a warm-up round runs first and is discarded;
* each measurement gets a fresh loop, after gc.collect(); only the benchmark body is timed
  (time.perf_counter() inside the running loop), not loop creation, start-up or close;
* the figure reported is the median of the measured rounds.

Reading the output
------------------
The table has one row per benchmark. The loop columns give the median operations per second
(k = thousand, M = million) and, after the `±`, the median absolute deviation of the rounds
as a percentage of the median: a rough noise figure for that cell. The ratio columns divide
cqloop's median by a peer's: above 1.00 cqloop is faster, below 1.00 it is slower.
`best` is the faster of uvloop and rloop for that row. A ratio is shown only when both of
its loops ran. With `--json PATH` every round's figures are written out as well.

The exit status is 0, or 1 if a benchmark failed on cqloop (a peer's failure is reported
and its cells are left blank, but does not fail the run).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

# --------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------

DEFAULT_ROUNDS = 7
QUICK_ROUNDS = 3
WARMUP_ROUNDS = 1
QUICK_SIZE_DIVISOR = 10  # --quick divides every benchmark's n by this

CALL_SOON_N = 200_000
CALL_SOON_FANOUT = 100  # concurrent chains in "call_soon x100"
CALL_LATER_N = 100_000
CALL_LATER_BATCH_N = 50_000
CALL_LATER_DISTINCT_DELAYS = 1_000  # batch delays cycle through this many distinct values
CALL_LATER_DELAY_STEP = 1e-6  # seconds between two neighbouring batch delays
CALL_LATER_CANCEL_EVERY = 4  # in the batch, every 4th timer is cancelled before it fires
PINGPONG_N = 50_000
TASKS_N = 20_000
TASK_SLEEPS = 3  # asyncio.sleep(0) calls per task
QUEUE_N = 100_000
QUEUE_MAXSIZE = 100
MEASUREMENT_TIMEOUT_S = 60.0  # a watchdog stops a measurement that hangs (lost callback)
CLEANUP_TIMEOUT_S = 1.0  # for cancelling what a failed measurement left behind

REFERENCE_LOOP = "cqloop"
ALL_LOOPS = ("cqloop", "asyncio", "uvloop", "rloop")
FAST_PEERS = ("uvloop", "rloop")  # the "best" ratio compares against the faster of these

NAME_WIDTH = 18
CELL_WIDTH = 13
RATIO_WIDTH = 11
PERCENT = 100.0
THOUSAND = 1e3
MILLION = 1e6

EXIT_OK = 0
EXIT_FAILED = 1

_T = TypeVar("_T")
LoopFactory = Callable[[], asyncio.AbstractEventLoop]
BenchBody = Callable[[asyncio.AbstractEventLoop, int], Awaitable[int]]


class BenchmarkError(Exception):
    """A benchmark body saw a wrong result: the loop under test misbehaved."""


def _check(condition: bool, message: str) -> None:
    # Not `assert`: the checks must survive python -O.
    if not condition:
        raise BenchmarkError(message)


# --------------------------------------------------------------------------------------------
# Benchmark bodies: each does n operations on the running loop and returns the count done
# --------------------------------------------------------------------------------------------


async def bench_call_soon_chain(loop: asyncio.AbstractEventLoop, n: int) -> int:
    return await _call_soon_chains(loop, n, chains=1)


async def bench_call_soon_fanout(loop: asyncio.AbstractEventLoop, n: int) -> int:
    return await _call_soon_chains(loop, n, chains=CALL_SOON_FANOUT)


async def _call_soon_chains(loop: asyncio.AbstractEventLoop, n: int, chains: int) -> int:
    """`chains` self-rescheduling callbacks share the work of n callbacks in all."""
    done = loop.create_future()
    per_chain = n // chains
    ran = [0]
    finished = [0]

    def step(left: int) -> None:
        ran[0] += 1
        if left > 1:
            loop.call_soon(step, left - 1)
            return
        finished[0] += 1
        if finished[0] == chains:
            done.set_result(ran[0])

    for _ in range(chains):
        loop.call_soon(step, per_chain)
    count: int = await done
    _check(count == per_chain * chains, f"{count} callbacks ran, expected {per_chain * chains}")
    return count


async def bench_call_later_chain(loop: asyncio.AbstractEventLoop, n: int) -> int:
    """One callback that reschedules itself with call_later(0, ...) until n have run."""
    done = loop.create_future()
    ran = [0]

    def step(left: int) -> None:
        ran[0] += 1
        if left > 1:
            loop.call_later(0, step, left - 1)
        else:
            done.set_result(ran[0])

    loop.call_later(0, step, n)
    count: int = await done
    _check(count == n, f"{count} timers fired, expected {n}")
    return count


async def bench_call_later_batch(loop: asyncio.AbstractEventLoop, n: int) -> int:
    """n timers at once with distinct small delays; every CALL_LATER_CANCEL_EVERY-th one is
    cancelled before it can fire. Counts the n timers scheduled (fired or cancelled)."""
    done = loop.create_future()
    to_cancel = n // CALL_LATER_CANCEL_EVERY
    to_fire = n - to_cancel
    fired = [0]

    def fire() -> None:
        fired[0] += 1
        if fired[0] == to_fire and not done.done():
            done.set_result(fired[0])

    def must_not_fire() -> None:
        if not done.done():
            done.set_exception(BenchmarkError("a cancelled timer fired"))

    cancel_later = []
    for i in range(n):
        delay = (i % CALL_LATER_DISTINCT_DELAYS) * CALL_LATER_DELAY_STEP
        if i % CALL_LATER_CANCEL_EVERY == 0:
            cancel_later.append(loop.call_later(delay, must_not_fire))
        else:
            loop.call_later(delay, fire)
    for handle in cancel_later:
        handle.cancel()
    count: int = await done
    _check(count == to_fire, f"{count} timers fired, expected {to_fire}")
    # Give a wrongly surviving cancelled timer (longest delay: under a millisecond) a chance.
    await asyncio.sleep(CALL_LATER_DISTINCT_DELAYS * CALL_LATER_DELAY_STEP)
    _check(fired[0] == to_fire, f"{fired[0]} timers fired, expected {to_fire}")
    return n


async def bench_future_pingpong(loop: asyncio.AbstractEventLoop, n: int) -> int:
    """Two tasks pass a counter back and forth, each side waiting on a fresh future that the
    other side resolves; one round trip is two passes."""
    slots = [loop.create_future(), loop.create_future()]

    async def player(me: int, other: int) -> None:
        for _ in range(n):
            value = await slots[me]
            slots[me] = loop.create_future()
            slots[other].set_result(value + 1)

    slots[0].set_result(0)
    await asyncio.gather(loop.create_task(player(0, 1)), loop.create_task(player(1, 0)))
    passes = await slots[0]
    _check(passes == 2 * n, f"{passes} passes, expected {2 * n}")
    return passes // 2


async def bench_tasks(loop: asyncio.AbstractEventLoop, n: int) -> int:
    """n tasks, each awaiting asyncio.sleep(0) TASK_SLEEPS times, gathered."""

    async def worker(i: int) -> int:
        for _ in range(TASK_SLEEPS):
            await asyncio.sleep(0)
        return i

    results = await asyncio.gather(*[loop.create_task(worker(i)) for i in range(n)])
    _check(results == list(range(n)), "gathered task results are wrong")
    return len(results)


async def bench_queue(loop: asyncio.AbstractEventLoop, n: int) -> int:
    """A producer puts 0..n-1 into a bounded asyncio.Queue; a consumer gets them in order."""
    queue: asyncio.Queue[int] = asyncio.Queue(maxsize=QUEUE_MAXSIZE)

    async def producer() -> None:
        for i in range(n):
            await queue.put(i)

    async def consumer() -> int:
        for expected in range(n):
            item = await queue.get()
            if item != expected:
                raise BenchmarkError(f"queue gave {item}, expected {expected}")
        return n

    _, got = await asyncio.gather(loop.create_task(producer()), loop.create_task(consumer()))
    _check(queue.empty(), "items left in the queue")
    return got


@dataclass(frozen=True)
class Benchmark:
    name: str
    unit: str
    body: BenchBody
    n: int


BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark("call_soon chain", "callbacks", bench_call_soon_chain, CALL_SOON_N),
    Benchmark("call_soon x100", "callbacks", bench_call_soon_fanout, CALL_SOON_N),
    Benchmark("call_later chain", "timers", bench_call_later_chain, CALL_LATER_N),
    Benchmark("call_later batch", "timers", bench_call_later_batch, CALL_LATER_BATCH_N),
    Benchmark("future pingpong", "round trips", bench_future_pingpong, PINGPONG_N),
    Benchmark("tasks", "tasks", bench_tasks, TASKS_N),
    Benchmark("queue", "items", bench_queue, QUEUE_N),
)


def _short_name(bench: Benchmark) -> str:
    """The benchmark's name as --only takes it: "call_soon chain" is call_soon_chain."""
    return bench.name.replace(" ", "_")


def _selects(word: str, bench: Benchmark) -> bool:
    """Whether --only's `word` names `bench`: its full name, or its group (call_soon)."""
    short, word = _short_name(bench), word.replace(" ", "_")
    return short == word or short.startswith(word + "_")


# --------------------------------------------------------------------------------------------
# Loops
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoopInfo:
    name: str
    factory: LoopFactory
    version: str


def _find_loop(name: str) -> LoopInfo | str:
    """The loop called `name`, or a sentence saying why it is unavailable."""
    if name == "asyncio":
        return LoopInfo(
            name, asyncio.new_event_loop, f"stdlib (Python {platform.python_version()})"
        )
    try:
        if name == "cqloop":
            import cqloop

            return LoopInfo(name, cqloop.new_event_loop, cqloop.__version__)
        if name == "uvloop":
            import uvloop

            return LoopInfo(name, uvloop.new_event_loop, uvloop.__version__)
        if name == "rloop":
            import rloop

            return LoopInfo(name, rloop.new_event_loop, rloop.__version__)
    except ImportError as exc:
        return f"{name} is not installed ({exc}); skipped"
    return f"unknown loop {name!r}"


def installed_loops(names: list[str]) -> list[LoopInfo]:
    """The loops called `names` that are installed, each printed with its version (a
    note for each that is not)."""
    loops = []
    for name in names:
        found = _find_loop(name)
        if isinstance(found, str):
            print(f"note: {found}")
        else:
            loops.append(found)
            print(f"  {found.name:<8} {found.version}")
    return loops


# --------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------


@dataclass
class Cell:
    """The measurements of one benchmark on one loop."""

    rates: list[float] = field(default_factory=list)  # ops/s, one per measured round
    error: str | None = None

    @property
    def median(self) -> float | None:
        return statistics.median(self.rates) if self.rates and self.error is None else None

    @property
    def spread(self) -> float | None:
        """Median absolute deviation as a fraction of the median."""
        median = self.median
        if not median:
            return None
        return statistics.median(abs(rate - median) for rate in self.rates) / median


def measure_once(factory: LoopFactory, bench: Benchmark, n: int) -> float:
    """Run `bench` once on a fresh loop from `factory`; return its rate in ops/s."""
    gc.collect()
    loop = factory()
    asyncio.set_event_loop(loop)
    try:

        async def timed() -> tuple[int, float]:
            start = time.perf_counter()
            count = await bench.body(loop, n)
            return count, time.perf_counter() - start

        count, elapsed = _run_with_watchdog(loop, timed(), MEASUREMENT_TIMEOUT_S)
    except BaseException:
        _cancel_leftovers(loop)
        raise
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    _check(count == n, f"{bench.name}: body reported {count} operations, expected {n}")
    _check(elapsed > 0, f"{bench.name}: non-positive elapsed time")
    return count / elapsed


def _run_with_watchdog(loop: asyncio.AbstractEventLoop, coro: Awaitable[_T], timeout: float) -> _T:
    """loop.run_until_complete(coro), but a loop that loses a callback and so would wait for
    ever is stopped after `timeout` seconds (loop.stop() needs no callback to get through)."""
    timed_out = False

    def on_timeout() -> None:
        nonlocal timed_out
        timed_out = True
        loop.stop()

    watchdog = loop.call_later(timeout, on_timeout)
    try:
        return loop.run_until_complete(coro)
    except RuntimeError:
        if timed_out:
            raise BenchmarkError(f"no result after {timeout:g}s") from None
        raise
    finally:
        watchdog.cancel()


def _cancel_leftovers(loop: asyncio.AbstractEventLoop) -> None:
    """After a failed measurement, cancel the tasks it left (best effort, bounded in time),
    so that they are not reported as destroyed while pending."""
    try:
        leftovers = [task for task in asyncio.all_tasks(loop) if not task.done()]
        for task in leftovers:
            task.cancel()
        if leftovers:
            gathered = asyncio.gather(*leftovers, return_exceptions=True)
            _run_with_watchdog(loop, gathered, CLEANUP_TIMEOUT_S)
    except Exception:
        pass  # the measurement has failed already; that is the error worth reporting


def run_all(
    loops: list[LoopInfo], benches: list[Benchmark], rounds: int, divisor: int
) -> dict[str, dict[str, Cell]]:
    """Interleaved rounds: per round, per benchmark, every loop in a rotated order."""
    cells = {b.name: {lp.name: Cell() for lp in loops} for b in benches}
    total = WARMUP_ROUNDS + rounds
    for round_no in range(total):
        warmup = round_no < WARMUP_ROUNDS
        label = "warm-up" if warmup else f"round {round_no - WARMUP_ROUNDS + 1}/{rounds}"
        print(f"  {label} ...", file=sys.stderr, flush=True)
        shift = round_no % len(loops)
        order = loops[shift:] + loops[:shift]
        for bench in benches:
            n = max(1, bench.n // divisor)
            for info in order:
                cell = cells[bench.name][info.name]
                if cell.error is not None:
                    continue
                try:
                    rate = measure_once(info.factory, bench, n)
                except Exception as exc:
                    cell.error = f"{type(exc).__name__}: {exc}"
                    print(f"  ! {bench.name} failed on {info.name}: {cell.error}", file=sys.stderr)
                    continue
                if not warmup:
                    cell.rates.append(rate)
    return cells


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _format_rate(rate: float | None, spread: float | None) -> str:
    if rate is None:
        return "failed"
    if rate >= MILLION:
        text = f"{rate / MILLION:.2f}M"
    elif rate >= THOUSAND:
        text = f"{rate / THOUSAND:.1f}k"
    else:
        text = f"{rate:.0f}"
    if spread is not None:
        text += f" ±{spread * PERCENT:.0f}%"
    return text


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def ratios_for(row: dict[str, Cell]) -> dict[str, float | None]:
    """cqloop's median divided by each peer's, and by the best of the fast peers."""
    ref = row.get(REFERENCE_LOOP)
    if ref is None:
        return {}
    ref_median = ref.median
    out: dict[str, float | None] = {}
    for name, cell in row.items():
        if name != REFERENCE_LOOP:
            out[name] = _ratio(ref_median, cell.median)
    fast = [row[name].median for name in FAST_PEERS if name in row]
    fast_medians = [m for m in fast if m is not None]
    if fast_medians:
        out["best"] = _ratio(ref_median, max(fast_medians))
    return out


def print_table(loops: list[LoopInfo], cells: dict[str, dict[str, Cell]]) -> None:
    ratio_names = [lp.name for lp in loops if lp.name != REFERENCE_LOOP]
    if any(lp.name in FAST_PEERS for lp in loops):
        ratio_names.append("best")
    has_ratios = any(lp.name == REFERENCE_LOOP for lp in loops) and ratio_names

    header = f"{'benchmark (ops/s)':<{NAME_WIDTH}}"
    header += "".join(f"{lp.name:>{CELL_WIDTH}}" for lp in loops)
    if has_ratios:
        header += "".join(f"{'cq/' + name:>{RATIO_WIDTH}}" for name in ratio_names)
    print(header)
    print("-" * len(header))
    for bench_name, row in cells.items():
        line = f"{bench_name:<{NAME_WIDTH}}"
        line += "".join(
            f"{_format_rate(row[lp.name].median, row[lp.name].spread):>{CELL_WIDTH}}"
            for lp in loops
        )
        if has_ratios:
            ratios = ratios_for(row)
            for name in ratio_names:
                value = ratios.get(name)
                line += f"{'-' if value is None else f'{value:.2f}':>{RATIO_WIDTH}}"
        print(line)


def write_json(
    path: str,
    loops: list[LoopInfo],
    benches: list[Benchmark],
    cells: dict[str, dict[str, Cell]],
    args: argparse.Namespace,
    divisor: int,
    elapsed: float,
) -> None:
    results = {}
    for bench in benches:
        row = cells[bench.name]
        results[bench.name] = {
            "unit": bench.unit,
            "n": max(1, bench.n // divisor),
            "loops": {
                name: {
                    "median_ops_per_s": cell.median,
                    "mad_fraction": cell.spread,
                    "rounds_ops_per_s": cell.rates,
                    "error": cell.error,
                }
                for name, cell in row.items()
            },
            "ratios": ratios_for(row),
        }
    document: dict[str, Any] = {
        "python": sys.version,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "loops": {lp.name: lp.version for lp in loops},
        "rounds": args.rounds,
        "warmup_rounds": WARMUP_ROUNDS,
        "quick": args.quick,
        "elapsed_s": elapsed,
        "results": results,
    }
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(document, fh, indent=2)
        fh.write("\n")


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _parse_args(argv: list[str]) -> argparse.Namespace:
    names = ", ".join(_short_name(b) for b in BENCHMARKS)
    parser = argparse.ArgumentParser(
        prog="python -m cqloop bench",
        description="Event loop micro-benchmarks: cqloop against asyncio, uvloop and rloop.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: {QUICK_ROUNDS} rounds and n divided by {QUICK_SIZE_DIVISOR}",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help=f"measured rounds after the warm-up (default {DEFAULT_ROUNDS}, {QUICK_ROUNDS} "
        "with --quick)",
    )
    parser.add_argument(
        "--only",
        default=None,
        help=f"comma-separated benchmarks: {names} (call_soon: both call_soon rows, ...)",
    )
    parser.add_argument(
        "--loops",
        default=",".join(ALL_LOOPS),
        help=f"comma-separated loops (default {','.join(ALL_LOOPS)})",
    )
    parser.add_argument("--json", metavar="PATH", default=None, help="write results here")
    args = parser.parse_args(argv)

    if args.rounds is None:
        args.rounds = QUICK_ROUNDS if args.quick else DEFAULT_ROUNDS
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    if args.only is None:
        args.benches = list(BENCHMARKS)
    else:
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        unknown = [w for w in wanted if not any(_selects(w, b) for b in BENCHMARKS)]
        if unknown or not wanted:
            parser.error(f"--only: unknown benchmark(s) {unknown}; choose from {names}")
        args.benches = [b for b in BENCHMARKS if any(_selects(w, b) for w in wanted)]

    args.loop_names = list(dict.fromkeys(w.strip() for w in args.loops.split(",") if w.strip()))
    unknown_loops = [w for w in args.loop_names if w not in ALL_LOOPS]
    if unknown_loops or not args.loop_names:
        parser.error(
            f"--loops: unknown loop(s) {unknown_loops}; choose from {', '.join(ALL_LOOPS)}"
        )
    return args


def main(argv: list[str]) -> int:
    args = _parse_args(argv)
    divisor = QUICK_SIZE_DIVISOR if args.quick else 1

    print(
        f"Python {platform.python_version()} ({platform.python_implementation()}) on "
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs"
    )
    loops = installed_loops(args.loop_names)
    if not loops:
        print("no loops to benchmark")
        return EXIT_OK
    print(
        f"{args.rounds} measured round{'' if args.rounds == 1 else 's'} after "
        f"{WARMUP_ROUNDS} warm-up, interleaved, "
        f"median reported{' (quick: n / ' + str(divisor) + ')' if args.quick else ''}"
    )
    print()

    start = time.perf_counter()
    cells = run_all(loops, args.benches, args.rounds, divisor)
    elapsed = time.perf_counter() - start

    print()
    print_table(loops, cells)
    print()
    failures = [
        (bench, name, cell.error)
        for bench, row in cells.items()
        for name, cell in row.items()
        if cell.error is not None
    ]
    for bench, name, error in failures:
        print(f"FAILED: {bench} on {name}: {error}")
    print(f"total {elapsed:.1f}s")

    if args.json:
        write_json(args.json, loops, args.benches, cells, args, divisor, elapsed)
        print(f"results written to {args.json}")
    if any(name == REFERENCE_LOOP for _, name, _ in failures):
        return EXIT_FAILED
    return EXIT_OK


def _add_checkout_to_path() -> None:
    """When run as a script from a checkout, make the in-place built cqloop importable."""
    try:
        import cqloop  # noqa: F401
    except ImportError:
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


if __name__ == "__main__":
    _add_checkout_to_path()
    sys.exit(main(sys.argv[1:]))
