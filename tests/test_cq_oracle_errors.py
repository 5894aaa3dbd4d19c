"""Differential cases, errors: timeouts, sticky errors and clearerr(), a read of several
formats that fails part way, EOF and resets. cqueues (lua5.3 + lua-cqueues) is the
oracle: see tests/cqoracle/__init__.py for the harness and the report's form; the
deliberate differences are docs/cqueues-differences.md's."""

from __future__ import annotations

import pytest

from tests.cqoracle import (
    EOF,
    RESET,
    SIGNAL,
    Both,
    Call,
    Deliberate,
    Expect,
    SocketCase,
    WaitPeer,
    check,
    params,
)

TIMEOUT_S = 0.2

ERROR_CASES = [
    # The line read before the failing format comes back with the error, never lost.
    SocketCase(
        "several_formats_then_a_timeout_keep_what_was_read",
        [b"a\n", Expect(b"go"), b"b\n", EOF],
        [
            Call("settimeout", TIMEOUT_S, ok=True),
            Call("read", "*l", "*l"),
            Call("read", "*l", label="sticky"),
            Call("error", "r"),
            Call("clearerr", "r"),
            Call("error", "r"),
            Call("write", "go\n", ok=True),
            Call("read", "*l"),
            Call("read", "*l"),
        ],
    ),
    # With an onerror handler that returns, the read returns the values, nil/None and
    # the handler's value; the timeout still sticks.
    SocketCase(
        "several_formats_then_a_handled_timeout",
        [b"a\n", Expect(b"go"), EOF],
        [
            Call("settimeout", TIMEOUT_S, ok=True),
            Both(
                'step("onerror", "ok", s.onerror, s, function(_, op) return "handled " .. op end)',
                lambda s, out: out("onerror", "ok", s.onerror(lambda _, op, e: f"handled {op}")),
            ),
            Call("read", "*l", "*l"),
            Call("error", "r"),
            Call("clearerr", "r"),
            Call("write", "go\n", ok=True),
            Call("read", "*l", "*l"),
        ],
    ),
    SocketCase(
        "timeout_then_clearerr_then_data",
        [Expect(b"go"), b"late\n", EOF],
        [
            Call("settimeout", TIMEOUT_S, ok=True),
            Call("read", "*l"),
            Call("read", 3, label="sticky"),
            Call("clearerr", "rw"),
            Call("write", "go\n", ok=True),
            Call("read", "*a"),
        ],
    ),
    SocketCase(
        "xread_timeout_of_its_own",
        [Expect(b"go"), b"x\n", EOF],
        [
            Call("xread", "*l", None, TIMEOUT_S),
            Call("clearerr", "r"),
            Call("write", "go\n", ok=True),
            Call("xread", "*l", None, TIMEOUT_S),
        ],
    ),
    SocketCase(
        "a_timeout_on_input_leaves_output_alone",
        [Expect(b"go"), EOF],
        [
            Call("settimeout", TIMEOUT_S, ok=True),
            Call("read", "*l"),
            Call("error", "rw"),
            Call("write", "go\n", ok=True),
            Call("flush", ok=True),
        ],
    ),
    SocketCase(
        "seterror_sticks_until_clearerr",
        [b"x\n", EOF],
        [
            Call("seterror", "r", 5, ok=True),
            Call("read", "*l"),
            Call("clearerr", "r"),
            Call("read", "*l"),
        ],
    ),
    SocketCase(
        "eof_is_not_an_error",
        [b"last", EOF],
        [Call("read", "*l"), Call("read", "*l"), Call("error", "r"), Call("eof", "r")],
    ),
    SocketCase(
        "header_block_ends_at_the_blank_line",
        [b"A: 1\r\nB: 2\r\n\r\nbody", EOF],
        [Call("read", "*h", "*h", "*h", "*h"), Call("read", "*l"), Call("read", "*a")],
    ),
]

DELIBERATE_CASES = [
    # cqueues' default handler returns timeouts, and counts them: past setmaxerrs() in a
    # row it throws instead. cqloop raises every error (no handler returns it).
    SocketCase(
        "unchecked_error_limit_without_a_handler",
        [Expect(b"never"), EOF],
        [
            Call("setmaxerrs", "r", 2),
            Call("settimeout", TIMEOUT_S, ok=True),
            *[Call("read", "*l") for _ in range(4)],
            Call("clearerr", "r"),
            Call("read", "*l"),
        ],
        deliberate=Deliberate(
            "The unchecked error limit without an onerror handler",
            python={"read": [[{"error": "ETIMEDOUT"}]] * 4},
        ),
    ),
    # cqueues' non-blocking recv reports EOF as its C layer does (EPIPE); read() does not.
    SocketCase(
        "recv_at_eof",
        [b"x\n", EOF],
        [Call("read", "*l"), Call("read", "*l"), Call("recv", "*l"), Call("recv", 4)],
        deliberate=Deliberate("recv() at EOF", python={"recv": [[], []]}),
    ),
    # cqueues reads a reset that follows buffered data as a clean EOF; cqloop raises it.
    SocketCase(
        "reset_after_buffered_data",
        [Expect(b"go"), b"data\n", RESET, SIGNAL],
        [
            Call("write", "go\n", ok=True),
            WaitPeer(),
            Call("read", "*l"),
            Call("read", "*l"),
            Call("read", "*l"),
        ],
        deliberate=Deliberate(
            "A reset after buffered data",
            python={"read": [["data"], [{"error": "ECONNRESET"}], [{"error": "ECONNRESET"}]]},
        ),
    ),
    # cqueues answers a boundary read from whatever is buffered, without waiting for a
    # whole window: what it returns depends on how the bytes arrived.
    SocketCase(
        "boundary_read_waits_for_a_window",
        [b"pre", Expect(b"go"), b"amble\r\n--XYZ", EOF],
        [
            Call("settimeout", TIMEOUT_S, ok=True),
            Call("fill", 3, ok=True),
            Call("read", "--XYZ"),
        ],
        deliberate=Deliberate(
            "A boundary read with less than a window buffered",
            python={"read": [[{"error": "ETIMEDOUT"}]]},
        ),
    ),
]


@pytest.mark.parametrize("case", params(ERROR_CASES + DELIBERATE_CASES))
async def test_errors_match_cqueues(case: SocketCase) -> None:
    await check(case)
