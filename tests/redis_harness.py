"""A real redis-server, a cuttable loopback link to it, and cluster hosts, for the tests of
worker_events across hosts (tests/test_worker_events_cluster.py) and its benchmark.

- `RedisServer`: redis-server on 127.0.0.1 on a free port, in a directory of its own, with
  or without an append-only file and a password; ready once it answers PING; stopped (or
  restarted on the same port and data) by the test.
- `CutProxy`: a TCP relay on loopback between one host and Redis, run in a thread; `cut()`
  closes every connection through it and refuses new ones until `heal()`: a network
  partition of that one host, seen from both ends as connections that break.
- `NetnsLink`: a network namespace joined to this one by a veth pair (root only): a host
  run inside it reaches Redis over the pair, and `cut()` takes the link down, a silent
  partition (packets dropped, no connection reset), until `heal()`.
- `Host`: one `python tests/redis_harness.py MODE OUTDIR URL ...` process, a
  cqloop.workers supervisor standing for a host (in a session of its own, so that the
  test can kill the whole host: supervisor and workers).

Run as a script, this file is that host (`host_main`). Its workers first meet at a barrier
across the cluster: each posts "hello" once it is up and once more for each worker it
hears of for the first time, and starts once it has heard every expected worker. A worker
that has heard X's hello also gets every event X posts after it (it is in the stream's
order after its own hello), so nothing posted after the barrier can miss anyone. Modes:

  broadcast  each worker posts --posts events (source "t", event "e", data [tag, i]) with
             post_async, --rate of them a second when given, then "finished"; once it has
             heard "finished" from every expected worker it writes OUTDIR/log-TAG.json
             (every "e" in the order handled, and the gap events). After each --progress
             count of events it writes OUTDIR/progress-TAG-COUNT.
  unique     each worker posts --posts unique events (key TAG-i); whoever handles one
             appends "KEY PID" to OUTDIR/handled-TAG-PID.txt at once; a key named by
             --kill-key makes the first worker that handles it SIGKILL itself instead;
             every worker also posts the unique key --shared-key, if given.
  hold       as unique, but the worker that handles a key named by --hold-key writes
             OUTDIR/holding-KEY and then blocks its process (it never acknowledges).
  flood      past the barrier a worker writes OUTDIR/ready-TAG; on SIGUSR1 it posts
             (yielding to its loop between posts) until post() raises PostQueueFull, or
             --posts posts, and writes OUTDIR/flooded-TAG.json {"count", "error"}; once
             it has handled all of its own `count` posts it writes OUTDIR/log-TAG.json.

In broadcast mode the worker tagged --exit-after-posting returns from its app once it has
posted (its supervisor starts another, which only watches); every other worker writes
OUTDIR/exited-TAG.json (its events, and "exited" where it came) when it hears that the
first one exited.

--limit NAME=VALUE sets a field of the supervisor's Limits. In broadcast mode the worker
tagged --stall blocks in its handler at the first "e" it handles, until the test writes to
OUTDIR/fifo (once its broker has evicted it).

A worker's tag is HOST.INDEX. The --observer worker of each host posts nothing and
takes no part in the barrier (the test may kill it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.workers_harness import wait_for

HARNESS = str(Path(__file__).resolve())
REDIS_SERVER = "redis-server"
READY_DEADLINE_S = 20.0
STOP_DEADLINE_S = 20.0
RELAY_CHUNK = 65536
_T = TypeVar("_T")


def redis_server_path() -> str | None:
    return shutil.which(REDIS_SERVER)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """redis-server on 127.0.0.1:port, its files in `directory`."""

    def __init__(
        self,
        directory: Path,
        *,
        appendonly: bool = False,
        password: str | None = None,
        tls: dict[str, str] | None = None,
        bind: tuple[str, ...] = ("127.0.0.1",),
    ) -> None:
        path = redis_server_path()
        if path is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.binary = path
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.appendonly = appendonly
        self.password = password
        self.tls = tls
        self.bind = bind
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        scheme = "rediss" if self.tls else "redis"
        auth = f":{self.password}@" if self.password else ""
        return f"{scheme}://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [
            self.binary,
            "--bind",
            *self.bind,
            "--dir",
            str(self.directory),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "always",
            "--daemonize",
            "no",
            "--logfile",
            str(self.directory / "redis.log"),
        ]
        if self.tls:
            args += ["--port", "0", "--tls-port", str(self.port)]
            args += ["--tls-cert-file", self.tls["cert"], "--tls-key-file", self.tls["key"]]
            args += ["--tls-ca-cert-file", self.tls["ca"], "--tls-auth-clients", "no"]
        else:
            args += ["--port", str(self.port)]
        if self.password:
            args += ["--requirepass", self.password]
        self.process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        what = f"redis-server on port {self.port} to answer PING"
        wait_for(self._answers, what, READY_DEADLINE_S)

    def client(self) -> Any:
        import redis

        kwargs: dict[str, Any] = {}
        if self.tls:
            kwargs = {"ssl_ca_certs": self.tls["ca"]}
        return redis.Redis.from_url(self.url, socket_timeout=5, **kwargs)

    def _answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            log = (self.directory / "redis.log").read_text(errors="replace")
            raise AssertionError(f"redis-server exited with {self.process.returncode}:\n{log}")
        import redis

        try:
            with contextlib.closing(self.client()) as client:
                return bool(client.ping())
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            return False

    def stop(self) -> None:
        """SIGTERM: Redis writes its append-only file and exits."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_DEADLINE_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


class CutProxy:
    """A TCP relay 127.0.0.1:port -> target that can be cut and healed (see the module
    docstring). Runs an asyncio loop in a thread of its own."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._cut = False
        self._swallow = False
        self._writers: set[asyncio.StreamWriter] = set()
        self._relays: set[asyncio.Task[Any]] = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Future[None] | None = None
        self._thread = threading.Thread(target=self._run, name="CutProxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(READY_DEADLINE_S):
            raise AssertionError("the proxy did not start")

    def cut(self) -> None:
        self._call(self._do_cut)

    def swallow(self) -> None:
        """Keep relaying requests to Redis, but drop its replies: a reply lost on the
        way, as when a connection breaks after the server acted (until cut())."""
        self._call(self._do_swallow)

    def heal(self) -> None:
        self._call(self._do_heal)

    def close(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set_result, None)
        self._thread.join(STOP_DEADLINE_S)
        self._loop.close()

    def _call(self, function: Callable[[], None]) -> None:
        done = threading.Event()

        def run() -> None:
            function()
            done.set()

        self._loop.call_soon_threadsafe(run)
        if not done.wait(STOP_DEADLINE_S):
            raise AssertionError("the proxy did not answer")

    def _do_swallow(self) -> None:
        self._swallow = True

    def _do_cut(self) -> None:
        self._cut = True
        self._swallow = False
        for writer in list(self._writers):
            writer.transport.abort()

    def _do_heal(self) -> None:
        self._cut = False

    def _run(self) -> None:
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = self._loop.create_future()
        server = await asyncio.start_server(self._on_client, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stop
            self._do_cut()
        if self._relays:  # they end once their aborted connections are seen
            await asyncio.wait(self._relays, timeout=STOP_DEADLINE_S)

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        relay = asyncio.current_task()
        assert relay is not None
        self._relays.add(relay)
        relay.add_done_callback(self._relays.discard)
        if self._cut:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        try:
            await asyncio.gather(
                self._relay(reader, up_writer), self._relay(up_reader, writer, replies=True)
            )
        finally:
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.transport.abort()

    async def _relay(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, replies: bool = False
    ) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await reader.read(RELAY_CHUNK):
                if replies and self._swallow:
                    continue
                writer.write(data)
                await writer.drain()
        writer.transport.abort()


class NetnsLink:
    """A namespace NAME and a veth pair: `local_address` here, `peer_address` in the
    namespace (link-local, on a link this test made and removes; a /30 of its own per
    test process, so that two suites running side by side do not share a subnet)."""

    PREFIX = 30
    SUBNETS = 16000  # /30s in 169.254.1.0 .. 169.254.250.255

    def __init__(self) -> None:
        base = (os.getpid() % self.SUBNETS) * 4
        third, fourth = 1 + base // 256, base % 256
        self.local_address = f"169.254.{third}.{fourth + 1}"
        self.peer_address = f"169.254.{third}.{fourth + 2}"
        tag = f"{os.getpid() % 100000}"
        self.name = f"cqlt{tag}"
        self.local = f"cqla{tag}"
        self.peer = f"cqlb{tag}"
        self.made: list[list[str]] = []
        try:
            self._ip("netns", "add", self.name)
            self.made.append(["netns", "del", self.name])
            self._ip("link", "add", self.local, "type", "veth", "peer", "name", self.peer)
            self.made.append(["link", "del", self.local])
            self._ip("link", "set", self.peer, "netns", self.name)
            self._ip("addr", "add", f"{self.local_address}/{self.PREFIX}", "dev", self.local)
            self._ip("link", "set", self.local, "up")
            inside = ["netns", "exec", self.name, "ip"]
            self._ip(*inside, "addr", "add", f"{self.peer_address}/{self.PREFIX}", "dev", self.peer)
            self._ip(*inside, "link", "set", self.peer, "up")
            self._ip(*inside, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise

    @property
    def prefix(self) -> tuple[str, ...]:
        """What runs a command inside the namespace."""
        return ("ip", "netns", "exec", self.name)

    def cut(self) -> None:
        self._ip("link", "set", self.local, "down")

    def heal(self) -> None:
        self._ip("link", "set", self.local, "up")

    def close(self) -> None:
        while self.made:
            subprocess.run(["ip", *self.made.pop()], capture_output=True, check=False)

    @staticmethod
    def _ip(*args: str) -> None:
        subprocess.run(["ip", *args], capture_output=True, check=True, timeout=30)


class Host:
    """One host: `python tests/redis_harness.py MODE OUTDIR URL --host N ...` (after
    `prefix`, a command that runs it elsewhere: `ip netns exec NAME`)."""

    def __init__(
        self, outdir: Path, mode: str, url: str, host: int, *args: str, prefix: tuple[str, ...] = ()
    ) -> None:
        self.outdir = outdir
        self.host = host
        self.stderr_path = outdir / f"host-{host}.err"
        command = [*prefix, sys.executable, HARNESS, mode, str(outdir), url]
        command += ["--host", str(host), *args]
        with open(self.stderr_path, "ab") as stderr:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
            )

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise AssertionError(
                f"host {self.host} exited with {self.process.returncode}:\n{self.stderr()}"
            )

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(STOP_DEADLINE_S)

    def kill(self) -> None:
        """SIGKILL the supervisor and every worker (the host's whole session)."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)


def read_json(path: Path) -> Any:
    with open(path) as f:
        return json.load(f)


def wait_files(
    outdir: Path, pattern: str, count: int, hosts: list[Host], what: str, deadline_s: float
) -> list[Path]:
    """Wait (bounded) until `count` files match `pattern`, failing early if a host died."""

    def enough() -> list[Path] | None:
        for host in hosts:
            host.check_alive()
        found = sorted(outdir.glob(pattern))
        return found if len(found) >= count else None

    return wait_for(enough, what, deadline_s)


# -- the host process ------------------------------------------------------------------------


def _write_json(path: str, value: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f)
    os.replace(tmp, path)


def _touch(path: str) -> None:
    with open(path, "w"):
        pass


class ClusterWorker:
    """One worker of a host (see the module docstring)."""

    def __init__(self, args: argparse.Namespace) -> None:
        import cqloop.workers
        from cqloop import worker_events

        info = cqloop.workers.current_worker()
        assert info is not None
        self.args = args
        self.events = worker_events
        self.tag = f"{args.host}.{info.index}"
        self.observer = info.index == args.observer or info.generation > 1
        barrier = args.barrier_hosts or list(range(args.hosts))
        self.expected = {
            f"{h}.{w}" for h in barrier for w in range(args.workers) if w != args.observer
        }
        self.heard: set[str] = set()
        self.finished: set[str] = set()
        self.log: list[Any] = []
        self.gaps: list[Any] = []
        self.started = False
        self.done = False
        self.posted = asyncio.Event()
        self.flood_count: int | None = None
        self.flooded: list[int] = []
        self.loop = asyncio.get_running_loop()
        self.tasks: set[asyncio.Task[None]] = set()

    def register(self) -> None:
        self.events.register(self.on_event, "t")
        self.events.register(self.on_exited, "cqloop.workers", "exited")
        self.events.register(self.on_gap, "cqloop.worker_events", "gap")
        if self.args.mode != "broadcast":
            self.events.register(self.on_unique, "u", "job")

    def hello(self) -> None:
        if not self.observer:
            self.events.post("t", "hello", self.tag)

    def on_exited(self, data: Any, event: str, source: str, pid: int) -> None:
        if not self.args.exit_after_posting:
            return
        who = f"{self.args.host}.{data['worker']}"
        self.log.append(["exited", who])
        if who == self.args.exit_after_posting and data["generation"] == 1:
            path = os.path.join(self.args.outdir, f"exited-{self.tag}.json")
            _write_json(path, {"tag": self.tag, "events": self.log})

    def on_gap(self, data: Any, event: str, source: str, pid: int) -> None:
        self.gaps.append(data)

    def on_event(self, data: Any, event: str, source: str, pid: int) -> None:
        if event == "f":
            if data[0] == self.tag:
                self.flooded.append(data[1])
                self._check_flood_done()
        elif event == "e":
            self.log.append(data)
            if self.tag == self.args.stall and len(self.log) == 1:
                with open(os.path.join(self.args.outdir, "fifo"), "rb") as fifo:
                    fifo.read(1)  # blocks this worker until the test writes
            if len(self.log) in self.args.progress:
                _touch(os.path.join(self.args.outdir, f"progress-{self.tag}-{len(self.log)}"))
        elif event == "hello":
            if data not in self.heard:
                self.heard.add(data)
                if data != self.tag:
                    self.hello()  # so that a worker that came later hears of us
            if not self.started and not self.observer and self.expected <= self.heard:
                self.started = True
                if self.args.mode == "flood":
                    _touch(os.path.join(self.args.outdir, f"ready-{self.tag}"))
                else:
                    self._spawn(self.post_all())
        elif event == "finished":
            self.finished.add(data)
            if not self.done and not self.observer and self.expected <= self.finished:
                self.done = True
                path = os.path.join(self.args.outdir, f"log-{self.tag}.json")
                _write_json(
                    path,
                    {
                        "tag": self.tag,
                        "pid": os.getpid(),
                        "events": self.log,
                        "gaps": self.gaps,
                        "heard": sorted(self.heard),
                    },
                )

    def on_unique(self, data: Any, event: str, source: str, pid: int) -> None:
        outdir = self.args.outdir
        if data in self.args.kill_key:
            try:
                marker = os.path.join(outdir, f"killed-{data}")
                fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass
            else:
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
                os.kill(os.getpid(), signal.SIGKILL)
        if data in self.args.hold_key:
            _touch(os.path.join(outdir, f"holding-{data}-{os.getpid()}"))
            signal.pause()  # blocks the whole worker until the test kills it
        path = os.path.join(outdir, f"handled-{self.tag}-{os.getpid()}.txt")
        with open(path, "a") as f:
            f.write(f"{data} {os.getpid()}\n")

    def on_sigusr1(self) -> None:
        self._spawn(self.flood())

    async def flood(self) -> None:
        from cqloop.worker_events import PostQueueFull

        count = 0
        error = None
        while count < self.args.posts:
            try:
                self.events.post("t", "f", [self.tag, count, "x" * 64])
            except PostQueueFull as exc:
                error = f"{type(exc).__name__}: {exc}"
                break
            count += 1
            await asyncio.sleep(0)  # let the posts flow as far as they can
        path = os.path.join(self.args.outdir, f"flooded-{self.tag}.json")
        _write_json(path, {"count": count, "error": error})
        self.flood_count = count
        self._check_flood_done()

    def _check_flood_done(self) -> None:
        if self.flood_count is not None and len(self.flooded) == self.flood_count:
            path = os.path.join(self.args.outdir, f"log-{self.tag}.json")
            _write_json(path, {"tag": self.tag, "flooded": self.flooded})

    def _spawn(self, work: Any) -> None:
        task = self.loop.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def post_all(self) -> None:
        args = self.args
        pace = 1.0 / args.rate if args.rate else 0.0
        start = time.monotonic()
        for i in range(args.posts):
            if args.mode == "broadcast":
                await self.events.post_async("t", "e", [self.tag, i])
            else:
                key = f"{self.tag}-{i}"
                await self.events.post_async("u", "job", key, unique=key)
            if pace:
                # Paces the load (so that a fault lands mid-run); no synchronisation.
                delay = start + (i + 1) * pace - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
        for key in args.hold_key + args.kill_key:
            if key.startswith(self.tag + ":"):
                await self.events.post_async("u", "job", key, unique=key)
        if args.shared_key:
            await self.events.post_async("u", "job", args.shared_key, unique=args.shared_key)
        await self.events.post_async("t", "finished", self.tag)
        self.posted.set()


async def _host_app(listener: socket.socket, args: argparse.Namespace) -> None:
    worker = ClusterWorker(args)
    worker.register()
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, worker.on_sigusr1)
    _write_json(
        os.path.join(args.outdir, f"started-{args.host}-{os.getpid()}.json"),
        {"tag": worker.tag, "pid": os.getpid(), "observer": worker.observer},
    )
    worker.hello()
    if worker.tag == args.exit_after_posting and not worker.observer:
        await worker.posted.wait()
        return
    await asyncio.Event().wait()


def _limit(text: str) -> tuple[str, float | int]:
    name, _, value = text.partition("=")
    return name, float(value) if "." in value else int(value)


def host_main(argv: list[str]) -> int:
    import logging

    import cqloop.workers
    from cqloop.worker_events import Limits

    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("broadcast", "unique", "hold", "flood"))
    parser.add_argument("outdir")
    parser.add_argument("url")
    parser.add_argument("--host", type=int, required=True)
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--posts", type=int, default=100)
    parser.add_argument("--rate", type=float, default=0.0)
    parser.add_argument("--progress", type=int, action="append", default=[])
    parser.add_argument("--observer", type=int, default=-1)
    parser.add_argument(
        "--barrier-hosts", type=lambda text: [int(h) for h in text.split(",")], default=[]
    )
    parser.add_argument("--kill-key", action="append", default=[])
    parser.add_argument("--hold-key", action="append", default=[])
    parser.add_argument("--shared-key")
    parser.add_argument("--limit", action="append", default=[], type=_limit)
    parser.add_argument("--stall")
    parser.add_argument("--exit-after-posting")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    async def app(listener: socket.socket) -> None:
        await _host_app(listener, args)

    if args.stall and args.stall.split(".")[0] == str(args.host):
        os.mkfifo(os.path.join(args.outdir, "fifo"))
    return cqloop.workers.serve(
        app,
        workers=args.workers,
        host="127.0.0.1",
        port=0,
        grace_period=5,
        events=args.url,
        limits=Limits(**dict(args.limit)),
    )


if __name__ == "__main__":
    sys.exit(host_main(sys.argv[1:]))
