"""CPython's loop-agnostic networking tests, run against cqloop.

The companion of test_cpython_conformance.py (which runs test_events' mixins), built the
same way and reusing its pieces. What runs: the test mixins of the running interpreter's
`test.test_asyncio` (3.11, 3.12 and 3.13 have the same tests in them), put together as
CPython puts them together for its epoll loop, with cqloop's loop in its place:

- `CqloopSockTests(test_sock_lowlevel.BaseSockTestsMixin, test_utils.TestCase)`: the
  loop's sock_* methods (CPython's EPollEventLoopTests in test_sock_lowlevel).
- `CqloopSendfileTests(test_sendfile.SendfileTestsBase, test_utils.TestCase)`:
  SendfileTestsBase is CPython's composition of SendfileMixin (loop.sendfile over
  transports, plain and TLS) and SockSendfileMixin (loop.sock_sendfile).
- `CqloopBufferedProtocolTests(test_buffered_proto.BaseTestBufferedProtocol,
  unittest.TestCase)`: a BufferedProtocol over create_connection (CPython's
  BufferedProtocolSelectorTests).

How the lists are kept (see test_cpython_conformance.py for the common rules): every test
runs and must pass, except those the tables below mark.
- `SKIP_PRIVATE`: tests that reach into private attributes of asyncio's loop classes in a
  way cqloop does not follow. `PRIVATE_HONOURED` lists the tests that reach into private
  names cqloop does provide on purpose (asyncio's sendfile hooks); they run, and move to
  SKIP_PRIVATE if cqloop ever drops those names.
- `SKIP_CQLOOP_BUG`: a cqloop bug that makes the test hang rather than fail; each entry
  names the bug. Fix the bug, delete the entry.
- `ADDED_IN` records tests that appear after 3.11 (none yet), and
  `test_tables_name_cpython_tests` checks every table entry against the running version.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import unittest

from test.support import os_helper

# Like test_cpython_conformance, import only what a mixin module needs; none of these
# modules sets an event loop policy at import (each tearDownModule resets it; see ours).
from test.test_asyncio import test_buffered_proto, test_sendfile, test_sock_lowlevel
from test.test_asyncio import utils as test_utils

import cqloop
from tests.test_cpython_conformance import skip_tests

# -- private attributes ---------------------------------------------------------------------

# Skipped: none today (see PRIVATE_HONOURED).
SKIP_PRIVATE: dict[str, str] = {}

# Run: they reach into asyncio's private sendfile hooks, which cqloop provides by the same
# names on purpose (a transport's `_sendfile_compatible` is how asyncio's transports, and
# the TLS ones wrapping them, say whether the loop may use os.sendfile on them).
PRIVATE_HONOURED: dict[str, str] = {
    "test_sendfile_force_fallback": "replaces loop._sendfile_native to force the fallback",
    "test_sendfile_force_unsupported_native": (
        "replaces loop._sendfile_native to force SendfileNotAvailableError"
    ),
    "test_sendfile_fallback_close_peer_in_the_middle_of_receiving": (
        "replaces loop._sendfile_native to force the fallback"
    ),
    "test_sendfile_no_fallback_for_fallback_transport": (
        "a mock transport with _sendfile_compatible = constants._SendfileMode.FALLBACK"
    ),
}

# -- cqloop bugs that hang the test -----------------------------------------------------------

SKIP_CQLOOP_BUG: dict[str, str] = {}

# Tests that appeared in these mixins after 3.11: name -> first version that has them.
ADDED_IN: dict[str, tuple[int, int]] = {}


def _apply_tables(cls: type[unittest.TestCase]) -> type[unittest.TestCase]:
    """Skip the tests of `cls` the tables name; only names the running version has."""
    reasons = {
        name: "reaches into asyncio's private attributes: " + attributes
        for name, attributes in SKIP_PRIVATE.items()
    }
    reasons.update((name, "cqloop bug: " + bug) for name, bug in SKIP_CQLOOP_BUG.items())
    skip_tests(cls, reasons)
    return cls


@_apply_tables
class CqloopSockTests(test_sock_lowlevel.BaseSockTestsMixin, test_utils.TestCase):
    def create_event_loop(self) -> asyncio.AbstractEventLoop:
        return cqloop.new_event_loop()


@_apply_tables
class CqloopSendfileTests(test_sendfile.SendfileTestsBase, test_utils.TestCase):
    # SendfileBase writes its data file to os_helper.TESTFN, a name relative to the
    # working directory (CPython's test runner runs in a scratch directory; we run in the
    # repository). It reads os_helper.TESTFN at each use, so for this class's run it points
    # into a temporary directory.
    _data_dir: tempfile.TemporaryDirectory[str]
    _saved_testfn: str

    @classmethod
    def setUpClass(cls) -> None:
        cls._data_dir = tempfile.TemporaryDirectory()
        cls._saved_testfn = os_helper.TESTFN
        os_helper.TESTFN = os.path.join(cls._data_dir.name, "sendfile-data")
        super().setUpClass()

    @classmethod
    def tearDownClass(cls) -> None:
        try:
            super().tearDownClass()
        finally:
            os_helper.TESTFN = cls._saved_testfn
            cls._data_dir.cleanup()

    def create_event_loop(self) -> asyncio.AbstractEventLoop:
        return cqloop.new_event_loop()


@_apply_tables
class CqloopBufferedProtocolTests(test_buffered_proto.BaseTestBufferedProtocol, unittest.TestCase):
    def new_loop(self) -> asyncio.AbstractEventLoop:
        return cqloop.new_event_loop()


_CLASSES: tuple[type[unittest.TestCase], ...] = (
    CqloopSockTests,
    CqloopSendfileTests,
    CqloopBufferedProtocolTests,
)


def tearDownModule() -> None:
    # What each of the three CPython modules' tearDownModule does: the tests create the
    # default policy (TestCase.set_event_loop); drop it so later test modules start afresh.
    asyncio.set_event_loop_policy(None)


def test_tables_name_cpython_tests() -> None:
    """Every table entry names a test of the running version's mixins (or one added in a
    later version), no test name is in two classes, and no test is in two tables."""
    per_class = [set(unittest.TestLoader().getTestCaseNames(cls)) for cls in _CLASSES]
    available = set().union(*per_class)
    assert sum(map(len, per_class)) == len(available), "a test name is in two classes"
    tables: dict[str, set[str]] = {
        "SKIP_PRIVATE": set(SKIP_PRIVATE),
        "SKIP_CQLOOP_BUG": set(SKIP_CQLOOP_BUG),
        "PRIVATE_HONOURED": set(PRIVATE_HONOURED),
    }
    for table, names in tables.items():
        for other, other_names in tables.items():
            if table < other:
                assert not names & other_names, f"in both {table} and {other}"
        for name in names:
            added = ADDED_IN.get(name, (3, 11))
            if sys.version_info >= added:
                assert name in available, f"{table}[{name!r}]: no such test in the mixins"
            else:
                assert name not in available, f"{name} is older than ADDED_IN says"
