"""The echo benchmark's result table (cqloop._bench.echo.results): what it prints from
figures given to it. The benchmark itself runs in CI's smoke run, not here."""

from __future__ import annotations

import asyncio

import pytest

from cqloop._bench import micro
from cqloop._bench.echo.results import CEILING, EchoCell, Plan, Row, print_table


def make_plan() -> Plan:
    loops = [micro.LoopInfo(name, asyncio.new_event_loop, "0") for name in ("cqloop", "uvloop")]
    return Plan(
        loops=loops,
        modes=["protocol"],
        transports=["tcp"],
        sizes=[1024, 102400],
        conns=[10],
        rounds=2,
        duration_s=1.0,
        warmup_s=0.0,
        generator_warmup_s=0.0,
        ceiling=True,
        server_core=0,
        generator_core=1,
    )


def cell(rates: list[float], server_cpu: list[float], generator_cpu: float) -> EchoCell:
    return EchoCell(rates=rates, server_cpu=server_cpu, generator_cpu=[generator_cpu] * len(rates))


def test_per_server_cpu_divides_each_rounds_rate_by_the_servers_cpu_share() -> None:
    got = cell([100.0, 300.0], [0.5, 0.75], 1.0).per_server_cpu()
    assert got.rates == [200.0, 400.0]
    assert got.median == 300.0


@pytest.mark.parametrize("server_cpu", [[0.5], [0.5, 0.0], []])
def test_per_server_cpu_has_no_figures_without_a_cpu_share_for_every_round(
    server_cpu: list[float],
) -> None:
    got = cell([100.0, 300.0], server_cpu, 1.0).per_server_cpu()
    assert got.rates == [] and got.median is None


def test_per_server_cpu_keeps_the_reason_a_loop_could_not_serve() -> None:
    failed = EchoCell(error="NotImplementedError", unavailable=True)
    got = failed.per_server_cpu()
    assert (got.error, got.unavailable, got.rates) == ("NotImplementedError", True, [])


def test_only_rows_where_the_generator_was_the_limit_get_the_per_cpu_table(
    capsys: pytest.CaptureFixture[str],
) -> None:
    plan = make_plan()
    table = plan.new_table()
    small, large = Row("tcp", "protocol", 1024, 10), Row("tcp", "protocol", 102400, 10)
    # 1 KiB: the generator had room; 100 KiB: it was saturated, and every server posts the
    # same rate, but cqloop needed less CPU for it than uvloop.
    table[small]["cqloop"] = cell([150e3, 150e3], [0.9, 0.9], 0.5)
    table[small]["uvloop"] = cell([100e3, 100e3], [0.9, 0.9], 0.5)
    table[small][CEILING] = cell([200e3, 200e3], [0.9, 0.9], 0.6)
    table[large]["cqloop"] = cell([50e3, 50e3], [0.8, 0.8], 0.99)
    table[large]["uvloop"] = cell([50e3, 50e3], [1.0, 1.0], 0.99)
    print_table(plan, table)
    out = capsys.readouterr().out
    first, _, second = out.partition("echo (msg/CPU-s)")
    assert "tcp protocol 1K x10" in first and "tcp protocol 100K x10" in first
    assert "50.0k ±0%*" in first  # the generator-bound figure is flagged
    assert "tcp protocol 1K x10" not in second
    per_cpu = next(line for line in second.splitlines() if line.startswith("tcp protocol 100K"))
    # 50k / 0.8 and 50k / 1.0 echoes per CPU-second; cq/uvloop and cq/best are 1.25.
    assert "62.5k" in per_cpu and "50.0k" in per_cpu and "*" not in per_cpu
    assert per_cpu.split()[-1] == "1.25"


def printed_row(cq: list[float], uv: list[float], capsys: pytest.CaptureFixture[str]) -> str:
    """The printed line of a 1 KiB row with these rounds' rates for cqloop and uvloop."""
    plan = make_plan()
    table = plan.new_table()
    row = Row("tcp", "protocol", 1024, 10)
    table[row]["cqloop"] = cell(cq, [0.9] * len(cq), 0.5)
    table[row]["uvloop"] = cell(uv, [0.9] * len(uv), 0.5)
    print_table(plan, table)
    return next(line for line in capsys.readouterr().out.splitlines() if line.startswith("tcp"))


def test_the_paired_ratio_is_the_median_of_each_rounds_ratio_to_the_best_peer(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Medians 200k over 190k (1.05), but cqloop lost two rounds of three: 100/110, 200/190,
    # 300/330, whose median is 0.91.
    line = printed_row([100e3, 200e3, 300e3], [110e3, 190e3, 330e3], capsys)
    # cq/uvloop, cq/ceiling (no figures), cq/best, cq/paired
    assert line.split()[-4:] == ["1.05", "-", "1.05", "0.91"]


def test_no_paired_ratio_unless_every_server_has_every_round(
    capsys: pytest.CaptureFixture[str],
) -> None:
    line = printed_row([100e3, 200e3, 300e3], [110e3, 190e3], capsys)
    assert line.split()[-1] == "-"
