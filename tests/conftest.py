"""Test set-up shared by the whole suite.

One parametrisation runs each behavioural test on cqloop, on stock asyncio (the oracle) and
on uvloop when it is installed:
- async tests: cqloop's own pytest plugin (cqloop/pytest_plugin.py, told by pyproject.toml's
  `cqloop_loops` which loops), through pytest-asyncio's loop-factory hook;
- sync tests: the `loop` fixture (a fresh loop of each kind, closed afterwards), over the
  same loops.
Tests of cqloop-only features (nesting, controllers) carry `@pytest.mark.cqloop_only` and
run on cqloop alone. cqloop's loops run on the readiness engine CQLOOP_ENGINE names (epoll
by default; `CQLOOP_ENGINE=io_uring` runs the suite on io_uring).

Every test is also checked for leaks: the fds the process holds after the test must be the
ones it held before (a GC pass settles any difference first: fds held by cyclic garbage are
not leaks).
"""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import Callable, Iterator

import pytest

import cqloop
from cqloop import socket as cqsocket
from cqloop._core.poller import resolve_engine
from cqloop.pytest_plugin import factories_for

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is in the test extra
    uvloop = None

LoopFactory = Callable[[], asyncio.AbstractEventLoop]

LOOP_FACTORIES: dict[str, LoopFactory] = {
    "cqloop": cqloop.new_event_loop,
    "asyncio": asyncio.new_event_loop,
}
if uvloop is not None:
    LOOP_FACTORIES["uvloop"] = uvloop.new_event_loop


def _factories_for(config: pytest.Config, item: pytest.Item) -> dict[str, LoopFactory]:
    # The loops cqloop's pytest plugin was told to use (pyproject.toml's cqloop_loops, or
    # --cqloop-loops), cqloop alone for a cqloop_only test.
    return factories_for(config, item) or dict(LOOP_FACTORIES)


def pytest_report_header(config: pytest.Config) -> str:
    # cqloop's loops run on the engine CQLOOP_ENGINE names (epoll unless it says io_uring):
    # `CQLOOP_ENGINE=io_uring python -m pytest` runs the suite on the io_uring engine.
    setting = os.environ.get("CQLOOP_ENGINE", "")
    return f"cqloop engine: {resolve_engine(None)} (CQLOOP_ENGINE={setting!r})"


def pytest_configure(config: pytest.Config) -> None:
    # uvloop opens a process-wide pipe the first time one of its loops runs and keeps it;
    # open it before any test so the leak check sees it as part of the baseline.
    if uvloop is not None:
        warm = uvloop.new_event_loop()
        warm.run_until_complete(asyncio.sleep(0))
        warm.close()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "loop_factory" in metafunc.fixturenames:
        factories = _factories_for(metafunc.config, metafunc.definition)
        metafunc.parametrize("loop_factory", list(factories.values()), ids=list(factories.keys()))


@pytest.fixture
def loop(loop_factory: LoopFactory) -> Iterator[asyncio.AbstractEventLoop]:
    """A fresh loop of the parametrised kind, not set as the current loop; closed after."""
    the_loop = loop_factory()
    try:
        yield the_loop
    finally:
        if not the_loop.is_closed():
            if not the_loop.is_running():
                the_loop.run_until_complete(the_loop.shutdown_default_executor())
            the_loop.close()


@pytest.fixture
def pair() -> Iterator[tuple[cqsocket.Socket, cqsocket.Socket]]:
    """Two connected cq sockets (cqloop.socket.pair()), closed after the test."""
    a, b = cqsocket.pair()
    yield a, b
    a.close()
    b.close()


def is_cqloop(loop: asyncio.AbstractEventLoop) -> bool:
    return isinstance(loop, cqloop.Loop)


def is_uvloop(loop: asyncio.AbstractEventLoop) -> bool:
    return uvloop is not None and isinstance(loop, uvloop.Loop)


def skip_where_uvloop_differs(loop: asyncio.AbstractEventLoop, why: str) -> None:
    """uvloop runs the tests where it implements the feature as asyncio does; where it
    knowingly differs from asyncio (the oracle), the test names the difference and skips."""
    if is_uvloop(loop):
        pytest.skip(f"uvloop differs from asyncio here: {why}")


def open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


@pytest.fixture(autouse=True)
def _no_fd_leak(request: pytest.FixtureRequest) -> Iterator[None]:
    if request.node.get_closest_marker("allow_fd_leak") is not None:
        yield
        return
    before = open_fds()
    yield
    # listdir's own fd is in both snapshots' views only while listing; compare the rest.
    leaked = open_fds() - before
    if leaked:
        # Only then pay for a full collection (it costs more, per test, than most tests):
        # an fd held by garbage in a reference cycle is not a leak once it is collected.
        gc.collect()
        leaked = open_fds() - before
    assert not leaked, f"fds leaked by the test: {sorted(leaked)}" + "".join(
        f"\n  {fd}: {_describe_fd(fd)}" for fd in sorted(leaked)
    )


def _describe_fd(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError as exc:
        return f"? ({exc})"
