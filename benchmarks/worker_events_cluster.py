"""Benchmark of cqloop.worker_events across hosts, on Redis Streams:
`python -m cqloop bench worker_events --cluster` (benchmarks/worker_events.py hands over to
this module), or `python benchmarks/worker_events_cluster.py [options]` from a checkout.

What is measured
----------------
A throwaway redis-server on loopback (no persistence) and 3 cqloop.workers supervisors
standing for hosts, 4 workers each, bridged to one stream (serve(events=...)). The
workers meet at a barrier across the cluster, worker 0.0 posts "go", and then:

0. redis-benchmark's XADD on the same server, first (one request at a time, and
   pipelined): the reference the goal is stated against.
1. throughput: every worker posts N events with `await post_async()` as fast as it can
   while handling everyone's; the clock runs from the earliest "go" to the moment the
   last worker has handled all 12 x N. A delivery is one event handled by one worker:
   12 x 12 x N a round. Each worker checks that every poster's events came in order,
   none missing, or the round fails. Post-to-delivery latency under that load is
   sampled on the other hosts' workers (time.monotonic() is one clock for every process
   of the machine). Printed as a fraction of the XADD rate (deliveries/s, and stream
   entries appended/s, the stricter reading).
2. latency: once every worker has handled the whole load, the workers post paced events
   at LATENCY_FRACTION (10%) of the XADD rate, counted in deliveries/s (each post is
   delivered to 12 workers), spread over the 12 posters, for LATENCY_SECONDS; the
   receivers on the other hosts record each event's post-to-delivery time (p50, p99,
   max). `--paced-rate R` sets the rate of each worker instead.

Beside it: the single-host broker's throughput (4 workers, no Redis; worker_events.py's
measurement on cqloop) and its post-to-delivery latency at the same per-worker paced rate
(one host of this benchmark with no Redis, measured on its other workers).

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
# The latency phase offers this fraction of redis-benchmark's XADD rate, in deliveries/s,
# for this long (QUICK_ in a --quick run).
LATENCY_FRACTION = 0.10
LATENCY_SECONDS = 4.0
QUICK_LATENCY_SECONDS = 1.0
MIN_PACED_EVENTS = 20  # a worker posts at least this many in the latency phase
FALLBACK_PACED_RATE = 30.0  # posts/s a worker when redis-benchmark is not installed
# Posts of each worker in the single host's latency run before its paced phase (the
# barrier and the phase order are the cluster run's).
SINGLE_HOST_LOAD_EVENTS = 100
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
    everyone = args.hosts * WORKERS

    # One host alone (the single-host latency run): its other workers are the receivers.
    def remote(who: int) -> bool:
        return who // WORKERS != args.host if args.hosts > 1 else who != me

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
            if i % LOAD_SAMPLE_EVERY == 0 and remote(who):
                load_latency.append(now - sent)
            if seen[who] == args.n and sum(seen) == everyone * args.n and not loaded.done():
                loaded.set_result(now)
        elif event == "p":
            who, sent = data
            if remote(who):
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
    pace = 1.0 / args.rate
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
    for name in ("host", "hosts", "n", "m"):
        parser.add_argument(f"--{name}", type=int, required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--url")  # none: the single host's own broker
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


def measure_cluster(
    url: str | None, n: int, m: int, rate: float, hosts: int = HOSTS
) -> dict[str, Any]:
    """One round: deliveries/s and the latency samples of every worker. `url` None: one
    host on its own broker."""
    from cqloop._bench.worker_events import read_results, stop_processes

    with tempfile.TemporaryDirectory(prefix="cqloop-bench-cluster-") as outdir:
        processes = []
        for host in range(hosts):
            options = ["--host", str(host), "--hosts", str(hosts), "--n", str(n)]
            options += ["--m", str(m), "--rate", str(rate), "--outdir", outdir]
            if url is not None:
                options += ["--url", url]
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
            while len(glob.glob(os.path.join(outdir, "result-*.json"))) < hosts * WORKERS:
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
    everyone = hosts * WORKERS
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


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value / THOUSAND:.1f}k/s"


def _fraction(value: float, reference: float | None) -> str:
    return "" if not reference else f" = {value / reference:.0%} of XADD"


def _print_figures(figures: dict[str, Any]) -> None:
    xadd = figures["redis_benchmark_xadd_per_s"]
    single = figures["single_host_deliveries_per_s"]
    cluster = figures["cluster_deliveries_per_s"]
    entries = cluster / (HOSTS * WORKERS)  # every entry is delivered to every worker
    print(f"{'':<44}{'deliveries/s':>14}")
    print(f"{'single host, 4 workers (local broker)':<44}{single / THOUSAND:>13.1f}k")
    print(
        f"{'3 hosts x 4 workers (one Redis stream)':<44}{cluster / THOUSAND:>13.1f}k"
        f"{_fraction(cluster, xadd)} (goal: at least 50%)"
    )
    print(
        f"{'  ...as stream entries appended':<44}{entries / THOUSAND:>13.1f}k"
        f"{_fraction(entries, xadd)}"
    )
    rate = figures["paced_rate_per_worker"]
    offered = rate * HOSTS * WORKERS * HOSTS * WORKERS
    print(
        f"post-to-delivery on the other hosts (paced: {rate:.1f} posts/s a worker, "
        f"{offered / THOUSAND:.1f}k deliveries/s{_fraction(offered, xadd)}; goal: p99 under "
        "5 ms at 10%):"
    )
    for label, key in (
        ("cluster, paced", "paced"),
        ("single host, paced", "single_paced"),
        ("cluster, under full load", "loaded"),
    ):
        p50, p99, top = (_ms(figures[f"{key}_latency_{q}_s"]) for q in ("p50", "p99", "max"))
        print(f"  {label:<26} p50 {p50}, p99 {p99}, max {top}")
    for name, label in (
        ("redis_benchmark_xadd_per_s", "one at a time"),
        ("redis_benchmark_xadd_pipelined_per_s", f"-P {REDIS_BENCHMARK_PIPELINE}"),
    ):
        value = figures[name]
        shown = "-" if value is None else f"{value / THOUSAND:.1f}k requests/s"
        print(f"redis-benchmark XADD, {label}: {shown}")


def _latency_figures(name: str, samples: list[float]) -> dict[str, float | None]:
    return {
        f"{name}_latency_p50_s": _percentile(samples, 0.5),
        f"{name}_latency_p99_s": _percentile(samples, P99),
        f"{name}_latency_max_s": max(samples, default=None),
    }


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
    seconds = QUICK_LATENCY_SECONDS if args.quick else LATENCY_SECONDS
    rounds = args.rounds or (QUICK_ROUNDS if args.quick else DEFAULT_ROUNDS)
    everyone = HOSTS * WORKERS
    with tempfile.TemporaryDirectory(prefix="cqloop-bench-redis-") as directory:
        server = RedisProcess(binary, directory)
        try:
            reference = redis_benchmark_xadd(server.port)
            xadd = reference["xadd"]
            # Deliveries/s = posts/s x every worker: 10% of XADD, spread over the posters.
            rate = LATENCY_FRACTION * xadd / everyone / everyone if xadd else FALLBACK_PACED_RATE
            m = max(MIN_PACED_EVENTS, round(rate * seconds))
            print(
                f"Python {platform.python_version()}, {os.cpu_count()} CPUs; Redis "
                f"{server.version} on loopback; {HOSTS} hosts x {WORKERS} workers x {n} "
                f"events, {rounds} round{'s' if rounds > 1 else ''}, median reported"
            )
            print(
                f"redis-benchmark XADD first: {_rate(xadd)} one at a time; the latency phase "
                f"paces {rate:.1f} posts/s a worker ({m} each)"
            )
            rates, single, load, paced, single_paced = [], [], [], [], []
            url = f"redis://127.0.0.1:{server.port}/0?stream=bench."
            for number in range(rounds):
                result = measure_cluster(url + str(number), n, m, rate)
                rates.append(result["rate"])
                load += result["load_latency"]
                paced += result["paced_latency"]
                alone = measure_cluster(None, SINGLE_HOST_LOAD_EVENTS, m, rate, hosts=1)
                single_paced += alone["paced_latency"]
                single.append(single_host(n))
                print(
                    f"  round {number + 1}: cluster {rates[-1] / THOUSAND:.1f}k deliveries/s, "
                    f"single host {single[-1] / THOUSAND:.1f}k; paced p99 cluster "
                    f"{_ms(_percentile(result['paced_latency'], P99))}, single host "
                    f"{_ms(_percentile(alone['paced_latency'], P99))}"
                )
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
        **_latency_figures("loaded", load),
        **_latency_figures("paced", paced),
        **_latency_figures("single_paced", single_paced),
        "paced_rate_per_worker": rate,
        "paced_fraction_of_xadd": LATENCY_FRACTION if xadd else None,
        "redis_benchmark_xadd_per_s": xadd,
        "redis_benchmark_xadd_pipelined_per_s": reference["xadd_pipelined"],
        "redis_version": server.version,
    }
    print()
    _print_figures(figures)
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
