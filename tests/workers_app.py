"""A cqloop.workers supervisor for tests/test_workers.py and tests/test_worker_events.py.

    python tests/workers_app.py MODE OUTDIR [options]

Runs `cqloop.workers.serve()` in this process (the test runs it as a subprocess and talks
to it through files in OUTDIR and signals). Each worker writes OUTDIR/started-PID.json when
it is up. Modes:

  http    workers answer each connection with their pid and close it
  lifecycle  workers append each "cqloop.workers" event to OUTDIR/lifecycle-PID.jsonl
  crash   workers fail as soon as they start
  stubborn  workers ignore cancellation (the supervisor must kill them)
  events  workers meet at a barrier (every worker has seen every other's "hello"), then
          post --posts events each, then "finished"; a worker is done once it has seen
          "finished" (or "exited") from every first-generation worker, and then writes
          its log to OUTDIR/log-PID.json and OUTDIR/done-PID
  unique  as events, but each worker posts --posts unique events with keys key-0.. and
          logs the unique events it handled
  burst   worker 0 posts --posts payloads of --payload bytes; --slow-worker handles each
          slowly; every worker checks each payload's digest
  stall   worker 0 posts --posts events; worker --slow-worker blocks in its handler on
          OUTDIR/fifo until the test writes to it (after the broker has evicted it)
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import resource
import signal
import socket
import sys
import time
from typing import Any

import cqloop.workers
from cqloop import worker_events
from cqloop.worker_events import Limits

# A slow consumer's time per payload (the slowness under test, not a synchronisation).
SLOW_HANDLER_S = 0.02


def write_json(path: str, value: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f)
    os.replace(tmp, path)


def peak_rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def announce(outdir: str, listener: socket.socket) -> None:
    info = cqloop.workers.current_worker()
    assert info is not None
    address = listener.getsockname()
    write_json(
        os.path.join(outdir, f"started-{info.pid}.json"),
        {
            "pid": info.pid,
            "index": info.index,
            "generation": info.generation,
            "supervisor": info.supervisor_pid,
            "address": address if isinstance(address, str) else list(address),
            "loop": type(asyncio.get_running_loop()).__module__,
        },
    )


async def http_app(listener: socket.socket, outdir: str) -> None:
    pid = str(os.getpid()).encode()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(pid + b"\n")
        await writer.drain()
        writer.close()

    await serve_streams(handle, listener, outdir)


async def serve_streams(handle: Any, listener: socket.socket, outdir: str) -> None:
    """Serve `handle` with asyncio.start_server on the listener until cancelled."""
    server = await asyncio.start_server(handle, sock=listener)
    announce(outdir, listener)
    async with server:
        await server.serve_forever()


async def keepalive_app(listener: socket.socket, outdir: str) -> None:
    """A keep-alive line server in the documented shutdown pattern: a connection waiting
    for its next request is closed when the worker begins to stop; "slow" takes a moment
    to answer (and says it started), so that the test can stop the worker mid-request."""
    pid = str(os.getpid()).encode()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await cqloop.workers.unless_stopping(reader.readline()):
            if line.startswith(b"slow"):
                with open(os.path.join(outdir, "slow-started"), "w"):
                    pass
                await asyncio.sleep(0.5)
            writer.write(pid + b"\n")
            await writer.drain()
        writer.close()

    await serve_streams(handle, listener, outdir)


async def lifecycle_app(listener: socket.socket, outdir: str) -> None:
    path = os.path.join(outdir, f"lifecycle-{os.getpid()}.jsonl")
    with open(path, "a") as out:

        def on_event(data: Any, event: str, source: str, pid: int) -> None:
            out.write(json.dumps([event, data]) + "\n")
            out.flush()

        worker_events.register(on_event, "cqloop.workers")
        announce(outdir, listener)
        await asyncio.Event().wait()


async def stubborn_app(listener: socket.socket, outdir: str) -> None:
    """Ignores being cancelled: the supervisor has to kill it after the grace period."""
    announce(outdir, listener)
    while True:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            with open(os.path.join(outdir, f"cancelled-{os.getpid()}"), "w"):
                pass


class EventsWorker:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        info = cqloop.workers.current_worker()
        assert info is not None
        self.info = info
        self.index = info.index
        self.loop = asyncio.get_running_loop()
        self.log: list[list[Any]] = []
        self.hellos: set[int] = set()
        self.finished: set[int] = set()
        self.ready = self.loop.create_future()
        self.done = self.loop.create_future()
        self.unique_handled: list[str] = []
        self.received = 0
        self.bad = 0
        self.blocked = False
        worker_events.register(self.on_event)

    def seq(self) -> int:
        return worker_events.client().statistics().next_seq - 1

    def on_event(self, data: Any, event: str, source: str, pid: int) -> None:
        args = self.args
        if args.mode == "burst" and source == "test" and event == "blob":
            digest = hashlib.sha256(data["blob"].encode()).hexdigest()
            self.received += 1
            if digest != data["sha"] or len(data["blob"]) != args.payload:
                self.bad += 1
            self.log.append([self.seq(), source, event, data["i"], pid])
            if self.index == args.slow_worker:
                time.sleep(SLOW_HANDLER_S)
        elif source == "test" and event == "u":
            self.unique_handled.append(data["key"])
            self.log.append([self.seq(), source, event, data, pid])
        else:
            self.log.append([self.seq(), source, event, data, pid])
        if source == "cqloop.workers" and event == "started" and self.info.generation == 1:
            worker_events.post("test", "hello", self.index)
        elif source == "test" and event == "hello":
            self.hellos.add(data)
            if len(self.hellos) == args.workers and not self.ready.done():
                self.ready.set_result(None)
        elif source == "test" and event == "finished":
            self.finished.add(data)
        elif source == "cqloop.workers" and event == "exited" and data["generation"] == 1:
            self.finished.add(data["worker"])
        if (
            args.mode == "stall"
            and self.index == args.slow_worker
            and source == "test"
            and event == "n"
            and not self.blocked
        ):
            self.blocked = True
            with open(os.path.join(args.outdir, "fifo"), "rb") as fifo:
                fifo.read(1)
        if len(self.finished) == self.expected_finishers() and not self.done.done():
            self.done.set_result(None)

    def expected_finishers(self) -> int:
        return 1 if self.args.mode in ("burst", "stall") else self.args.workers

    async def run(self) -> None:
        args = self.args
        if self.info.generation > 1:
            await asyncio.Event().wait()  # a replacement only listens
        await self.ready
        posters = 1 if args.mode in ("burst", "stall") else args.workers
        if self.index < posters:
            await self.post_all()
            worker_events.post("test", "finished", self.index)
        await self.done
        stats = worker_events.client().statistics()
        write_json(
            os.path.join(args.outdir, f"log-{self.info.pid}.json"),
            {
                "index": self.index,
                "log": self.log,
                "unique": self.unique_handled,
                "received": self.received,
                "bad": self.bad,
                "peak_rss_kib": peak_rss_kib(),
                "gaps": stats.gaps,
                "missed": stats.missed,
            },
        )
        with open(os.path.join(args.outdir, f"done-{self.info.pid}"), "w"):
            pass
        await asyncio.Event().wait()

    async def post_all(self) -> None:
        args = self.args
        if args.mode == "burst":
            for i in range(args.posts):
                blob = (f"{i:08d}" * (args.payload // 8 + 1))[: args.payload]
                sha = hashlib.sha256(blob.encode()).hexdigest()
                await worker_events.post_async("test", "blob", {"i": i, "blob": blob, "sha": sha})
            return
        for i in range(args.posts):
            if self.index == args.kill_worker and i == args.kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            if args.mode == "unique":
                key = f"key-{i}"
                data = {"key": key, "from": self.index}
                await worker_events.post_async("test", "u", data, unique=key)
            elif args.mode == "stall":
                await worker_events.post_async("test", "n", {"i": i, "pad": "p" * args.payload})
            else:
                await worker_events.post_async("test", "n", [self.index, i])


async def events_app(listener: socket.socket, args: argparse.Namespace) -> None:
    announce(args.outdir, listener)
    worker = EventsWorker(args)
    try:
        await worker.run()
    finally:
        # What a worker had seen when it was stopped: for the test's failure messages.
        stats = worker_events.client().statistics()
        write_json(
            os.path.join(args.outdir, f"stopped-{worker.info.pid}.json"),
            {
                "tail": worker.log[-5:],
                "events": len(worker.log),
                "stats": repr(stats),
                "hellos": sorted(worker.hellos),
                "finished": sorted(worker.finished),
            },
        )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "mode",
        choices=[
            "http",
            "keepalive",
            "lifecycle",
            "crash",
            "stubborn",
            "events",
            "unique",
            "burst",
            "stall",
        ],
    )
    parser.add_argument("outdir")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--posts", type=int, default=100)
    parser.add_argument("--payload", type=int, default=0)
    parser.add_argument("--kill-worker", type=int, default=-1)
    parser.add_argument("--kill-at", type=int, default=-1)
    parser.add_argument("--slow-worker", type=int, default=-1)
    parser.add_argument("--grace", type=float, default=5.0)
    parser.add_argument("--reuse-port", choices=["auto", "yes", "no"], default="auto")
    parser.add_argument("--unix", action="store_true", help="serve on OUTDIR/sock")
    parser.add_argument("--limits", default="{}", help="Limits(**json)")
    parser.add_argument("--codec", default="json")
    parser.add_argument("--max-boot-failures", type=int, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(process)d %(name)s %(levelname)s %(message)s")
    with open(os.path.join(args.outdir, "supervisor.pid"), "w") as f:
        f.write(str(os.getpid()))
    if args.mode == "http":

        async def app(listener: socket.socket) -> None:
            await http_app(listener, args.outdir)

    elif args.mode == "keepalive":

        async def app(listener: socket.socket) -> None:
            await keepalive_app(listener, args.outdir)

    elif args.mode == "lifecycle":

        async def app(listener: socket.socket) -> None:
            await lifecycle_app(listener, args.outdir)

    elif args.mode == "crash":

        async def app(listener: socket.socket) -> None:
            announce(args.outdir, listener)
            raise RuntimeError("this app fails at once")

    elif args.mode == "stubborn":

        async def app(listener: socket.socket) -> None:
            await stubborn_app(listener, args.outdir)

    else:

        async def app(listener: socket.socket) -> None:
            await events_app(listener, args)

    reuse_port: Any = {"auto": "auto", "yes": True, "no": False}[args.reuse_port]
    where: dict[str, Any] = (
        {"path": os.path.join(args.outdir, "sock")}
        if args.unix
        else {"host": "127.0.0.1", "port": 0, "reuse_port": reuse_port}
    )
    return cqloop.workers.serve(
        app,
        workers=args.workers,
        grace_period=args.grace,
        codec=args.codec,
        limits=Limits(**json.loads(args.limits)),
        max_boot_failures=args.max_boot_failures,
        **where,
    )


if __name__ == "__main__":
    sys.exit(main())
