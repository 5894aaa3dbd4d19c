"""A pytest plugin that runs another project's test suite on a chosen event loop.

Loaded with ``-p suite_loop_plugin`` (``tools/`` on ``PYTHONPATH``) by ``tools/run_suites.sh``.
``CQLOOP_SUITE_LOOP=cqloop`` installs ``cqloop.EventLoopPolicy`` at import, before any plugin,
conftest or test makes a loop, the way a uvloop user swaps the loop of a program they do not
own; ``CQLOOP_SUITE_LOOP=asyncio`` leaves the stock loop (the oracle run). At the end of the
session the plugin says whether the policy was still the one it installed: a suite that sets
its own policy part-way would otherwise run partly on another loop without anyone noticing.

``CQLOOP_SUITE_SKIP_BLOCKBUSTER=1`` marks every test ``skip_blockbuster`` (aiohttp's conftest
then leaves its blocking-call detector off): a test that fails on cqloop with it and passes
without it fails only because the detector allows asyncio's own modules by name.
"""

from __future__ import annotations

import asyncio
import os
import warnings

LOOP_NAME = os.environ.get("CQLOOP_SUITE_LOOP", "asyncio")

if LOOP_NAME == "cqloop":
    import cqloop

    _POLICY_CLASS: type = cqloop.EventLoopPolicy
    with warnings.catch_warnings():
        # set_event_loop_policy is deprecated from 3.14; the suites still run on it.
        warnings.simplefilter("ignore", DeprecationWarning)
        asyncio.set_event_loop_policy(cqloop.EventLoopPolicy())
elif LOOP_NAME == "asyncio":
    _POLICY_CLASS = type(asyncio.get_event_loop_policy())
else:
    raise RuntimeError(f"CQLOOP_SUITE_LOOP must be 'cqloop' or 'asyncio', not {LOOP_NAME!r}")


SKIP_BLOCKBUSTER = os.environ.get("CQLOOP_SUITE_SKIP_BLOCKBUSTER") == "1"


def pytest_collection_modifyitems(config: object, items: list) -> None:  # type: ignore[type-arg]
    if SKIP_BLOCKBUSTER:
        import pytest

        for item in items:
            item.add_marker(pytest.mark.skip_blockbuster)


def _loop_class_name() -> str:
    loop = asyncio.new_event_loop()
    try:
        return f"{type(loop).__module__}.{type(loop).__qualname__}"
    finally:
        loop.close()


def pytest_report_header(config: object) -> str:
    return f"suite loop: {LOOP_NAME} ({_loop_class_name()})"


def pytest_terminal_summary(terminalreporter: object) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        policy = asyncio.get_event_loop_policy()
    if not isinstance(policy, _POLICY_CLASS):
        terminalreporter.write_line(  # type: ignore[attr-defined]
            f"suite loop: WARNING the policy changed during the run to {type(policy)!r}",
            red=True,
        )
