"""The HTTP benchmark: HTTP servers on cqloop, asyncio, uvloop and rloop, driven by our C
load generator (or wrk).

    python -m cqloop bench http [--apps A,B] [--loops L] [--conns N] [--duration S]
                                [--warmup S] [--rounds N] [--pin split|same|none]
                                [--generator loadgen|wrk] [--quick] [--json PATH]

What is measured: each app of http_server.py (a bare asyncio.Protocol with httptools,
uvicorn with httptools, uvicorn with h11, aiohttp.web) serves on each loop, each server in
its own process; `protocol-close` is the bare Protocol app driven with `Connection: close`,
so that every request is a new connection (the accept rate). The generator keeps `--conns`
keep-alive connections busy for `--duration` seconds per measurement, one request at a time
on each, and reports requests per second, latency percentiles and its own CPU time; the
server's CPU time per request is read from /proc/PID/schedstat around the measurement.
The default generator is the echo benchmark's C program in its HTTP mode (loadgen.c -H,
compiled on first use: it parses each response in one pass and costs less CPU per request
than wrk, which on a bare Protocol server was the limit); `--generator wrk` uses Debian's
`wrk` instead (where it is missing the benchmark says so and is skipped).

Method, as in the echo benchmark: every server is started and warmed up first; then each
round measures every server once, apps in a shuffled order with the loops of one app next
to each other (in a shuffled order too), so that outside load lands on all of them; the
figures are medians over the rounds. Servers run on one CPU and wrk on the other (`--pin
split`, the default). A `*` marks a figure taken while wrk was at least 90% busy: there the
generator may be the limit, and the CPU per request is the figure to compare. The `gen cpu`
column is the generator's CPU time over the wall time of the measurement.

Columns: req/s (median), p50 and p99 latency (medians over rounds, ms), server CPU per
request (µs). Ratios: `cq/best` divides cqloop's req/s by the faster of uvloop and rloop
(the medians), `paired` is the median of the rounds' own ratios, `cpu` divides cqloop's CPU
per request by the best peer's (lower is better). The frameworks are optional (`pip install
'cqloop[bench]'` brings them); a missing one shows its app as n/a.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from cqloop._bench.echo import native
from cqloop._bench.echo.run import _cpu_ns, _server_environment, _stop_process
from cqloop._bench.micro import _find_loop

APPS = ("protocol", "protocol-close", "uvicorn-httptools", "uvicorn-h11", "aiohttp")
LOOPS = ("cqloop", "asyncio", "uvloop", "rloop")
GENERATORS = ("loadgen", "wrk")
PEERS = ("uvloop", "rloop")
START_TIMEOUT_S = 30.0
GENERATOR_BUSY = 0.9
LATENCY_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


@dataclasses.dataclass
class Sample:
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us: float | None  # server CPU per request
    generator_busy: float  # the generator's CPU time over the wall time
    errors: int


@dataclasses.dataclass
class Server:
    app: str
    loop: str
    port: int = 0
    process: subprocess.Popen[str] | None = None
    unavailable: str | None = None
    failed: str | None = None
    samples: list[Sample] = dataclasses.field(default_factory=list)
    stderr: Any = None  # a temporary file: what the server wrote there


# -- processes ----------------------------------------------------------------------------


def start_server(app: str, loop: str, cpu: int | None) -> Server:
    server = Server(app, loop)
    listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
    server.port = listener.getsockname()[1]
    argv = [sys.executable, "-m", "cqloop._bench.http_server", "--loop", loop]
    argv += ["--app", "protocol" if app == "protocol-close" else app]
    argv += ["--fd", str(listener.fileno())]
    if cpu is not None:
        argv += ["--cpu", str(cpu)]
    server.stderr = tempfile.TemporaryFile("w+")  # noqa: SIM115  # closed by run()
    try:
        server.process = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=server.stderr,
            text=True,
            env=_server_environment(),
            pass_fds=(listener.fileno(),),
        )
    finally:
        listener.close()
    assert server.process.stdout is not None
    ready, _, _ = select.select([server.process.stdout], [], [], START_TIMEOUT_S)
    line = server.process.stdout.readline() if ready else ""
    report = json.loads(line) if line.startswith("{") else {"error": f"no report: {line!r}"}
    if "unavailable" in report:
        server.unavailable = report["unavailable"]
    elif "error" in report:
        server.failed = report["error"]
    if "serving" not in report:
        _stop_process(server.process)
        server.process = None
    return server


def run_loadgen(
    loadgen: str, server: Server, conns: int, duration: float, cpu: int | None
) -> tuple[Sample, int]:
    """One run of loadgen.c's HTTP mode against `server`; (the sample, the number of
    requests). The server's CPU time is taken around the whole run, connecting included
    (there is no warm-up inside it): a few connections' cost, against thousands of requests."""
    assert server.process is not None
    argv = [loadgen, "-a", f"tcp:127.0.0.1:{server.port}", "-c", str(conns), "-H", "/"]
    argv += ["-w", "0", "-d", f"{duration:g}"]
    if server.app == "protocol-close":
        argv.append("-C")
    if cpu is not None:
        argv += ["-p", str(cpu)]
    before = _cpu_ns(server.process.pid)
    # Bounded: a generator that hangs must not hang the benchmark.
    timeout = duration + START_TIMEOUT_S
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"loadgen did not finish in {timeout:g} s") from exc
    after = _cpu_ns(server.process.pid)
    report = parse_loadgen_report(proc.stdout, proc.stderr)
    requests = int(report["requests"])
    if requests == 0:
        raise RuntimeError("the server answered no request")
    cpu_us = None
    if before is not None and after is not None:
        cpu_us = (after - before) / 1e3 / requests
    sample = Sample(
        rps=requests / report["seconds"],
        p50_ms=report["p50_us"] / 1e3,
        p99_ms=report["p99_us"] / 1e3,
        cpu_us=cpu_us,
        generator_busy=report["cpu_seconds"] / report["seconds"],
        errors=int(report["non_2xx"]),
    )
    return sample, requests


def parse_loadgen_report(stdout: str, stderr: str = "") -> dict[str, Any]:
    """loadgen's one JSON line; its {"error": ...} (or no line at all) as RuntimeError."""
    line = stdout.strip().splitlines()[-1] if stdout.strip() else ""
    try:
        report = json.loads(line)
    except ValueError:
        raise RuntimeError(f"loadgen printed no report: {stdout!r} {stderr!r}") from None
    if "error" in report:
        raise RuntimeError(f"loadgen: {report['error']}")
    return dict(report)


def run_wrk(server: Server, conns: int, duration: float, cpu: int | None) -> tuple[Sample, int]:
    """One wrk run against `server`; (the sample, the number of requests)."""
    assert server.process is not None
    url = f"http://127.0.0.1:{server.port}/"
    argv = ["wrk", "-t1", f"-c{conns}", f"-d{max(1, round(duration))}s", "--latency", url]
    if server.app == "protocol-close":
        argv[1:1] = ["-H", "Connection: close"]
    before = _cpu_ns(server.process.pid)
    started = time.monotonic()
    wrk = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=(lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None,
    )
    assert wrk.stdout is not None
    output = wrk.stdout.read()
    _, status, usage = os.wait4(wrk.pid, 0)
    wrk.returncode = os.waitstatus_to_exitcode(status)
    wrk.stdout.close()
    wall = time.monotonic() - started
    after = _cpu_ns(server.process.pid)
    requests = int(_field(r"(\d+) requests in", output, "0"))
    if requests == 0:
        raise RuntimeError("the server answered no request")
    if wrk.returncode != 0:
        raise RuntimeError(f"wrk failed ({wrk.returncode}): {output}")
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", output))
    errors += int(_field(r"Non-2xx or 3xx responses: (\d+)", output, "0"))
    cpu_us = None
    if before is not None and after is not None and requests:
        cpu_us = (after - before) / 1e3 / requests
    sample = Sample(
        rps=float(_field(r"Requests/sec:\s+([\d.]+)", output)),
        p50_ms=_latency(output, "50%"),
        p99_ms=_latency(output, "99%"),
        cpu_us=cpu_us,
        generator_busy=(usage.ru_utime + usage.ru_stime) / wall,
        errors=errors,
    )
    return sample, requests


def _field(pattern: str, text: str, default: str | None = None) -> str:
    match = re.search(pattern, text)
    if match is None:
        if default is not None:
            return default
        raise RuntimeError(f"wrk's output has no {pattern!r}:\n{text}")
    return match.group(1)


def _latency(text: str, percentile: str) -> float:
    match = re.search(rf"^\s*{re.escape(percentile)}\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    if match is None:
        raise RuntimeError(f"wrk's output has no {percentile} latency:\n{text}")
    return float(match.group(1)) * LATENCY_UNITS_MS[match.group(2)]


# -- the run ------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> list[Server]:
    server_cpu, generator_cpu = _cores(args.pin)
    servers = [start_server(app, loop, server_cpu) for app in args.apps for loop in args.loops]
    try:
        serving = [s for s in servers if s.process is not None]
        for server in serving:
            _log(f"warming up {server.app} on {server.loop}")
            _measure(args, server, args.warmup, generator_cpu, keep=False)
        rng = random.Random(args.seed)
        for number in range(args.rounds):
            _log(f"round {number + 1} of {args.rounds}")
            apps = list(args.apps)
            rng.shuffle(apps)
            for app in apps:
                group = [s for s in serving if s.app == app and s.failed is None]
                rng.shuffle(group)
                for server in group:
                    _measure(args, server, args.duration, generator_cpu, keep=True)
    finally:
        for server in servers:
            if server.process is not None:
                _stop_process(server.process)
            server.stderr.close()
    return servers


def _measure(
    args: argparse.Namespace, server: Server, duration: float, cpu: int | None, keep: bool
) -> None:
    if server.failed is not None:
        return
    assert server.process is not None
    if server.process.poll() is not None:
        server.failed = f"exited with {server.process.returncode}"
        return
    try:
        if args.generator == "wrk":
            sample, _ = run_wrk(server, args.conns, duration, cpu)
        else:
            sample, _ = run_loadgen(args.loadgen, server, args.conns, duration, cpu)
    except RuntimeError as exc:
        server.failed = str(exc).splitlines()[0]
        _log(f"{server.app} on {server.loop} failed: {exc}\n{_stderr_tail(server)}")
        return
    if keep:
        server.samples.append(sample)


def _stderr_tail(server: Server) -> str:
    server.stderr.seek(0)
    return "".join(server.stderr.readlines()[-10:])


def _cores(pin: str) -> tuple[int | None, int | None]:
    cpus = sorted(os.sched_getaffinity(0))
    if pin == "none" or (len(cpus) < 2 and pin == "split"):
        return None, None
    if pin == "same":
        return cpus[0], cpus[0]
    return cpus[0], cpus[1]


def _log(message: str) -> None:
    print(f"# {message}", file=sys.stderr, flush=True)


# -- the table -----------------------------------------------------------------------------


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summary(server: Server) -> dict[str, Any]:
    samples = server.samples
    cpu = [s.cpu_us for s in samples if s.cpu_us is not None]
    return {
        "rps": _median([s.rps for s in samples]),
        "p50_ms": _median([s.p50_ms for s in samples]),
        "p99_ms": _median([s.p99_ms for s in samples]),
        "cpu_us": _median(cpu),
        "generator_busy": _median([s.generator_busy for s in samples]),
        "errors": sum(s.errors for s in samples),
    }


def ratios(group: dict[str, Server]) -> dict[str, float | None]:
    """cqloop against the best peer (the faster of uvloop and rloop): medians, paired
    per round, and CPU per request."""
    cq = group.get("cqloop")
    peers = [group[name] for name in PEERS if name in group and group[name].samples]
    if cq is None or not cq.samples or not peers:
        return {"cq/best": None, "paired": None, "cpu": None}
    best = max(peers, key=lambda s: summary(s)["rps"] or 0.0)
    rounds = min(len(cq.samples), *(len(p.samples) for p in peers))
    paired = [
        cq.samples[i].rps / max(p.samples[i].rps for p in peers)
        for i in range(rounds)
        if all(p.samples[i].rps for p in peers)
    ]
    cq_cpu, best_cpu = summary(cq)["cpu_us"], summary(best)["cpu_us"]
    return {
        "cq/best": (summary(cq)["rps"] or 0.0) / (summary(best)["rps"] or 1.0),
        "paired": _median(paired),
        "cpu": cq_cpu / best_cpu if cq_cpu and best_cpu else None,
    }


def print_table(
    servers: list[Server], apps: list[str], loops: list[str], generator: str = "loadgen"
) -> None:
    header = f"{'app':<18} {'loop':<8} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8}"
    print(f"{header} {'cpu us/req':>11} {'gen cpu':>8}")
    for app in apps:
        group = {s.loop: s for s in servers if s.app == app}
        for loop in loops:
            server = group[loop]
            if server.unavailable or server.failed or not server.samples:
                why = server.unavailable or server.failed or "no samples"
                print(f"{app:<18} {loop:<8} {'n/a':>10}  {why[:70]}")
                continue
            row = summary(server)
            mark = "*" if row["generator_busy"] >= GENERATOR_BUSY else " "
            cpu = f"{row['cpu_us']:.1f}" if row["cpu_us"] is not None else "?"
            errors = f"  errors {row['errors']}" if row["errors"] else ""
            busy = f"{row['generator_busy']:.0%}"
            print(
                f"{app:<18} {loop:<8} {row['rps']:>9.0f}{mark} {row['p50_ms']:>8.2f} "
                f"{row['p99_ms']:>8.2f} {cpu:>11} {busy:>8}{errors}"
            )
        r = ratios(group)
        text = "  ".join(f"{k} {v:.2f}" if v is not None else f"{k} n/a" for k, v in r.items())
        print(f"{'':<18} {'':<8} {text}")
    print(
        f"* {generator} was at least 90% busy: the generator may be the limit; compare CPU per"
        " request."
        "\ncq/best: cqloop's req/s over the faster of uvloop and rloop; paired: the median of "
        "the rounds' own ratios; cpu: cqloop's CPU per request over the best peer's."
    )


def write_json(path: str, servers: list[Server], args: argparse.Namespace) -> None:
    data = {
        "generator": args.generator,
        "conns": args.conns,
        "duration": args.duration,
        "rounds": args.rounds,
        "servers": [
            {
                "app": s.app,
                "loop": s.loop,
                "unavailable": s.unavailable,
                "failed": s.failed,
                "samples": [dataclasses.asdict(sample) for sample in s.samples],
                "summary": summary(s) if s.samples else None,
            }
            for s in servers
        ],
    }
    with open(path, "w") as fh:
        json.dump(data, fh, indent=1)


# -- command line --------------------------------------------------------------------------


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m cqloop bench http", description=__doc__.split("\n\n")[1]
    )
    parser.add_argument("--apps", default=",".join(APPS), help=f"comma-separated: {APPS}")
    parser.add_argument("--loops", default=",".join(LOOPS), help="comma-separated loops")
    parser.add_argument("--conns", type=int, default=50)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds per server, first")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pin", choices=("split", "same", "none"), default="split")
    parser.add_argument(
        "--generator",
        choices=GENERATORS,
        default="loadgen",
        help="loadgen (our C generator's HTTP mode, the default) or wrk",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    args.apps = [a for a in args.apps.split(",") if a]
    unknown = [a for a in args.apps if a not in APPS]
    if unknown:
        parser.error(f"unknown apps: {unknown} (known: {', '.join(APPS)})")
    if args.quick:
        args.apps = [a for a in args.apps if a in ("protocol", "aiohttp")]
        args.duration, args.warmup, args.rounds = 1.0, 1.0, 1
    args.loops = [name for name in args.loops.split(",") if name]
    return args


def main(argv: list[str]) -> int:
    args = _parse_args(argv)
    if args.generator == "wrk" and shutil.which("wrk") is None:
        print("bench http: wrk is not installed (apt-get install wrk); skipped")
        return 0
    if args.generator == "loadgen":
        try:
            args.loadgen = str(native.build().loadgen)
        except native.NativeUnavailable as exc:
            print(f"bench http: cannot build the load generator ({exc}); skipped")
            return 0
    found = {name: _find_loop(name) for name in args.loops}
    for info in found.values():
        if isinstance(info, str):
            print(f"bench http: {info}")
    args.loops = [name for name, info in found.items() if not isinstance(info, str)]
    previous = signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    try:
        servers = run(args)
    finally:
        signal.signal(signal.SIGPIPE, previous)
    print(
        f"HTTP: {args.conns} keep-alive connections ({args.generator}), {args.rounds} rounds of "
        f"{args.duration:g} s, pin {args.pin}"
    )
    print_table(servers, args.apps, args.loops, args.generator)
    if args.json:
        write_json(args.json, servers, args)
    failed = [s for s in servers if s.loop == "cqloop" and s.failed]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
