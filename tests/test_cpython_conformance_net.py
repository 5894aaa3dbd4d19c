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
- `XFAIL_ISSUE_3`: every test here uses the loop's networking, which issue 3 adds piece by
  piece. Each entry names the loop methods the test uses (directly, or as asyncio builds
  them: start_server is create_server, a host name needs getaddrinfo). While cqloop lacks
  any of them (it still has the placeholder that raises NotImplementedError, see
  test_network_faults.cqloop_lacks), the test is marked
  `xfail(strict=True, raises=NotImplementedError)`; once they have all landed the mark goes
  by itself and the test must pass. Entries whose methods have all landed are inert: keep
  them (they say what each test exercises) or delete them.
- `XFAIL_ISSUE_4`: TLS (issue 4), strict expected failures raising NotImplementedError as
  in test_cpython_conformance; when TLS lands they XPASS: delete their entries.
- `SKIP_PRIVATE`: tests that reach into private attributes of asyncio's loop classes in a
  way cqloop does not follow. `PRIVATE_HONOURED` lists the tests that reach into private
  names cqloop does provide on purpose (asyncio's sendfile hooks); they run, and move to
  SKIP_PRIVATE if cqloop ever drops those names.
- `SKIP_CQLOOP_BUG`: a cqloop bug that makes the test hang rather than fail, so it cannot
  be an expected failure; each entry names the bug. Fix the bug, delete the entry.
- `ADDED_IN` records tests that appear after 3.11 (none yet), and
  `test_tables_name_cpython_tests` checks every table entry against the running version.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import unittest

import pytest
from test.support import os_helper

# Like test_cpython_conformance, import only what a mixin module needs; none of these
# modules sets an event loop policy at import (each tearDownModule resets it; see ours).
from test.test_asyncio import test_buffered_proto, test_sendfile, test_sock_lowlevel
from test.test_asyncio import utils as test_utils

import cqloop
from tests.test_cpython_conformance import ISSUE_3, ISSUE_4, _raise_without_traceback, _with_marks
from tests.test_network_faults import cqloop_lacks

# -- issue 3, landing piece by piece: name -> the loop methods the test uses -----------------

_SOCK_CLIENT_OPS = ("sock_connect", "sock_sendall", "sock_recv", "sock_recv_into", "sock_accept")
# SendfileMixin.prepare_sendfile: create_server(sock=...) and create_connection(sock=...),
# neither of which resolves or connects anything itself.
_TRANSPORT_SENDFILE = ("create_server", "create_connection", "sendfile")
# loop.sendfile's native path hands the transport's socket to sock_sendfile (asyncio's
# _sendfile_native and cqloop's alike); the tests that force the fallback do not get there.
_NATIVE_SENDFILE = (*_TRANSPORT_SENDFILE, "sock_sendfile")
# SockSendfileMixin.prepare_socksendfile: create_server(sock=...) and sock_connect.
_SOCK_SENDFILE = ("create_server", "sock_connect", "sock_sendfile")

XFAIL_ISSUE_3: dict[str, tuple[str, ...]] = {
    # test_sock_lowlevel.BaseSockTestsMixin
    "test_sock_client_ops": _SOCK_CLIENT_OPS,  # also debug mode's blocking-socket checks
    "test_unix_sock_client_ops": _SOCK_CLIENT_OPS,
    "test_sock_client_racing": ("sock_connect", "sock_sendall", "sock_recv", "sock_recv_into"),
    "test_sock_client_connect_racing": ("sock_connect",),
    "test_sock_client_fail": ("sock_connect",),
    "test_huge_content": ("sock_connect", "sock_sendall", "sock_recv"),
    "test_huge_content_recvinto": ("sock_connect", "sock_sendall", "sock_recv_into"),
    "test_recvfrom": ("sock_sendto", "sock_recvfrom"),
    "test_recvfrom_into": ("sock_sendto", "sock_recvfrom_into"),
    "test_sendto_blocking": ("sock_sendto", "sock_recvfrom"),
    "test_sock_accept": ("sock_accept",),
    "test_cancel_sock_accept": ("sock_accept", "sock_connect"),
    "test_create_connection_sock": ("getaddrinfo", "sock_connect", "create_connection"),
    # test_sendfile.SockSendfileMixin
    "test_sock_sendfile_success": _SOCK_SENDFILE,
    "test_sock_sendfile_with_offset_and_count": _SOCK_SENDFILE,
    "test_sock_sendfile_zero_size": _SOCK_SENDFILE,
    "test_sock_sendfile_mix_with_regular_send": (*_SOCK_SENDFILE, "sock_sendall"),
    # test_sendfile.SendfileMixin
    "test_sendfile": _NATIVE_SENDFILE,
    "test_sendfile_force_fallback": _TRANSPORT_SENDFILE,
    "test_sendfile_force_unsupported_native": _TRANSPORT_SENDFILE,
    "test_sendfile_for_closing_transp": _TRANSPORT_SENDFILE,
    "test_sendfile_pre_and_post_data": _NATIVE_SENDFILE,
    "test_sendfile_partial": _NATIVE_SENDFILE,
    "test_sendfile_close_peer_after_receiving": _NATIVE_SENDFILE,
    "test_sendfile_close_peer_in_the_middle_of_receiving": _NATIVE_SENDFILE,
    "test_sendfile_fallback_close_peer_in_the_middle_of_receiving": _TRANSPORT_SENDFILE,
    "test_sendfile_prevents_bare_write": _NATIVE_SENDFILE,
    "test_sendfile_no_fallback_for_fallback_transport": ("sendfile",),  # a mock transport
    # Over TLS (issue 4): create_server(ssl=...), create_connection(ssl=...), and loop.sendfile's
    # fallback through the TLS transport.
    "test_sendfile_ssl": _TRANSPORT_SENDFILE,
    "test_sendfile_ssl_pre_and_post_data": _TRANSPORT_SENDFILE,
    "test_sendfile_ssl_partial": _TRANSPORT_SENDFILE,
    "test_sendfile_ssl_close_peer_after_receiving": _TRANSPORT_SENDFILE,
    # create_datagram_endpoint(family=AF_INET) with no address resolves nothing.
    "test_sendfile_not_supported": ("create_datagram_endpoint", "sendfile"),
    # test_buffered_proto.BaseTestBufferedProtocol: start_server and create_connection on
    # '127.0.0.1', resolved through getaddrinfo; create_connection connects with sock_connect.
    "test_buffered_proto_create_connection": (
        "getaddrinfo",
        "create_server",
        "create_connection",
        "sock_connect",
    ),
}

# Tests that check the call they wait for with assertRaises(RuntimeError) (or that it
# leaves transport.write() raising RuntimeError): NotImplementedError is a RuntimeError, so
# while cqloop lacks the method they fail on the assertion instead.
CHECKS_RUNTIME_ERROR: frozenset[str] = frozenset(
    {
        "test_sendfile_not_supported",
        "test_sendfile_for_closing_transp",
        "test_sendfile_no_fallback_for_fallback_transport",
        "test_sendfile_prevents_bare_write",
    }
)

# -- expected to fail until issue 4: TLS ----------------------------------------------------

# Empty since TLS landed (the test_sendfile_ssl* tests run); kept for what comes next.
XFAIL_ISSUE_4: dict[str, str] = {}

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


def _waits_for(name: str) -> str | None:
    """Why the test is expected to fail today, or None."""
    if name in XFAIL_ISSUE_4:
        return f"{ISSUE_4}: needs {XFAIL_ISSUE_4[name]}"
    missing = [method for method in XFAIL_ISSUE_3.get(name, ()) if cqloop_lacks(method)]
    if missing:
        return f"{ISSUE_3}: cqloop lacks " + ", ".join(missing)
    return None


def _apply_tables(cls: type[unittest.TestCase]) -> type[unittest.TestCase]:
    """Mark the tests of `cls` from the tables; only names the running version has."""
    for name in unittest.TestLoader().getTestCaseNames(cls):
        marks: list[pytest.MarkDecorator] = []
        reason = _waits_for(name)
        if name in SKIP_PRIVATE:
            marks.append(
                pytest.mark.skip(
                    reason="reaches into asyncio's private attributes: " + SKIP_PRIVATE[name]
                )
            )
        elif name in SKIP_CQLOOP_BUG:
            marks.append(pytest.mark.skip(reason="cqloop bug: " + SKIP_CQLOOP_BUG[name]))
        elif reason is not None:
            raises: tuple[type[BaseException], ...] = (NotImplementedError,)
            if name in CHECKS_RUNTIME_ERROR:
                raises += (AssertionError,)
            marks.append(pytest.mark.xfail(reason=reason, raises=raises, strict=True))
        if marks:
            setattr(cls, name, _with_marks(getattr(cls, name), *marks))
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

    def setUp(self) -> None:
        # CPython's set-up, unchanged; only the traceback of an expected failure goes.
        try:
            super().setUp()
        except NotImplementedError as exc:
            _raise_without_traceback(exc)


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
    later version), every test is in XFAIL_ISSUE_3 or XFAIL_ISSUE_4 (they all need
    networking), no test name is in two classes, and no test is in two exclusive tables."""
    per_class = [set(unittest.TestLoader().getTestCaseNames(cls)) for cls in _CLASSES]
    available = set().union(*per_class)
    assert sum(map(len, per_class)) == len(available), "a test name is in two classes"
    exclusive = {
        "XFAIL_ISSUE_4": set(XFAIL_ISSUE_4),
        "SKIP_PRIVATE": set(SKIP_PRIVATE),
        "SKIP_CQLOOP_BUG": set(SKIP_CQLOOP_BUG),
    }
    for table, names in exclusive.items():
        for other, other_names in exclusive.items():
            if table < other:
                assert not names & other_names, f"in both {table} and {other}"
    assert not set(XFAIL_ISSUE_3) & set(XFAIL_ISSUE_4), "in both XFAIL_ISSUE_3 and _4"
    assert not set(PRIVATE_HONOURED) & set(SKIP_PRIVATE), "both run and skipped"
    assert CHECKS_RUNTIME_ERROR.issubset(XFAIL_ISSUE_3)
    tables: dict[str, set[str]] = {
        **exclusive,
        "XFAIL_ISSUE_3": set(XFAIL_ISSUE_3),
        "PRIVATE_HONOURED": set(PRIVATE_HONOURED),
    }
    for table, names in tables.items():
        for name in names:
            added = ADDED_IN.get(name, (3, 11))
            if sys.version_info >= added:
                assert name in available, f"{table}[{name!r}]: no such test in the mixins"
            else:
                assert name not in available, f"{name} is older than ADDED_IN says"
    unclassified = available - set(XFAIL_ISSUE_3) - set(XFAIL_ISSUE_4)
    assert not unclassified, f"say what these need (XFAIL_ISSUE_3 or _4): {sorted(unclassified)}"
    for name, methods in XFAIL_ISSUE_3.items():
        unknown = [m for m in methods if not hasattr(asyncio.AbstractEventLoop, m)]
        assert not unknown, f"XFAIL_ISSUE_3[{name!r}]: not loop methods: {unknown}"
