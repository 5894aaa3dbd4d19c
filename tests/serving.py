"""Helpers for tests that start a real server program (uvicorn, gunicorn) in a subprocess
and talk to it over loopback HTTP."""

from __future__ import annotations

import http.client
import json
import subprocess
import time
from collections.abc import Callable
from typing import Any

DEADLINE_S = 30.0


def ask(port: int) -> dict[str, Any] | None:
    """GET / on 127.0.0.1:port and decode the JSON answer; None while nothing answers."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", "/")
        result: dict[str, Any] = json.loads(connection.getresponse().read())
        return result
    except (OSError, http.client.HTTPException, ValueError):
        return None
    finally:
        connection.close()


def wait_for(check: Callable[[], Any], what: str, proc: subprocess.Popen[Any]) -> Any:
    """check()'s first true result, polled until DEADLINE_S; fails if `proc` exits first."""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        if proc.poll() is not None:
            raise AssertionError(f"the server exited ({proc.returncode}) before {what}")
        time.sleep(0.05)
    raise AssertionError(f"no {what} within {DEADLINE_S} s")
