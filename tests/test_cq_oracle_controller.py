"""Differential cases, controllers and the small cq modules: wrap, step, loop, errors,
count; condition wake-up order; promise. cqueues (lua5.3 + lua-cqueues) is the oracle:
see tests/cqoracle/__init__.py. Each case is a Lua body and a Python function recording
the same things; the Python half runs a controller (a cqloop loop) stepped from inside a
task of whichever loop the test runs on (asyncio, uvloop, cqloop)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import cqloop
from cqloop.condition import Condition
from cqloop.promise import Promise
from tests.cqoracle import Deliberate, RawCase, Recorder, check_raw, raw_params

# A step bound for the stepping loops: a broken case stops instead of spinning.
MAX_STEPS = 10
# cqueues runs coroutines made ready together (wrapped, or woken by one signal) last
# first; cqloop in the order they became ready (docs/cqueues-differences.md).
READY_ORDER = "Coroutines made ready together run in the order they became ready"
# cqueues resumes a coroutine woken by a condition signalled during a step in the next
# step; cqloop in the same one (docs/cqueues-differences.md).
CONDITION_IN_STEP = "A coroutine woken by a condition signalled during a step"


def _controller(body: Callable[[Any, Recorder], None]) -> Callable[[Recorder], None]:
    def run(out: Recorder) -> None:
        cq = cqloop.new()
        try:
            body(cq, out)
        finally:
            cq.close()

    return run


def _wrap_sleep(cq: Any, out: Recorder) -> None:
    log: list[str] = []

    async def job() -> None:
        log.append("start")
        await cqloop.sleep(0.01)
        log.append("end")

    cq.wrap(job)
    out("count", cq.count())
    n = 0
    while not cq.empty() and n < MAX_STEPS:
        cq.step(None)
        n += 1
        out("step", n, cq.count(), ",".join(log))


WRAP_SLEEP_LUA = """
local cq = cqueues.new()
local log = {}
cq:wrap(function()
    log[#log + 1] = "start"
    cqueues.sleep(0.01)
    log[#log + 1] = "end"
end)
out("count", cq:count())
local n = 0
while not cq:empty() and n < 10 do
    assert(cq:step())
    n = n + 1
    out("step", n, cq:count(), table.concat(log, ","))
end
"""


def _condition_wakes_within_the_step(cq: Any, out: Recorder) -> None:
    cv = Condition()
    log: list[str] = []

    async def waiter() -> None:
        await cv.wait()
        log.append("woken")

    async def signaller() -> None:
        await cqloop.sleep(0)
        cv.signal()
        log.append("signalled")

    cq.wrap(waiter).wrap(signaller)
    cq.step(None)
    cq.step(None)
    out("after two steps", ",".join(log))
    n = 2
    while not cq.empty() and n < MAX_STEPS:
        cq.step(None)
        n += 1
    out("steps", n)


CONDITION_STEP_LUA = """
local cq = cqueues.new()
local cv = condition.new()
local log = {}
cq:wrap(function()
    cv:wait()
    log[#log + 1] = "woken"
end)
cq:wrap(function()
    cqueues.sleep(0)
    cv:signal()
    log[#log + 1] = "signalled"
end)
assert(cq:step())
assert(cq:step())
out("after two steps", table.concat(log, ","))
local n = 2
while not cq:empty() and n < 10 do
    assert(cq:step())
    n = n + 1
end
out("steps", n)
"""


def _count_after_finish(cq: Any, out: Recorder) -> None:
    async def quick() -> None:
        pass

    cq.wrap(quick).wrap(quick)
    out("count", cq.count(), cq.empty())
    cq.step(0)
    out("after one step", cq.count(), cq.empty())


COUNT_LUA = """
local cq = cqueues.new()
cq:wrap(function() end):wrap(function() end)
out("count", cq:count(), cq:empty())
assert(cq:step(0))
out("after one step", cq:count(), cq:empty())
"""


def _loop_order(cq: Any, out: Recorder) -> None:
    log: list[str] = []

    async def job(name: str) -> None:
        log.append(name + "1")
        await cqloop.sleep(0)
        log.append(name + "2")

    for name in "abc":
        cq.wrap(job, name)
    out("loop", cq.loop())
    out("count", cq.count())
    out("log", ",".join(log))


LOOP_ORDER_LUA = """
local cq = cqueues.new()
local log = {}
for _, name in ipairs{"a", "b", "c"} do
    cq:wrap(function()
        log[#log + 1] = name .. "1"
        cqueues.sleep(0)
        log[#log + 1] = name .. "2"
    end)
end
out("loop", cq:loop())
out("count", cq:count())
out("log", table.concat(log, ","))
"""


def _loop_error(cq: Any, out: Recorder) -> None:
    async def boom() -> None:
        raise RuntimeError("boom")

    async def fine() -> None:
        await cqloop.sleep(0)

    cq.wrap(fine).wrap(boom)
    try:
        out("loop", cq.loop())
    except RuntimeError as exc:
        out("loop", False, str(exc))
    out("loop again", cq.loop())
    out("count", cq.count())


LOOP_ERROR_LUA = """
local cq = cqueues.new()
cq:wrap(function() cqueues.sleep(0) end):wrap(function() error("boom") end)
local ok, err = cq:loop()
out("loop", ok, msg(err))
out("loop again", cq:loop())
out("count", cq:count())
"""


def _errors(cq: Any, out: Recorder) -> None:
    async def fail(name: str) -> None:
        await cqloop.sleep(0)
        raise RuntimeError(name)

    cq.wrap(fail, "first").wrap(fail, "second")
    for report in cq.errors():
        out("error", str(report.error))
    out("count", cq.count())


ERRORS_LUA = """
local cq = cqueues.new()
for _, name in ipairs{"first", "second"} do
    cq:wrap(function() cqueues.sleep(0) error(name) end)
end
for err in cq:errors() do
    out("error", msg(err))
end
out("count", cq:count())
"""


def _condition(lifo: bool, signals: tuple[int | None, ...]) -> Callable[[Any, Recorder], None]:
    # The waiters start waiting in a fixed order (a, b, c) whatever order the controller
    # starts coroutines in, and each signal is followed by waiting until its waiters have
    # run: the log shows which waiters each signal woke, in the order they ran.
    def body(cq: Any, out: Recorder) -> None:
        cv = Condition(lifo=lifo)
        log: list[str] = []
        turn = [0]

        async def waiter(i: int, name: str) -> None:
            while turn[0] != i:
                await cqloop.sleep(0)
            turn[0] += 1
            await cv.wait()
            log.append(name)

        async def signaller() -> None:
            while turn[0] < 3:
                await cqloop.sleep(0)
            woken = 0
            for n in signals:
                cv.signal(n)
                woken = 3 if n is None else min(3, woken + n)
                while len(log) - log.count("|") < woken:
                    await cqloop.sleep(0)
                log.append("|")

        for i, name in enumerate("abc"):
            cq.wrap(waiter, i, name)
        cq.wrap(signaller)
        out("loop", cq.loop(1.0))
        out("log", "".join(log))

    return body


def _condition_lua(lifo: bool, signals: tuple[int | None, ...]) -> str:
    calls = "\n".join(
        f"    cv:signal({'' if n is None else n})\n"
        f"    woken = {'3' if n is None else f'math.min(3, woken + {n})'}\n"
        "    while #log - bars < woken do cqueues.sleep(0) end\n"
        "    log[#log + 1] = '|' bars = bars + 1"
        for n in signals
    )
    return f"""
local cq = cqueues.new()
local cv = condition.new({"true" if lifo else "false"})
local log, turn, bars, woken = {{}}, 0, 0, 0
for i, name in ipairs{{"a", "b", "c"}} do
    cq:wrap(function()
        while turn ~= i - 1 do cqueues.sleep(0) end
        turn = turn + 1
        cv:wait()
        log[#log + 1] = name
    end)
end
cq:wrap(function()
    while turn < 3 do cqueues.sleep(0) end
{calls}
end)
out("loop", cq:loop(1.0))
out("log", table.concat(log))
"""


def _promise(cq: Any, out: Recorder) -> None:
    p = Promise()
    out("status", p.status())

    async def getter() -> None:
        await out.call("get", p.get())  # several values: a tuple, recorded spread

    async def setter() -> None:
        await cqloop.sleep(0)
        p.set(True, 1, "two")

    cq.wrap(getter).wrap(setter)
    out("loop", cq.loop())
    out("status", p.status())
    rejected = Promise()
    rejected.set(False, "bad")
    out("rejected", rejected.status())
    try:
        out("get rejected", True, rejected.result())
    except RuntimeError as exc:
        out("get rejected", False, str(exc))


PROMISE_LUA = """
local cq = cqueues.new()
local p = promise.new()
out("status", p:status())
cq:wrap(function() out("get", p:get()) end)
cq:wrap(function() cqueues.sleep(0) p:set(true, 1, "two") end)
out("loop", cq:loop())
out("status", p:status())
local rejected = promise.new()
rejected:set(false, "bad")
out("rejected", rejected:status())
local ok, err = pcall(rejected.get, rejected)
out("get rejected", ok, msg(err))
"""


def _timeouts(cq: Any, out: Recorder) -> None:
    cv = Condition()
    p = Promise()

    async def job() -> None:
        out("condition wait", await cv.wait(timeout=0.05))
        out("promise wait", await p.wait(timeout=0.05))
        await out.call("promise get", p.get(timeout=0.05))
        out("status", p.status())

    cq.wrap(job)
    out("loop", cq.loop())


TIMEOUTS_LUA = """
local cq = cqueues.new()
local cv, p = condition.new(), promise.new()
cq:wrap(function()
    out("condition wait", (cv:wait(0.05)))  -- its second value is the timeout that expired
    out("promise wait", p:wait(0.05))
    out("promise get", p:get(0.05))
    out("status", p:status())
end)
out("loop", cq:loop())
"""

CASES = [
    RawCase(
        "wrap_sleep_finishes_in_two_steps",
        WRAP_SLEEP_LUA,
        _controller(_wrap_sleep),
    ),
    RawCase(
        "count_drops_finished_coroutines_in_their_step",
        COUNT_LUA,
        _controller(_count_after_finish),
    ),
    RawCase(
        "loop_runs_wrapped_coroutines_in_order",
        LOOP_ORDER_LUA,
        _controller(_loop_order),
        deliberate=Deliberate(
            READY_ORDER,
            python={"log": [["a1,b1,c1,a2,b2,c2"]]},
        ),
    ),
    RawCase("loop_stops_at_the_first_error", LOOP_ERROR_LUA, _controller(_loop_error)),
    RawCase("errors_yields_each_error", ERRORS_LUA, _controller(_errors)),
    RawCase(
        "condition_signal_all_fifo",
        _condition_lua(False, (None,)),
        _controller(_condition(False, (None,))),
        deliberate=Deliberate(READY_ORDER, python={"log": [["abc|"]]}),
    ),
    RawCase(
        "condition_signal_one_at_a_time_fifo",
        _condition_lua(False, (1, 1, 1)),
        _controller(_condition(False, (1, 1, 1))),
    ),
    RawCase(
        "condition_signal_one_then_two_lifo",
        _condition_lua(True, (1, 2)),
        _controller(_condition(True, (1, 2))),
        deliberate=Deliberate(READY_ORDER, python={"log": [["c|ba|"]]}),
    ),
    RawCase(
        "condition_wake_up_resumes_within_the_step",
        CONDITION_STEP_LUA,
        _controller(_condition_wakes_within_the_step),
        deliberate=Deliberate(
            CONDITION_IN_STEP,
            python={"after two steps": [["signalled,woken"]], "steps": [[2]]},
        ),
    ),
    RawCase("promise_get_set_status", PROMISE_LUA, _controller(_promise)),
    RawCase(
        "waits_that_time_out",
        TIMEOUTS_LUA,
        _controller(_timeouts),
        deliberate=Deliberate(
            "A promise get() that times out",
            python={"promise get": [[{"error": "TimeoutError"}]]},
        ),
    ),
]


@pytest.mark.parametrize("case", raw_params(CASES))
async def test_controller_matches_cqueues(case: RawCase) -> None:
    out = Recorder()
    case.python(out)
    check_raw(case, out.records)
