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
  subprocesses do not use the watcher; they are watched with pidfds).
- Elsewhere: `SubprocessTestsMixin` (and test_subprocess's SubprocessMixin) run in
  test_cpython_conformance_proc.py.

How the lists are kept: every test of the mixins runs and must pass, except those named in
the tables below, which are applied to the test classes when this module is imported:
- `SKIP_PRIVATE`: tests that reach into private attributes of asyncio's own loop classes
  (selector internals, `_run_once`, mocks of `asyncio.base_events`). A different loop cannot
  pass them without faking those internals, so they are skipped with the reason.
- Tests CPython itself skips for environment reasons (its skip decorators, or a skipTest in
  the body such as test_internal_fds, which skips loops that are not a
  BaseSelectorEventLoop) are left as they are.
- A name only gets its mark on the Python versions whose test_events has that test;
  `ADDED_IN` records the tests that appeared after 3.11, and
  `test_tables_name_cpython_tests` checks every table entry against the running version.
Any other failure is a cqloop bug to fix, never an entry to add.
"""

from __future__ import annotations

import asyncio
import functools
import sys
import unittest
from collections.abc import Callable
from typing import Any

import pytest

# Importing test.test_asyncio runs its __init__: support.requires_working_socket(module=True)
# (a no-op on Linux) and a check that concurrent.futures imports. Neither it nor
# test_events sets an event loop policy at import; see tearDownModule below for the one
# piece of module-level clean-up test_events does.
from test.test_asyncio import test_events
from test.test_asyncio import utils as test_utils

import cqloop

# -- skipped: reach into private attributes of asyncio's selector loop --------------------------

SKIP_PRIVATE: dict[str, str] = {
    # name -> the private attributes it uses
    "test_timeout_rounding": "_run_once (it wraps it to count iterations) and _selector",
    "test_prompt_cancellation": "_stop_serving",
    "test_create_server_multiple_hosts_ipv4": (
        "_start_serving and _stop_serving (mocked; it also patches asyncio.base_events.socket)"
    ),
    "test_create_server_multiple_hosts_ipv6": (
        "_start_serving and _stop_serving (mocked; it also patches asyncio.base_events.socket)"
    ),
}

# Tests that appeared in test_events after 3.11: name -> first version that has them.
ADDED_IN: dict[str, tuple[int, int]] = {}


def skip_tests(cls: type[unittest.TestCase], reasons: dict[str, str]) -> None:
    """Skip the tests of `cls` named in `reasons` (name -> why); only names the running
    version has."""
    for name in unittest.TestLoader().getTestCaseNames(cls):
        if name in reasons:
            setattr(cls, name, _skipped(getattr(cls, name), reasons[name]))


def _skipped(func: Callable[..., Any], reason: str) -> Callable[..., Any]:
    # Mark a wrapper, never the mixin's own function: pytest stores marks on the function
    # object, which both test classes (and test_events' own classes) share.
    @functools.wraps(func)
    def test(self: unittest.TestCase, *args: Any, **kwargs: Any) -> Any:
        return func(self, *args, **kwargs)

    return pytest.mark.skip(reason=reason)(test)


def _skip_private(cls: type[unittest.TestCase]) -> type[unittest.TestCase]:
    skip_tests(
        cls,
        {
            name: "reaches into asyncio selector-loop private attribute " + attributes
            for name, attributes in SKIP_PRIVATE.items()
        },
    )
    return cls


@_skip_private
class CqloopEventLoopTests(test_events.EventLoopTestsMixin, test_utils.TestCase):
    def create_event_loop(self) -> asyncio.AbstractEventLoop:
        return cqloop.new_event_loop()


if hasattr(test_events, "UnixEventLoopTestsMixin"):

    @_skip_private
    class CqloopUnixEventLoopTests(test_events.UnixEventLoopTestsMixin, test_utils.TestCase):
        def create_event_loop(self) -> asyncio.AbstractEventLoop:
            return cqloop.new_event_loop()


def tearDownModule() -> None:
    # test_events' own tearDownModule, which runs only when test_events is the module under
    # test: the tests create the default policy (TestCase.set_event_loop, and on 3.11
    # close_loop's policy.get_child_watcher()); drop it so later test modules start from a
    # fresh one.
    asyncio.set_event_loop_policy(None)


def test_tables_name_cpython_tests() -> None:
    """Every table entry names a test of the running version's test_events (or one added
    in a later version)."""
    available = set(unittest.TestLoader().getTestCaseNames(CqloopEventLoopTests))
    for name in SKIP_PRIVATE:
        added = ADDED_IN.get(name, (3, 11))
        if sys.version_info >= added:
            assert name in available, f"SKIP_PRIVATE[{name!r}]: no such test in test_events"
        else:
            assert name not in available, f"{name} is older than ADDED_IN says"
