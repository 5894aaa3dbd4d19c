"""The HTTP benchmark's server: one event loop serving one app on a listening socket it is
handed.

    python -m cqloop._bench.http_server --loop cqloop|asyncio|uvloop|rloop
                                        --app protocol|uvicorn-httptools|uvicorn-h11|aiohttp
                                        --fd N [--cpu N]

benchmarks/http.py starts it as a child process. Once serving it prints one line of JSON
on stdout and then serves until its stdin reaches end of file or it is killed:

    {"serving": "..."}        serving (what: the app and loop)
    {"unavailable": "..."}    the loop or the app's framework is not installed
    {"error": "..."}          anything else went wrong

Every app answers each request with the same 13-byte plain-text body, keeping the
connection alive unless the request says `Connection: close`:

    protocol            a bare asyncio.Protocol with httptools' request parser, writing a
                        canned response per request (the loop's own path is the work)
    uvicorn-httptools   uvicorn with its httptools protocol, a plain ASGI app
    uvicorn-h11         uvicorn with its h11 protocol (pure Python), the same app
    aiohttp             aiohttp.web with one handler
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
from typing import Any

from cqloop._bench.echo.server import Unavailable, _exit_at_end_of_stdin, new_loop

APPS = ("protocol", "uvicorn-httptools", "uvicorn-h11", "aiohttp")
BODY = b"Hello, world!"
KEEP_ALIVE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (
    len(BODY),
    BODY,
)
CLOSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
    b"Connection: close\r\n\r\n%s" % (len(BODY), BODY)
)


class HttpProtocol(asyncio.Protocol):
    """The bare responder: parse with httptools, answer each complete request."""

    def __init__(self) -> None:
        import httptools

        self.parser = httptools.HttpRequestParser(self)
        self.transport: Any = None
        self.close_after = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except Exception:
            self.transport.close()

    # httptools' callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"connection" and value.lower() == b"close":
            self.close_after = True

    def on_message_complete(self) -> None:
        if self.close_after:
            self.transport.write(CLOSE)
            self.transport.close()
        else:
            self.transport.write(KEEP_ALIVE)


async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(BODY))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": BODY})


async def serve_protocol(sock: socket.socket) -> None:
    try:
        import httptools  # noqa: F401
    except ImportError as exc:
        raise Unavailable(f"httptools is not installed ({exc})") from exc
    server = await asyncio.get_running_loop().create_server(HttpProtocol, sock=sock)
    _report(serving="protocol")
    # The server serves from create_server on; waiting on an event rather than in
    # serve_forever(), because rloop's serve_forever() on a server that is already serving
    # stops it from accepting (connections are refused).
    async with server:
        await asyncio.Event().wait()


async def serve_uvicorn(sock: socket.socket, http: str) -> None:
    try:
        import uvicorn

        if http == "httptools":
            import httptools  # noqa: F401
    except ImportError as exc:
        raise Unavailable(f"uvicorn with {http} is not installed ({exc})") from exc
    config = uvicorn.Config(
        asgi_app, http=http, loop="none", lifespan="off", access_log=False, log_level="error"
    )
    server = uvicorn.Server(config)
    serving = asyncio.ensure_future(server.serve(sockets=[sock]))
    while not server.started and not serving.done():
        await asyncio.sleep(0.01)
    _report(serving=f"uvicorn-{http}")
    await serving


async def serve_aiohttp(sock: socket.socket) -> None:
    try:
        from aiohttp import web
    except ImportError as exc:
        raise Unavailable(f"aiohttp is not installed ({exc})") from exc

    async def handle(request: web.Request) -> web.Response:
        return web.Response(body=BODY, content_type="text/plain")

    app = web.Application()
    app.router.add_get("/", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    _report(serving="aiohttp")
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def _report(**fields: str) -> None:
    print(json.dumps(fields), flush=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="http_server")
    parser.add_argument("--loop", required=True)
    parser.add_argument("--app", choices=APPS, required=True)
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--cpu", type=int)
    args = parser.parse_args(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    _exit_at_end_of_stdin()
    sock = socket.socket(fileno=args.fd)
    sock.setblocking(False)
    apps = {
        "protocol": lambda: serve_protocol(sock),
        "uvicorn-httptools": lambda: serve_uvicorn(sock, "httptools"),
        "uvicorn-h11": lambda: serve_uvicorn(sock, "h11"),
        "aiohttp": lambda: serve_aiohttp(sock),
    }
    try:
        loop = new_loop(args.loop)
        with asyncio.Runner(loop_factory=lambda: loop) as runner:
            runner.run(apps[args.app]())
    except Unavailable as exc:
        _report(unavailable=str(exc))
    except KeyboardInterrupt:
        pass
    except Exception as exc:
        _report(error=f"{type(exc).__name__}: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
