"""Benchmark of cqloop.worker_events: deliveries per second with 4 worker processes.

Run it as `python -m cqloop bench worker_events [options]` once the lead has wired it in,
`python -m cqloop._bench.worker_events [options]` (installed), or
`python benchmarks/worker_events.py [options]` (from a checkout). `--quick` is a CI smoke
run.

What is measured
----------------
A cqloop.workers supervisor with 4 workers runs in a subprocess. The workers meet at a
barrier (each has seen every other's "hello" event), worker 0 posts "go", and then every
worker posts N events with `await post_async()` while handling everyone's. The clock runs
from the earliest "go" to the moment the last worker has handled all 4 x N events; a
delivery is one event handled by one worker, so a round delivers 4 x 4 x N events. Each
worker checks that it saw exactly 4 x N events with no gap, or the round fails.

The variable is the workers' event loop (cqloop, asyncio, uvloop, rloop when installed):
it runs each worker's worker_events client and handlers. The broker runs in the
supervisor on cqloop in every row, so the ratios compare the worker side alone.

Across hosts
------------
`--cluster` measures worker_events on Redis Streams instead: 3 hosts x 4 workers bridged
to one stream of a throwaway redis-server, beside this single-host figure and
redis-benchmark's XADD (benchmarks/worker_events_cluster.py; skipped with a message when
redis-server is not installed).

Method
------
As in micro.py: one warm-up round, discarded; measured rounds interleave the loops,
rotating their order each round; the median of the rounds is reported, with the median
absolute deviation as a percentage after the `±`, and ratios cqloop / peer (above 1.00
cqloop is faster). Each round is a fresh supervisor, whose start-up is not timed.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

DEFAULT_ROUNDS = 5
QUICK_ROUNDS = 1
WARMUP_ROUNDS = 1
WORKERS = 4
EVENTS_PER_WORKER = 20_000
QUICK_EVENTS_PER_WORKER = 2_000
ROUND_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0
POLL_INTERVAL_S = 0.02
REFERENCE_LOOP = "cqloop"
ALL_LOOPS = ("cqloop", "asyncio", "uvloop", "rloop")
PERCENT = 100.0
THOUSAND = 1e3
EXIT_OK = 0
EXIT_FAILED = 1
SOURCE = "bench"


class BenchmarkError(Exception):
    """A round went wrong: a worker saw the wrong events, or the supervisor failed."""


# -- in the worker processes -----------------------------------------------------------------


def _loop_factory(name: str) -> Any:
    if name == "cqloop":
        import cqloop

        return cqloop.new_event_loop
    if name == "asyncio":
        return asyncio.new_event_loop
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    if name == "rloop":
        import rloop

        return rloop.new_event_loop
    raise ValueError(f"unknown loop {name!r}")


async def _bench_app(listener: socket.socket, n: int, workers: int, outdir: str) -> None:
    import cqloop.workers
    from cqloop import worker_events

    listener.close()  # this benchmark serves no connections
    info = cqloop.workers.current_worker()
    assert info is not None
    loop = asyncio.get_running_loop()
    total = n * workers
    hellos: set[int] = set()
    everyone = loop.create_future()
    go = loop.create_future()
    done = loop.create_future()
    seen = [0] * workers
    wrong = [0]

    def on_event(data: Any, event: str, source: str, pid: int) -> None:
        if source == SOURCE and event == "n":
            who, i = data
            if i != seen[who]:
                wrong[0] += 1
            seen[who] += 1
            if sum(seen) == total and not done.done():
                done.set_result(time.perf_counter())
        elif source == SOURCE and event == "hello":
            hellos.add(data)
            if len(hellos) == workers and not everyone.done():
                everyone.set_result(None)
        elif source == SOURCE and event == "go":
            if not go.done():
                go.set_result(time.perf_counter())
        elif source == "cqloop.workers" and event == "started":
            worker_events.post(SOURCE, "hello", info.index)

    worker_events.register(on_event)
    await everyone
    if info.index == 0:
        worker_events.post(SOURCE, "go")
    started = await go
    for i in range(n):
        await worker_events.post_async(SOURCE, "n", [info.index, i])
    finished = await done
    write_result(outdir, info.index, go=started, done=finished, received=sum(seen), wrong=wrong[0])
    await asyncio.Event().wait()


def write_result(outdir: str, worker: int, **result: Any) -> None:
    """A worker's OUTDIR/result-WORKER.json (with its count of gap events), in one step."""
    from cqloop import worker_events

    result["gaps"] = worker_events.client().statistics().gaps
    path = os.path.join(outdir, f"result-{worker}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(result, f)
    os.replace(path + ".tmp", path)


def _child(loop_name: str, n: int, workers: int, outdir: str) -> int:
    import cqloop.workers

    async def app(listener: socket.socket) -> None:
        await _bench_app(listener, n, workers, outdir)

    return cqloop.workers.serve(
        app,
        workers=workers,
        host="127.0.0.1",
        port=0,
        worker_loop_factory=_loop_factory(loop_name),
    )


# -- in the benchmark process ------------------------------------------------------------


def measure_once(loop_name: str, n: int, workers: int) -> float:
    """Deliveries per second of one round on `loop_name`."""
    with tempfile.TemporaryDirectory(prefix="cqloop-bench-we-") as outdir:
        stderr_path = os.path.join(outdir, "supervisor.err")
        with open(stderr_path, "wb") as stderr:
            process = subprocess.Popen(
                [
                    sys.executable,
                    os.path.abspath(__file__),
                    "--child",
                    loop_name,
                    str(n),
                    str(workers),
                    outdir,
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        try:
            deadline = time.monotonic() + ROUND_TIMEOUT_S
            while len(glob.glob(os.path.join(outdir, "result-*.json"))) < workers:
                with open(stderr_path) as f:
                    errors = f.read()
                died = "exited with status" in errors
                if died or process.poll() is not None or time.monotonic() > deadline:
                    raise BenchmarkError(f"the supervisor failed:\n{errors[-2000:]}")
                time.sleep(POLL_INTERVAL_S)
        finally:
            stop_processes([process])
        results = read_results(outdir)
    for result in results:
        if result["received"] != n * workers or result["wrong"] or result["gaps"]:
            raise BenchmarkError(f"a worker saw the wrong events: {result}")
    elapsed = max(r["done"] for r in results) - min(r["go"] for r in results)
    return n * workers * workers / elapsed


def stop_processes(processes: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each supervisor, then wait (SIGKILL after STOP_TIMEOUT_S)."""
    for process in processes:
        process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def read_results(outdir: str) -> list[dict[str, Any]]:
    """The result-*.json every worker wrote."""
    results = []
    for path in glob.glob(os.path.join(outdir, "result-*.json")):
        with open(path) as f:
            results.append(json.load(f))
    return results


@dataclass
class Cell:
    rates: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def median(self) -> float | None:
        return statistics.median(self.rates) if self.rates else None

    @property
    def spread(self) -> float | None:
        median = self.median
        if not median:
            return None
        return statistics.median(abs(r - median) for r in self.rates) / median


def _available(names: list[str]) -> list[str]:
    found = []
    for name in names:
        try:
            factory = _loop_factory(name)
        except ImportError as exc:
            print(f"note: {name} is not installed ({exc}); skipped")
            continue
        loop = factory()
        try:
            # A worker's broker connection is a Unix socket made into a transport.
            lacks = (
                type(loop).create_unix_connection
                is asyncio.AbstractEventLoop.create_unix_connection
            )
            if not lacks:
                coro = loop.create_unix_connection(asyncio.Protocol, sock=None, path=None)
                try:
                    loop.run_until_complete(coro)
                except NotImplementedError:
                    lacks = True
                except Exception:
                    pass  # "no path and sock": the method exists
        finally:
            loop.close()
        if lacks:
            print(f"note: {name} has no create_unix_connection(); skipped")
            continue
        found.append(name)
    return found


def run_all(loops: list[str], rounds: int, n: int) -> dict[str, Cell]:
    cells = {name: Cell() for name in loops}
    for round_number in range(WARMUP_ROUNDS + rounds):
        warmup = round_number < WARMUP_ROUNDS
        shift = round_number % len(loops)
        order = loops[shift:] + loops[:shift]
        for name in order:
            cell = cells[name]
            if cell.error is not None:
                continue
            try:
                rate = measure_once(name, n, WORKERS)
            except BenchmarkError as exc:
                cell.error = str(exc)
                print(f"  {name}: FAILED: {exc}")
                continue
            if not warmup:
                cell.rates.append(rate)
            label = "warm-up" if warmup else f"round {round_number - WARMUP_ROUNDS + 1}"
            print(f"  {label:<9} {name:<8} {rate / THOUSAND:8.1f}k deliveries/s")
    return cells


def print_table(loops: list[str], cells: dict[str, Cell]) -> None:
    header = f"{'worker loop':<12}{'deliveries/s':>18}{'cqloop / it':>14}"
    print(header)
    print("-" * len(header))
    reference = cells.get(REFERENCE_LOOP)
    for name in loops:
        cell = cells[name]
        if cell.median is None:
            print(f"{name:<12}{'failed':>18}")
            continue
        rate = f"{cell.median / THOUSAND:.1f}k ±{(cell.spread or 0) * PERCENT:.0f}%"
        ratio = ""
        if reference is not None and reference.median is not None and name != REFERENCE_LOOP:
            ratio = f"{reference.median / cell.median:.2f}"
        print(f"{name:<12}{rate:>18}{ratio:>14}")


def write_json(path: str, loops: list[str], cells: dict[str, Cell], args: Any, n: int) -> None:
    reference = cells.get(REFERENCE_LOOP)
    reference_median = reference.median if reference is not None else None

    def ratio(cell: Cell) -> float | None:
        median = cell.median
        return reference_median / median if reference_median and median else None

    document = {
        "benchmark": "worker_events deliveries/s",
        "python": sys.version,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "workers": WORKERS,
        "events_per_worker": n,
        "rounds": args.rounds,
        "warmup_rounds": WARMUP_ROUNDS,
        "quick": args.quick,
        "loops": {
            name: {
                "median_deliveries_per_s": cells[name].median,
                "mad_fraction": cells[name].spread,
                "rounds_deliveries_per_s": cells[name].rates,
                "error": cells[name].error,
                "ratio_cqloop_over_this": ratio(cells[name]),
            }
            for name in loops
        },
    }
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(document, fh, indent=2)
        fh.write("\n")


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m cqloop bench worker_events",
        description="worker_events throughput: deliveries/s with 4 workers, per worker loop.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: {QUICK_ROUNDS} round of {QUICK_EVENTS_PER_WORKER} events per worker",
    )
    parser.add_argument("--rounds", type=int, help=f"measured rounds (default {DEFAULT_ROUNDS})")
    parser.add_argument("--events", type=int, help="events each worker posts")
    parser.add_argument("--loops", default=",".join(ALL_LOOPS), help="comma-separated worker loops")
    parser.add_argument("--json", metavar="PATH", help="write results here")
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="worker_events across 3 hosts on Redis Streams (needs redis-server)",
    )
    args = parser.parse_args(argv)
    if args.rounds is None and not args.cluster:  # --cluster has its own default
        args.rounds = QUICK_ROUNDS if args.quick else DEFAULT_ROUNDS
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


def main(argv: list[str]) -> int:
    if argv[:1] == ["--child"]:
        loop_name, events, workers, outdir = argv[1:5]
        return _child(loop_name, int(events), int(workers), outdir)
    args = _parse_args(argv)
    if args.cluster:
        from cqloop._bench import worker_events_cluster

        return worker_events_cluster.run(args, lambda n: measure_once(REFERENCE_LOOP, n, WORKERS))
    n = args.events or (QUICK_EVENTS_PER_WORKER if args.quick else EVENTS_PER_WORKER)
    print(
        f"Python {platform.python_version()} on {platform.system()} {platform.machine()}, "
        f"{os.cpu_count()} CPUs; {WORKERS} workers x {n} events, broker on cqloop"
    )
    loops = _available([name.strip() for name in args.loops.split(",") if name.strip()])
    if not loops:
        print("no loops to benchmark")
        return EXIT_OK
    print(
        f"{args.rounds} measured round{'' if args.rounds == 1 else 's'} after "
        f"{WARMUP_ROUNDS} warm-up, interleaved, median reported"
    )
    start = time.perf_counter()
    cells = run_all(loops, args.rounds, n)
    print()
    print_table(loops, cells)
    print(f"total {time.perf_counter() - start:.1f}s")
    if args.json:
        write_json(args.json, loops, cells, args, n)
        print(f"results written to {args.json}")
    reference = cells.get(REFERENCE_LOOP)
    return EXIT_FAILED if reference is not None and reference.error else EXIT_OK


def _add_checkout_to_path() -> None:
    """When run as a script from a checkout, make cqloop importable."""
    try:
        import cqloop  # noqa: F401
    except ImportError:
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


if __name__ == "__main__":
    _add_checkout_to_path()
    sys.exit(main(sys.argv[1:]))
