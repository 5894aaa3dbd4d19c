"""Loop kinds the cqloop-only tests use as *outer* loops (nesting and leak tests)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

import cqloop

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is in the test extra
    uvloop = None

OUTER_FACTORIES: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "cqloop": cqloop.new_event_loop,
}
if uvloop is not None:
    OUTER_FACTORIES["uvloop"] = uvloop.new_event_loop

# Parametrisation over the outer loop kind; a kind that is not installed is skipped.
OUTER_KINDS = [
    pytest.param(
        kind,
        id=kind,
        marks=pytest.mark.skipif(kind not in OUTER_FACTORIES, reason=f"{kind} not installed"),
    )
    for kind in ("asyncio", "uvloop", "cqloop")
]
