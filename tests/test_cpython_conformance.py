"""CPython's own loop-agnostic event loop tests, run against cqloop.

What runs: the test mixins of the running interpreter's `test.test_asyncio.test_events`
(so the suite follows the Python version: 3.11, 3.12 and 3.13 differ slightly), put
together the way CPython's test_events.py puts them together for its selector loops, with
`create_event_loop()` returning `cqloop.new_event_loop()`:

- `CqloopEventLoopTests(EventLoopTestsMixin, test_utils.TestCase)`: every test of the
  mixin, with a plain set-up.
- `CqloopUnixEventLoopTests(UnixEventLoopTestsMixin, test_utils.TestCase)`: CPython's
  Linux flavour (its EPollEventLoopTests). UnixEventLoopTestsMixin adds no test of its own:
  it reruns the same tests with a set-up that attaches an `asyncio.SafeChildWatcher` to the
  loop, and attaching one calls `loop.add_signal_handler(SIGCHLD, ...)` (cqloop's own
  subprocesses do not use the watcher; they are watched with pidfds). `SETUP_XFAIL` is
  where a class whose set-up needs a missing feature would be listed.
- Elsewhere: `SubprocessTestsMixin` (and test_subprocess's SubprocessMixin) run in
  test_cpython_conformance_proc.py.

How the lists are kept: every test of the mixins runs and must pass, except those named in
the tables below, which are applied to the test classes when this module is imported:
- `XFAIL_ISSUE_3` / `XFAIL_ISSUE_4`: name -> what the test needs that cqloop does not have
  yet. They are marked `xfail(strict=True, raises=NotImplementedError)`: they fail only
  because cqloop raises NotImplementedError for the missing method; any other failure, or an
  unexpected pass, is reported. When an issue lands, its tests XPASS: delete their entries.
- `SKIP_PRIVATE`: tests that reach into private attributes of asyncio's own loop classes
  (selector internals, `_run_once`, mocks of `asyncio.base_events`). A different loop cannot
  pass them without faking those internals, so they are skipped with the reason.
- Tests CPython itself skips for environment reasons (its skip decorators, or a skipTest in
  the body such as test_internal_fds, which skips loops that are not a
  BaseSelectorEventLoop) are left as they are.
- A name only gets its mark on the Python versions whose test_events has that test;
  `ADDED_IN` records the tests that appeared after 3.11, and
  `test_tables_name_cpython_tests` checks every table entry against the running version.
- `LEAKS_FDS_WHEN_ABORTED`: expected failures exempt from conftest's fd leak check (see
  there why); nothing else is.
A test that needs none of sockets, TLS, pipes, subprocesses or signals must never go into
these tables: if it fails, that is a cqloop bug to fix.
"""

from __future__ import annotations

import asyncio
import functools
import sys
import unittest
from collections.abc import Callable
from typing import Any, NoReturn

import pytest

# Importing test.test_asyncio runs its __init__: support.requires_working_socket(module=True)
# (a no-op on Linux) and a check that concurrent.futures imports. Neither it nor
# test_events sets an event loop policy at import; see tearDownModule below for the one
# piece of module-level clean-up test_events does.
from test.test_asyncio import test_events
from test.test_asyncio import utils as test_utils

import cqloop

ISSUE_3 = "issue 3 (networking)"
ISSUE_4 = "issue 4 (TLS, subprocesses, pipes, signals)"

# -- expected to fail until issue 3: sockets, servers, unix sockets, datagrams ---------------

# Empty since issue 3's streams, servers, unix sockets and datagrams landed; kept for the
# next test_events that needs something of it.
XFAIL_ISSUE_3: dict[str, str] = {}

# -- expected to fail until issue 4: TLS, pipes and ptys, signals ------------------------------

XFAIL_ISSUE_4: dict[str, str] = {}

# Not listed, and passing: test_close, which expects add_signal_handler() on a closed loop to
# raise RuntimeError (cqloop's checks for a closed loop before anything else).

# -- skipped: reach into private attributes of asyncio's selector loop --------------------------

SKIP_PRIVATE: dict[str, str] = {
    # name -> the private attributes it uses
    "test_timeout_rounding": "_run_once (it wraps it to count iterations) and _selector",
    "test_prompt_cancellation": "_stop_serving (also needs sock_recv: issue 3)",
    "test_create_server_multiple_hosts_ipv4": (
        "_start_serving and _stop_serving (mocked; it also patches asyncio.base_events.socket)"
    ),
    "test_create_server_multiple_hosts_ipv6": (
        "_start_serving and _stop_serving (mocked; it also patches asyncio.base_events.socket)"
    ),
}

# Tests that appeared in test_events after 3.11: name -> first version that has them.
ADDED_IN: dict[str, tuple[int, int]] = {
    "test_create_server_trsock": (3, 12),
    "test_datagram_send_to_non_listening_address": (3, 13),
}

# Expected failures that leave fds open once they stop at cqloop's NotImplementedError: the
# CPython test makes raw fds (os.pipe(), os.openpty()) and closes them only at its end,
# which it does not reach, and no addCleanup closes them. That is CPython's test, not
# cqloop, so these (and only these) skip the fd leak check while they are expected to fail;
# the mark goes with the xfail, so a test that passes again is checked again.
LEAKS_FDS_WHEN_ABORTED: frozenset[str] = frozenset()

# Test classes whose set-up needs a missing feature: every test of the class is expected to
# fail until it lands.
SETUP_XFAIL: dict[str, str] = {}


def _xfail_reason(name: str) -> str | None:
    if name in XFAIL_ISSUE_3:
        return f"{ISSUE_3}: needs {XFAIL_ISSUE_3[name]}"
    if name in XFAIL_ISSUE_4:
        return f"{ISSUE_4}: needs {XFAIL_ISSUE_4[name]}"
    return None


def _with_marks(func: Callable[..., Any], *marks: pytest.MarkDecorator) -> Callable[..., Any]:
    # Mark a wrapper, never the mixin's own function: pytest stores marks on the function
    # object, which both test classes (and test_events' own classes) share.
    @functools.wraps(func)
    def test(self: unittest.TestCase, *args: Any, **kwargs: Any) -> Any:
        try:
            return func(self, *args, **kwargs)
        except NotImplementedError as exc:
            _raise_without_traceback(exc)

    for mark in marks:
        test = mark(test)
    return test


def _raise_without_traceback(exc: NotImplementedError) -> NoReturn:
    # An expected failure's traceback is never shown, yet pytest formats it, re-parsing the
    # 3000-line test_events.py for every frame: about 0.1 s a test, two thirds of this
    # module's run time. cqloop's message names the missing method, which is all an xfail
    # report needs. Dropping the frames also frees the objects the test held (sockets, pipe
    # files) now rather than when pytest drops the report. Other exceptions keep theirs.
    raise exc.with_traceback(None) from None


def _apply_tables(cls: type[unittest.TestCase]) -> type[unittest.TestCase]:
    """Mark the tests of `cls` from the tables; only names the running version has."""
    setup_reason = SETUP_XFAIL.get(cls.__name__)
    for name in unittest.TestLoader().getTestCaseNames(cls):
        marks: list[pytest.MarkDecorator] = []
        reason = _xfail_reason(name)
        if name in SKIP_PRIVATE:
            marks.append(
                pytest.mark.skip(
                    reason="reaches into asyncio selector-loop private attribute "
                    + SKIP_PRIVATE[name]
                )
            )
        elif setup_reason is not None or reason is not None:
            full_reason = "; then ".join(r for r in (setup_reason, reason) if r is not None)
            marks.append(
                pytest.mark.xfail(reason=full_reason, raises=NotImplementedError, strict=True)
            )
            if reason is not None and name in LEAKS_FDS_WHEN_ABORTED:
                marks.append(pytest.mark.allow_fd_leak)
        if marks:
            setattr(cls, name, _with_marks(getattr(cls, name), *marks))
    return cls


@_apply_tables
class CqloopEventLoopTests(test_events.EventLoopTestsMixin, test_utils.TestCase):
    def create_event_loop(self) -> asyncio.AbstractEventLoop:
        return cqloop.new_event_loop()


if hasattr(test_events, "UnixEventLoopTestsMixin"):

    @_apply_tables
    class CqloopUnixEventLoopTests(test_events.UnixEventLoopTestsMixin, test_utils.TestCase):
        def create_event_loop(self) -> asyncio.AbstractEventLoop:
            return cqloop.new_event_loop()

        def setUp(self) -> None:
            # CPython's set-up, unchanged; only the traceback of the expected failure goes.
            try:
                super().setUp()
            except NotImplementedError as exc:
                if type(self).__name__ not in SETUP_XFAIL:
                    raise
                _raise_without_traceback(exc)


def tearDownModule() -> None:
    # test_events' own tearDownModule, which runs only when test_events is the module under
    # test: the tests create the default policy (TestCase.set_event_loop, and on 3.11
    # close_loop's policy.get_child_watcher()); drop it so later test modules start from a
    # fresh one.
    asyncio.set_event_loop_policy(None)


def test_tables_name_cpython_tests() -> None:
    """Every table entry names a test of the running version's test_events (or one added
    in a later version), and no test is in two tables."""
    available = set(unittest.TestLoader().getTestCaseNames(CqloopEventLoopTests))
    tables = {
        "XFAIL_ISSUE_3": set(XFAIL_ISSUE_3),
        "XFAIL_ISSUE_4": set(XFAIL_ISSUE_4),
        "SKIP_PRIVATE": set(SKIP_PRIVATE),
    }
    for table, names in tables.items():
        for other, other_names in tables.items():
            if table < other:
                assert not names & other_names, f"in both {table} and {other}"
        for name in names:
            added = ADDED_IN.get(name, (3, 11))
            if sys.version_info >= added:
                assert name in available, f"{table}[{name!r}]: no such test in test_events"
            else:
                assert name not in available, f"{name} is older than ADDED_IN says"
    assert set(LEAKS_FDS_WHEN_ABORTED) <= set(XFAIL_ISSUE_3) | set(XFAIL_ISSUE_4)
