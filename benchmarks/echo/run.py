"""The echo benchmark: cqloop's servers against asyncio's, uvloop's, rloop's and a C ceiling.

Run it as `python -m cqloop bench echo [options]` or `python -m cqloop._bench.echo
[options]`; `--help` lists the options, `--quick` is a CI smoke run (one mode, TCP, 1 KiB).

What is measured
----------------
An echo server (server.py) runs on each loop in each of four modes (protocol, buffered,
streams, sock; see server.py) on TCP over loopback and on a Unix socket. A load generator
in C (loadgen.c) opens `--conns` connections to it and plays ping-pong on each: send a
message of `--sizes` bytes, wait for the whole echo, check it, send the next (messages up
to 16 KiB are compared whole; of larger ones, the ends of each and one in eight whole, the
rest of the bytes received without being copied out over TCP: see loadgen.c). The figure is
echoes completed per second. A minimal epoll echo server in C (ceiling.c) serves the same
load once per transport and size: its column is the ceiling, roughly what the machine and
the generator allow at all, and `cq/ceiling` says how much of it cqloop reaches.
`--ceiling io_uring` makes the ceiling the same server on io_uring (completions, not
readiness), and `--engine epoll|io_uring` runs cqloop's servers on that readiness engine.

Two more modes echo lines instead of raw bytes (`--modes readline,cqsocket`; the generator
then sends CRLF-terminated text lines): asyncio streams' readline() on each loop, and
cqloop's cq sockets (`read("*l")`) on each loop. The figure to watch is cqsocket on cqloop
against readline on the best other loop.

Method
------
The machine this runs on is assumed to be shared and noisy, so:

* every server of one transport is started first, each in its own process, then each is
  warmed up by `--warmup` seconds of load before anything is measured: a fresh asyncio
  server runs several times slower in its first seconds than later;
* the measurements are interleaved: each round measures every server once per size, in a
  freshly shuffled order in which the loops of one mode stay next to each other (so that a
  burst of outside load lands on all of them), and the figure is the median of the rounds;
* each measurement starts a fresh generator with fresh connections, which warms up for
  GENERATOR_WARMUP_S before it counts for `--duration` seconds;
* the servers are pinned to one CPU and the generator to another (`--pin`), so that the
  generator does not take CPU time from the server; how busy each side was is measured and
  printed under the table, which says whether the figures are the servers' own.

A loop that cannot serve a mode or transport (a feature cqloop does not have yet, rloop on
Unix sockets) is shown as n/a with the reason; a server that fails while measured (crashes,
echoes wrong bytes, or leaves a connection without an echo for a whole measurement three
times running) is shown as failed. Either way the others go on.

Reading the output
------------------
As in micro.py: the loop columns give the median echoes per second and, after the `±`, the
median absolute deviation of the rounds as a percentage of the median. The ratio columns
divide cqloop's median by the other column's; `best` is the faster of uvloop and rloop, and
`paired` the median of the rounds' own ratios to the faster of the two in that round. A
`*` marks a figure taken while the generator was at least 90% busy: it may be the
generator's limit rather than the server's. Under the table, how busy the servers and the
generator were; when neither was busy, the figures are bound by the latency of waking a
process on the other CPU (long on some virtual machines), and `--pin same` may tell the
loops apart better. With `--json PATH` every round's figures are written out as well.

The exit status is 0, or 1 if cqloop failed (n/a is not a failure). Without a C compiler
the benchmark is skipped with a message, and status 0.

This module owns the processes (it starts and stops every server and generator) and the
command line. server.py is the Python server, native.py builds the C programs, results.py
holds the plan and the results and prints them. benchmarks/__init__.py calls main().
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from .. import micro
from . import native, results, server
from .results import CEILING, KIB, EchoCell, Load, Plan, Table, format_load

# --------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------

DEFAULT_ROUNDS = 5
DEFAULT_DURATION_S = 0.5
DEFAULT_WARMUP_S = 2.0
DEFAULT_SIZES = (1 * KIB, 10 * KIB, 100 * KIB)
DEFAULT_CONNS = (10,)
QUICK_ROUNDS = 2
QUICK_DURATION_S = 0.3
QUICK_WARMUP_S = 0.5
QUICK_MODES = ("protocol",)
QUICK_TRANSPORTS = ("tcp",)
QUICK_SIZES = (1 * KIB,)

GENERATOR_WARMUP_S = 0.1
SERVER_START_TIMEOUT_S = 30.0
MEASUREMENT_GRACE_S = 10.0  # beyond warm-up + duration, before a generator is given up
STOP_TIMEOUT_S = 2.0  # per step of stopping a server: end of stdin, SIGTERM, SIGKILL
STDERR_TAIL_CHARS = 600
# A connection that got no echo back in a whole measurement is how a lost wake-up shows, but
# also how a virtual machine that the host stopped for a second shows: such a measurement
# is taken again, up to this many times, before the server is called failed.
STALL_RETRIES = 2
STALL_ERROR_PREFIX = "stall:"  # loadgen.c's error for it
EXIT_INTERRUPTED = 130  # as a shell reports a process ended by SIGINT

MODES = server.MODES
TRANSPORTS = ("tcp", "unix")
PIN_SPLIT, PIN_SAME, PIN_NONE = PINNINGS = ("split", "same", "none")
TCP_HOST = "127.0.0.1"
SOCKET_PATH_MAX = 100  # sun_path holds 108 bytes; keep clear of it
NS_PER_S = 1e9


class MeasurementError(Exception):
    """A server or the generator failed during a measurement."""

    def __init__(self, message: str, retry: bool = False) -> None:
        super().__init__(message)
        self.retry = retry  # worth measuring again before calling the server failed


# The engines --engine and --ceiling choose from (cqloop's `auto` is epoll).
ENGINES = ("epoll", "io_uring")

# --------------------------------------------------------------------------------------------
# Server processes
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Server:
    """One server process: a loop (or the C ceiling) serving one mode on one transport."""

    name: str  # a loop's name, or CEILING
    mode: str | None  # None for the ceiling, which has one way of serving
    transport: str
    process: subprocess.Popen[str]
    stderr: IO[str]
    cells: dict[Load, EchoCell]  # where its figures go
    address: str | None = None  # set once it listens, cleared when it fails

    @property
    def label(self) -> str:
        return " ".join(part for part in (self.name, self.mode, self.transport) if part)

    def problem(self) -> str | None:
        """Why the process is no longer serving, or None."""
        code = self.process.poll()
        if code is None:
            return None
        return f"the server exited with status {code}{_tail(self.stderr)}"

    def fail(self, reason: str, unavailable: bool = False) -> None:
        """Mark its cells n/a (`unavailable`) or failed; it is measured no more."""
        self.address = None
        for cell in self.cells.values():
            if cell.error is None:
                cell.error, cell.unavailable = reason, unavailable


class Processes:
    """Every server the harness starts, and the directory of their Unix sockets: leaving the
    `with` block, on success, error or Ctrl-C alike, stops them all and removes it.

    Servers run in a session of their own, so that a Ctrl-C at the terminal reaches only the
    harness, which then stops them in order. A server also exits when its stdin (a pipe from
    the harness) closes, so even a harness killed outright leaves none behind. (Generators
    are run to completion by measure(); they die with the harness: PR_SET_PDEATHSIG.)
    """

    def __init__(self) -> None:
        self._running: list[Server] = []
        self._environment = _server_environment()
        self.socket_dir = _make_socket_dir()

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop_all()
        shutil.rmtree(self.socket_dir, ignore_errors=True)

    def start(self, name: str, mode: str | None, transport: str, argv: list[str]) -> Server:
        # Not a `with`: stop() closes it, and stop_all() reaches every server.
        stderr = tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace")  # noqa: SIM115
        process = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,  # a file, not a pipe: a chatty server must never block on it
            text=True,
            start_new_session=True,
            env=self._environment,
        )
        started = Server(name, mode, transport, process, stderr, cells={})
        self._running.append(started)
        return started

    def stop(self, target: Server) -> None:
        if target in self._running:
            self._running.remove(target)
        _stop_process(target.process)
        target.stderr.close()

    def stop_all(self) -> None:
        for target in self._running:
            _close_stdin(target.process)  # all at once: they exit in parallel
        while self._running:
            self.stop(self._running[-1])


def _make_socket_dir() -> str:
    directory = tempfile.mkdtemp(prefix="cqloop-echo-")
    if len(os.path.join(directory, "asyncio-protocol.sock")) > SOCKET_PATH_MAX:
        os.rmdir(directory)  # $TMPDIR is too deep for a socket path
        directory = tempfile.mkdtemp(prefix="cqloop-echo-", dir="/tmp")
    return directory


def _server_environment() -> dict[str, str]:
    """server.py runs by path, so that the harness's modules are not its concern; it must
    still import the same cqloop as the harness."""
    import cqloop

    root = str(Path(cqloop.__file__).resolve().parent.parent)
    environment = dict(os.environ)
    paths = (root, environment.get("PYTHONPATH"))
    environment["PYTHONPATH"] = os.pathsep.join(path for path in paths if path)
    return environment


def _close_stdin(process: subprocess.Popen[str]) -> None:
    if process.stdin is not None and not process.stdin.closed:
        try:
            process.stdin.close()  # the polite way to stop: both kinds of server exit on it
        except OSError:
            pass


def _stop_process(process: subprocess.Popen[str]) -> None:
    _close_stdin(process)
    for escalate in (None, process.terminate, process.kill):
        if escalate is not None:
            escalate()
        try:
            process.wait(STOP_TIMEOUT_S)
            break
        except subprocess.TimeoutExpired:
            continue
    if process.stdout is not None:
        process.stdout.close()


def _tail(stderr: IO[str]) -> str:
    try:
        stderr.seek(0)
        text = stderr.read().strip()
    except (OSError, ValueError):
        return ""
    return f": ...{text[-STDERR_TAIL_CHARS:]}" if text else ""


def start_servers(
    processes: Processes, plan: Plan, table: Table, programs: native.Programs, transport: str
) -> list[Server]:
    """Start every server of one transport at once (their start-ups overlap), then wait for
    each one's report. Those that do not serve are marked n/a or failed, and stopped; the
    others are returned."""
    launched = []
    for mode in plan.modes:
        for info in plan.loops:
            argv = [sys.executable, server.__file__, "--loop", info.name, "--mode", mode]
            if transport == "tcp":
                argv += ["--tcp", f"{TCP_HOST}:0"]
            else:
                argv += ["--unix", os.path.join(processes.socket_dir, f"{info.name}-{mode}.sock")]
            if plan.server_core is not None:
                argv += ["--cpu", str(plan.server_core)]
            launched.append(processes.start(info.name, mode, transport, argv))
    if plan.ceiling:
        if transport == "tcp":
            address = f"tcp:{TCP_HOST}:0"
        else:
            address = "unix:" + os.path.join(processes.socket_dir, "ceiling.sock")
        argv = [str(programs.ceiling), "-a", address]
        if plan.server_core is not None:
            argv += ["-p", str(plan.server_core)]
        launched.append(processes.start(CEILING, None, transport, argv))

    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    serving = []
    for started in launched:
        started.cells = plan.cells_of(table, started.name, started.mode, transport)
        report = _read_report(started, deadline)
        if "address" in report:
            started.address = str(report["address"])
            serving.append(started)
            continue
        unavailable = "unavailable" in report
        reason = str(report.get("unavailable") or report.get("error"))
        _log(f"  {started.label}: {'n/a' if unavailable else 'failed'}: {reason}")
        started.fail(reason, unavailable)
        processes.stop(started)
    return serving


def _read_report(started: Server, deadline: float) -> dict[str, Any]:
    """The one line of JSON a server prints once it listens (or fails to)."""
    stdout = started.process.stdout
    assert stdout is not None  # Popen(stdout=PIPE)
    ready, _, _ = select.select([stdout], [], [], max(0.0, deadline - time.monotonic()))
    line = stdout.readline() if ready else ""
    if not line:
        why = "exited before listening" if ready else "did not report an address in time"
        return {"error": f"the server {why}{_tail(started.stderr)}"}
    try:
        report = json.loads(line)
    except ValueError:
        report = None
    if not isinstance(report, dict):
        return {"error": f"the server said {line.strip()!r}"}
    return report


# --------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Measurement:
    rate: float  # echoes per second
    generator_cpu: float  # the generator's CPU time over the counted time
    server_cpu: float | None = None  # the server's over the generator's whole run


def measure(
    programs: native.Programs,
    address: str,
    load: Load,
    duration_s: float,
    cpu: int | None,
    line_echo: bool = False,
) -> Measurement:
    """Run one generator against `address` (sending CRLF lines for a line echo); its
    figures, or MeasurementError."""
    size, conns = load
    argv = [str(programs.loadgen), "-a", address, "-c", str(conns), "-s", str(size)]
    if line_echo:
        argv.append("-l")
    argv += ["-w", str(GENERATOR_WARMUP_S), "-d", str(duration_s)]
    if cpu is not None:
        argv += ["-p", str(cpu)]
    timeout = GENERATOR_WARMUP_S + duration_s + MEASUREMENT_GRACE_S
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise MeasurementError(f"the load generator gave no result in {timeout:g}s") from None
    lines = done.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1]) if lines else {}
    except ValueError:
        result = {}
    if "error" in result:
        error = str(result["error"])
        raise MeasurementError(f"load generator: {error}", error.startswith(STALL_ERROR_PREFIX))
    if done.returncode != 0 or "messages" not in result:
        said = (done.stdout + done.stderr).strip()[-STDERR_TAIL_CHARS:]
        raise MeasurementError(f"the load generator exited with status {done.returncode}: {said}")
    if result["messages"] == 0:
        raise MeasurementError(f"no echo came back in {duration_s:g}s")
    seconds = float(result["seconds"])
    return Measurement(result["messages"] / seconds, float(result["cpu_seconds"]) / seconds)


def measure_server(
    plan: Plan, programs: native.Programs, target: Server, load: Load, duration_s: float
) -> Measurement | None:
    """One measurement of a serving server, with the server's CPU use. On failure the
    server is marked failed and None is returned."""
    for attempt in range(STALL_RETRIES + 1):
        if target.address is None:
            return None
        try:
            return _measure_server_once(plan, programs, target, load, duration_s)
        except MeasurementError as exc:
            if exc.retry and attempt < STALL_RETRIES:
                _log(f"  ~ {target.label} at {format_load(load)}: {exc}; measuring again")
                continue
            # A server that died explains more than the generator that lost it.
            reason = f"at {format_load(load)}: {target.problem() or exc}"
            _log(f"  ! {target.label} failed {reason}")
            target.fail(reason)
    return None


def _measure_server_once(
    plan: Plan, programs: native.Programs, target: Server, load: Load, duration_s: float
) -> Measurement:
    problem = target.problem()
    if problem is not None or target.address is None:
        raise MeasurementError(problem or "the server is not serving")
    pid = target.process.pid
    cpu_before, started = _cpu_ns(pid), time.monotonic()
    line_echo = target.mode in server.LINE_MODES
    got = measure(programs, target.address, load, duration_s, plan.generator_core, line_echo)
    cpu_after, wall_ns = _cpu_ns(pid), (time.monotonic() - started) * NS_PER_S
    if cpu_before is None or cpu_after is None:
        return got
    return dataclasses.replace(got, server_cpu=(cpu_after - cpu_before) / wall_ns)


def _cpu_ns(pid: int) -> int | None:
    """CPU time of a process's main thread (where its loop runs), in nanoseconds: the first
    field of /proc/PID/schedstat, or None if that cannot be read."""
    try:
        with open(f"/proc/{pid}/schedstat", encoding="ascii") as fh:
            return int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def run_all(plan: Plan, programs: native.Programs) -> Table:
    """Per transport: start its servers, warm each up, then the interleaved rounds."""
    table = plan.new_table()
    for transport in plan.transports:
        with Processes() as processes:
            _log(f"  {transport}: starting servers ...")
            serving = start_servers(processes, plan, table, programs, transport)
            _log(f"  {transport}: warming up {len(serving)} servers ...")
            for target in serving:
                for load in plan.loads:
                    measure_server(plan, programs, target, load, plan.warmup_s / len(plan.loads))
            for round_no in range(plan.rounds):
                _log(f"  {transport}: round {round_no + 1}/{plan.rounds} ...")
                order = _round_order(serving, random.Random(round_no))
                for load in plan.loads:
                    for target in order:
                        got = measure_server(plan, programs, target, load, plan.duration_s)
                        if got is None:
                            continue
                        cell = target.cells[load]
                        cell.rates.append(got.rate)
                        cell.generator_cpu.append(got.generator_cpu)
                        if got.server_cpu is not None:
                            cell.server_cpu.append(got.server_cpu)
    return table


def _round_order(serving: list[Server], rng: random.Random) -> list[Server]:
    """A shuffled order of the servers in which the loops of one mode stay together (so
    that a burst of outside load hits all of them) and the ceiling is a group of its own."""
    groups: dict[str | None, list[Server]] = {}
    for target in serving:
        groups.setdefault(target.mode, []).append(target)
    shuffled = list(groups.values())
    rng.shuffle(shuffled)
    order = []
    for group in shuffled:
        rng.shuffle(group)
        order.extend(group)
    return order


def _log(message: str) -> None:
    sys.stdout.flush()  # keeps the two streams in order when both go to one file
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _words(text: str) -> list[str]:
    return list(dict.fromkeys(word.strip() for word in text.split(",") if word.strip()))


def _choices(
    parser: argparse.ArgumentParser, option: str, text: str, allowed: Sequence[str]
) -> list[str]:
    chosen = _words(text)
    unknown = [word for word in chosen if word not in allowed]
    if unknown or not chosen:
        parser.error(f"{option}: unknown {unknown}; choose from {', '.join(allowed)}")
    return chosen


def _counts(parser: argparse.ArgumentParser, option: str, text: str, unit: int) -> list[int]:
    """Positive whole numbers times `unit`; a trailing B means bytes instead."""
    counts = []
    for word in _words(text):
        in_bytes = word.upper().endswith("B")
        try:
            value = int(word[:-1] if in_bytes else word) * (1 if in_bytes else unit)
        except ValueError:
            value = 0
        if value < 1:
            parser.error(f"{option}: {word!r} is not a positive whole number")
        counts.append(value)
    if not counts:
        parser.error(f"{option}: give at least one")
    return counts


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m cqloop bench echo",
        description="Echo server benchmark: cqloop against asyncio, uvloop, rloop and a C "
        "epoll server, over TCP and Unix sockets.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: {','.join(QUICK_MODES)} mode, {','.join(QUICK_TRANSPORTS)}, "
        f"{QUICK_SIZES[0] // KIB} KiB, {QUICK_ROUNDS} rounds of {QUICK_DURATION_S:g}s after "
        f"{QUICK_WARMUP_S:g}s of warm-up (options given as well override these)",
    )
    parser.add_argument("--rounds", type=int, help=f"measured rounds (default {DEFAULT_ROUNDS})")
    parser.add_argument(
        "--duration",
        type=float,
        help=f"seconds counted per measurement (default {DEFAULT_DURATION_S:g})",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        help=f"seconds of load on each server before it is measured (default {DEFAULT_WARMUP_S:g})",
    )
    parser.add_argument(
        "--modes",
        help=f"comma-separated (default {','.join(MODES)}; also "
        f"{','.join(server.LINE_MODES)}: line echo)",
    )
    parser.add_argument("--transports", help=f"comma-separated (default {','.join(TRANSPORTS)})")
    parser.add_argument(
        "--sizes",
        help="message sizes in KiB, comma-separated; 512B means bytes (default "
        f"{','.join(str(s // KIB) for s in DEFAULT_SIZES)})",
    )
    parser.add_argument(
        "--conns",
        help=f"connections, comma-separated (default {','.join(map(str, DEFAULT_CONNS))})",
    )
    parser.add_argument(
        "--loops",
        default=",".join(micro.ALL_LOOPS),
        help=f"comma-separated (default {','.join(micro.ALL_LOOPS)})",
    )
    parser.add_argument("--no-ceiling", action="store_true", help="do not run the C echo server")
    parser.add_argument(
        "--ceiling",
        choices=ENGINES,
        default="epoll",
        help="the C echo server's engine: epoll (the default) or io_uring",
    )
    parser.add_argument(
        "--engine",
        choices=ENGINES,
        default=None,
        help="the readiness engine of cqloop's servers (default: CQLOOP_ENGINE, else epoll)",
    )
    parser.add_argument(
        "--pin",
        choices=PINNINGS,
        default=PIN_SPLIT,
        help="split: the servers on one CPU, the generator on another (the default; needs "
        "two CPUs); same: both on one CPU; none: leave it to the scheduler",
    )
    parser.add_argument("--json", metavar="PATH", default=None, help="write results here")
    args = parser.parse_args(argv)

    quick = args.quick
    if args.rounds is None:
        args.rounds = QUICK_ROUNDS if quick else DEFAULT_ROUNDS
    if args.duration is None:
        args.duration = QUICK_DURATION_S if quick else DEFAULT_DURATION_S
    if args.warmup is None:
        args.warmup = QUICK_WARMUP_S if quick else DEFAULT_WARMUP_S
    if args.rounds < 1 or args.duration <= 0 or args.warmup < 0:
        parser.error("--rounds and --duration must be positive, --warmup not negative")
    modes = args.modes or ",".join(QUICK_MODES if quick else MODES)
    args.mode_list = _choices(parser, "--modes", modes, server.ALL_MODES)
    transports = args.transports or ",".join(QUICK_TRANSPORTS if quick else TRANSPORTS)
    args.transport_list = _choices(parser, "--transports", transports, TRANSPORTS)
    sizes = args.sizes or ",".join(f"{s}B" for s in (QUICK_SIZES if quick else DEFAULT_SIZES))
    args.size_list = _counts(parser, "--sizes", sizes, KIB)
    conns = args.conns or ",".join(map(str, DEFAULT_CONNS))
    args.conns_list = _counts(parser, "--conns", conns, 1)
    args.loop_names = _choices(parser, "--loops", args.loops, micro.ALL_LOOPS)
    return args


def _cores(pin: str) -> tuple[int | None, int | None, str]:
    """The CPUs for the servers and for the generator, and a sentence saying so."""
    cpus = sorted(os.sched_getaffinity(0))
    if pin == PIN_NONE:
        return None, None, "not pinned (--pin none)"
    if pin == PIN_SAME:
        return cpus[0], cpus[0], f"servers and load generator pinned to CPU {cpus[0]}"
    if len(cpus) < 2:
        return None, None, "not pinned: only one CPU available"
    return cpus[0], cpus[1], f"servers pinned to CPU {cpus[0]}, load generator to CPU {cpus[1]}"


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Within the block SIGTERM acts as Ctrl-C does, so that a `kill` (or a CI timeout) also
    stops the servers and removes their sockets on the way out."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set signal handlers
        return
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str]) -> int:
    args = _parse_args(argv)
    print("echo benchmark")
    try:
        programs = native.build()
        if args.ceiling == "io_uring" and not args.no_ceiling:
            programs = dataclasses.replace(programs, ceiling=native.build_io_uring_ceiling())
    except native.NativeUnavailable as exc:
        print(f"skipped: the echo benchmark needs a C compiler for its load generator: {exc}")
        return micro.EXIT_OK
    saved_engine = os.environ.get("CQLOOP_ENGINE")
    if args.engine is not None:
        # The servers inherit it (see _server_environment).
        os.environ["CQLOOP_ENGINE"] = args.engine
    try:
        return _main(args, programs)
    finally:
        if saved_engine is None:
            os.environ.pop("CQLOOP_ENGINE", None)
        else:
            os.environ["CQLOOP_ENGINE"] = saved_engine


def _main(args: argparse.Namespace, programs: native.Programs) -> int:
    from cqloop._core.poller import resolve_engine

    loops = micro.installed_loops(args.loop_names)
    server_core, generator_core, pinning = _cores(args.pin)
    plan = Plan(
        loops=loops,
        modes=args.mode_list,
        transports=args.transport_list,
        sizes=args.size_list,
        conns=args.conns_list,
        rounds=args.rounds,
        duration_s=args.duration,
        warmup_s=args.warmup,
        generator_warmup_s=GENERATOR_WARMUP_S,
        ceiling=not args.no_ceiling,
        server_core=server_core,
        generator_core=generator_core,
    )
    if not plan.columns:
        print("nothing to benchmark")
        return micro.EXIT_OK
    print(f"  {pinning}; C programs built with {programs.compiler}")
    ceiling = "no ceiling" if args.no_ceiling else f"the C ceiling on {args.ceiling}"
    print(f"  cqloop's readiness engine: {resolve_engine(None)}; {ceiling}")
    print(
        f"{plan.warmup_s:g}s warm-up per server, then {plan.rounds} interleaved round"
        f"{'' if plan.rounds == 1 else 's'} of {plan.duration_s:g}s per server and size, "
        f"median reported{' (quick)' if args.quick else ''}"
    )
    print()

    start = time.perf_counter()
    try:
        with _sigterm_interrupts():
            table = run_all(plan, programs)
    except KeyboardInterrupt:
        print("interrupted; every server has been stopped")
        return EXIT_INTERRUPTED
    elapsed = time.perf_counter() - start

    print()
    results.print_table(plan, table)
    print(f"total {elapsed:.1f}s")
    if args.json:
        results.write_json(args.json, plan, table, args.quick, elapsed)
        print(f"results written to {args.json}")
    cqloop_failed = any(
        cell.error is not None and not cell.unavailable
        for cells in table.values()
        for name, cell in cells.items()
        if name == micro.REFERENCE_LOOP
    )
    return micro.EXIT_FAILED if cqloop_failed else micro.EXIT_OK
