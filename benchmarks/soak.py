"""Fault soak: one loop serves and drives faulty traffic for a while, then accounts for it.

    python -m cqloop bench soak [--duration S] [--loops L] [--seed N] [--json PATH]

Each loop kind runs in a child process of its own (`--child KIND`), so a leak or a lowered
fd limit stays there. For `duration` seconds the child's loop serves an echo server on TCP,
one on a Unix socket and one over TLS, and drives `WORKERS` concurrent clients, each picking
its next scenario from a seeded random stream:

- `echo`: random bytes in random pieces, half-close, every byte echoed back in order;
- `reset`: a megabyte written while the peer closes with a reset (SO_LINGER 0);
- `cancel_connect` / `cancel_handshake`: a connection (plain or TLS) cancelled after a
  random number of loop iterations;
- `fd_pressure`: the process opens fds until EMFILE and holds them for a moment, so that
  accepts, connects and spawns around it fail for lack of fds;
- `spawn`: a short subprocess, waited for;
- a thread posts callbacks with call_soon_threadsafe throughout, each of which must run.

Then everything is closed and the child prints one JSON object: counts per scenario and
outcome, bytes echoed and bytes lost, the fds open after the loop closed that were not open
before it was made, what the "asyncio" logger logged (message kinds: first line, numbers and
addresses folded) and the ResourceWarnings raised, and any exception a scenario did not
expect. The parent prints a table per loop. tests/test_fault_soak.py runs a short form of
this on every loop and checks the contract: no fd leaked, no byte lost, no unexpected
exception, nothing logged beyond what asyncio itself logs for these faults.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import gc
import json
import logging
import os
import random
import re
import resource
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

HOST = "127.0.0.1"
WORKERS = 16
# The child's fd limit: low enough that fd_pressure reaches it at once.
FD_LIMIT = 512
# How long fd_pressure holds the fds it took.
PRESSURE_HOLD_S = 0.02
ECHO_MAX_BYTES = 64 * 1024
RESET_BYTES = 1024 * 1024
# Every wait of a scenario is bounded by this; a scenario that reaches it is a hang.
SCENARIO_TIMEOUT_S = 10.0
# Callbacks the wake-up thread posts per burst.
WAKEUP_BURST = 64
DEFAULT_DURATION_S = 60.0
LOOP_KINDS = ("cqloop", "asyncio", "uvloop", "rloop")

# What the "asyncio" logger logs for these faults in asyncio's own code: the accept error
# under EMFILE (base_events/selector_events' _accept_connection). Any other message is a
# finding, on any loop.
EXPECTED_LOG_KINDS = frozenset({"socket.accept() out of system resource"})

# Errors a scenario may meet under fd pressure, resets and cancellation: outcomes to count,
# not findings. (A loop that answers EMFILE by accepting and closing at once, as libuv does,
# makes its clients see resets; tests/test_fault_soak.py holds cqloop to asyncio's
# behaviour, where an echo ends either whole or refused for lack of fds.)
_FAULT_ERRNOS = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ECONNRESET, errno.EPIPE, errno.ECONNREFUSED, errno.ENOTCONN}
)
_FAULT_TYPES = (ConnectionResetError, BrokenPipeError, ssl.SSLError)


# -- the child: servers, scenarios, accounting ---------------------------------------------


class EchoProtocol(asyncio.Protocol):
    """Echoes what it receives; closes after the peer's EOF."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]

    def eof_received(self) -> None:
        self.transport.close()


class Soak:
    """One loop's soak: its servers, its clients and its books."""

    def __init__(self, seed: int, duration: float, cert: tuple[str, str]) -> None:
        self.random = random.Random(seed)
        self.deadline = time.monotonic() + duration
        self.counts: Counter[str] = Counter()
        self.bytes_echoed = 0
        self.bytes_lost = 0
        self.unexpected: list[str] = []
        self.server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server_tls.load_cert_chain(*cert)
        self.client_tls = ssl.create_default_context()
        self.client_tls.check_hostname = False
        self.client_tls.verify_mode = ssl.CERT_NONE
        self.unix_dir = tempfile.mkdtemp(prefix="cqloop-soak-")
        self.unix_path = os.path.join(self.unix_dir, "echo.sock")
        self.posted = 0
        self.ran = 0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        servers = [
            await loop.create_server(EchoProtocol, HOST, 0),
            await loop.create_unix_server(EchoProtocol, self.unix_path),
            await loop.create_server(EchoProtocol, HOST, 0, ssl=self.server_tls),
        ]
        self.tcp_port = servers[0].sockets[0].getsockname()[1]
        self.tls_port = servers[2].sockets[0].getsockname()[1]
        stop = threading.Event()
        poster = threading.Thread(target=self._post_wakeups, args=(loop, stop))
        poster.start()
        try:
            await asyncio.gather(*(self._worker() for _ in range(WORKERS)))
        finally:
            stop.set()
            await loop.run_in_executor(None, poster.join)
            for server in servers:
                server.close()
            for server in servers:
                await server.wait_closed()
        # Let the wake-ups the thread posted last run.
        await asyncio.sleep(0)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.unix_path)
        os.rmdir(self.unix_dir)

    def _post_wakeups(self, loop: asyncio.AbstractEventLoop, stop: threading.Event) -> None:
        while not stop.is_set():
            for _ in range(WAKEUP_BURST):
                loop.call_soon_threadsafe(self._woken)
                self.posted += 1
            stop.wait(0.001)

    def _woken(self) -> None:
        self.ran += 1

    async def _worker(self) -> None:
        scenarios: list[tuple[str, Callable[[], Awaitable[str]]]] = [
            ("echo_tcp", lambda: self._echo(unix=False, tls=False)),
            ("echo_unix", lambda: self._echo(unix=True, tls=False)),
            ("echo_tls", lambda: self._echo(unix=False, tls=True)),
            ("reset", self._reset),
            ("cancel_connect", lambda: self._cancel_connect(tls=False)),
            ("cancel_handshake", lambda: self._cancel_connect(tls=True)),
            ("fd_pressure", self._fd_pressure),
            ("spawn", self._spawn),
        ]
        weights = [6, 4, 3, 2, 2, 2, 1, 1]
        while time.monotonic() < self.deadline:
            [(name, scenario)] = self.random.choices(scenarios, weights)
            try:
                outcome = await asyncio.wait_for(scenario(), SCENARIO_TIMEOUT_S)
            except TimeoutError:
                outcome = "hung"
                self.unexpected.append(f"{name}: no end within {SCENARIO_TIMEOUT_S} s")
            except OSError as exc:
                if exc.errno not in _FAULT_ERRNOS and not isinstance(exc, _FAULT_TYPES):
                    self.unexpected.append(f"{name}: {exc!r}")
                outcome = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
            except Exception as exc:
                self.unexpected.append(f"{name}: {exc!r}")
                outcome = type(exc).__name__
            self.counts[f"{name}:{outcome}"] += 1

    async def _open(
        self, *, unix: bool, tls: bool
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if unix:
            return await asyncio.open_unix_connection(self.unix_path)
        if tls:
            return await asyncio.open_connection(
                HOST, self.tls_port, ssl=self.client_tls, server_hostname=HOST
            )
        return await asyncio.open_connection(HOST, self.tcp_port)

    async def _echo(self, *, unix: bool, tls: bool) -> str:
        payload = self.random.randbytes(self.random.randint(1, ECHO_MAX_BYTES))
        reader, writer = await self._open(unix=unix, tls=tls)
        try:
            view = memoryview(payload)
            while view:
                piece = self.random.randint(1, len(view))
                writer.write(view[:piece])
                view = view[piece:]
                await writer.drain()
            if tls:
                # TLS has no half-close: read the whole echo, then close.
                echoed = await reader.readexactly(len(payload))
            else:
                writer.write_eof()
                echoed = await reader.read()
        except asyncio.IncompleteReadError as exc:
            echoed = exc.partial
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        if echoed != payload:
            self.bytes_lost += abs(len(payload) - len(echoed)) or len(payload)
            return "lost"
        self.bytes_echoed += len(payload)
        return "ok"

    async def _reset(self) -> str:
        reader, writer = await self._open(unix=False, tls=False)
        sock = writer.get_extra_info("socket")
        writer.write(b"\0" * RESET_BYTES)
        # Let some of it go both ways, then reset.
        await reader.read(self.random.randint(1, 65536))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        writer.transport.abort()
        return "ok"

    async def _cancel_connect(self, *, tls: bool) -> str:
        task = asyncio.ensure_future(self._open(unix=False, tls=tls))
        for _ in range(self.random.randint(0, 6)):
            await asyncio.sleep(0)
        task.cancel()
        try:
            _, writer = await task
        except asyncio.CancelledError:
            return "cancelled"
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return "connected"

    async def _fd_pressure(self) -> str:
        held: list[int] = []
        try:
            while True:
                held.append(os.open(os.devnull, os.O_RDONLY))
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE):
                raise
        try:
            await asyncio.sleep(PRESSURE_HOLD_S)
        finally:
            for fd in held:
                os.close(fd)
        return "ok"

    async def _spawn(self) -> str:
        proc = await asyncio.create_subprocess_exec(
            "true", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        code = await proc.wait()
        if code != 0:
            self.unexpected.append(f"spawn: exit status {code}")
        return "ok"


class _LogKinds(logging.Handler):
    """Collects the kinds of message logged: first line, addresses and numbers folded."""

    def __init__(self) -> None:
        super().__init__()
        self.kinds: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.kinds[log_kind(record.getMessage())] += 1


def log_kind(message: str) -> str:
    first = message.splitlines()[0] if message else ""
    first = re.sub(r"<[^>]*>", "<...>", first)
    return re.sub(r"0x[0-9a-f]+|\d+", "N", first).strip()


def _open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


def _loop_factory(kind: str) -> Callable[[], asyncio.AbstractEventLoop]:
    from cqloop._bench.micro import _find_loop

    found = _find_loop(kind)
    if isinstance(found, str):
        raise ImportError(found)
    return found.factory


def run_child(kind: str, seed: int, duration: float, cert: tuple[str, str]) -> dict[str, Any]:
    """The soak on one loop kind, in this process; returns its books."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(FD_LIMIT, hard), hard))
    logs = _LogKinds()
    logging.getLogger("asyncio").addHandler(logs)
    factory = _loop_factory(kind)
    # Import and warm what the loop opens once per process before counting fds.
    factory().close()
    gc.collect()
    before = _open_fds()
    soak = Soak(seed, duration, cert)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(soak.run())
        del runner
        gc.collect()
    leaked = sorted(_open_fds() - before)
    return {
        "kind": kind,
        "seed": seed,
        "duration": duration,
        "counts": dict(sorted(soak.counts.items())),
        "bytes_echoed": soak.bytes_echoed,
        "bytes_lost": soak.bytes_lost,
        "wakeups_posted": soak.posted,
        "wakeups_run": soak.ran,
        "leaked_fds": [_describe_fd(fd) for fd in leaked],
        "logged": dict(logs.kinds),
        "resource_warnings": [str(w.message) for w in caught if w.category is ResourceWarning],
        "unexpected": soak.unexpected,
    }


def _describe_fd(fd: int) -> str:
    try:
        return f"{fd} -> {os.readlink(f'/proc/self/fd/{fd}')}"
    except OSError:
        return str(fd)


def findings(result: dict[str, Any]) -> list[str]:
    """What breaks the soak's contract in one loop's books."""
    found = []
    leaked = result["leaked_fds"]
    if leaked:
        found.append(f"{len(leaked)} fds left open: {leaked[:10]}")
    if result["bytes_lost"]:
        found.append(f"{result['bytes_lost']} bytes lost")
    if result["wakeups_run"] != result["wakeups_posted"]:
        found.append(
            f"{result['wakeups_posted']} cross-thread callbacks posted, {result['wakeups_run']} ran"
        )
    extra_logs = set(result["logged"]) - EXPECTED_LOG_KINDS
    if extra_logs:
        found.append(f"logged: {sorted(extra_logs)}")
    if result["resource_warnings"]:
        found.append(f"ResourceWarnings: {result['resource_warnings'][:5]}")
    found.extend(f"unexpected: {text}" for text in result["unexpected"][:10])
    return found


# -- the parent: one child per loop, a table ----------------------------------------------


def soak_in_child(
    kind: str, seed: int, duration: float, cert: tuple[str, str], timeout: float
) -> dict[str, Any]:
    argv = [sys.executable, "-m", "cqloop._bench.soak", "--child", kind, "--seed", str(seed)]
    argv += ["--duration", str(duration), "--cert", cert[0], "--key", cert[1]]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"the {kind} soak failed ({proc.returncode}):\n{proc.stderr}")
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def installed_kinds() -> list[str]:
    kinds = []
    for kind in LOOP_KINDS:
        try:
            _loop_factory(kind)
        except ImportError:
            continue
        kinds.append(kind)
    return kinds


def _print_result(result: dict[str, Any]) -> None:
    print(f"== {result['kind']}: {result['duration']:.0f} s, seed {result['seed']}")
    for name, count in result["counts"].items():
        print(f"   {name:<28} {count:>7}")
    print(f"   bytes echoed {result['bytes_echoed']}, lost {result['bytes_lost']}")
    print(f"   cross-thread callbacks {result['wakeups_run']}/{result['wakeups_posted']}")
    for kind, count in result["logged"].items():
        print(f"   logged x{count}: {kind}")
    found = findings(result)
    print("   contract held" if not found else "   FINDINGS:")
    for text in found:
        print(f"     - {text}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m cqloop bench soak", description=__doc__)
    parser.add_argument("--duration", type=float, default=DEFAULT_DURATION_S)
    parser.add_argument("--loops", help="comma-separated loops (default: all installed)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="2 s per loop")
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--rounds", type=int, help=argparse.SUPPRESS)  # bench's shared option
    parser.add_argument("--child", choices=LOOP_KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--cert", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    duration = 2.0 if args.quick else args.duration
    if args.child:
        result = run_child(args.child, args.seed, duration, (args.cert, args.key))
        print(json.dumps(result))
        return 0
    from cqloop._bench.tls_echo import make_certificate

    kinds = args.loops.split(",") if args.loops else installed_kinds()
    results = []
    status = 0
    with tempfile.TemporaryDirectory() as directory:
        cert = make_certificate(directory)
        for kind in kinds:
            result = soak_in_child(kind, args.seed, duration, cert, timeout=duration * 3 + 60)
            _print_result(result)
            results.append(result)
            if kind == "cqloop" and findings(result):
                status = 1
    if args.json:
        with open(args.json, "w") as file:
            json.dump(results, file, indent=1)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
