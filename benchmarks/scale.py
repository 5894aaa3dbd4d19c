"""The scale benchmark: how each loop's costs grow with connections and with timers.

    python -m cqloop bench scale [--loops L] [--conns 10,1000,10000]
                                 [--timers 1000,10000,100000,1000000] [--duration S]
                                 [--quick] [--json PATH]

Connections (the echo benchmark's Protocol server, echo/server.py, one process per loop,
pinned to one CPU; the C load generator, echo/loadgen.c, on the other):
- `idle`: the server's resident memory grown per connection once N connections are open
  and idle (opened by this process, after the server has accepted every one);
- `echo/s`: 1 KiB ping-pong echoes per second over N busy connections, and the server's CPU
  per echo.

Timers (each loop in a child process of its own, `--child`): N timers scheduled with
call_later far in the future, then cancelled: the resident memory grown per pending timer,
and the time per call_later and per cancel() (the best of three passes), from 1,000 to
1,000,000 pending timers.

The accept rate for short connections is `bench http --apps protocol-close`.
Figures are one measurement per cell (the connection counts are slow to set up); the
ratios divide cqloop's figure by the best peer's (the better of uvloop and rloop).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from typing import Any

from cqloop._bench.echo import native
from cqloop._bench.echo import server as echo_server
from cqloop._bench.echo.run import _cpu_ns, _server_environment, _stop_process
from cqloop._bench.micro import _find_loop

LOOPS = ("cqloop", "asyncio", "uvloop", "rloop")
PEERS = ("uvloop", "rloop")
DEFAULT_CONNS = (10, 1000, 10000)
DEFAULT_TIMERS = (1000, 10_000, 100_000, 1_000_000)
MESSAGE_BYTES = 1024
START_TIMEOUT_S = 30.0
ACCEPT_TIMEOUT_S = 60.0
FAR_FUTURE_S = 3600.0
# Passes per timer count: the times are the best pass's (a shared machine only ever adds
# time), the memory the first pass's (resident memory does not shrink after it).
TIMER_ROUNDS = 3
# Passes per timer count: the times are the best pass's (a shared machine only ever adds
# time), the memory the first pass's (resident memory does not shrink after it).
TIMER_ROUNDS = 3
PAGE_KIB = 4


# -- memory and processes ----------------------------------------------------------------


def rss_kib(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


def open_fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


def start_echo_server(loop: str, cpu: int | None, max_conns: int) -> tuple[Any, str]:
    """An echo/server.py Protocol server; (the process, its address) or (None, why not)."""
    argv = [sys.executable, echo_server.__file__, "--loop", loop, "--mode", "protocol"]
    argv += ["--tcp", "127.0.0.1:0"] + (["--cpu", str(cpu)] if cpu is not None else [])
    process = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=_server_environment(),
        preexec_fn=lambda: _raise_fd_limit(max_conns + 1024),
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    report = json.loads(line) if line.startswith("{") else {"error": repr(line)}
    if "address" not in report:
        _stop_process(process)
        return None, report.get("unavailable") or report.get("error") or "no report"
    return process, report["address"]


def measure_idle(process: Any, address: str, conns: int) -> float:
    """KiB of server memory per idle connection, once `conns` are open and accepted."""
    _, host, port = address.split(":")
    before_fds = open_fd_count(process.pid)
    before = rss_kib(process.pid)
    sockets = []
    try:
        for _ in range(conns):
            sockets.append(socket.create_connection((host, int(port))))
        deadline = time.monotonic() + ACCEPT_TIMEOUT_S
        while open_fd_count(process.pid) < before_fds + conns:
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not accept every connection")
            time.sleep(0.01)
        return (rss_kib(process.pid) - before) / conns
    finally:
        for sock in sockets:
            sock.close()


def measure_echo(
    process: Any,
    address: str,
    conns: int,
    duration: float,
    programs: native.Programs,
    cpu: int | None,
) -> tuple[float, float | None]:
    """(echoes per second, server CPU µs per echo) over `conns` busy connections."""
    argv = [str(programs.loadgen), "-a", address, "-c", str(conns), "-s", str(MESSAGE_BYTES)]
    argv += ["-w", "1", "-d", str(duration)] + (["-p", str(cpu)] if cpu is not None else [])
    before = _cpu_ns(process.pid)
    result = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=duration + 120,
        preexec_fn=lambda: _raise_fd_limit(conns + 1024),
    )
    after = _cpu_ns(process.pid)
    report = json.loads(result.stdout or "{}")
    if "messages" not in report:
        raise RuntimeError(report.get("error") or result.stderr or "no report")
    rate = report["messages"] / report["seconds"]
    cpu_us = None
    if before is not None and after is not None and report["messages"]:
        # The loadgen warms up for 1 s before it counts: the server's CPU over the whole run
        # is set against every echo of the counted part and the warm-up's share estimated
        # out by the rates.
        counted = report["seconds"] / (report["seconds"] + 1.0)
        cpu_us = (after - before) * counted / 1e3 / report["messages"]
    return rate, cpu_us


# -- timers (in a child process per loop) -------------------------------------------------


def timers_child(loop_name: str, counts: list[int]) -> dict[str, Any]:
    found = _find_loop(loop_name)
    if isinstance(found, str):
        return {"unavailable": found}
    loop = found.factory()
    rows = []
    try:
        for n in counts:
            gc.collect()
            before = rss_kib()
            grown = None
            schedule_s = cancel_s = float("inf")
            for _ in range(TIMER_ROUNDS):
                started = time.perf_counter()
                handles = [loop.call_later(FAR_FUTURE_S, _noop) for _ in range(n)]
                scheduled = time.perf_counter()
                if grown is None:
                    grown = rss_kib() - before
                for handle in handles:
                    handle.cancel()
                cancelled = time.perf_counter()
                # Let the loop drop the cancelled timers (asyncio and cqloop purge them
                # lazily).
                loop.run_until_complete(_settle())
                del handles
                schedule_s = min(schedule_s, scheduled - started)
                cancel_s = min(cancel_s, cancelled - scheduled)
            rows.append(
                {
                    "timers": n,
                    "bytes_per_timer": (grown or 0) * 1024 / n,
                    "schedule_ns": schedule_s * 1e9 / n,
                    "cancel_ns": cancel_s * 1e9 / n,
                }
            )
    finally:
        loop.close()
    return {"rows": rows}


def _noop() -> None:
    pass


async def _settle() -> None:
    import asyncio

    await asyncio.sleep(0)


def run_timers(loops: list[str], counts: list[int]) -> dict[str, Any]:
    results = {}
    for name in loops:
        argv = [sys.executable, "-m", "cqloop._bench.scale", "--child-timers", name]
        argv += ["--timers", ",".join(map(str, counts))]
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=600, env=_server_environment()
        )
        try:
            results[name] = json.loads(proc.stdout)
        except json.JSONDecodeError:
            results[name] = {"error": proc.stderr.strip().splitlines()[-1:] or ["failed"]}
    return results


# -- the run and the tables ---------------------------------------------------------------


def run_connections(
    loops: list[str], counts: list[int], duration: float, programs: native.Programs
) -> dict[str, dict[int, dict[str, Any]]]:
    cpus = sorted(os.sched_getaffinity(0))
    server_cpu, generator_cpu = (cpus[0], cpus[1]) if len(cpus) > 1 else (None, None)
    _raise_fd_limit(max(counts) + 1024)
    results: dict[str, dict[int, dict[str, Any]]] = {}
    for name in loops:
        results[name] = {}
        for n in counts:
            # A fresh server per cell: memory is measured from a server that has served
            # nothing yet, and no connection of the cell before is still being closed.
            print(f"# {name}: {n} connections", file=sys.stderr, flush=True)
            process, address = start_echo_server(name, server_cpu, n)
            if process is None:
                results[name][n] = {"error": address}
                continue
            try:
                idle = measure_idle(process, address, n)
                rate, cpu_us = measure_echo(process, address, n, duration, programs, generator_cpu)
                results[name][n] = {"idle_kib": idle, "echo_per_s": rate, "cpu_us": cpu_us}
            except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
                results[name][n] = {"error": str(exc).splitlines()[0][:80]}
            finally:
                _stop_process(process)
    return results


def _ratio(values: Mapping[str, float | None], higher_is_better: bool) -> str:
    cq = values.get("cqloop")
    peers = [v for k, v in values.items() if k in PEERS and v]
    if not cq or not peers:
        return "n/a"
    best = max(peers) if higher_is_better else min(peers)
    return f"{cq / best:.2f}"


def print_connections(results: dict[str, dict[int, dict[str, Any]]], counts: list[int]) -> None:
    print("Connections (Protocol echo, 1 KiB)")
    print(f"{'conns':>7} {'loop':<8} {'idle KiB/conn':>14} {'echo/s':>10} {'cpu us/echo':>12}")
    for n in counts:
        for name, by_count in results.items():
            cell = by_count.get(n, {})
            if "error" in cell:
                print(f"{n:>7} {name:<8} {'n/a':>14}  {cell['error']}")
                continue
            cpu = f"{cell['cpu_us']:.1f}" if cell.get("cpu_us") is not None else "?"
            print(
                f"{n:>7} {name:<8} {cell['idle_kib']:>14.1f} {cell['echo_per_s']:>10.0f} {cpu:>12}"
            )
        idle = {k: v.get(n, {}).get("idle_kib") for k, v in results.items()}
        rate = {k: v.get(n, {}).get("echo_per_s") for k, v in results.items()}
        cpu_per = {k: v.get(n, {}).get("cpu_us") for k, v in results.items()}
        print(
            f"{'':>7} {'cq/best':<8} idle {_ratio(idle, False)}  echo/s {_ratio(rate, True)}  "
            f"cpu {_ratio(cpu_per, False)}"
        )


def print_timers(results: dict[str, Any], counts: list[int]) -> None:
    print("Pending timers (call_later far ahead, then cancel)")
    print(f"{'timers':>9} {'loop':<8} {'bytes/timer':>12} {'schedule ns':>12} {'cancel ns':>10}")
    for n in counts:
        per_loop: dict[str, dict[str, float]] = {}
        for name, result in results.items():
            rows = {row["timers"]: row for row in result.get("rows", [])}
            if n not in rows:
                why = result.get("unavailable") or result.get("error") or "n/a"
                print(f"{n:>9} {name:<8} {'n/a':>12}  {why}")
                continue
            row = rows[n]
            per_loop[name] = row
            print(
                f"{n:>9} {name:<8} {row['bytes_per_timer']:>12.0f} {row['schedule_ns']:>12.0f} "
                f"{row['cancel_ns']:>10.0f}"
            )
        memory = {k: v["bytes_per_timer"] for k, v in per_loop.items()}
        schedule = {k: v["schedule_ns"] for k, v in per_loop.items()}
        cancel = {k: v["cancel_ns"] for k, v in per_loop.items()}
        print(
            f"{'':>9} {'cq/best':<8} memory {_ratio(memory, False)}  schedule "
            f"{_ratio(schedule, False)}  cancel {_ratio(cancel, False)}"
        )


def _counts(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m cqloop bench scale", description=__doc__)
    parser.add_argument("--loops", default=",".join(LOOPS))
    parser.add_argument("--conns", default=",".join(map(str, DEFAULT_CONNS)))
    parser.add_argument("--timers", default=",".join(map(str, DEFAULT_TIMERS)))
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per echo cell")
    parser.add_argument("--quick", action="store_true", help="small counts, short cells")
    parser.add_argument("--rounds", type=int, help=argparse.SUPPRESS)  # bench's shared option
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--child-timers", metavar="LOOP", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    timer_counts = _counts(args.timers)
    if args.child_timers:
        print(json.dumps(timers_child(args.child_timers, timer_counts)))
        return 0
    conn_counts = _counts(args.conns)
    if args.quick:
        conn_counts, timer_counts, args.duration = [10, 100], [1000, 10_000], 1.0
    loops = [name for name in args.loops.split(",") if not isinstance(_find_loop(name), str)]
    timers = run_timers(loops, timer_counts)
    print_timers(timers, timer_counts)
    print()
    try:
        programs = native.build()
    except native.NativeUnavailable as exc:
        print(f"bench scale: connections skipped: {exc}")
        connections: dict[str, dict[int, dict[str, Any]]] = {}
    else:
        connections = run_connections(loops, conn_counts, args.duration, programs)
        print_connections(connections, conn_counts)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"timers": timers, "connections": connections}, fh, indent=1)
    failed = any("error" in cell for cell in connections.get("cqloop", {}).values())
    return 1 if failed or "error" in timers.get("cqloop", {}) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
