"""Benchmark of cqloop.worker_events across hosts, on Redis Streams:
`python -m cqloop bench worker_events --cluster` (benchmarks/worker_events.py hands over to
this module), or `python benchmarks/worker_events_cluster.py [options]` from a checkout.

What is measured
----------------
A throwaway redis-server on loopback (no persistence) and 3 cqloop.workers supervisors
standing for hosts, 4 workers each, bridged to one stream (serve(events=...)). The
workers meet at a barrier across the cluster, worker 0.0 posts "go", and then:

1. throughput: every worker posts N events with `await post_async()` as fast as it can
   while handling everyone's; the clock runs from the earliest "go" to the moment the
   last worker has handled all 12 x N. A delivery is one event handled by one worker:
   12 x 12 x N a round. Each worker checks that every poster's events came in order,
   none missing, or the round fails. Post-to-delivery latency under that load is
   sampled on the other hosts' workers (time.monotonic() is one clock for every process
   of the machine).
2. latency: once every worker has handled the whole load, every worker posts M events
   paced at PACED_RATE a second (light load); the receivers on the other hosts record
   each event's post-to-delivery time.

Beside it: the single-host broker's figure (4 workers, no Redis; worker_events.py's
measurement on cqloop), and redis-benchmark's XADD on the same server (one request at a
time, and pipelined), the ceiling of what one stream takes.

Skipped, with a message, when redis-server or the `redis` package is missing. Every
process shares the machine's cores with Redis, so the figures are a floor for a real
fleet, where each host has its own.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HOSTS = 3
WORKERS = 4
EVENTS_PER_WORKER = 5_000
QUICK_EVENTS_PER_WORKER = 500
PACED_EVENTS = 200
QUICK_PACED_EVENTS = 40
PACED_RATE = 100.0  # events a second from each worker in the latency phase
LOAD_SAMPLE_EVERY = 16  # one loaded-latency sample in this many deliveries
DEFAULT_ROUNDS = 3
QUICK_ROUNDS = 1
ROUND_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0
POLL_INTERVAL_S = 0.02
READY_TIMEOUT_S = 20.0
REDIS_BENCHMARK_REQUESTS = 100_000
REDIS_BENCHMARK_PIPELINE = 64
THOUSAND = 1e3
MS = 1e3
P99 = 0.99
EXIT_OK = 0
EXIT_FAILED = 1
SOURCE = "bench"


class BenchmarkError(Exception):
    """A round went wrong: a worker saw the wrong events, or a host failed."""


# -- in the host processes ---------------------------------------------------------------


async def _worker_app(args: argparse.Namespace) -> None:
    import cqloop.workers
    from cqloop import worker_events
    from cqloop._bench.worker_events import write_result

    info = cqloop.workers.current_worker()
    assert info is not None
    me = args.host * WORKERS + info.index
    everyone = HOSTS * WORKERS
    loop = asyncio.get_running_loop()
    heard: set[int] = set()
    ready = loop.create_future()
    go = loop.create_future()
    loaded = loop.create_future()
    everyone_loaded = loop.create_future()
    loaded_heard: set[int] = set()
    paced = loop.create_future()
    seen = [0] * everyone
    seen_paced = [0]
    wrong = [0]
    load_latency: list[float] = []
    paced_latency: list[float] = []

    def on_event(data: Any, event: str, source: str, pid: int) -> None:
        now = time.monotonic()
        if event == "n":
            who, i, sent = data
            if i != seen[who]:
                wrong[0] += 1
            seen[who] += 1
            if who // WORKERS != args.host and i % LOAD_SAMPLE_EVERY == 0:
                load_latency.append(now - sent)
            if seen[who] == args.n and sum(seen) == everyone * args.n and not loaded.done():
                loaded.set_result(now)
        elif event == "p":
            who, sent = data
            if who // WORKERS != args.host:
                paced_latency.append(now - sent)
            seen_paced[0] += 1
            if seen_paced[0] == everyone * args.m and not paced.done():
                paced.set_result(None)
        elif event == "hello":
            if data not in heard:
                heard.add(data)
                if data != me:
                    worker_events.post(SOURCE, "hello", me)  # a later worker hears of us
            if len(heard) == everyone and not ready.done():
                ready.set_result(None)
        elif event == "go" and not go.done():
            go.set_result(now)
        elif event == "loaded":
            loaded_heard.add(data)
            if len(loaded_heard) == everyone and not everyone_loaded.done():
                everyone_loaded.set_result(None)

    worker_events.register(on_event, SOURCE)
    worker_events.post(SOURCE, "hello", me)
    await ready
    if me == 0:
        worker_events.post(SOURCE, "go")
    started = await go
    for i in range(args.n):
        await worker_events.post_async(SOURCE, "n", [me, i, time.monotonic()])
    finished = await loaded
    # The paced phase starts once every worker has handled the whole load: its latency
    # is not spent queueing behind the first phase's tail.
    worker_events.post(SOURCE, "loaded", me)
    await everyone_loaded
    pace = 1.0 / PACED_RATE
    start = time.monotonic()
    for i in range(args.m):
        worker_events.post(SOURCE, "p", [me, time.monotonic()])
        # Paces the light load; no synchronisation.
        await asyncio.sleep(max(0.0, start + (i + 1) * pace - time.monotonic()))
    await paced
    write_result(
        args.outdir,
        me,
        go=started,
        done=finished,
        received=sum(seen),
        wrong=wrong[0],
        load_latency=load_latency,
        paced_latency=paced_latency,
    )
    await asyncio.Event().wait()


def _host(argv: list[str]) -> int:
    import cqloop.workers

    parser = argparse.ArgumentParser()
    for name in ("host", "n", "m"):
        parser.add_argument(f"--{name}", type=int, required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--outdir", required=True)
    args = parser.parse_args(argv)

    async def app(listener: socket.socket) -> None:
        listener.close()  # this benchmark serves no connections
        await _worker_app(args)

    return cqloop.workers.serve(app, workers=WORKERS, port=0, host="127.0.0.1", events=args.url)


# -- in the benchmark process --------------------------------------------------------------


class RedisProcess:
    """A throwaway redis-server on a free loopback port."""

    def __init__(self, binary: str, directory: str) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        options = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        options += ["--appendonly", "no", "--dir", directory]
        self.process = subprocess.Popen(
            [binary, *options],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import redis

        deadline = time.monotonic() + READY_TIMEOUT_S
        client = redis.Redis(port=self.port)
        try:
            while True:
                try:
                    self.version = client.info("server")["redis_version"]
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline or self.process.poll() is not None:
                        raise BenchmarkError("redis-server did not start") from None
                    time.sleep(POLL_INTERVAL_S)
        finally:
            client.close()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(STOP_TIMEOUT_S)


def measure_cluster(port: int, stream: str, n: int, m: int) -> dict[str, Any]:
    """One round: deliveries/s and the latency samples of every worker."""
    from cqloop._bench.worker_events import read_results, stop_processes

    url = f"redis://127.0.0.1:{port}/0?stream={stream}"
    with tempfile.TemporaryDirectory(prefix="cqloop-bench-cluster-") as outdir:
        processes = []
        for host in range(HOSTS):
            options = ["--host", str(host), "--n", str(n), "--m", str(m), "--url", url]
            options += ["--outdir", outdir]
            with open(os.path.join(outdir, f"host-{host}.err"), "wb") as stderr:
                processes.append(
                    subprocess.Popen(
                        [sys.executable, os.path.abspath(__file__), "--child-host", *options],
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=stderr,
                    )
                )
        try:
            deadline = time.monotonic() + ROUND_TIMEOUT_S
            while len(glob.glob(os.path.join(outdir, "result-*.json"))) < HOSTS * WORKERS:
                if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
                    errors = "".join(
                        Path(path).read_text()[-1500:]
                        for path in glob.glob(os.path.join(outdir, "host-*.err"))
                    )
                    raise BenchmarkError(f"a host failed or timed out:\n{errors}")
                time.sleep(POLL_INTERVAL_S)
        finally:
            stop_processes(processes)
        results = read_results(outdir)
    everyone = HOSTS * WORKERS
    for result in results:
        if result["received"] != n * everyone or result["wrong"] or result["gaps"]:
            raise BenchmarkError(f"a worker saw the wrong events: {result}")
    elapsed = max(r["done"] for r in results) - min(r["go"] for r in results)
    return {
        "rate": n * everyone * everyone / elapsed,
        "load_latency": [x for r in results for x in r["load_latency"]],
        "paced_latency": [x for r in results for x in r["paced_latency"]],
    }


def redis_benchmark_xadd(port: int) -> dict[str, float | None]:
    """redis-benchmark's XADD requests/s, one at a time and pipelined."""
    binary = shutil.which("redis-benchmark")
    found: dict[str, float | None] = {"xadd": None, "xadd_pipelined": None}
    if binary is None:
        return found
    for name, pipeline in (("xadd", 1), ("xadd_pipelined", REDIS_BENCHMARK_PIPELINE)):
        command = [binary, "-p", str(port), "-n", str(REDIS_BENCHMARK_REQUESTS), "-q"]
        command += ["-P", str(pipeline), "XADD", "bench.reference", "*", "f", "v"]
        output = subprocess.run(command, capture_output=True, text=True, timeout=120).stdout
        match = re.search(r"([\d.]+) requests per second", output)
        found[name] = float(match.group(1)) if match else None
    return found


def _percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * MS:.2f} ms"


def _print_figures(figures: dict[str, Any], reference: dict[str, float | None]) -> None:
    single = figures["single_host_deliveries_per_s"] / THOUSAND
    cluster = figures["cluster_deliveries_per_s"] / THOUSAND
    print(f"{'':<44}{'deliveries/s':>14}")
    print(f"{'single host, 4 workers (local broker)':<44}{single:>13.1f}k")
    print(f"{'3 hosts x 4 workers (one Redis stream)':<44}{cluster:>13.1f}k")
    print("post-to-delivery on the other hosts:")
    for label, key in (
        ("under full load", "loaded"),
        (f"paced, {PACED_RATE:.0f}/s a worker", "paced"),
    ):
        p50 = _ms(figures[f"{key}_latency_p50_s"])
        p99 = _ms(figures[f"{key}_latency_p99_s"])
        print(f"  {label:<24} p50 {p50}, p99 {p99}")
    for name, label in (
        ("xadd", "one at a time"),
        ("xadd_pipelined", f"-P {REDIS_BENCHMARK_PIPELINE}"),
    ):
        value = reference[name]
        shown = "-" if value is None else f"{value / THOUSAND:.1f}k requests/s"
        print(f"redis-benchmark XADD, {label}: {shown}")


def run(args: argparse.Namespace, single_host: Any) -> int:
    """Run the cluster benchmark; `single_host(n)` measures the one-host broker."""
    binary = shutil.which("redis-server")
    if binary is None:
        print(
            "worker_events --cluster: skipped: no redis-server found (apt-get install redis-server)"
        )
        return EXIT_OK
    try:
        import redis  # noqa: F401
    except ImportError:
        print("worker_events --cluster: skipped: the redis package is missing (cqloop[cluster])")
        return EXIT_OK
    n = args.events or (QUICK_EVENTS_PER_WORKER if args.quick else EVENTS_PER_WORKER)
    m = QUICK_PACED_EVENTS if args.quick else PACED_EVENTS
    rounds = args.rounds or (QUICK_ROUNDS if args.quick else DEFAULT_ROUNDS)
    with tempfile.TemporaryDirectory(prefix="cqloop-bench-redis-") as directory:
        server = RedisProcess(binary, directory)
        try:
            print(
                f"Python {platform.python_version()}, {os.cpu_count()} CPUs; Redis "
                f"{server.version} on loopback; {HOSTS} hosts x {WORKERS} workers x {n} "
                f"events, {rounds} round{'s' if rounds > 1 else ''}, median reported"
            )
            rates, single, load, paced = [], [], [], []
            for number in range(rounds):
                result = measure_cluster(server.port, f"bench.{number}", n, m)
                rates.append(result["rate"])
                load += result["load_latency"]
                paced += result["paced_latency"]
                single.append(single_host(n))
                print(
                    f"  round {number + 1}: cluster {rates[-1] / THOUSAND:.1f}k deliveries/s, "
                    f"single host {single[-1] / THOUSAND:.1f}k"
                )
            reference = redis_benchmark_xadd(server.port)
        except BenchmarkError as exc:
            print(f"worker_events --cluster: FAILED: {exc}")
            return EXIT_FAILED
        finally:
            server.stop()
    figures = {
        "hosts": HOSTS,
        "workers_per_host": WORKERS,
        "events_per_worker": n,
        "cluster_deliveries_per_s": statistics.median(rates),
        "single_host_deliveries_per_s": statistics.median(single),
        "loaded_latency_p50_s": _percentile(load, 0.5),
        "loaded_latency_p99_s": _percentile(load, P99),
        "paced_latency_p50_s": _percentile(paced, 0.5),
        "paced_latency_p99_s": _percentile(paced, P99),
        "paced_rate_per_worker": PACED_RATE,
        "redis_benchmark_xadd_per_s": reference["xadd"],
        "redis_benchmark_xadd_pipelined_per_s": reference["xadd_pipelined"],
        "redis_version": server.version,
    }
    print()
    _print_figures(figures, reference)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"benchmark": "worker_events --cluster", **figures}, fh, indent=2)
            fh.write("\n")
        print(f"results written to {args.json}")
    return EXIT_OK


def main(argv: list[str]) -> int:
    if argv[:1] == ["--child-host"]:
        return _host(argv[1:])
    from cqloop._bench import worker_events

    return worker_events.main(["--cluster", *argv])


if __name__ == "__main__":
    try:
        import cqloop  # noqa: F401
    except ImportError:
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main(sys.argv[1:]))
