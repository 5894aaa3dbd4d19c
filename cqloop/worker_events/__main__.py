"""python -m cqloop.worker_events --socket PATH: a standalone broker.

For processes not started by cqloop.workers: each connects with
`await cqloop.worker_events.connect(PATH)` and gets the same guarantees as workers do
(one total order, credit-based flow control, unique events, gap events on eviction).

The socket file is created with mode 0600 (bound under a umask that allows nothing else,
so there is no moment at which it is open to others), and the kernel's peer credentials
(SO_PEERCRED) of each connection must name this user (or root); anyone else is refused.
JSON only: pickle would let any client run code in every other client. Runs until SIGTERM
or SIGINT, then closes every connection and removes the socket file.

`--events redis://HOST:PORT/DB?stream=NAME` bridges this broker to a Redis stream shared
with other hosts, as cqloop.workers.serve(events=...) does (docs/cluster.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import stat
import sys

import cqloop
from cqloop.worker_events._sigwake import watch_signals
from cqloop.worker_events.broker import Broker
from cqloop.worker_events.cluster import ClusterSettings, require_redis
from cqloop.worker_events.codec import Codec
from cqloop.worker_events.limits import DEFAULT_MAX_PAYLOAD_BYTES, Limits

SOCKET_MODE = 0o600
# The umask while binding: the file is born 0600 (0o777 & ~0o177).
BIND_UMASK = 0o177
LISTEN_BACKLOG = 128


def _bind_private(path: str) -> socket.socket:
    """A listening Unix socket at `path`, mode 0600. It is bound and set up under a
    temporary name and renamed into place, so `path` appears only once it accepts
    connections (and a client can wait for the file rather than retry connecting)."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)  # a stale socket from an earlier run
    staging = f"{path}.{os.getpid()}.tmp"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old_umask = os.umask(BIND_UMASK)
        try:
            sock.bind(staging)
        finally:
            os.umask(old_umask)
        os.chmod(staging, SOCKET_MODE)
        sock.listen(LISTEN_BACKLOG)
        os.rename(staging, path)
    except BaseException:
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(staging)
        raise
    return sock


async def serve_unix(
    path: str,
    limits: Limits,
    ready: asyncio.Future[None] | None = None,
    cluster: ClusterSettings | None = None,
) -> None:
    """Run a broker on a Unix socket at `path` until SIGTERM or SIGINT (bridged to
    `cluster`'s Redis stream when given)."""
    loop = asyncio.get_running_loop()
    broker = Broker(codec=Codec.JSON, limits=limits)
    bridge = None
    if cluster is not None:
        from cqloop.worker_events._redis_bridge import RedisBridge

        bridge = RedisBridge(cluster, broker)
        broker.set_upstream(bridge)
        bridge.start()
    sock = _bind_private(path)
    stop = loop.create_future()

    def on_signal(signum: int) -> None:
        if not stop.done():
            stop.set_result(signum)

    unwatch_signals = watch_signals(loop, (signal.SIGTERM, signal.SIGINT), on_signal)
    server = await loop.create_unix_server(broker.protocol_factory, sock=sock)
    try:
        logging.getLogger("cqloop.worker_events").info(
            "worker_events broker %d listening on %s", os.getpid(), path
        )
        if ready is not None:
            ready.set_result(None)
        await stop
    finally:
        unwatch_signals()
        server.close()
        if bridge is not None:
            await bridge.close(limits.stall_timeout)
        broker.close()
        await server.wait_closed()
        with contextlib.suppress(OSError):
            os.unlink(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cqloop.worker_events",
        description="A standalone cqloop.worker_events broker on a Unix socket.",
    )
    parser.add_argument("--socket", required=True, metavar="PATH", help="the socket file")
    parser.add_argument(
        "--max-payload",
        type=int,
        default=DEFAULT_MAX_PAYLOAD_BYTES,
        metavar="BYTES",
        help="the largest encoded event (default %(default)s)",
    )
    parser.add_argument(
        "--stall-timeout",
        type=float,
        metavar="SECONDS",
        help="evict a client that handles nothing this long while it holds everyone back",
    )
    parser.add_argument(
        "--unique-window",
        type=float,
        metavar="SECONDS",
        help="how long a unique key coalesces later posts of it",
    )
    parser.add_argument(
        "--events",
        metavar="URL",
        help="bridge to a Redis stream shared with other hosts: "
        "redis://[:PASSWORD@]HOST:PORT/DB?stream=NAME (docs/cluster.md)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    options: dict[str, float | int] = {"max_payload": args.max_payload}
    if args.stall_timeout is not None:
        options["stall_timeout"] = args.stall_timeout
    if args.unique_window is not None:
        options["unique_window"] = args.unique_window
    limits = Limits(**options)  # type: ignore[arg-type]
    cluster = None
    if args.events is not None:
        try:
            cluster = ClusterSettings.from_url(args.events)
            require_redis()
        except (ImportError, ValueError) as exc:
            parser.error(str(exc))
    cqloop.run(serve_unix(args.socket, limits, cluster=cluster))
    return 0


if __name__ == "__main__":
    sys.exit(main())
