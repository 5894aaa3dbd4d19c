"""CPython's subprocess tests, run against cqloop.

The companion of test_cpython_conformance.py (test_events' loop mixins, where the pipe, pty
and signal tests run), built the same way. What runs, from the running interpreter's
`test.test_asyncio` (so the suite follows the Python version):

- `CqloopSubprocessTests(test_subprocess.SubprocessMixin, test_utils.TestCase)`: asyncio's
  high-level subprocess API (asyncio.create_subprocess_exec/_shell, Process) on a cqloop
  loop. CPython runs this mixin once per child watcher (SubprocessWatcherMixin); cqloop has
  no child watcher to choose (it watches each child with a pidfd in its kernel queue), so
  the set-up is the mixin's with just a cqloop loop set as the current loop.
- `CqloopSubprocessEventsTests(test_events.SubprocessTestsMixin, test_utils.TestCase)`: the
  loop's subprocess_exec/subprocess_shell with SubprocessProtocols (CPython mixes it into
  its selector-loop tests, whose set-up EventLoopTestsMixin gives; the same set-up here).

Every test passes except those in the tables:
- `SKIP_PRIVATE`: tests that reach into private attributes of asyncio's child watchers
  (none needed so far: test_close_kill_running calls the transport's `_wait()`, which
  asyncio.subprocess.Process itself calls, and cqloop's transport has it on purpose).
`test_tables_name_cpython_tests` checks every table entry against the running version.
"""

from __future__ import annotations

import asyncio
import sys
import unittest

import pytest
from test.test_asyncio import test_events, test_subprocess
from test.test_asyncio import utils as test_utils

import cqloop

SKIP_PRIVATE: dict[str, str] = {}


def _apply_tables(cls: type[unittest.TestCase]) -> type[unittest.TestCase]:
    for name in unittest.TestLoader().getTestCaseNames(cls):
        if name in SKIP_PRIVATE:
            skip = pytest.mark.skip(reason="reaches into private attribute " + SKIP_PRIVATE[name])
            setattr(cls, name, skip(getattr(cls, name)))
    return cls


@_apply_tables
class CqloopSubprocessTests(test_subprocess.SubprocessMixin, test_utils.TestCase):
    def setUp(self) -> None:
        super().setUp()
        self.loop = cqloop.new_event_loop()
        self.set_event_loop(self.loop)


@_apply_tables
class CqloopSubprocessEventsTests(test_events.SubprocessTestsMixin, test_utils.TestCase):
    def setUp(self) -> None:
        super().setUp()
        self.loop = cqloop.new_event_loop()
        self.set_event_loop(self.loop)

    def tearDown(self) -> None:
        if not self.loop.is_closed():
            test_utils.run_briefly(self.loop)
        self.doCleanups()
        super().tearDown()


def tearDownModule() -> None:
    # As test_subprocess's own: drop the default policy the tests created.
    asyncio.set_event_loop_policy(None)


def test_tables_name_cpython_tests() -> None:
    available = set(unittest.TestLoader().getTestCaseNames(CqloopSubprocessTests)) | set(
        unittest.TestLoader().getTestCaseNames(CqloopSubprocessEventsTests)
    )
    for name in SKIP_PRIVATE:
        assert name in available, f"SKIP_PRIVATE[{name!r}]: no such test ({sys.version})"
