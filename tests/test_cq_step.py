"""cqueues' step semantics on a cqloop controller: what one `step()` runs.

cqueues' step polls once, then resumes every coroutine whose wait ended before it began.
On cqloop a coroutine's resumption is a chain of callbacks (a timer sets a future, the
future wakes its task, the finished task runs its done callbacks), so a step runs the
callbacks its poll made ready and then those they make ready, up to
`cqloop.loop.STEP_MAX_ROUNDS` rounds; a timer scheduled during the step (cqloop.sleep(0)
included) is due in the next one, as in cqueues. The step counts below are the ones Lua's
cqueues gives for the same programs (`cqueues.new():wrap(f)` then step until empty; the
Lua oracle test runs it when lua5.3 and lua-cqueues are installed). run_forever keeps
asyncio's iteration: callbacks scheduled during an iteration run in the next
(tests/test_loop_behaviour.py checks it on every loop kind).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess

import pytest

import cqloop
from cqloop.loop import STEP_MAX_ROUNDS

# Safety net: a broken step makes the loop below fail instead of spinning.
MAX_STEPS = 50
# Bounded blocking per step, so a step with nothing due cannot hang the test.
STEP_WAIT_S = 5.0


def steps_until_empty(cq) -> tuple[int, list[int]]:
    """Step until no wrapped coroutine is left; (steps taken, count() after each)."""
    counts: list[int] = []
    while not cq.empty():
        assert len(counts) < MAX_STEPS, counts
        cq.step(STEP_WAIT_S)
        counts.append(cq.count())
    return len(counts), counts


async def nothing() -> None:
    pass


async def sleeps_zero() -> None:
    await cqloop.sleep(0)


async def sleeps_zero_twice() -> None:
    await cqloop.sleep(0)
    await cqloop.sleep(0)


async def sleeps_briefly() -> None:
    await cqloop.sleep(0.01)


# What Lua's cqueues 20200726 answers for the same programs (see test_lua_agrees below).
CQUEUES_STEPS = {
    "nothing": (nothing, 1, [0]),
    "sleep(0)": (sleeps_zero, 2, [1, 0]),
    "sleep(0) twice": (sleeps_zero_twice, 3, [1, 1, 0]),
    "sleep(0.01)": (sleeps_briefly, 2, [1, 0]),
}

LUA_PROGRAM = r"""
local cqueues = require "cqueues"
local cases = {
  ["nothing"] = function() end,
  ["sleep(0)"] = function() cqueues.sleep(0) end,
  ["sleep(0) twice"] = function() cqueues.sleep(0); cqueues.sleep(0) end,
  ["sleep(0.01)"] = function() cqueues.sleep(0.01) end,
}
for name, fn in pairs(cases) do
  local cq = cqueues.new()
  cq:wrap(fn)
  local counts = {}
  while not cq:empty() and #counts < 50 do
    assert(cq:step(5))
    counts[#counts + 1] = cq:count()
  end
  print(name .. "=" .. table.concat(counts, ","))
end
"""


@pytest.mark.parametrize("case", sorted(CQUEUES_STEPS))
def test_a_wrapped_coroutine_takes_as_many_steps_as_in_cqueues(case):
    fn, steps, counts = CQUEUES_STEPS[case]
    cq = cqloop.new()
    try:
        cq.wrap(fn)
        assert steps_until_empty(cq) == (steps, counts)
    finally:
        cq.close()


def test_lua_agrees_with_the_expected_step_counts():
    lua = shutil.which("lua5.3")
    if lua is None:
        pytest.skip("lua5.3 is not installed")
    probe = subprocess.run([lua, "-e", 'require "cqueues"'], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("lua-cqueues is not installed")
    out = subprocess.run(
        [lua, "-"], input=LUA_PROGRAM, capture_output=True, text=True, check=True, timeout=60
    ).stdout
    seen = dict(line.split("=", 1) for line in out.splitlines())
    expected = {
        name: ",".join(map(str, counts)) for name, (_fn, _steps, counts) in CQUEUES_STEPS.items()
    }
    assert seen == expected


def test_count_drops_a_finished_coroutine_in_the_step_it_finished():
    cq = cqloop.new()
    gate = cq.create_future()

    async def waits() -> None:
        await gate

    try:
        cq.wrap(waits)
        cq.step(0)
        assert cq.count() == 1
        gate.set_result(None)  # the wait ends before the next step begins
        cq.step(0)
        assert cq.count() == 0
        assert cq.empty()
    finally:
        cq.close()


def test_a_step_resumes_what_a_finished_coroutine_wakes():
    # A wake-up the step makes (one coroutine finishes, another awaited it) is resumed in
    # the same step, and that one's finishing is counted in it too.
    cq = cqloop.new()
    order: list[str] = []

    async def child() -> str:
        await cqloop.sleep(0)
        order.append("child done")
        return "value"

    async def parent() -> None:
        order.append(await cq.create_task(child()))

    try:
        cq.wrap(parent)
        assert steps_until_empty(cq) == (2, [1, 0])
        assert order == ["child done", "value"]
    finally:
        cq.close()


def test_loop_finishes_a_sleeping_coroutine_in_two_steps():
    cq = cqloop.new()
    stepped = 0
    real_step = cq.step

    def counting_step(timeout=0):
        nonlocal stepped
        stepped += 1
        real_step(timeout)

    cq.step = counting_step
    try:
        cq.wrap(sleeps_briefly)
        assert cq.loop(timeout=STEP_WAIT_S) is True
        assert stepped == 2
    finally:
        cq.close()


def test_a_self_rescheduling_callback_returns_control_after_the_round_bound():
    cq = cqloop.new()
    fd = cq.fileno()
    runs = 0

    def again() -> None:
        nonlocal runs
        runs += 1
        cq.call_soon(again)

    try:
        cq.call_soon(again)
        cq.step(0)
        assert runs == STEP_MAX_ROUNDS
        assert cq.timeout() == 0.0  # work is left: an outside poller steps again at once
        from select import select

        assert select([fd], [], [], 0)[0] == [fd]
        cq.step(0)
        assert runs == 2 * STEP_MAX_ROUNDS
    finally:
        cq.close()


def test_a_yielding_coroutine_returns_control_after_the_round_bound():
    cq = cqloop.new()
    spins = 0
    stop = False

    async def spinner() -> None:
        nonlocal spins
        while not stop:
            spins += 1
            await asyncio.sleep(0)  # a bare yield: ready again at once

    try:
        cq.wrap(spinner)
        cq.step(0)
        first = spins
        assert 1 <= first <= STEP_MAX_ROUNDS
        cq.step(0)
        assert first < spins <= first + STEP_MAX_ROUNDS
        assert cq.count() == 1
    finally:
        stop = True
        assert cq.loop(timeout=STEP_WAIT_S)
        cq.close()


def test_a_step_does_not_wait_after_its_poll():
    # A timer scheduled during the step for a moment after its start (but before its
    # timeout) waits for the next step: only the step's own poll may block.
    cq = cqloop.new()
    ran: list[str] = []

    def schedule() -> None:
        cq.call_later(0.01, ran.append, "timer")

    try:
        cq.call_soon(schedule)
        t0 = cq.time()
        cq.step(STEP_WAIT_S)
        assert ran == []
        assert cq.time() - t0 < 1.0
        cq.step(STEP_WAIT_S)
        assert ran == ["timer"]
    finally:
        cq.close()
