"""cqloop.policy: the ways a program gets a cqloop loop.

`run(main)` and `new_event_loop()` (for `asyncio.run(..., loop_factory=...)` and
`asyncio.Runner(loop_factory=...)`) are the primary forms; `EventLoopPolicy` and `install()`
serve programs that call asyncio.run()/new_event_loop() themselves (policies are deprecated
from Python 3.14).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from cqloop.loop import Loop

__all__ = ["EventLoopPolicy", "install", "new_event_loop", "run"]

_T = TypeVar("_T")


def new_event_loop(engine: str | None = None) -> Loop:
    """A new cqloop event loop on the readiness engine `engine`: "epoll", "io_uring", or
    "auto" (epoll, until io_uring is measured faster for what cqloop does); None reads
    CQLOOP_ENGINE from the environment, else "auto". Asking for io_uring where it cannot
    run raises OSError saying why (`python -m cqloop info` tells)."""
    return Loop(engine=engine)


class EventLoopPolicy(asyncio.DefaultEventLoopPolicy):
    """An asyncio event loop policy whose loops are cqloop loops."""

    def new_event_loop(self) -> Loop:
        return new_event_loop()

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"


def install() -> None:
    """Make asyncio.run(), asyncio.new_event_loop() and friends create cqloop loops."""
    asyncio.set_event_loop_policy(EventLoopPolicy())


def run(main: Coroutine[Any, Any, _T], *, debug: bool | None = None) -> _T:
    """Run coroutine `main` on a new cqloop loop and return its result, with the contract
    of asyncio.run(): cancel what is left, shut down async generators and the default
    executor, close the loop."""
    if asyncio.events._get_running_loop() is not None:
        # Before a Runner exists, as asyncio.run() does: a Runner made here would try to
        # clean up a loop it can never run.
        raise RuntimeError("cqloop.run() cannot be called from a running event loop")
    with asyncio.Runner(debug=debug, loop_factory=new_event_loop) as runner:
        return runner.run(main)
