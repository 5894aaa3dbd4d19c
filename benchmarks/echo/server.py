"""The echo benchmark's server: one event loop serving echo in one mode on one address.

    python server.py --loop cqloop|asyncio|uvloop|rloop
                     --mode protocol|buffered|streams|sock|readline|cqsocket
                     (--tcp HOST:PORT | --unix PATH) [--cpu N]

benchmarks/echo/run.py starts it as a child process (by path, so that it needs nothing from
the harness and imports cqloop only to run on it). Once listening it prints one line of JSON
on stdout and then serves until its stdin reaches end of file or it is killed:

    {"address": "tcp:127.0.0.1:40123"}    listening (the port actually bound) or
    {"address": "unix:/tmp/.../x.sock"}
    {"unavailable": "..."}                 the loop cannot serve this mode or transport
                                           (NotImplementedError, a loop not installed)
    {"error": "..."}                       anything else went wrong

The modes are the four ways asyncio code serves a connection:

    protocol   asyncio.Protocol: data_received() writes the bytes back
    buffered   asyncio.BufferedProtocol: reads into a preallocated buffer, writes a slice
    streams    asyncio.start_server(): StreamReader.read(), StreamWriter.write(), drain()
    sock       loop.sock_accept() on a non-blocking listening socket, then a task per
               connection doing loop.sock_recv() and loop.sock_sendall()

and two line-echo modes, for CRLF-terminated lines (the load generator's -l):

    readline   asyncio.start_server(): StreamReader.readline(), write(), drain()
    cqsocket   cqloop.socket: `await con.read("*l")` and `await con.write(line, "\n")`
               (text mode, line buffered: the CRLF comes back from the LF)

Each mode's handler is the plainest code that mode allows, the same for every loop, so that
the loop's work is what differs between the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, cast

READ_BYTES = 64 * 1024  # per read in the buffered, streams and sock modes
# The cqsocket mode's line limit: past cqueues' default (4096) a line comes back cut, as
# cqueues specifies; the benchmark's lines go up to 100 KiB and more.
CQ_MAXLINE_BYTES = 64 * 1024 * 1024
LISTEN_BACKLOG = 1024
STDIN_FD = 0
MODES = ("protocol", "buffered", "streams", "sock")
LINE_MODES = ("readline", "cqsocket")  # the load generator must send lines (-l)
ALL_MODES = MODES + LINE_MODES
LOOPS = ("cqloop", "asyncio", "uvloop", "rloop")  # micro.ALL_LOOPS; this file imports nothing

Address = tuple[str, int] | str  # (host, port) for TCP, a path for Unix
# What a mode's serve_*() returns: what must stay referenced while it serves (its server,
# its tasks), and the address it is bound to, as getsockname() gives it.
Listening = tuple[object, Any]


class Unavailable(Exception):
    """The loop cannot serve the requested mode or transport."""


# --------------------------------------------------------------------------------------------
# The four modes
# --------------------------------------------------------------------------------------------


class EchoProtocol(asyncio.Protocol):
    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not a check: rloop's transports do not derive from asyncio's classes.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


class EchoBufferedProtocol(asyncio.BufferedProtocol):
    """Reads into one buffer for the life of the connection and writes back a slice of it.

    A transport may keep a reference to the slice it was given instead of copying it
    (uvloop does, until its end-of-iteration flush): the buffer is only handed out again
    once the transport holds no unsent data, and a fresh one is made otherwise.
    """

    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.buffer = memoryview(bytearray(READ_BYTES))

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.transport.get_write_buffer_size():
            self.buffer = memoryview(bytearray(READ_BYTES))
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.transport.write(self.buffer[:nbytes])


async def _echo_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(READ_BYTES):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass  # the load generator is gone
    finally:
        writer.close()


async def _echo_lines(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while line := await reader.readline():
            writer.write(line)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def _echo_cqsocket(con: Any) -> None:
    try:
        while (line := await con.read("*l")) is not None:
            await con.write(line, b"\n")
    except ConnectionError:
        pass
    finally:
        con.close()


async def _echo_sock(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> None:
    with conn:
        try:
            while data := await loop.sock_recv(conn, READ_BYTES):
                await loop.sock_sendall(conn, data)
        except ConnectionError:
            pass


async def serve_protocol(address: Address) -> Listening:
    return await _serve_with(EchoProtocol, address)


async def serve_buffered(address: Address) -> Listening:
    return await _serve_with(EchoBufferedProtocol, address)


async def _serve_with(factory: Callable[[], asyncio.BaseProtocol], address: Address) -> Listening:
    loop = asyncio.get_running_loop()
    if isinstance(address, str):
        server = await loop.create_unix_server(factory, address, backlog=LISTEN_BACKLOG)
    else:
        server = await loop.create_server(factory, *address, backlog=LISTEN_BACKLOG)
    return server, server.sockets[0].getsockname()


async def serve_streams(address: Address) -> Listening:
    if isinstance(address, str):
        server = await asyncio.start_unix_server(_echo_stream, address, backlog=LISTEN_BACKLOG)
    else:
        server = await asyncio.start_server(_echo_stream, *address, backlog=LISTEN_BACKLOG)
    return server, server.sockets[0].getsockname()


async def serve_readline(address: Address) -> Listening:
    if isinstance(address, str):
        server = await asyncio.start_unix_server(_echo_lines, address, backlog=LISTEN_BACKLOG)
    else:
        server = await asyncio.start_server(_echo_lines, *address, backlog=LISTEN_BACKLOG)
    return server, server.sockets[0].getsockname()


async def serve_cqsocket(address: Address) -> Listening:
    try:
        from cqloop import socket as cqsocket
    except ImportError as exc:
        raise Unavailable(f"cqloop is not installed ({exc})") from exc
    if isinstance(address, str):
        listener = cqsocket.listen(path=address, backlog=LISTEN_BACKLOG)
    else:
        listener = cqsocket.listen(*address, backlog=LISTEN_BACKLOG, nodelay=True)
    listener.setmaxline(CQ_MAXLINE_BYTES, CQ_MAXLINE_BYTES)  # accepted sockets inherit it
    tasks: set[asyncio.Future[Any]] = set()

    async def accept_forever() -> None:
        async for con in listener.clients():
            task = asyncio.ensure_future(_echo_cqsocket(con))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    tasks.add(asyncio.ensure_future(accept_forever()))
    name = listener.localname()
    return (listener, tasks), (name[1] if name[0] == socket.AF_UNIX else (name[1], name[2]))


async def serve_sock(address: Address) -> Listening:
    loop = asyncio.get_running_loop()
    if isinstance(address, str):
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    else:
        family = socket.getaddrinfo(*address, type=socket.SOCK_STREAM)[0][0]
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(address)
    listener.listen(LISTEN_BACKLOG)
    listener.setblocking(False)
    tasks: set[asyncio.Future[Any]] = set()  # strong references to the running tasks

    def start(job: Awaitable[Any]) -> asyncio.Future[Any]:
        task = asyncio.ensure_future(job)
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return task

    async def accept_forever(accepting: asyncio.Future[tuple[socket.socket, Any]]) -> None:
        while True:
            conn, _ = await accepting
            accepting = start(loop.sock_accept(listener))
            conn.setblocking(False)
            if listener.family != socket.AF_UNIX:
                # The transports of the other modes set TCP_NODELAY themselves.
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            start(_echo_sock(loop, conn))

    # A loop without sock_accept fails the first accept at its first step: find out before
    # reporting the address, so that the harness is told "unavailable" instead of a hang.
    first = start(loop.sock_accept(listener))
    await asyncio.sleep(0)
    if first.done():
        first.result()
    start(accept_forever(first))
    return tasks, listener.getsockname()


SERVE: dict[str, Callable[[Address], Coroutine[Any, Any, Listening]]] = {
    "protocol": serve_protocol,
    "buffered": serve_buffered,
    "streams": serve_streams,
    "sock": serve_sock,
    "readline": serve_readline,
    "cqsocket": serve_cqsocket,
}


# --------------------------------------------------------------------------------------------
# Process
# --------------------------------------------------------------------------------------------


def new_loop(name: str) -> asyncio.AbstractEventLoop:
    try:
        if name == "cqloop":
            import cqloop

            return cqloop.new_event_loop()
        if name == "uvloop":
            import uvloop

            return uvloop.new_event_loop()
        if name == "rloop":
            import rloop

            return rloop.new_event_loop()
    except ImportError as exc:
        raise Unavailable(f"{name} is not installed ({exc})") from exc
    return asyncio.new_event_loop()


def _report(**fields: str) -> None:
    print(json.dumps(fields), flush=True)


def _exit_at_end_of_stdin() -> None:
    """The harness closes our stdin to stop us, and it closes when the harness dies. A thread
    blocked in read() waits for that without the loop knowing (it releases the GIL). It reads
    the raw fd: a thread blocked in sys.stdin's buffered reader holds its lock, which makes
    an interpreter that exits meanwhile abort."""

    def wait() -> None:
        while os.read(STDIN_FD, READ_BYTES):
            pass
        os._exit(0)

    threading.Thread(target=wait, name="stdin-watch", daemon=True).start()


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _format_address(bound: Any) -> str:
    if isinstance(bound, tuple):
        return f"tcp:{bound[0]}:{bound[1]}"
    return f"unix:{bound.decode() if isinstance(bound, bytes) else bound}"


async def _serve(mode: str, address: Address) -> None:
    listening = await SERVE[mode](address)  # this suspended frame keeps it referenced
    _report(address=_format_address(listening[1]))
    await asyncio.get_running_loop().create_future()  # serve until the process ends


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Echo server for the echo benchmark.")
    parser.add_argument("--loop", choices=LOOPS, required=True)
    parser.add_argument("--mode", choices=ALL_MODES, required=True)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--tcp", metavar="HOST:PORT", help="listen on TCP (PORT may be 0)")
    where.add_argument("--unix", metavar="PATH", help="listen on a Unix socket")
    parser.add_argument("--cpu", type=int, default=None, help="pin this process to one CPU")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = _parse_args(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    address: Address
    if args.tcp is not None:
        host, _, port = args.tcp.rpartition(":")
        address = (host, int(port))
    else:
        address = args.unix
    _exit_at_end_of_stdin()
    try:
        loop = new_loop(args.loop)
        asyncio.set_event_loop(loop)
        loop.run_until_complete(_serve(args.mode, address))
    except (Unavailable, NotImplementedError) as exc:
        _report(unavailable=_describe(exc))
        return 1
    except Exception as exc:
        _report(error=_describe(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
