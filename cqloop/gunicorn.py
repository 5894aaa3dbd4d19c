"""gunicorn worker classes that run their app on cqloop.

    gunicorn app:app -k cqloop.gunicorn.UvicornWorker     # ASGI apps (uvicorn-worker)
    gunicorn app:make_app -k cqloop.gunicorn.AiohttpWorker  # aiohttp apps

- `UvicornWorker` is uvicorn-worker's `UvicornWorker` (uvicorn inside a gunicorn worker)
  with uvicorn told to make its loop with `cqloop.new_event_loop`: what `uvicorn --loop
  cqloop:new_event_loop` does outside gunicorn. Needs `gunicorn`, `uvicorn-worker` and
  uvicorn 0.36 or later.
- `AiohttpWorker` is aiohttp's `GunicornWebWorker` with cqloop's loop, as aiohttp's own
  `GunicornUVLoopWebWorker` does for uvloop: the worker process's event loop policy is
  cqloop's, so the loop aiohttp makes is a cqloop loop. Needs `gunicorn` and `aiohttp`.

These are optional: cqloop depends on none of those packages, and this module imports them
only when one of the classes is asked for (gunicorn's `-k` looks the class up by name), so
a program using one kind of worker needs only that kind's packages.
"""

from __future__ import annotations

import asyncio
from typing import Any

# The loop factory uvicorn imports by name (its --loop option's import string).
UVICORN_LOOP = "cqloop:new_event_loop"

_made: dict[str, type] = {}


def __getattr__(name: str) -> type:
    if name not in _MAKERS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name not in _made:
        _made[name] = _MAKERS[name]()
    return _made[name]


def _make_uvicorn_worker() -> type:
    try:
        from uvicorn_worker import UvicornWorker as Base
    except ImportError as exc:
        raise ImportError(
            "cqloop.gunicorn.UvicornWorker needs the uvicorn-worker package "
            "(pip install uvicorn-worker)"
        ) from exc

    class UvicornWorker(Base):
        """uvicorn-worker's UvicornWorker, serving on cqloop."""

        CONFIG_KWARGS: dict[str, Any] = {**Base.CONFIG_KWARGS, "loop": UVICORN_LOOP}

    UvicornWorker.__module__ = __name__
    UvicornWorker.__qualname__ = "UvicornWorker"
    return UvicornWorker


def _make_aiohttp_worker() -> type:
    try:
        from aiohttp.worker import GunicornWebWorker as Base
    except ImportError as exc:
        raise ImportError(
            "cqloop.gunicorn.AiohttpWorker needs aiohttp and gunicorn "
            "(pip install aiohttp gunicorn)"
        ) from exc

    class AiohttpWorker(Base):
        """aiohttp's GunicornWebWorker, serving on cqloop."""

        def init_process(self) -> None:
            import cqloop

            # Before the base class makes its loop through the policy (as aiohttp's
            # uvloop worker does). The worker is a fresh process: nothing else runs yet.
            asyncio.set_event_loop_policy(cqloop.EventLoopPolicy())
            super().init_process()

    AiohttpWorker.__module__ = __name__
    AiohttpWorker.__qualname__ = "AiohttpWorker"
    return AiohttpWorker


# The worker classes, made at their first look-up (module __getattr__).
_MAKERS = {"UvicornWorker": _make_uvicorn_worker, "AiohttpWorker": _make_aiohttp_worker}
__all__ = sorted(_MAKERS)
