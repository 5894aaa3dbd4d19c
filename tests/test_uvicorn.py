"""Real uvicorn serving on cqloop: `uvicorn app:app --loop cqloop:new_event_loop`.

uvicorn 0.36 and later take an import string for --loop and call it as the loop factory,
which is what `cqloop.new_event_loop` is. Each test starts uvicorn in a subprocess on a
listening socket the test made (passed with --fd, so no port is guessed), asks over
loopback which loop served the request, and stops uvicorn with SIGINT, bounded by a timeout.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.serving import DEADLINE_S, ask, wait_for

uvicorn = pytest.importorskip("uvicorn")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REWRITE_EVERY_S = 2.0

APP = textwrap.dedent(
    """
    import asyncio, json, os

    MARK = {mark!r}

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        loop = asyncio.get_running_loop()
        body = json.dumps({{
            "loop": type(loop).__module__ + "." + type(loop).__name__,
            "pid": os.getpid(),
            "mark": MARK,
        }}).encode()
        await send({{"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]}})
        await send({{"type": "http.response.body", "body": body}})
    """
)


def write_app(folder: Path, mark: str) -> None:
    (folder / "app.py").write_text(APP.format(mark=mark))


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.create_server(("127.0.0.1", 0))
    yield sock
    sock.close()


@pytest.fixture
def start_uvicorn(
    tmp_path: Path, listener: socket.socket
) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    log = open(tmp_path / "uvicorn.log", "w")  # noqa: SIM115

    def start(*options: str) -> subprocess.Popen[str]:
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        fd = listener.fileno()
        argv = [sys.executable, "-m", "uvicorn", "app:app", "--loop", "cqloop:new_event_loop"]
        argv += ["--fd", str(fd), "--log-level", "info", *options]
        proc = subprocess.Popen(
            argv,
            cwd=tmp_path,
            env=env,
            pass_fds=(fd,),
            stdout=subprocess.DEVNULL,
            stderr=log,
            text=True,
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(DEADLINE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    log.close()


def stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGINT)
    return proc.wait(DEADLINE_S)


def test_uvicorn_serves_on_cqloop(tmp_path: Path, listener, start_uvicorn):
    write_app(tmp_path, "one")
    proc = start_uvicorn()
    port = listener.getsockname()[1]
    answer = wait_for(lambda: ask(port), "an answer", proc)
    assert answer == {"loop": "cqloop.loop.Loop", "pid": proc.pid, "mark": "one"}
    assert stop(proc) == 0


def test_uvicorn_workers_each_serve_on_cqloop(tmp_path: Path, listener, start_uvicorn):
    write_app(tmp_path, "workers")
    proc = start_uvicorn("--workers", "2")
    port = listener.getsockname()[1]
    log = tmp_path / "uvicorn.log"
    wait_for(lambda: log.read_text().count("Application startup complete") >= 2, "2 workers", proc)
    answers = [wait_for(lambda: ask(port), "an answer", proc) for _ in range(10)]
    assert {answer["loop"] for answer in answers} == {"cqloop.loop.Loop"}
    assert all(answer["pid"] != proc.pid for answer in answers)
    assert stop(proc) == 0


def test_uvicorn_reload_restarts_the_app_on_cqloop(tmp_path: Path, listener, start_uvicorn):
    write_app(tmp_path, "before")
    proc = start_uvicorn("--reload", "--reload-dir", str(tmp_path))
    port = listener.getsockname()[1]
    first = wait_for(lambda: ask(port), "an answer", proc)
    assert first["loop"] == "cqloop.loop.Loop"
    assert first["mark"] == "before"
    write_app(tmp_path, "after")
    written = [time.monotonic()]

    def reloaded() -> dict[str, object] | None:
        answer = ask(port)
        if answer is not None and answer["mark"] == "after":
            return answer
        if time.monotonic() - written[0] > REWRITE_EVERY_S:
            # The reloader notes the files' times at its first scan, which a loaded machine
            # may run after the first edit: edit again until it sees one.
            write_app(tmp_path, "after")
            written[0] = time.monotonic()
        return None

    second = wait_for(reloaded, "the reloaded app", proc)
    assert second["loop"] == "cqloop.loop.Loop"
    assert second["pid"] != first["pid"]
    assert stop(proc) == 0
