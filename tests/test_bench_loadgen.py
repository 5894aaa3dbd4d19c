"""The echo benchmark's load generator (benchmarks/echo/loadgen.c) against echo servers that
keep or break the bytes: a faithful server gets a result, and one that changes, drops or
adds bytes makes the run fail, over TCP (where the bytes between the checked ends of a
large message are discarded with MSG_TRUNC) and over a Unix socket (where they go to a
scratch buffer). Skipped where no C compiler can build the generator."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cqloop._bench.echo import native

MESSAGE = 100 * 1024  # large: only some messages are compared whole
SMALL = 1024  # small: every message is compared whole
GENERATOR_TIMEOUT_S = 30.0

# Turns the bytes of the echo stream starting at `offset` into the bytes sent back.
Fault = Callable[[int, bytes], bytes]


@pytest.fixture(scope="module")
def loadgen() -> Path:
    try:
        return native.build().loadgen
    except native.NativeUnavailable as exc:
        pytest.skip(f"the load generator cannot be built here: {exc}")


class EchoServer:
    """A blocking echo server, a thread per connection, passing every chunk through `fault`
    with its offset in the connection's stream. Stops when closed: its threads end as the
    generator's connections do."""

    def __init__(self, family: int, where: str, fault: Fault) -> None:
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        if family == socket.AF_UNIX:
            self.listener.bind(where)
            self.address = f"unix:{where}"
        else:
            self.listener.bind(("127.0.0.1", 0))
            self.address = f"tcp:127.0.0.1:{self.listener.getsockname()[1]}"
        self.listener.listen()
        self.fault = fault
        self.threads: list[threading.Thread] = []
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:  # closed
                return
            thread = threading.Thread(target=self._echo, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _echo(self, conn: socket.socket) -> None:
        offset = 0
        with conn:
            try:
                while data := conn.recv(256 * 1024):
                    conn.sendall(self.fault(offset, data))
                    offset += len(data)
            except OSError:  # the generator left without reading everything
                pass

    def close(self) -> None:
        # shutdown wakes the acceptor's accept(); close alone may not.
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        self.acceptor.join(GENERATOR_TIMEOUT_S)
        for thread in self.threads:
            thread.join(GENERATOR_TIMEOUT_S)


@pytest.fixture(params=["tcp", "unix"])
def serve(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[Fault], str]]:
    servers: list[EchoServer] = []

    def start(fault: Fault) -> str:
        family = socket.AF_INET if request.param == "tcp" else socket.AF_UNIX
        server = EchoServer(family, str(tmp_path / f"echo{len(servers)}.sock"), fault)
        servers.append(server)
        return server.address

    yield start
    for server in servers:
        server.close()


def run(loadgen: Path, address: str, size: int, conns: int = 2) -> dict[str, object]:
    # The warm-up lets a broken echo stall before the counted time, so that the stall
    # check sees a connection that completes nothing in it.
    argv = [str(loadgen), "-a", address, "-c", str(conns), "-s", str(size)]
    done = subprocess.run(
        [*argv, "-w", "0.2", "-d", "0.3"],
        capture_output=True,
        text=True,
        timeout=GENERATOR_TIMEOUT_S,
        check=False,
    )
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    assert (done.returncode == 0) == ("messages" in result), done
    return result


def flip(message: int, in_message: int, size: int) -> Fault:
    """Change one byte: the one at `in_message` of each connection's `message`th echo."""
    at = message * size + in_message

    def fault(offset: int, data: bytes) -> bytes:
        if offset <= at < offset + len(data):
            out = bytearray(data)
            out[at - offset] ^= 0xFF
            return bytes(out)
        return data

    return fault


def faithful(offset: int, data: bytes) -> bytes:
    return data


@pytest.mark.parametrize("size", [SMALL, MESSAGE])
def test_a_faithful_server_gets_a_result(loadgen: Path, serve, size: int) -> None:
    result = run(loadgen, serve(faithful), size)
    assert isinstance(result["messages"], int) and result["messages"] > 0
    assert result["bytes"] == 2 * size * result["messages"]


@pytest.mark.parametrize(
    "size, message, where",
    [
        (SMALL, 1, SMALL // 2),  # small messages are compared whole
        (MESSAGE, 8, MESSAGE // 2),  # one in eight large ones is compared whole
        (MESSAGE, 1, 3),  # the first bytes of every message are compared
        (MESSAGE, 1, MESSAGE - 3),  # and the last
    ],
)
def test_a_changed_byte_fails_the_run(
    loadgen: Path, serve, size: int, message: int, where: int
) -> None:
    result = run(loadgen, serve(flip(message, where, size)), size)
    assert str(result.get("error", "")).startswith("echo:"), result


def test_a_dropped_byte_fails_the_run(loadgen: Path, serve) -> None:
    # One byte of the second message's middle (not compared whole) goes missing: that echo
    # can never complete.
    lost = MESSAGE + MESSAGE // 2

    def drop(offset: int, data: bytes) -> bytes:
        if offset <= lost < offset + len(data):
            return data[: lost - offset] + data[lost - offset + 1 :]
        return data

    result = run(loadgen, serve(drop), MESSAGE, conns=1)
    assert str(result.get("error", "")).startswith("stall:"), result


def test_an_added_byte_fails_the_run(loadgen: Path, serve) -> None:
    # One byte too many in the second message's middle: every later message is shifted by
    # one, which its first bytes show.
    extra = MESSAGE + MESSAGE // 2

    def add(offset: int, data: bytes) -> bytes:
        if offset <= extra < offset + len(data):
            return data[: extra - offset] + b"\0" + data[extra - offset :]
        return data

    result = run(loadgen, serve(add), MESSAGE, conns=1)
    assert str(result.get("error", "")).startswith("echo:"), result
