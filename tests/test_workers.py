"""cqloop.workers: prefork workers on one listening socket, restarts, signals.

Each test runs a supervisor (tests/workers_app.py) in a subprocess and talks to it over
loopback and through files (tests/workers_harness.py); fork and signal behaviour is never
exercised in the pytest process itself. The fd leak check applies: the test process opens
only its pipes to the subprocess and its client sockets, and closes them.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import signal
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import cqloop.workers
from tests.workers_harness import pid_alive, supervisor, wait_for

GRACE_S = 5.0
LOAD_CLIENTS = 4  # concurrent clients while a worker is killed
REQUEST_TIMEOUT_S = 5.0


def request(address: str | tuple[str, int]) -> int | None:
    """One request: the answering worker's pid, or None if the connection failed."""
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(REQUEST_TIMEOUT_S)
            sock.connect(address)
            sock.sendall(b"ping\n")
            data = b""
            while chunk := sock.recv(64):
                data += chunk
            return int(data)
    except (OSError, ValueError):
        return None


def address_of(report: dict, unix: bool) -> str | tuple[str, int]:
    return report["address"] if unix else ("127.0.0.1", report["address"][1])


async def _app(listener: socket.socket) -> None:
    """Never run: the validation tests fail before any worker starts."""


@pytest.mark.parametrize(
    "where",
    [["--reuse-port", "yes"], ["--reuse-port", "no"], ["--unix"]],
    ids=["so_reuseport", "shared_socket", "unix_socket"],
)
def test_four_workers_serve_one_address_and_a_killed_one_is_restarted(
    tmp_path: Path, where: list[str]
) -> None:
    unix = where == ["--unix"]
    with supervisor(tmp_path, "http", "--workers", "4", "--grace", str(GRACE_S), *where) as sup:
        reports = sup.wait_started(4)
        assert len({tuple(r["address"]) if not unix else r["address"] for r in reports}) == 1
        assert {r["loop"] for r in reports} == {"cqloop.loop"}
        address = address_of(reports[0], unix)
        pids = {r["pid"] for r in reports}
        answered = [request(address) for _ in range(100)]
        assert None not in answered
        assert set(answered) <= pids
        if where == ["--reuse-port", "yes"]:
            # The kernel hashes connections over the four sockets.
            assert set(answered) == pids

        victim = next(r for r in reports if r["index"] == 1)
        # Under load: clients keep requesting, concurrently, while the victim is killed
        # and its successor starts, and for a while after.
        stop_load = threading.Event()
        results: list[int | None] = []
        failed_at: list[float] = []  # when each failed request began

        def load() -> None:
            while not stop_load.is_set():
                began = time.monotonic()
                answer = request(address)
                if answer is None:
                    failed_at.append(began)
                results.append(answer)

        with ThreadPoolExecutor(LOAD_CLIENTS) as pool:
            clients = [pool.submit(load) for _ in range(LOAD_CLIENTS)]
            wait_for(lambda: len(results) >= 50, "the load to start")
            os.kill(victim["pid"], signal.SIGKILL)
            successor = wait_for(
                lambda: next((r for r in sup.started() if r["generation"] == 2), None),
                "worker 1 to be restarted",
            )
            restarted_at = time.monotonic()
            served = len(results)
            wait_for(lambda: len(results) >= served + 100, "requests after the restart")
            stop_load.set()
            for client in clients:
                client.result()
        assert successor["index"] == 1 and successor["pid"] != victim["pid"]
        # Only requests the victim held while it died fail: accepted, or queued on its own
        # socket with SO_REUSEPORT, which takes connections until the dying process's files
        # are closed (so one client can lose more than one). Every request begun once the
        # successor was up is answered.
        assert all(began < restarted_at for began in failed_at)
        after = [request(address) for _ in range(100)]
        assert None not in after
        assert set(after) <= (pids - {victim["pid"]}) | {successor["pid"]}
        assert f"worker 1 (pid {victim['pid']}) exited with signal 9" in sup.stderr()

        code, took = sup.stop()
        assert code == 0, sup.stderr()
        assert took < GRACE_S
        for pid in (pids - {victim["pid"]}) | {successor["pid"]}:
            assert not pid_alive(pid)
        if unix:
            assert not Path(address).exists()  # type: ignore[arg-type]


def test_sigterm_kills_workers_that_outlive_the_grace_period(tmp_path: Path) -> None:
    grace = 1.0
    with supervisor(tmp_path, "stubborn", "--workers", "2", "--grace", str(grace)) as sup:
        pids = [r["pid"] for r in sup.wait_started(2)]
        code, took = sup.stop()
        assert code == 0, sup.stderr()
        assert grace <= took < grace + GRACE_S
        for pid in pids:
            assert (tmp_path / f"cancelled-{pid}").exists()  # it was asked first
            assert not pid_alive(pid)
        assert sup.stderr().count("did not stop within 1.0 s; killing it") == 2


def test_sighup_restarts_every_worker_one_by_one_while_serving(tmp_path: Path) -> None:
    with supervisor(tmp_path, "http", "--workers", "2", "--reuse-port", "no") as sup:
        first = sup.wait_started(2)
        address = address_of(first[0], unix=False)
        old = {r["pid"] for r in first}
        sup.signal(signal.SIGHUP)
        answered: list[int | None] = []

        def replaced() -> bool:
            answered.append(request(address))
            return len(sup.started()) == 4 and not any(pid_alive(pid) for pid in old)

        wait_for(replaced, "both workers to be replaced")
        # A shared socket: while one worker of the pair restarts, the other answers.
        assert None not in answered
        new = {r["pid"] for r in sup.started() if r["generation"] == 2}
        assert len(new) == 2 and not new & old
        assert {request(address) for _ in range(20)} <= new
        code, _ = sup.stop()
        assert code == 0, sup.stderr()
        assert "exited with" not in sup.stderr()  # no worker died unasked


def test_a_crashing_app_is_restarted_with_a_growing_delay(tmp_path: Path) -> None:
    with supervisor(tmp_path, "crash", "--workers", "1") as sup:
        wait_for(lambda: "restarting it in 0.4 s" in sup.stderr(), "the third restart")
        stderr = sup.stderr()
        assert "RuntimeError: this app fails at once" in stderr  # the worker's traceback
        assert stderr.index("in 0.1 s") < stderr.index("in 0.2 s") < stderr.index("in 0.4 s")
        # Stopping does not wait out a pending restart delay.
        code, took = sup.stop()
        assert code == 0, sup.stderr()
        assert took < 1.0
        assert len(sup.started()) >= 3


def test_a_worker_that_keeps_failing_to_boot_stops_the_supervisor(tmp_path: Path) -> None:
    with supervisor(tmp_path, "crash", "--workers", "2", "--max-boot-failures", "3") as sup:
        code = sup.process.wait(60)
        stderr = sup.stderr()
    assert code == cqloop.workers.EXIT_BOOT_FAILED, stderr
    assert "failed to boot 3 times in a row" in stderr
    assert "RuntimeError: this app fails at once" in stderr
    # It gave up on the third young death of one slot: no fourth restart of that slot.
    assert "restarting it in 0.4 s" not in stderr
    assert not any(pid_alive(report["pid"]) for report in sup.started())


def test_stopping_closes_idle_keep_alive_connections_and_finishes_requests_in_flight(
    tmp_path: Path,
) -> None:
    with supervisor(tmp_path, "keepalive", "--workers", "1", "--grace", "30") as sup:
        [report] = sup.wait_started(1)
        address = ("127.0.0.1", report["address"][1])
        with socket.create_connection(address, timeout=REQUEST_TIMEOUT_S) as idle:
            idle.sendall(b"ping\n")
            assert idle.recv(64) == b"%d\n" % report["pid"]  # now idle, kept alive
            with socket.create_connection(address, timeout=REQUEST_TIMEOUT_S) as busy:
                busy.sendall(b"slow\n")
                wait_for(lambda: (tmp_path / "slow-started").exists(), "the slow request")
                sup.signal(signal.SIGTERM)
                assert idle.recv(64) == b""  # closed by the stopping worker, not at exit
                if sys.version_info >= (3, 12):
                    # Server.wait_closed() waits for the handlers from 3.12 on.
                    assert busy.recv(64) == b"%d\n" % report["pid"]
        code = sup.process.wait(60)
        stderr = sup.stderr()
    assert code == 0, stderr
    assert "killing it" not in stderr  # well within the grace period


def test_unless_stopping_outside_a_worker_is_a_plain_await() -> None:
    async def main() -> int:
        return await cqloop.workers.unless_stopping(asyncio.sleep(0, 7))  # type: ignore[return-value]

    assert asyncio.run(main()) == 7


def test_workers_stop_when_their_supervisor_is_killed(tmp_path: Path) -> None:
    with supervisor(tmp_path, "http", "--workers", "2") as sup:
        pids = [r["pid"] for r in sup.wait_started(2)]
        sup.kill()  # SIGKILL: no chance to stop them
        # Each worker sees its broker connection close and stops by itself.
        wait_for(lambda: not any(pid_alive(pid) for pid in pids), "the orphans to stop")


def test_workers_hear_started_stopping_and_exited_in_order(tmp_path: Path) -> None:
    with supervisor(tmp_path, "lifecycle", "--workers", "2") as sup:
        first = {r["index"]: r["pid"] for r in sup.wait_started(2)}
        sup.signal(signal.SIGHUP)
        wait_for(lambda: not any(pid_alive(pid) for pid in first.values()), "the restart")
        second = {r["index"]: r["pid"] for r in sup.started() if r["generation"] == 2}
        path = tmp_path / f"lifecycle-{second[0]}.jsonl"

        def heard_events() -> list[Any]:
            return [json.loads(line) for line in path.read_text().splitlines()]

        # The last "exited" is posted once the broker has read the old worker's connection
        # to its end, which may come after the process is gone: stopping before it arrives
        # would end the listener first.
        wait_for(
            lambda: any(e == "exited" and d["pid"] == first[1] for e, d in heard_events()),
            "worker 1's exit heard by worker 0's successor",
        )
        code, _ = sup.stop()
        assert code == 0, sup.stderr()
    # Worker 0's successor was up (the supervisor waits for that) before worker 1 was
    # replaced, so it heard the whole of that: its successor start, then it stop and exit.
    heard = heard_events()
    slot1 = [(e, d["pid"]) for e, d in heard if d["worker"] == 1]
    # (After these come the final SIGTERM's "stopping", and maybe "exited", of worker 1's
    # successor, depending on which of the two stops first.)
    assert slot1[:3] == [("started", second[1]), ("stopping", first[1]), ("exited", first[1])]
    reasons = [d.get("reason") for e, d in heard if e == "stopping" and d["worker"] == 1]
    assert reasons[0] == "restart"
    exited = next(d for e, d in heard if e == "exited" and d["worker"] == 1)
    assert exited["exitcode"] == 0 and exited["generation"] == 1
    started = next(d for e, d in heard if e == "started" and d["worker"] == 1)
    assert started["generation"] == 2


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({}, "exactly one of port, sock or path"),
        ({"port": 0, "path": "/tmp/x"}, "exactly one of port, sock or path"),
        ({"host": "127.0.0.1"}, "exactly one of port, sock or path"),
        ({"port": 0, "workers": 0}, "workers must be an int >= 1"),
        ({"path": "/tmp/x", "reuse_port": True}, "reuse_port=True needs host and port"),
        ({"port": 0, "reuse_port": "yes"}, "reuse_port must be True, False or 'auto'"),
        ({"port": 0, "grace_period": 0}, "grace_period must be a positive number"),
        ({"port": 0, "codec": "yaml"}, "'yaml' is not a valid Codec"),
    ],
)
def test_serve_refuses_bad_arguments_before_forking(kwargs: dict, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        cqloop.workers.serve(_app, **kwargs)


class _AsyncCallable:
    async def __call__(self, listener: socket.socket) -> None:
        """Never run."""


def _not_async(listener: socket.socket) -> None:
    """Never run."""


@pytest.mark.parametrize(
    "app",
    [_not_async, lambda listener: _app(listener), print, "app", None],
    ids=["function", "lambda", "builtin", "str", "None"],
)
def test_serve_refuses_an_app_that_is_not_an_async_function(app: object) -> None:
    with pytest.raises(TypeError, match="app must be an async function of the listener"):
        cqloop.workers.serve(app, port=0)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "max_boot_failures", [0, -1, 1.5, True, "3"], ids=["0", "-1", "1.5", "True", "str"]
)
def test_serve_refuses_a_bad_max_boot_failures(max_boot_failures: object) -> None:
    with pytest.raises(ValueError, match="max_boot_failures must be an int >= 1 or None"):
        cqloop.workers.serve(_app, port=0, max_boot_failures=max_boot_failures)  # type: ignore[arg-type]


def test_async_callables_and_partials_count_as_async_functions() -> None:
    assert cqloop.workers._is_async_function(_AsyncCallable())
    assert cqloop.workers._is_async_function(functools.partial(_app))
    assert not cqloop.workers._is_async_function(functools.partial(_not_async))


def test_serve_refuses_a_running_loop() -> None:
    async def main() -> None:
        with pytest.raises(RuntimeError, match="running event loop"):
            cqloop.workers.serve(_app, port=0)

    asyncio.run(main())


def test_current_worker_is_none_outside_workers() -> None:
    assert cqloop.workers.current_worker() is None
