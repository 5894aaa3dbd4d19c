"""Real gunicorn with cqloop's worker classes (cqloop/gunicorn.py): 2 workers on a loopback
socket the test made (`--bind fd://N`), requests answered on cqloop, a reload on SIGHUP
(new workers answer, still on cqloop), a stop on SIGTERM within the graceful timeout (no
worker needed SIGKILL; how long the stop takes is gunicorn's and the framework's, alike on
stock asyncio).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serving import DEADLINE_S, ask, wait_for

pytest.importorskip("gunicorn")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GRACEFUL_TIMEOUT_S = 5

APPS = {
    "asgi_app.py": """
        import asyncio, json, os

        async def app(scope, receive, send):
            if scope["type"] != "http":
                return
            loop = asyncio.get_running_loop()
            body = json.dumps({"loop": type(loop).__module__, "pid": os.getpid()}).encode()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": body})
        """,
    "aiohttp_app.py": """
        import asyncio, os
        from aiohttp import web

        async def handle(request):
            loop = asyncio.get_running_loop()
            return web.json_response({"loop": type(loop).__module__, "pid": os.getpid()})

        async def make_app():
            app = web.Application()
            app.router.add_get("/", handle)
            return app
        """,
}

WORKERS = {
    "uvicorn": ("cqloop.gunicorn.UvicornWorker", "asgi_app:app", "uvicorn_worker"),
    "aiohttp": ("cqloop.gunicorn.AiohttpWorker", "aiohttp_app:make_app", "aiohttp"),
}


def _has_control_socket() -> bool:
    from gunicorn.config import KNOWN_SETTINGS

    return any(setting.name == "control_socket_disable" for setting in KNOWN_SETTINGS)


class Gunicorn:
    def __init__(self, folder: Path, kind: str) -> None:
        worker_class, app, needs = WORKERS[kind]
        pytest.importorskip(needs)
        for name, source in APPS.items():
            (folder / name).write_text(textwrap.dedent(source))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.log_path = folder / "gunicorn.log"
        self.log = open(self.log_path, "w")  # noqa: SIM115
        fd = self.listener.fileno()
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        argv = [sys.executable, "-m", "gunicorn", "-k", worker_class, "-w", "2"]
        argv += ["--bind", f"fd://{fd}", "--graceful-timeout", str(GRACEFUL_TIMEOUT_S)]
        if _has_control_socket():
            # gunicorn 24+ opens one in the home folder by default: parallel runs would share it.
            argv.append("--no-control-socket")
        self.proc = subprocess.Popen(
            [*argv, app],
            cwd=folder,
            env=env,
            pass_fds=(fd,),
            stdout=subprocess.DEVNULL,
            stderr=self.log,
        )

    def booted(self) -> list[int]:
        """The pids of the workers booted so far, in order."""
        text = self.log_path.read_text()
        return [int(pid) for pid in re.findall(r"Booting worker with pid: (\d+)", text)]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.listener.close()
        self.log.close()


@pytest.fixture(params=sorted(WORKERS))
def gunicorn(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Gunicorn]:
    server = Gunicorn(tmp_path, request.param)
    yield server
    server.close()


def test_gunicorn_workers_serve_on_cqloop_reload_on_sighup_stop_on_sigterm(gunicorn: Gunicorn):
    proc = gunicorn.proc
    first = wait_for(lambda: len(gunicorn.booted()) >= 2 and gunicorn.booted(), "2 workers", proc)
    answer = wait_for(lambda: ask(gunicorn.port), "an answer", proc)
    assert answer["loop"] == "cqloop.loop"
    assert answer["pid"] in first

    proc.send_signal(signal.SIGHUP)
    booted = wait_for(lambda: len(gunicorn.booted()) >= 4 and gunicorn.booted(), "a reload", proc)
    new = set(booted[2:])

    def answered_by_a_new_worker() -> dict[str, object] | None:
        answer = ask(gunicorn.port)
        return answer if answer is not None and answer["pid"] in new else None

    answer = wait_for(answered_by_a_new_worker, "an answer from a new worker", proc)
    assert answer["loop"] == "cqloop.loop"

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(GRACEFUL_TIMEOUT_S + DEADLINE_S) == 0, gunicorn.log_path.read_text()
    log = gunicorn.log_path.read_text()
    # Within the graceful timeout: the master never had to kill a worker.
    assert "SIGKILL" not in log and "Shutting down: Master" in log, log


@pytest.mark.parametrize(
    ("name", "missing", "message"),
    [
        ("UvicornWorker", "uvicorn_worker", "needs the uvicorn-worker package"),
        ("AiohttpWorker", "aiohttp", "needs aiohttp and gunicorn"),
    ],
)
def test_a_worker_class_without_its_packages_says_what_to_install(
    name: str, missing: str, message: str
):
    code = f"import sys; sys.modules[{missing!r}] = None; import cqloop.gunicorn as g; g.{name}"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert message in proc.stderr


def test_the_worker_classes_are_the_frameworks_own_with_cqloop_in_them():
    import cqloop.gunicorn

    uvicorn_worker = pytest.importorskip("uvicorn_worker")
    aiohttp_worker = pytest.importorskip("aiohttp.worker")
    assert issubclass(cqloop.gunicorn.UvicornWorker, uvicorn_worker.UvicornWorker)
    assert cqloop.gunicorn.UvicornWorker.CONFIG_KWARGS["loop"] == "cqloop:new_event_loop"
    assert issubclass(cqloop.gunicorn.AiohttpWorker, aiohttp_worker.GunicornWebWorker)
    assert repr(cqloop.gunicorn.AiohttpWorker) == "<class 'cqloop.gunicorn.AiohttpWorker'>"
    with pytest.raises(AttributeError):
        cqloop.gunicorn.SyncWorker  # noqa: B018
