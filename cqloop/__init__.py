"""cqloop: a nestable asyncio event loop for Linux on epoll, with the ideas of Lua's cqueues.

    import asyncio, cqloop
    asyncio.run(main(), loop_factory=cqloop.new_event_loop)   # Python 3.12+
    cqloop.run(main())                                         # any supported Python

A loop's fd is readable whenever it has work, and `loop.step()` runs one step (one poll), so
a cqloop loop nests inside any other event loop: `inner.nest_in(outer)`.
"""

import sys

if not sys.platform.startswith("linux"):
    raise ImportError(
        f"cqloop runs on Linux only (it is built on epoll, eventfd and timerfd); "
        f"this is {sys.platform!r}"
    )

# First: an unbuilt source tree fails here, saying so (see _built.py).
from cqloop import _built  # noqa: F401  # isort: skip

from cqloop import auxlib, condition, errno, notify, promise, signal, thread
from cqloop.condition import Condition
from cqloop.controller import CoroutineError, monotime, new, running
from cqloop.controller import type as type  # cqueues.type(); kept out of __all__
from cqloop.events import EventEmitter, event_list, publish, subscribe
from cqloop.loop import Loop
from cqloop.policy import EventLoopPolicy, install, new_event_loop, run
from cqloop.pollable import Pollable, cancel, poll, sleep
from cqloop.promise import Promise
from cqloop.runner import Runner, RunnerState, waiter

# cqueues' name for a loop: a controller is a cqloop loop.
Controller = Loop

__version__ = "0.1.0.dev0"

__all__ = [
    "Condition",
    "Controller",
    "CoroutineError",
    "EventEmitter",
    "EventLoopPolicy",
    "Loop",
    "Pollable",
    "Promise",
    "Runner",
    "RunnerState",
    "__version__",
    "auxlib",
    "cancel",
    "condition",
    "errno",
    "event_list",
    "install",
    "monotime",
    "new",
    "new_event_loop",
    "notify",
    "poll",
    "promise",
    "publish",
    "run",
    "running",
    "signal",
    "sleep",
    "subscribe",
    "thread",
    "waiter",
]
