"""cqloop's pytest plugin (cqloop/pytest_plugin.py), run on a user's suite with pytester.

Each test writes a small pytest-asyncio suite that reports the loop each async test ran on,
runs pytest on it in a subprocess (so this suite's own options and plugin set-up do not
leak in: the inner run reads only its own ini), and checks which tests ran on which loop.
"""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.allow_fd_leak  # pytester's subprocess runs own their fds

SUITE = """
import asyncio
import pytest

async def test_reports_its_loop():
    loop = asyncio.get_running_loop()
    print(f"LOOP {type(loop).__module__}")

@pytest.mark.cqloop_only
async def test_cqloop_feature():
    print(f"LOOP {type(asyncio.get_running_loop()).__module__}")
"""

INI = """
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
{extra}
"""


def run_suite(pytester: pytest.Pytester, *args: str, ini: str = "") -> pytest.RunResult:
    pytester.makeini(INI.format(extra=ini))
    pytester.makepyfile(test_user=SUITE)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-s", "-v", *args)


def loops_seen(result: pytest.RunResult) -> list[str]:
    return [match for line in result.outlines for match in re.findall(r"LOOP (\S+)", line)]


def test_off_unless_asked_for(pytester: pytest.Pytester):
    result = run_suite(pytester)
    result.assert_outcomes(passed=2)
    assert loops_seen(result) == ["asyncio.unix_events", "asyncio.unix_events"]
    result.stdout.fnmatch_lines(["*test_user.py::test_reports_its_loop LOOP *"])


def test_cqloop_flag_runs_every_async_test_on_cqloop(pytester: pytest.Pytester):
    result = run_suite(pytester, "--cqloop")
    result.assert_outcomes(passed=2)
    assert loops_seen(result) == ["cqloop.loop", "cqloop.loop"]


def test_loops_side_by_side_with_the_loop_in_the_id(pytester: pytest.Pytester):
    result = run_suite(pytester, "--cqloop-loops=cqloop,asyncio,uvloop")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(
        [
            "*test_reports_its_loop?cqloop? LOOP cqloop.loop",
            "*test_reports_its_loop?asyncio? LOOP asyncio.unix_events",
            "*test_reports_its_loop?uvloop? LOOP uvloop",
        ]
    )
    assert sorted(loops_seen(result)) == [
        "asyncio.unix_events",
        "cqloop.loop",
        "cqloop.loop",  # the cqloop_only test, once
        "uvloop",
    ]


def test_ini_option_chooses_the_loops(pytester: pytest.Pytester):
    result = run_suite(pytester, ini="cqloop_loops = asyncio,cqloop")
    result.assert_outcomes(passed=3)
    assert sorted(loops_seen(result)) == ["asyncio.unix_events", "cqloop.loop", "cqloop.loop"]


def test_all_takes_every_installed_loop(pytester: pytest.Pytester):
    result = run_suite(pytester, "--cqloop-loops=all")
    installed = ["cqloop", "asyncio", "uvloop"]
    try:
        import rloop  # noqa: F401
    except ImportError:
        pass
    else:
        installed.append("rloop")
    result.assert_outcomes(passed=len(installed) + 1)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("--cqloop-loops=cqloop,tokio", "*unknown loop 'tokio'*"),
        ("--cqloop-loops=nosuchloop", "*unknown loop 'nosuchloop'*"),
    ],
)
def test_a_bad_loop_name_is_a_usage_error(pytester: pytest.Pytester, option: str, message: str):
    result = run_suite(pytester, option)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])
