"""The TLS echo benchmark: cqloop's TLS servers against asyncio's and uvloop's.

    python -m cqloop bench tls [--quick] [--rounds N] [--loops L] [--json PATH]
                               [--duration S] [--warmup S] [--modes M] [--size B]
                               [--conns N] [--pin split|same|none]
    python -m cqloop._bench.tls_echo ...     the same, directly

What is measured: an echo server over TLS (create_server(ssl=...), TLS 1.3 with the
server's default cipher) runs on each loop in its own process; the echo benchmark's load
generator in C (echo/loadgen.c, built with its OpenSSL option and run with -t) opens
`--conns` TLS connections to it (handshakes before anything is counted) and plays
ping-pong on each with `--size`-byte messages. The figure is echoes
per second. Modes: `protocol` (asyncio.Protocol, data_received writes back; the default)
and `streams` (asyncio.start_server, read/write/drain). rloop is run when installed and
shown n/a while it has no TLS.

Method, as in the echo benchmark (benchmarks/echo/run.py, whose helpers this reuses): all
servers start first and each is warmed up with `--warmup` seconds of load; then rounds,
each measuring every server once in a freshly shuffled order, and the median of the rounds
is reported with its spread, and beside it the median of the ratios of figures taken in
the same round (on a shared machine, outside load moves a whole round together; those
ratios move less); servers are pinned to one CPU and the generator to another.
Under the table, how busy the servers and the generator were: a generator near 100% means
the figures are the generator's limit, not the servers'.

Certificates: a throwaway CA and a certificate for 127.0.0.1 from trustme when it is
installed, else CPython's test certificate. The exit status is 0, or 1 if cqloop failed.
Without a C compiler or OpenSSL's headers the benchmark is skipped with a message.

This file is also the server: run by path with `--serve` (see serve_main), so that the
server process imports nothing of the harness.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import random
import select
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, Any, cast

HOST = "127.0.0.1"
LOOPS = ("cqloop", "asyncio", "uvloop", "rloop")
MODES = ("protocol", "streams")
# The cq TLS benchmark's modes (cqtls.py), served by this file's --serve too: CRLF-terminated
# lines through asyncio streams' readline() and through cq sockets' read("*l"), and bulk
# echo through cq sockets' read(-n) (the bulk figure's asyncio side is "streams").
CQ_TLS_MODES = ("readline", "cqlines", "cqbulk")
SERVE_MODES = MODES + CQ_TLS_MODES
# A cq socket's line limit in these servers: longer than any line the benchmark sends (a
# line past maxline comes back cut, as cqueues specifies).
CQ_MAXLINE_BYTES = 64 * 1024 * 1024
DEFAULT_MODES = ("protocol",)
DEFAULT_SIZE = 1024  # bytes per message
DEFAULT_CONNS = 10
DEFAULT_ROUNDS = 9
DEFAULT_DURATION_S = 0.5
DEFAULT_WARMUP_S = 2.0
QUICK_ROUNDS = 2
QUICK_DURATION_S = 0.3
QUICK_WARMUP_S = 0.5
GENERATOR_WARMUP_S = 0.2
SERVER_START_TIMEOUT_S = 30.0
MEASUREMENT_GRACE_S = 15.0
STALL_RETRIES = 2
READ_BYTES = 64 * 1024
LISTEN_BACKLOG = 1024
STDIN_FD = 0
GENERATOR_BUSY_FRACTION = 0.9
PERCENT = 100


# --------------------------------------------------------------------------------------------
# The server (runs in its own process)
# --------------------------------------------------------------------------------------------


async def _echo_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _echo_with(writer, reader.read, READ_BYTES)


async def _echo_lines(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _echo_with(writer, reader.readline)


async def _echo_with(
    writer: asyncio.StreamWriter, read: Callable[..., Awaitable[bytes]], *args: int
) -> None:
    """Echo what each read(*args) brings until it brings nothing."""
    try:
        while data := await read(*args):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


async def _echo_cq_lines(con: Any) -> None:
    # Binary mode, line-buffered output: the write of the line and its LF goes out whole
    # at the LF, one TLS record per line, as an echo must.
    try:
        while (line := await con.read("*l")) is not None:
            await con.write(line, b"\n")
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        con.close()


async def _echo_cq_bulk(con: Any) -> None:
    # Unbuffered output: what a read brought goes back at once.
    con.setmode(None, "bn")
    try:
        while (data := await con.read(-READ_BYTES)) is not None:
            await con.write(data)
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        con.close()


async def _serve_cq(mode: str, context: ssl.SSLContext) -> Any:
    from cqloop import socket as cqsocket

    listener = cqsocket.listen(
        HOST, 0, backlog=LISTEN_BACKLOG, nodelay=True, context=context, mode="b"
    )
    listener.setmaxline(CQ_MAXLINE_BYTES, CQ_MAXLINE_BYTES)
    handler = _echo_cq_lines if mode == "cqlines" else _echo_cq_bulk
    tasks: set[asyncio.Future[Any]] = set()

    async def accept_forever() -> None:
        async for con in listener.clients():
            task = asyncio.ensure_future(handler(con))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    tasks.add(asyncio.ensure_future(accept_forever()))
    return listener, tasks


async def _serve(mode: str, context: ssl.SSLContext) -> None:
    from cqloop._bench.echo.server import EchoProtocol

    loop = asyncio.get_running_loop()
    server: Any
    if mode in ("cqlines", "cqbulk"):
        listener, _tasks = await _serve_cq(mode, context)  # this frame keeps them referenced
        print(json.dumps({"address": f"{HOST}:{listener.localname()[2]}"}), flush=True)
        await loop.create_future()  # until the process ends
    if mode == "readline":
        server = await asyncio.start_server(
            _echo_lines, HOST, 0, ssl=context, backlog=LISTEN_BACKLOG
        )
    elif mode == "protocol":
        server = await loop.create_server(
            EchoProtocol, HOST, 0, ssl=context, backlog=LISTEN_BACKLOG
        )
    else:
        server = await asyncio.start_server(
            _echo_stream, HOST, 0, ssl=context, backlog=LISTEN_BACKLOG
        )
    port = server.sockets[0].getsockname()[1]
    print(json.dumps({"address": f"{HOST}:{port}"}), flush=True)
    await loop.create_future()  # until the process ends


def _new_loop(name: str) -> asyncio.AbstractEventLoop:
    if name == "cqloop":
        import cqloop

        return cqloop.new_event_loop()
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    if name == "rloop":
        import rloop

        return cast(asyncio.AbstractEventLoop, rloop.new_event_loop())
    return asyncio.new_event_loop()


def _exit_at_end_of_stdin() -> None:
    # The harness closes our stdin to stop us (and it closes when the harness dies).
    def wait() -> None:
        while os.read(STDIN_FD, READ_BYTES):
            pass
        os._exit(0)

    threading.Thread(target=wait, name="stdin-watch", daemon=True).start()


def serve_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="TLS echo server for the TLS benchmark.")
    parser.add_argument("--loop", choices=LOOPS, required=True)
    parser.add_argument("--mode", choices=SERVE_MODES, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--cpu", type=int, default=None)
    args = parser.parse_args(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    _exit_at_end_of_stdin()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.cert, args.key)
    try:
        loop = _new_loop(args.loop)
        asyncio.set_event_loop(loop)
        loop.run_until_complete(_serve(args.mode, context))
    except (ImportError, NotImplementedError) as exc:
        print(json.dumps({"unavailable": f"{type(exc).__name__}: {exc}"}), flush=True)
        return 1
    except Exception as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return 1
    return 0


# --------------------------------------------------------------------------------------------
# The harness
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Server:
    """One server process: a loop serving one mode."""

    loop: str
    mode: str
    process: subprocess.Popen[str]
    stderr: IO[str]
    address: str | None = None

    @property
    def label(self) -> str:
        return f"{self.loop} {self.mode}"


@dataclasses.dataclass
class Result:
    rates: list[float] = dataclasses.field(default_factory=list)
    # round number -> rate, for the ratios of rates measured in the same round
    by_round: dict[int, float] = dataclasses.field(default_factory=dict)
    generator_cpu: list[float] = dataclasses.field(default_factory=list)
    server_cpu: list[float] = dataclasses.field(default_factory=list)
    error: str | None = None
    unavailable: bool = False


def loadgen_or_skip(what: str) -> Path | None:
    """The load generator with its TLS option (echo/loadgen.c built with -t), or None
    after saying why `what` is skipped."""
    from cqloop._bench.echo import native

    try:
        return native.build_tls_loadgen()
    except native.NativeUnavailable as exc:
        print(f"skipped: {what} needs a C compiler and OpenSSL's headers: {exc}")
        return None


def make_certificate(directory: str) -> tuple[str, str]:
    """(certificate file, key file) for the servers."""
    cert = os.path.join(directory, "cert.pem")
    key = os.path.join(directory, "key.pem")
    try:
        import trustme
    except ImportError:
        from test.test_asyncio import utils as cpython_test_utils

        return cpython_test_utils.ONLYCERT, cpython_test_utils.ONLYKEY
    issued = trustme.CA().issue_cert(HOST)
    issued.cert_chain_pems[0].write_to_path(cert)
    issued.private_key_pem.write_to_path(key)
    return cert, key


def start_servers(
    pairs: list[tuple[str, str]], cert: tuple[str, str], core: int | None
) -> tuple[list[Server], dict[tuple[str, str], Result]]:
    """A server per (loop, mode) pair, each started, then each asked for its address."""
    from cqloop._bench.echo import run as echo_run

    environment = echo_run._server_environment()
    launched = []
    for name, mode in pairs:
        argv = [sys.executable, __file__, "--serve", "--loop", name, "--mode", mode]
        argv += ["--cert", cert[0], "--key", cert[1]]
        if core is not None:
            argv += ["--cpu", str(core)]
        stderr = tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace")  # noqa: SIM115
        process = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            start_new_session=True,
            env=environment,
        )
        launched.append(Server(name, mode, process, stderr))
    results = {(s.loop, s.mode): Result() for s in launched}
    serving = []
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    for server in launched:
        report = _read_report(server, deadline)
        if "address" in report:
            server.address = str(report["address"])
            serving.append(server)
            continue
        result = results[(server.loop, server.mode)]
        result.unavailable = "unavailable" in report
        result.error = str(report.get("unavailable") or report.get("error"))
        _log(f"  {server.label}: {'n/a' if result.unavailable else 'failed'}: {result.error}")
        stop_server(server)
    return serving, results


def _read_report(server: Server, deadline: float) -> dict[str, Any]:
    stdout = server.process.stdout
    assert stdout is not None
    ready, _, _ = select.select([stdout], [], [], max(0.0, deadline - time.monotonic()))
    line = stdout.readline() if ready else ""
    try:
        report = json.loads(line) if line else None
    except ValueError:
        report = None
    if not isinstance(report, dict):
        server.stderr.seek(0)
        tail = server.stderr.read().strip()[-600:]
        return {"error": f"the server did not report an address: {line.strip()!r} {tail}"}
    return report


def stop_server(server: Server) -> None:
    from cqloop._bench.echo import run as echo_run

    echo_run._stop_process(server.process)
    server.stderr.close()


class MeasurementError(Exception):
    def __init__(self, message: str, retry: bool = False) -> None:
        super().__init__(message)
        self.retry = retry


def measure(
    loadgen: Path, server: Server, args: argparse.Namespace, duration_s: float
) -> tuple[float, float, float | None]:
    """(echoes per second, generator CPU share, server CPU share)."""
    from cqloop._bench.echo import run as echo_run

    assert server.address is not None
    argv = [str(loadgen), "-t", "-a", f"tcp:{server.address}", "-c", str(args.conns)]
    argv += ["-s", str(args.size)]
    argv += ["-w", str(GENERATOR_WARMUP_S), "-d", str(duration_s)]
    if getattr(args, "lines", False):
        argv.append("-l")
    if args.generator_core is not None:
        argv += ["-p", str(args.generator_core)]
    timeout = GENERATOR_WARMUP_S + duration_s + MEASUREMENT_GRACE_S
    cpu_before, started = echo_run._cpu_ns(server.process.pid), time.monotonic()
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise MeasurementError(f"the load generator gave no result in {timeout:g}s") from None
    cpu_after, wall_ns = echo_run._cpu_ns(server.process.pid), (time.monotonic() - started) * 1e9
    lines = done.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1]) if lines else {}
    except ValueError:
        result = {}
    if "error" in result:
        error = str(result["error"])
        raise MeasurementError(f"load generator: {error}", error.startswith("stall:"))
    if done.returncode != 0 or not result.get("messages"):
        said = (done.stdout + done.stderr).strip()[-600:]
        raise MeasurementError(f"the load generator exited with {done.returncode}: {said}")
    seconds = float(result["seconds"])
    server_cpu = None
    if cpu_before is not None and cpu_after is not None:
        server_cpu = (cpu_after - cpu_before) / wall_ns
    return result["messages"] / seconds, float(result["cpu_seconds"]) / seconds, server_cpu


def measure_server(
    loadgen: Path, server: Server, result: Result, args: argparse.Namespace, duration_s: float
) -> tuple[float, float, float | None] | None:
    for attempt in range(STALL_RETRIES + 1):
        if server.address is None:
            return None
        try:
            return measure(loadgen, server, args, duration_s)
        except MeasurementError as exc:
            if exc.retry and attempt < STALL_RETRIES:
                _log(f"  ~ {server.label}: {exc}; measuring again")
                continue
            code = server.process.poll()
            reason = f"the server exited with status {code}" if code is not None else str(exc)
            _log(f"  ! {server.label} failed: {reason}")
            result.error = reason
            server.address = None
    return None


def run_rounds(
    loadgen: Path,
    serving: list[Server],
    results: dict[tuple[str, str], Result],
    args: argparse.Namespace,
    loads: dict[str, argparse.Namespace] | None = None,
) -> None:
    """The warm-up, then the rounds. What the generator plays (size, conns, lines)
    comes from args, or from loads[mode] for a server of a mode listed there."""

    def load(server: Server) -> argparse.Namespace:
        return loads.get(server.mode, args) if loads else args

    _log(f"  warming up {len(serving)} servers ...")
    for server in serving if args.warmup > 0 else ():
        result = results[(server.loop, server.mode)]
        measure_server(loadgen, server, result, load(server), args.warmup)
    for round_no in range(args.rounds):
        _log(f"  round {round_no + 1}/{args.rounds} ...")
        order = list(serving)
        random.Random(round_no).shuffle(order)
        for server in order:
            result = results[(server.loop, server.mode)]
            got = measure_server(loadgen, server, result, load(server), args.duration)
            if got is None:
                continue
            rate, generator_cpu, server_cpu = got
            result.rates.append(rate)
            result.by_round[round_no] = rate
            result.generator_cpu.append(generator_cpu)
            if server_cpu is not None:
                result.server_cpu.append(server_cpu)


def print_results(
    loops: list[Any], results: dict[tuple[str, str], Result], args: argparse.Namespace
) -> None:
    from cqloop._bench import micro

    # A loop that cannot serve TLS at all (rloop today) gets a note, not a column.
    loops = [
        info
        for info in loops
        if not all(results[(info.name, mode)].unavailable for mode in args.mode_list)
    ]
    cells: dict[str, dict[str, micro.Cell]] = {}
    for mode in args.mode_list:
        row_name = f"tls {mode} {args.size}B x{args.conns}"
        row = cells[row_name] = {}
        for info in loops:
            result = results[(info.name, mode)]
            cell = micro.Cell(rates=list(result.rates), error=result.error)
            if result.unavailable:
                cell.error = "n/a"
            row[info.name] = cell
    micro.print_table(loops, cells)
    # Outside load on a shared machine moves every figure of a round together; the ratio
    # of two loops measured in the same round moves much less.
    for mode in args.mode_list:
        ours = results.get((micro.REFERENCE_LOOP, mode))
        if ours is None or not ours.by_round:
            continue
        paired = []
        for info in loops:
            if info.name == micro.REFERENCE_LOOP:
                continue
            theirs = results[(info.name, mode)].by_round
            ratios = [ours.by_round[n] / theirs[n] for n in ours.by_round if theirs.get(n)]
            if ratios:
                paired.append(f"cq/{info.name} {statistics.median(ratios):.2f}")
        if paired:
            print(f"  {mode}: median of same-round ratios: {', '.join(paired)}")
    for (name, mode), result in results.items():
        if result.unavailable:
            print(f"  {name} {mode}: n/a ({result.error})")
        elif result.error:
            print(f"  {name} {mode}: failed ({result.error})")
    busy = [
        f"{name} {_median_or_none(r.server_cpu)}" for (name, _), r in results.items() if r.rates
    ]
    generator = max(
        (statistics.median(r.generator_cpu) for r in results.values() if r.generator_cpu),
        default=0.0,
    )
    print(f"  server CPU (share of one CPU, median): {', '.join(busy)}")
    print(f"  load generator CPU, busiest median: {generator * PERCENT:.0f}%", end="")
    print(
        " (near 100%: the generator may be the limit)"
        if generator >= GENERATOR_BUSY_FRACTION
        else ""
    )


def _median_or_none(values: list[float]) -> str:
    return f"{statistics.median(values) * PERCENT:.0f}%" if values else "?"


def write_json(
    path: str, loops: list[Any], results: dict[tuple[str, str], Result], args: argparse.Namespace
) -> None:
    out = {
        "benchmark": "tls_echo",
        "size": args.size,
        "conns": args.conns,
        "rounds": args.rounds,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "loops": {info.name: info.version for info in loops},
        "results": [result_record(name, mode, r) for (name, mode), r in results.items()],
    }
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(out, fh, indent=2)


def print_setup(args: argparse.Namespace) -> int | None:
    """Print OpenSSL's version, the pinning and the method; set args.generator_core and
    return the servers' CPU (None: not pinned)."""
    from cqloop._bench.echo import run as echo_run

    print(f"  OpenSSL {ssl.OPENSSL_VERSION}")
    server_core, args.generator_core, pinning = echo_run._cores(args.pin)
    print(f"  {pinning}")
    print(
        f"{args.warmup:g}s warm-up per server, then {args.rounds} interleaved rounds of "
        f"{args.duration:g}s per server, median reported{' (quick)' if args.quick else ''}"
    )
    print()
    return server_core


def run_servers(
    pairs: list[tuple[str, str]],
    server_core: int | None,
    measure: Callable[[list[Server], dict[tuple[str, str], Result]], None],
) -> dict[tuple[str, str], Result]:
    """Start a server per (loop, mode) pair with a throwaway certificate, let `measure`
    fill in their results, stop them all however it ends."""
    with tempfile.TemporaryDirectory(prefix="cqloop-tls-bench-") as directory:
        serving, results = start_servers(pairs, make_certificate(directory), server_core)
        try:
            measure(serving, results)
        finally:
            for server in serving:
                stop_server(server)
    return results


def result_record(name: str, mode: str, r: Result) -> dict[str, Any]:
    """One server's figures, as the JSON output gives them."""
    return {
        "loop": name,
        "mode": mode,
        "rates": r.rates,
        "by_round": r.by_round,
        "median": statistics.median(r.rates) if r.rates and not r.error else None,
        "generator_cpu": r.generator_cpu,
        "server_cpu": r.server_cpu,
        "error": r.error,
        "unavailable": r.unavailable,
    }


def add_timing_args(parser: argparse.ArgumentParser, default_rounds: int) -> None:
    """The options every TLS suite takes: --quick, --rounds, --duration, --warmup, --pin
    and --json (apply_timing_defaults fills in what was not given)."""
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--rounds", type=int, help=f"measured rounds (default {default_rounds})")
    parser.add_argument("--duration", type=float, help="seconds counted per measurement")
    parser.add_argument("--warmup", type=float, help="seconds of load per server before measuring")
    parser.add_argument("--pin", choices=("split", "same", "none"), default="split")
    parser.add_argument("--json", metavar="PATH", default=None, help="write results here")


def apply_timing_defaults(
    args: argparse.Namespace, rounds: int, duration: float, warmup: float
) -> None:
    """The defaults of add_timing_args' options, and the quick run's."""
    if args.rounds is None:
        args.rounds = QUICK_ROUNDS if args.quick else rounds
    if args.duration is None:
        args.duration = QUICK_DURATION_S if args.quick else duration
    if args.warmup is None:
        args.warmup = QUICK_WARMUP_S if args.quick else warmup


def _log(message: str) -> None:
    sys.stdout.flush()
    print(message, file=sys.stderr, flush=True)


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m cqloop bench tls",
        description="TLS echo benchmark: cqloop against asyncio, uvloop (and rloop).",
    )
    add_timing_args(parser, DEFAULT_ROUNDS)
    parser.add_argument("--loops", default=",".join(LOOPS), help="comma-separated loops")
    parser.add_argument("--modes", default=",".join(DEFAULT_MODES), help="protocol,streams")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help="bytes per message")
    parser.add_argument("--conns", type=int, default=DEFAULT_CONNS, help="connections")
    args = parser.parse_args(argv)
    apply_timing_defaults(args, DEFAULT_ROUNDS, DEFAULT_DURATION_S, DEFAULT_WARMUP_S)
    if args.rounds < 1 or args.duration <= 0 or args.warmup < 0 or args.size < 1 or args.conns < 1:
        parser.error("--rounds, --duration, --size and --conns must be positive")
    args.mode_list = [m for m in args.modes.split(",") if m]
    args.loop_names = [name for name in args.loops.split(",") if name]
    for word in (*args.mode_list, *args.loop_names):
        if word not in (*MODES, *LOOPS):
            parser.error(f"unknown mode or loop {word!r}")
    return args


def main(argv: list[str]) -> int:
    """`python -m cqloop bench tls`: see the module docstring."""
    from cqloop._bench import micro
    from cqloop._bench.echo import run as echo_run

    args = _parse_args(argv)
    print("TLS echo benchmark")
    loadgen = loadgen_or_skip("the TLS benchmark")
    if loadgen is None:
        return micro.EXIT_OK
    loops = micro.installed_loops(args.loop_names)
    server_core = print_setup(args)
    pairs = [(info.name, mode) for mode in args.mode_list for info in loops]
    try:
        results = run_servers(
            pairs, server_core, lambda serving, got: run_rounds(loadgen, serving, got, args)
        )
    except KeyboardInterrupt:
        print("interrupted")
        return echo_run.EXIT_INTERRUPTED
    print()
    print_results(loops, results, args)
    if args.json:
        write_json(args.json, loops, results, args)
        print(f"results written to {args.json}")
    failed = any(
        r.error is not None and not r.unavailable
        for (name, _), r in results.items()
        if name == micro.REFERENCE_LOOP
    )
    return micro.EXIT_FAILED if failed else micro.EXIT_OK


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        sys.exit(serve_main(sys.argv[2:]))
    sys.exit(main(sys.argv[1:]))
