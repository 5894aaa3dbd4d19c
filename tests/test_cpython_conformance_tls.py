"""CPython's loop-agnostic TLS tests, run against cqloop.

The companion of test_cpython_conformance.py and test_cpython_conformance_net.py (whose
mixins already run their TLS tests: test_events' create_*ssl*, test_sendfile's
sendfile-over-TLS tests). What runs here, from the running interpreter's
`test.test_asyncio` (3.11, 3.12 and 3.13 have the same tests in both modules):

- `CqloopSSLTests(test_ssl.TestSSL)`: test_ssl (ported from uvloop's test suite):
  create_server/create_connection/connect_accepted_socket with ssl, start_tls on both
  sides, TLS over TLS, handshake timeouts, close_notify both ways, flushing before shutdown,
  and no reference left to the SSL context after the connection ends. TestSSL's setUp
  makes an asyncio loop; ours makes a cqloop one instead, and nothing else changes.
- `CqloopStartTLSTests(test_sslproto.BaseStartTLS)`: start_tls and handshake behaviour
  (CPython's SelectorStartTLSTests, with `new_loop` returning a cqloop loop).
- Not run: test_sslproto.SslProtoHandshakeTests. It constructs asyncio's own
  `asyncio.sslproto.SSLProtocol` and drives it with mock transports: it tests that class,
  not a loop, whatever loop it is given.

How the lists are kept (the common rules are test_cpython_conformance.py's):
- `PRIVATE_HONOURED`: tests that reach into private names of asyncio's TLS transport which
  cqloop's SSLTransport provides by the same names on purpose; they run.
- `SKIP_PRIVATE`: tests of asyncio-private code that no loop can change; skipped with the
  reason.
- `ADDED_IN` records tests that appear after 3.11 (none), and
  `test_tables_name_cpython_tests` checks every table entry against the running version.
"""

from __future__ import annotations

import asyncio
import sys
import unittest

from test.test_asyncio import test_ssl as cpython_ssl
from test.test_asyncio import test_sslproto as cpython_sslproto

import cqloop
from tests.test_cpython_conformance import skip_tests

# -- private names cqloop provides on purpose ------------------------------------------------

PRIVATE_HONOURED: dict[str, str] = {
    "test_flush_before_shutdown": (
        "writer.transport._ssl_protocol.pause_writing()/resume_writing(): the SSL protocol "
        "behind the transport is at `_ssl_protocol`, as in asyncio"
    ),
    "test_remote_shutdown_receives_trailing_data": (
        "transport._test__append_write_backlog(): asyncio's test hook, kept by name"
    ),
}

# -- skipped: tests of asyncio-private code ---------------------------------------------------

SKIP_PRIVATE: dict[str, str] = {
    "test_buf_feed_data": (
        "tests asyncio.protocols._feed_data_to_buffered_proto, a private asyncio helper "
        "that no loop calls into"
    ),
}

# Tests that appeared after 3.11: name -> first version that has them.
ADDED_IN: dict[str, tuple[int, int]] = {}


def _apply_tables(cls: type[unittest.TestCase]) -> type[unittest.TestCase]:
    skip_tests(
        cls,
        {name: "reaches into asyncio's private code: " + why for name, why in SKIP_PRIVATE.items()},
    )
    return cls


@_apply_tables
class CqloopSSLTests(cpython_ssl.TestSSL):
    def setUp(self) -> None:
        # TestSSL.setUp, with a cqloop loop in place of asyncio.new_event_loop().
        super(cpython_ssl.TestSSL, self).setUp()
        self.loop = cqloop.new_event_loop()
        self.set_event_loop(self.loop)
        self.addCleanup(self.loop.close)

    def new_loop(self) -> asyncio.AbstractEventLoop:
        return cqloop.new_event_loop()


@_apply_tables
class CqloopStartTLSTests(cpython_sslproto.BaseStartTLS, unittest.TestCase):
    def new_loop(self) -> asyncio.AbstractEventLoop:
        return cqloop.new_event_loop()


_CLASSES: tuple[type[unittest.TestCase], ...] = (CqloopSSLTests, CqloopStartTLSTests)


def tearDownModule() -> None:
    # What test_ssl's and test_sslproto's tearDownModule do.
    asyncio.set_event_loop_policy(None)


def test_tables_name_cpython_tests() -> None:
    """Every table entry names a test of the running version's classes, and no test is
    both run and skipped."""
    available = set()
    for cls in _CLASSES:
        available |= set(unittest.TestLoader().getTestCaseNames(cls))
    assert not set(PRIVATE_HONOURED) & set(SKIP_PRIVATE), "both run and skipped"
    for table, names in (("PRIVATE_HONOURED", PRIVATE_HONOURED), ("SKIP_PRIVATE", SKIP_PRIVATE)):
        for name in names:
            added = ADDED_IN.get(name, (3, 11))
            if sys.version_info >= added:
                assert name in available, f"{table}[{name!r}]: no such test"
            else:
                assert name not in available, f"{name} is older than ADDED_IN says"
