"""Differential cases, reads: every cqueues read format in the default, text ("t") and
binary ("b") input modes, with the input arriving whole and cut into 1-byte pieces; EOF;
lines longer than maxline; unget and pending. cqueues (lua5.3 + lua-cqueues) is the
oracle: see tests/cqoracle/__init__.py for the harness and the report's form."""

from __future__ import annotations

import random
import re
from typing import Any

import pytest

from tests.cqoracle import (
    EOF,
    Both,
    Call,
    Deliberate,
    Expect,
    PeerStep,
    Pieces,
    ReadAll,
    Recorder,
    SocketCase,
    Step,
    check,
    params,
)

BOUNDARY_INPUT = b"preamble\r\n--XYZ\r\npart\r\none\r\n--XYZ--\r\n"

# Each format's input and the reads that take it apart (to EOF and one read past it).
FORMATS: dict[str, tuple[bytes, list[Call | ReadAll]]] = {
    "chomp": (
        b"one\r\ntwo\nthree\r\r\nfour",
        [Call("read", "*l") for _ in range(5)],
    ),
    "line": (
        b"one\r\ntwo\nthree\r\r\nfour",
        [Call("read", "*L") for _ in range(5)],
    ),
    "slurp": (b"a\r\nb\r\r\nc\n", [Call("read", "*a"), Call("read", "*a")]),
    "number": (
        b"abc\r\ndefg\r\nhi",
        [Call("read", 3), Call("read", 4), Call("read", 0), Call("read", 10), Call("read", 1)],
    ),
    "header": (
        b"Name: v\r\n x\r\nOther : y\n\r\nbody\r\n",
        [Call("read", "*h"), Call("read", "*h"), Call("read", "*h"), Call("read", "*a")],
    ),
    "raw_header": (
        b"Name: v\r\n x\r\nOther : y\n\r\nbody\r\n",
        [Call("read", "*H"), Call("read", "*H"), Call("read", "*H"), Call("read", "*a")],
    ),
    # cqueues answers a boundary read from whatever is buffered, without waiting (see
    # docs/cqueues-differences.md): fill() first, so that its answers do not depend on
    # how fast the bytes came.
    "boundary": (
        BOUNDARY_INPUT,
        [
            Call("fill", len(BOUNDARY_INPUT), ok=True),
            Call("read", "--XYZ"),
            Call("read", "--XYZ"),
            Call("read", "*l"),
            Call("read", "--XYZ"),
            Call("read", "*l"),
            Call("read", "*l"),
        ],
    ),
    "several": (
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n12345",
        [Call("read", "*l", "*h", "*h", "*l", 5), Call("read", "*l", "*l")],
    ),
}
# -n: the pieces' sizes depend on how the bytes arrived, so whole input reads piece by
# piece and 1-byte input is compared joined.
LIMIT_INPUT = b"hello\r\nworld\r\n!"
LIMIT_WHOLE = [Call("read", -3), Call("read", -20), Call("read", -1)]
LIMIT_PIECES = [ReadAll(-3, 3)]

MODES = {
    "default": [],
    "text": [Call("setmode", "t", None)],
    "binary": [Call("setmode", "b", None)],
}


def _format_cases() -> list[SocketCase]:
    cases = []
    for mode, setup in MODES.items():
        for fmt, (data, reads) in FORMATS.items():
            cases.append(SocketCase(f"{fmt}-{mode}-whole", [data, EOF], setup + reads))
            cases.append(SocketCase(f"{fmt}-{mode}-pieces", [Pieces(data), EOF], setup + reads))
        cases.append(SocketCase(f"limit-{mode}-whole", [LIMIT_INPUT, EOF], setup + LIMIT_WHOLE))
        cases.append(
            SocketCase(f"limit-{mode}-pieces", [Pieces(LIMIT_INPUT), EOF], setup + LIMIT_PIECES)
        )
    return cases


@pytest.mark.parametrize("case", params(_format_cases()))
async def test_read_format_matches_cqueues(case: SocketCase) -> None:
    await check(case)


async def _lines(s: Any, out: Recorder) -> None:
    out("lines", b"|".join([line async for line in s.lines()]))


async def _lines_pairs(s: Any, out: Recorder) -> None:
    # A tuple shorter than the formats where one yielded nothing (Lua: nil).
    got = [
        values[0] + b"+" + (values[1] if len(values) > 1 else b"nil")
        async for values in s.lines("*l", "*L")
    ]
    out("lines", b"|".join(got))


OTHER_CASES = [
    # A line longer than maxline comes back in maxline pieces, as if EOF were there.
    SocketCase(
        "long_line_cut_at_maxline",
        [b"abcdefghij\nxy\n", EOF],
        [Call("setmaxline", 4, None), *[Call("read", "*l") for _ in range(5)]],
    ),
    SocketCase(
        "long_line_cut_at_maxline_pieces",
        [Pieces(b"abcdefghij\nxy\n"), EOF],
        [Call("setmaxline", 4, None), *[Call("read", "*L") for _ in range(5)]],
    ),
    # A header longer than maxline is not a header.
    SocketCase(
        "header_past_maxline",
        [b"Long-Name: 0123456789\r\nX: y\r\n\r\n", EOF],
        [Call("setmaxline", 8, None), Call("read", "*h"), Call("read", "*l")],
    ),
    # A body chunk is bufsiz bytes (text mode: cut after an LF).
    SocketCase(
        "boundary_in_chunks",
        [b"0123456789abcdef\r\n--B--\r\n", EOF],
        [
            Call("setbufsiz", 4, None),
            Call("fill", 25, ok=True),
            *[Call("read", "--B") for _ in range(6)],
        ],
    ),
    SocketCase(
        "eof_then_reads",
        [EOF],
        [Call("read", "*l"), Call("read", "*a"), Call("read", 5), Call("read", -5)],
    ),
    SocketCase(
        "eof_in_the_middle_of_formats",
        [b"one\ntwo", EOF],
        [Call("read", "*l", "*l", "*l"), Call("read", "*l")],
    ),
    SocketCase(
        "pending_and_unget",
        [b"abc\ndef\n", EOF],
        [
            Call("read", "*l"),
            Call("fill", 4, ok=True),
            Call("pending"),
            Call("unget", b"xy\r\n", ok=True),
            Call("pending"),
            Call("read", "*l"),
            Call("read", "*l"),
        ],
    ),
    SocketCase(
        "read_mode_argument_of_xread",
        [b"a\r\nb\r\n", EOF],
        [Call("xread", "*l", "b"), Call("xread", "*l", "t"), Call("read", "*a")],
    ),
    SocketCase(
        "unpack_bits_then_bytes",
        [b"\xab\xcd\x0ftail\n", EOF],
        [
            Call("unpack", 4),
            Call("unpack", 8),
            Call("unpack", 4),
            Call("unpack", 3),
            Call("read", "*l"),
        ],
    ),
    SocketCase(
        "invalid_formats_are_refused_and_consume_nothing",
        [b"abc\n", EOF],
        [Call("read", "*n"), Call("read", "*x"), Call("read", "x"), Call("read", "*l")],
    ),
    SocketCase(
        "line_longer_than_the_input_buffer",
        [Pieces(b"0123456789abcdef\nz"), EOF],
        [Call("setbufsiz", 4, None), Call("read", "*L"), Call("read"), Call("read")],
    ),
    SocketCase(
        "fill_past_eof",
        [b"abc", EOF],
        [Call("fill", 10, ok=True), Call("pending"), Call("read", 10), Call("fill", 1, ok=True)],
    ),
    SocketCase(
        "recv_does_not_wait",
        [Expect(b"go"), b"x\n", EOF],
        [
            Call("recv", "*l"),
            Call("write", "go\n", ok=True),
            Call("fill", 2, ok=True),
            Call("recv", "*l"),
        ],
    ),
    SocketCase(
        "lines_iterates_to_eof",
        [b"one\r\ntwo\nthree", EOF],
        [
            Both(
                """do
      local got = {}
      for line in s:lines() do got[#got + 1] = line end
      out("lines", table.concat(got, "|"))
    end""",
                _lines,
            ),
        ],
    ),
    SocketCase(
        "lines_of_several_formats",
        [b"a\nb\nc\n", EOF],
        [
            Both(
                """do
      local got = {}
      for x, y in s:lines("*l", "*L") do got[#got + 1] = x .. "+" .. (y or "nil") end
      out("lines", table.concat(got, "|"))
    end""",
                _lines_pairs,
            ),
        ],
    ),
    SocketCase(
        "eof_reports",
        [b"x", EOF],
        [Call("read", "*a"), Call("eof", "r"), Call("read", "*l")],
    ),
]


DELIBERATE_CASES = [
    SocketCase(
        "text_read_of_n_bytes_ending_in_a_lone_cr",
        [b"ab\rc\nxy\rz", EOF],
        [Call("fill", 10, ok=True), Call("read", 3), Call("read", -4), Call("read", "*a")],
        deliberate=Deliberate(
            "A text-mode read of n bytes that ends in a lone CR",
            python={"read": [["ab\r"], ["c\nxy"], ["\rz"]]},
        ),
    ),
]


@pytest.mark.parametrize("case", params(OTHER_CASES + DELIBERATE_CASES))
async def test_read_matches_cqueues(case: SocketCase) -> None:
    await check(case)


# -- seeded random inputs --------------------------------------------------------------

RANDOM_ALPHABET = b"ab:\r\n \t-X"
RANDOM_FORMATS: list[str | int] = ["*l", "*L", "*h", "*H", "--X", 1, 2, 5]


def _random_cases(count: int, seed: int, *, pieces: bool = False) -> list[SocketCase]:
    """Short inputs over an alphabet dense in line ends, header punctuation and
    boundary pieces, read with a random sequence of formats in a random input mode.
    Whole input is buffered (fill) before the reads and may be read with boundaries;
    input in 1-byte pieces is read as it comes, with the formats whose answers do not
    depend on how the bytes arrived (boundaries do, in cqueues)."""
    rng = random.Random(seed)
    cases = []
    for i in range(count):
        data = bytes(rng.choice(RANDOM_ALPHABET) for _ in range(rng.randint(1, 40)))
        mode = rng.choice("tb")
        choices = [fmt for fmt in RANDOM_FORMATS if not (pieces and fmt == "--X")]
        if mode == "t" and re.search(rb"\r(?!\n)", data):
            # A byte count in text mode over a lone CR is a deliberate difference
            # ("A text-mode read of n bytes that ends in a lone CR"): its own case.
            choices = [fmt for fmt in choices if isinstance(fmt, str)]
        formats = [rng.choice(choices) for _ in range(rng.randint(2, 8))]
        steps: list[Step] = [Call("setmode", mode, None)]
        if not pieces:
            steps.append(Call("fill", len(data), ok=True))
        steps += [Call("read", fmt) for fmt in formats]
        steps.append(Call("read", "*a"))
        delivery: PeerStep = Pieces(data) if pieces else data
        kind = "pieces" if pieces else "whole"
        cases.append(SocketCase(f"random-{kind}-{seed}-{i}", [delivery, EOF], steps))
    return cases


@pytest.mark.parametrize(
    "case",
    params(_random_cases(16, seed=20200726) + _random_cases(8, seed=5, pieces=True)),
)
async def test_random_reads_match_cqueues(case: SocketCase) -> None:
    await check(case)
