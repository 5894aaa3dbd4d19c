"""Differential cases, writes: cqueues' output buffering modes (n/l/f) and text
translation, byte for byte as the peer receives them; setmode, getmode, setvbuf;
flush, pending, shutdown, autoflush. cqueues (lua5.3 + lua-cqueues) is the oracle: see
tests/cqoracle/__init__.py for the harness and the report's form."""

from __future__ import annotations

import random

import pytest

from tests.cqoracle import EOF, Call, Expect, SocketCase, check, params


def _modes() -> Call:
    # cqueues has no getmode(): setmode(nil, nil) reads the modes in both.
    return Call("setmode", None, None, label="modes")


WRITE_CASES = [
    SocketCase(
        "line_mode_sends_through_the_last_lf_text",
        [],
        [
            Call("write", "abc", ok=True),
            Call("pending"),
            Call("write", "def\nxy", ok=True),
            Call("pending"),
            Call("flush", ok=True),
            Call("pending"),
        ],
    ),
    SocketCase(
        "line_mode_binary_keeps_lf",
        [],
        [Call("setmode", None, "bl"), Call("write", "a\nb\r\nc", ok=True), Call("pending")],
    ),
    SocketCase(
        "text_translation_doubles_cr_before_lf",
        [],
        [Call("write", "a\r\nb\n\n", ok=True), Call("pending")],
    ),
    SocketCase(
        "no_buffering_sends_everything",
        [],
        [Call("setmode", None, "n"), Call("write", "a\nb", ok=True), Call("pending")],
    ),
    SocketCase(
        "full_buffering_sends_whole_buffers",
        [],
        [
            Call("setmode", None, "bf"),
            Call("setbufsiz", None, 4),
            Call("write", "abcdefghij", ok=True),
            Call("pending"),
            Call("write", "kl\n", ok=True),
            Call("pending"),
            Call("flush", ok=True),
        ],
    ),
    SocketCase(
        "line_mode_write_longer_than_maxline_without_lf",
        [],
        [
            Call("setmaxline", None, 4),
            Call("write", "abcdefghij", ok=True),
            Call("pending"),
            Call("write", "k", ok=True),
            Call("pending"),
        ],
    ),
    SocketCase(
        "line_mode_long_tail_after_lf",
        [],
        [
            Call("setmaxline", None, 4),
            Call("write", "ab\ncdefghij", ok=True),
            Call("pending"),
            Call("write", "k", ok=True),
            Call("pending"),
        ],
    ),
    SocketCase(
        "line_mode_long_write_past_bufsiz",
        [],
        [
            Call("setmode", None, "bl"),
            Call("setmaxline", None, 3),
            Call("setbufsiz", None, 5),
            Call("write", "abcdefghijklmnopq", ok=True),
            Call("pending"),
        ],
    ),
    SocketCase(
        "several_pieces_in_one_write",
        [],
        [Call("write", "a", "b\nc", "d", ok=True), Call("pending")],
    ),
    SocketCase(
        "flush_modes",
        [],
        [
            Call("setmode", None, "bf"),
            Call("write", "ab\ncd", ok=True),
            Call("flush", "l", ok=True),
            Call("pending"),
            Call("flush", "", ok=True),
            Call("pending"),
            Call("flush", ok=True),
            Call("pending"),
        ],
    ),
    SocketCase(
        "xwrite_mode_for_one_call",
        [],
        [
            Call("xwrite", "a\nb", "bn", ok=True),
            Call("pending"),
            Call("xwrite", "c\nd", "t", ok=True),
            Call("pending"),
        ],
    ),
    SocketCase(
        "send_range_and_mode",
        [],
        [Call("send", "0123456789", 3, 6, "bn"), Call("pending"), Call("send", "x\ny", 1, 3)],
    ),
    SocketCase(
        "pack_bits_in_full_and_line_modes",
        [],
        [
            Call("pack", 0x41, 8, ok=True),
            Call("pack", 1, 4, ok=True),
            Call("pending"),
            Call("pack", 0x20A, 12, ok=True),
            Call("pending"),
            Call("flush", ok=True),
        ],
    ),
    SocketCase(
        "pack_mode_decides_this_calls_flush",
        [],
        [
            Call("setmode", None, "tf"),
            Call("pack", 0x41, 8, "n", ok=True),
            Call("pending"),
            Call("pack", 0x42, 8, ok=True),
            Call("pending"),
            Call("pack", 0x43, 8, "bn", ok=True),
            Call("pending"),
            Call("pack", 0x0A44, 16, "l", ok=True),
            Call("pending"),
        ],
    ),
    SocketCase(
        "autoflush_before_a_read",
        [Expect(b"q\r\n"), b"r\n", EOF],
        [Call("setmode", None, "tfa"), Call("write", "q\n", ok=True), Call("read", "*l")],
    ),
    SocketCase(
        "no_autoflush_keeps_output",
        [b"r\n", EOF],
        [
            Call("setmode", None, "tfA"),
            Call("write", "q\n", ok=True),
            Call("read", "*l"),
            Call("pending"),
        ],
    ),
    SocketCase(
        "shutdown_write_then_read",
        [Expect(b"x"), b"reply\n", EOF],
        [Call("write", "x\n", ok=True), Call("shutdown", "w", ok=True), Call("read", "*a")],
    ),
    SocketCase(
        "shutdown_with_output_buffered",
        [b"r\n", EOF],
        [
            Call("setmode", None, "bfA"),
            Call("write", "abc", ok=True),
            Call("shutdown", "w", ok=True),
            Call("pending"),
            Call("read", "*l"),
        ],
    ),
]

MODE_CASES = [
    SocketCase("initial_modes", [], [_modes()]),
    SocketCase(
        "setmode_starts_from_the_initial_mode",
        [],
        [
            Call("setmode", "b", "bf"),
            Call("setmode", "P", "A"),
            _modes(),
            Call("setmode", "", "n"),
            _modes(),
        ],
    ),
    SocketCase(
        "setmode_flags_on_the_wrong_channel_do_nothing",
        [],
        [Call("setmode", "fA", "P"), _modes(), Call("setmode", "-", "-"), _modes()],
    ),
    SocketCase(
        "setvbuf_names_and_sizes",
        [],
        [
            Call("setvbuf", "full", 8),
            Call("setvbuf", "no"),
            Call("setvbuf", "line"),
            Call("setvbuf", "nobuf", 16),
            Call("setvbuf", "full"),
            _modes(),
            Call("setbufsiz", None, None),
        ],
    ),
]


@pytest.mark.parametrize("case", params(WRITE_CASES + MODE_CASES))
async def test_write_matches_cqueues(case: SocketCase) -> None:
    await check(case)


# -- seeded random writes --------------------------------------------------------------

RANDOM_OUTPUT_MODES = ["tl", "bl", "tf", "bf", "tn", "bn"]


def _random_cases(count: int, seed: int) -> list[SocketCase]:
    """Random output modes, small maxline and bufsiz, and a random sequence of write,
    xwrite, send and flush of short data dense in LFs and CRs; pending() after each, and
    the peer's bytes at the end."""
    rng = random.Random(seed)
    cases = []
    for i in range(count):
        steps = [
            Call("setmode", None, rng.choice(RANDOM_OUTPUT_MODES)),
            Call("setmaxline", None, rng.randint(1, 8)),
            Call("setbufsiz", None, rng.randint(1, 12)),
        ]
        for _ in range(rng.randint(1, 6)):
            data = bytes(rng.choice(b"ab\n\r") for _ in range(rng.randint(0, 20)))
            pick = rng.random()
            if pick < 0.5:
                steps.append(Call("write", data, ok=True))
            elif pick < 0.65:
                mode = rng.choice(["n", "l", "f", "bl", "tf", ""])
                steps.append(Call("xwrite", data, mode, ok=True))
            elif pick < 0.8:
                steps.append(Call("send", data, 1, len(data), rng.choice(["n", "l", "f", "", "b"])))
            else:
                steps.append(Call("flush", rng.choice(["l", "f", "", "n", "tl"]), ok=True))
            steps.append(Call("pending"))
        cases.append(SocketCase(f"random-{seed}-{i}", [], steps))
    return cases


@pytest.mark.parametrize("case", params(_random_cases(20, seed=20200726)))
async def test_random_writes_match_cqueues(case: SocketCase) -> None:
    await check(case)
