"""Instructions per echoed message or per HTTP request, counted by callgrind.

    python -m cqloop._bench.callgrind --loop cqloop|asyncio|uvloop|rloop
                                      (--echo MODE | --http APP)
                                      [--conns N] [--size BYTES] [--close]
                                      [--duration S] [--out FILE]

Runs one benchmark server (echo/server.py in MODE, or http_server.py serving APP) under
`valgrind --tool=callgrind --instr-atstart=no`, loads it with the C load generator for a
warm-up (not counted), switches instrumentation on with `callgrind_control` for a run of
`--duration` seconds, and divides the instructions counted by the messages or requests
the generator counted. Prints one line (loop, path, count, instructions, per message) and
leaves the profile in FILE for `callgrind_annotate`.

The count is the server's user-space instructions only, and it does not move with the
machine's load, unlike rates and CPU times: the figure to prove a saving on a hot path
with. System calls are not in it (`strace -c` counts them). A server slowed fifty-fold by
valgrind batches more events per poll than at full speed, so compare loops with each
other in one session, never with a rate. Needs valgrind and a C compiler (for the
generator, built as the echo benchmark builds it). cqloop's servers run on the epoll
engine here, whatever CQLOOP_ENGINE says (see `main`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from cqloop._bench.echo import native

HERE = Path(__file__).resolve().parent
WARMUP_S = 2.0
SERVER_EXIT_TIMEOUT_S = 60.0


def _total_instructions(profile: str) -> int:
    out = subprocess.run(
        ["callgrind_annotate", "--auto=no", profile], capture_output=True, text=True, check=True
    ).stdout
    match = re.search(r"([\d,]+)(?: \([\d.]+%\))?\s+PROGRAM TOTALS", out)
    if match is None:
        raise RuntimeError(f"no PROGRAM TOTALS in callgrind_annotate's output for {profile}")
    return int(match.group(1).replace(",", ""))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m cqloop._bench.callgrind")
    parser.add_argument("--loop", required=True)
    path = parser.add_mutually_exclusive_group(required=True)
    path.add_argument("--echo", metavar="MODE", help="an echo/server.py mode (protocol, ...)")
    path.add_argument("--http", metavar="APP", help="an http_server.py app (protocol, ...)")
    parser.add_argument("--conns", type=int, default=10)
    parser.add_argument("--size", type=int, default=1024, help="echo message bytes")
    parser.add_argument(
        "--close", action="store_true", help="HTTP: a new connection per request (-C)"
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds counted")
    parser.add_argument("--out", help="the profile (default: callgrind.LOOP.PATH.out)")
    args = parser.parse_args(argv)
    for tool in ("valgrind", "callgrind_control", "callgrind_annotate"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is not installed")
    what = args.echo or args.http
    out = args.out or f"callgrind.{args.loop}.{what}.out"
    loadgen = str(native.build().loadgen)
    valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
    # cqloop's servers count on the epoll engine: under valgrind (3.19 here) a server on the
    # io_uring engine does not stop when its stdin closes, so the count never ends.
    env = dict(os.environ, PYTHONHASHSEED="0", CQLOOP_ENGINE="epoll")
    listener = None
    if args.echo:
        command = [sys.executable, str(HERE / "echo" / "server.py"), "--loop", args.loop]
        command += ["--mode", args.echo, "--tcp", "127.0.0.1:0"]
        load = ["-s", str(args.size)]
        pass_fds: tuple[int, ...] = ()
    else:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1024)
        command = [sys.executable, "-m", "cqloop._bench.http_server", "--loop", args.loop]
        command += ["--app", args.http, "--fd", str(listener.fileno())]
        load = ["-H", "/", "-C"] if args.close else ["-H", "/"]
        pass_fds = (listener.fileno(),)
    with open(out + ".log", "w") as log:
        server = subprocess.Popen(
            valgrind + command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            pass_fds=pass_fds,
            env=env,
            text=True,
        )
    try:
        assert server.stdout is not None and server.stdin is not None
        report = json.loads(server.stdout.readline() or "{}")
        if listener is None:
            address = report.get("address")
        elif "serving" in report:
            address = f"tcp:127.0.0.1:{listener.getsockname()[1]}"
        else:
            address = None
        if address is None:
            raise SystemExit(f"the server did not start: {report} (see {out}.log)")

        def load_run(warmup: float, duration: float) -> dict[str, float]:
            timing = ["-w", str(warmup), "-d", str(duration)]
            result = subprocess.run(
                [loadgen, "-a", address, "-c", str(args.conns), *load, *timing],
                capture_output=True,
                text=True,
            )
            lines = result.stdout.strip().splitlines()
            counts: dict[str, float] = json.loads(lines[-1]) if lines else {}
            if "error" in counts or not counts:
                raise SystemExit(f"the load generator failed: {counts or result.stderr}")
            return counts

        load_run(1.0, WARMUP_S)
        subprocess.run(["callgrind_control", "-i", "on", str(server.pid)], capture_output=True)
        counted = load_run(0.0, args.duration)
        subprocess.run(["callgrind_control", "-i", "off", str(server.pid)], capture_output=True)
        server.stdin.close()
        server.wait(SERVER_EXIT_TIMEOUT_S)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        if listener is not None:
            listener.close()
    done = int(counted.get("messages") or counted.get("requests") or 0)
    if not done:
        raise SystemExit(f"nothing was counted: {counted}")
    total = _total_instructions(out)
    print(
        f"{args.loop} {what} conns={args.conns} count={done} instructions={total} "
        f"per={total / done:.0f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
