"""pytest plugin: run a pytest-asyncio suite on cqloop, or on several loops side by side.

Installed with cqloop (the `pytest11` entry point) and off unless asked for:

    pytest --cqloop                              every async test on a cqloop loop
    pytest --cqloop-loops=cqloop,asyncio,uvloop  every async test once per loop, the loop
                                                 in the test id: test_x[cqloop], test_x[asyncio]
    pytest --cqloop-loops=all                    every installed loop of cqloop, asyncio,
                                                 uvloop, rloop

or the same in the ini file: `cqloop_loops = cqloop,asyncio`. A test marked
`@pytest.mark.cqloop_only` (a cqloop-only feature: nesting, controllers) runs on cqloop
alone, whichever loops are chosen; `@pytest.mark.asyncio(loop_factories=[...])` picks among
the chosen loops by name, as pytest-asyncio documents.

Built on pytest-asyncio's `pytest_asyncio_loop_factories` hook (pytest-asyncio 1.4 and
later): the hook is registered only when loops are chosen, so without the options
pytest-asyncio behaves exactly as it does without this plugin. Sync tests and fixtures can
follow the same choice through `selected_loops(config)`.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable

import pytest

LoopFactory = Callable[[], asyncio.AbstractEventLoop]

KNOWN_LOOPS = ("cqloop", "asyncio", "uvloop", "rloop")
ALL_INSTALLED = "all"
_SELECTED = pytest.StashKey[dict[str, LoopFactory]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("cqloop", "cqloop event loops")
    group.addoption(
        "--cqloop",
        action="store_true",
        default=False,
        help="run every async test on a cqloop loop (pytest-asyncio's loop factories)",
    )
    group.addoption(
        "--cqloop-loops",
        default=None,
        metavar="LOOPS",
        help="comma-separated loops to run every async test on, side by side, with the "
        f"loop in the test id ({', '.join(KNOWN_LOOPS)}, or '{ALL_INSTALLED}' for every "
        "installed one)",
    )
    parser.addini(
        "cqloop_loops",
        "comma-separated loops to run every async test on (as --cqloop-loops)",
        default="",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "cqloop_only: run this async test on cqloop alone (a cqloop-only feature)"
    )
    names, installed_only = _chosen_names(config)
    if not names:
        return
    if not config.pluginmanager.has_plugin("asyncio"):
        raise pytest.UsageError(
            "--cqloop/--cqloop-loops need pytest-asyncio 1.4 or later (pip install "
            "'pytest-asyncio>=1.4')"
        )
    factories = {}
    for name in names:
        factory = _factory(name)
        if factory is None:
            if installed_only:
                continue
            raise pytest.UsageError(f"--cqloop-loops: {name} is not installed")
        factories[name] = factory
    config.stash[_SELECTED] = factories
    config.pluginmanager.register(_LoopFactories(), "cqloop-loop-factories")


def selected_loops(config: pytest.Config) -> dict[str, LoopFactory]:
    """The loops chosen with --cqloop/--cqloop-loops/cqloop_loops, by name (empty when
    none were)."""
    selected: dict[str, LoopFactory] = config.stash.get(_SELECTED, {})
    return dict(selected)


def factories_for(config: pytest.Config, item: pytest.Item) -> dict[str, LoopFactory]:
    """The chosen loops one test runs on: cqloop alone for a `cqloop_only` test."""
    selected = selected_loops(config)
    if item.get_closest_marker("cqloop_only") is not None:
        return {"cqloop": _factory("cqloop")}  # type: ignore[dict-item]
    return selected


class _LoopFactories:
    """The pytest-asyncio hook, registered only when loops were chosen."""

    @pytest.hookimpl
    def pytest_asyncio_loop_factories(
        self, config: pytest.Config, item: pytest.Item
    ) -> dict[str, LoopFactory]:
        return factories_for(config, item)


def _chosen_names(config: pytest.Config) -> tuple[list[str], bool]:
    """The loops asked for, and whether they are "every installed one"."""
    option: str | None = config.getoption("cqloop_loops")
    if option is None:
        option = "cqloop" if config.getoption("cqloop") else str(config.getini("cqloop_loops"))
    names = [name.strip() for name in option.split(",") if name.strip()]
    unknown = [name for name in names if name not in (*KNOWN_LOOPS, ALL_INSTALLED)]
    if unknown:
        raise pytest.UsageError(
            f"--cqloop-loops: unknown loop {unknown[0]!r} (known: {', '.join(KNOWN_LOOPS)}, "
            f"or {ALL_INSTALLED!r})"
        )
    if ALL_INSTALLED in names:
        return list(KNOWN_LOOPS), True
    return list(dict.fromkeys(names)), False


def _factory(name: str) -> LoopFactory | None:
    """The loop factory of a known loop; None when it is not installed."""
    if name == "asyncio":
        return asyncio.new_event_loop
    try:
        module = importlib.import_module(name)
    except ImportError:
        return None
    factory: LoopFactory = module.new_event_loop
    return factory
