"""cqloop.auxlib and cqloop.errno: errors as values and back, and the errno table.

The async tests (auxlib.result) run on every loop kind through conftest's pytest-asyncio
hook; the rest are pure functions.
"""

from __future__ import annotations

import asyncio
import errno as stderrno
import os

import pytest

from cqloop import auxlib, errno

# -- auxlib.assert_ ----------------------------------------------------------------------------


def test_assert_returns_any_value_but_none_and_false() -> None:
    # As in Lua, only nil and false fail: 0 and empty strings are results.
    for value in (0, "", b"", [], 1, "x", True):
        assert auxlib.assert_(value, "unused") is value


def test_assert_raises_oserror_for_an_error_number() -> None:
    with pytest.raises(FileNotFoundError) as caught:
        auxlib.assert_(None, errno.ENOENT)
    assert caught.value.errno == errno.ENOENT
    assert caught.value.strerror == os.strerror(errno.ENOENT)


def test_assert_takes_the_first_reason_that_is_set() -> None:
    # cqueues' routines may return several nils before the error number.
    with pytest.raises(TimeoutError) as caught:
        auxlib.assert_(None, None, False, errno.ETIMEDOUT)
    assert caught.value.errno == errno.ETIMEDOUT


def test_assert_keeps_a_message_with_its_error_number() -> None:
    # The shape fileresult returns: (value, message, errno).
    with pytest.raises(PermissionError) as caught:
        auxlib.assert_(*auxlib.fileresult(None, "cannot open /x", errno.EACCES))
    assert caught.value.errno == errno.EACCES
    assert caught.value.strerror == "cannot open /x"


def test_assert_raises_assertion_error_for_a_bare_message() -> None:
    with pytest.raises(AssertionError, match=r"^went wrong$"):
        auxlib.assert_(False, "went wrong")
    with pytest.raises(AssertionError, match="assertion failed!"):
        auxlib.assert_(None)


def test_assert_raises_an_exception_given_as_the_reason() -> None:
    reason = KeyError("missing")
    with pytest.raises(KeyError) as caught:
        auxlib.assert_(None, reason)
    assert caught.value is reason


# -- auxlib.fileresult -------------------------------------------------------------------------


def test_fileresult_of_a_success_has_no_reason() -> None:
    assert auxlib.fileresult(42) == (42, None, None)
    assert auxlib.fileresult(0, errno.EAGAIN) == (0, None, None)


def test_fileresult_of_a_failure_is_value_message_errno() -> None:
    assert auxlib.fileresult(None, errno.EPIPE) == (None, os.strerror(errno.EPIPE), errno.EPIPE)
    assert auxlib.fileresult(False, "no route", None) == (False, "no route", None)
    assert auxlib.fileresult(None) == (None, None, None)
    exc = OSError(errno.ECONNRESET, "reset by peer")
    assert auxlib.fileresult(None, exc) == (None, "reset by peer", errno.ECONNRESET)
    assert auxlib.fileresult(None, ValueError("bad")) == (None, "bad", None)


# -- auxlib.result (any loop) ------------------------------------------------------------------


async def test_result_of_an_awaitable_that_succeeds() -> None:
    future = asyncio.get_running_loop().create_future()
    future.set_result("done")
    assert await auxlib.result(future) == ("done", None, None)


async def test_result_turns_oserror_into_a_fileresult() -> None:
    async def refuse() -> None:
        raise ConnectionRefusedError(errno.ECONNREFUSED, "refused")

    assert await auxlib.result(refuse()) == (None, "refused", errno.ECONNREFUSED)


async def test_result_turns_a_timeout_into_etimedout() -> None:
    never = asyncio.get_running_loop().create_future()
    # asyncio's TimeoutError carries no errno; it is reported as cqueues reports timeouts.
    assert await auxlib.result(asyncio.wait_for(never, 0)) == (
        None,
        os.strerror(errno.ETIMEDOUT),
        errno.ETIMEDOUT,
    )


async def test_result_lets_other_exceptions_and_cancellation_through() -> None:
    async def bug() -> None:
        raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        await auxlib.result(bug())
    assert await auxlib.result(bug(), errors=ArithmeticError) == (None, "ZeroDivisionError", None)

    task = asyncio.ensure_future(auxlib.result(asyncio.get_running_loop().create_future()))
    asyncio.get_running_loop().call_soon(task.cancel)
    with pytest.raises(asyncio.CancelledError):
        await task


# -- errno ----------------------------------------------------------------------------------


def test_errno_constants_are_the_systems() -> None:
    assert errno.EAGAIN == stderrno.EAGAIN
    assert errno.ETIMEDOUT == stderrno.ETIMEDOUT
    assert errno.EOWNERDEAD == stderrno.EOWNERDEAD


def test_errno_names_map_numbers_to_names() -> None:
    assert errno.names[errno.EPIPE] == "EPIPE"
    assert errno.name(errno.ENOENT) == "ENOENT"
    assert errno.name(999999) is None
    for number, name in errno.names.items():
        assert getattr(errno, name) == number
    with pytest.raises(TypeError):
        errno.names[1] = "x"  # type: ignore[index]


def test_strerror_is_the_c_librarys() -> None:
    assert errno.strerror(errno.ENOENT) == "No such file or directory"
    assert errno.strerror(999999) == os.strerror(999999)
    with pytest.raises(TypeError):
        errno.strerror("ENOENT")  # type: ignore[arg-type]
