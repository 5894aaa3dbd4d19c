"""The echo benchmark: echo servers on cqloop, asyncio, uvloop and rloop against a C ceiling.

run.py drives it (main() is its entry point, called by `python -m cqloop bench`); server.py
is the Python echo server it starts once per loop, mode and transport; loadgen.c and
ceiling.c are the C load generator and the C echo server, which native.py compiles.
"""

from __future__ import annotations

from .run import main

__all__ = ["main"]
