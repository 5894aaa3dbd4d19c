"""Differential cases, TLS: cqueues with luaossl is the oracle of cq sockets over TLS.

Every read format over TLS (1 MB in one write, 1,000 short lines, a mix; whole, in
7-byte records, and with records cut across 5-byte TCP segments), STARTTLS after a
plaintext exchange (and the plaintext pushed back into TLS, never read as data), the
peer's close_notify and a bare FIN as the end of the stream, a FIN inside a record and
garbage instead of a record. The harness is tests/cqoracle/ (TLS: tests/cqoracle/tls.py);
the deliberate differences are docs/cqueues-differences.md's.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.cqoracle import EOF, Call, Deliberate, Expect, ReadAll, check, params
from tests.cqoracle.tls import (
    STARTTLS,
    TLS_ERROR,
    CloseNotify,
    CutRecord,
    HelloAfter,
    Raw,
    Records,
    Segments,
    StartTLS,
    StartTLSServer,
    TLSSocketCase,
)
from tests.test_cq_tls import BIG, LINES, MIX

BINARY = Call("setmode", "b", "b")
# Every stream format; -n's pieces depend on arrival, so only their bytes and sizes count.
READ_BACKS = {
    "*l": ReadAll("*l", 1 << 20, count=True),
    "*L": ReadAll("*L", 1 << 20, count=True),
    "*a": ReadAll("*a", 1 << 21, count=True),
    "5000": ReadAll(5000, 5000, count=True),
    "-4096": ReadAll(-4096, 4096),
}
# How the peer sends each payload, then its close_notify and FIN.
PAYLOADS: dict[str, list[Any]] = {
    "1MB": [BIG],
    "lines": [LINES],
    "mix": [MIX],
    "lines-in-7-byte-records": [Records(LINES[:2100], 7)],
    "lines-in-5-byte-segments": [Segments(LINES[:3000], 5)],
}
CLOSE_ROW = "A TLS socket's close"


def _format_cases() -> list[TLSSocketCase]:
    cases = []
    for payload, sends in PAYLOADS.items():
        for fmt, read_back in READ_BACKS.items():
            cases.append(
                TLSSocketCase(
                    f"tls-{fmt}-{payload}",
                    [STARTTLS, *sends, CloseNotify(), EOF],
                    [StartTLS(), BINARY, read_back, Call("read", "*l", label="after")],
                )
            )
    # The same reads with the Python half's TLS set up by connect().
    for fmt, read_back in READ_BACKS.items():
        cases.append(
            TLSSocketCase(
                f"tls-at-connect-{fmt}-mix",
                [STARTTLS, MIX, CloseNotify(), EOF],
                [StartTLS(), BINARY, read_back],
                tls_at_connect=True,
            )
        )
    return cases


@pytest.mark.parametrize("case", params(_format_cases()))
async def test_tls_read_format_matches_cqueues(case: TLSSocketCase) -> None:
    await check(case)


# The client's side of an SMTP-like STARTTLS: the greeting, the command, the reply, TLS.
SMTP_STARTTLS = [
    BINARY,
    Call("read", "*l"),
    Call("write", "STARTTLS\r\n", ok=True),
    Call("flush", ok=True),
    Call("read", "*l"),
    StartTLS(),
]

STARTTLS_CASES = [
    TLSSocketCase(
        "starttls_after_plaintext",
        [
            b"220 ready\r\n",
            Expect(b"STARTTLS\r\n"),
            b"220 go ahead\r\n",
            STARTTLS,
            b"hello\nworld\n",
            Expect(b"bye\n"),
            CloseNotify(),
            EOF,
        ],
        [
            *SMTP_STARTTLS,
            Call("read", "*l"),
            Call("read", "*l"),
            Call("write", "bye\n", ok=True),
            Call("flush", ok=True),
            Call("read", "*l"),
        ],
    ),
    # Plaintext that came behind the server's reply, before the handshake, is handed to
    # TLS (pushback): it is no record, so the handshake fails; it is never read as data
    # (the STARTTLS command-injection class of bugs).
    TLSSocketCase(
        "starttls_pushback_hands_injected_plaintext_to_tls",
        [b"220 ready\r\n", Expect(b"STARTTLS\r\n"), b"220 go ahead\r\nINJECTED\r\n", STARTTLS],
        SMTP_STARTTLS,
    ),
]


@pytest.mark.parametrize("case", params(STARTTLS_CASES))
async def test_tls_starttls_matches_cqueues(case: TLSSocketCase) -> None:
    await check(case)


def _reads_then_write(reads: list[Call], data: str) -> list[Any]:
    """TLS on, binary modes, the reads, then data written and flushed."""
    return [
        StartTLS(),
        BINARY,
        *reads,
        Call("write", data, ok=True),
        Call("flush", ok=True),
    ]


# cqloop's close() sends close_notify; cqueues' sends none (the peer sees a bare FIN).
CLOSES_WITH_CLOSE_NOTIFY = Deliberate(CLOSE_ROW, python={"peer end": [["close_notify"]]})

END_CASES = [
    TLSSocketCase(
        "peer_close_notify_alone_is_end_of_stream",
        [STARTTLS, b"last line\n", CloseNotify(), Expect(b"after\n")],
        _reads_then_write([Call("read", "*l"), Call("read", "*l"), Call("read", "*a")], "after\n"),
        report_end=True,
        deliberate=CLOSES_WITH_CLOSE_NOTIFY,
    ),
    TLSSocketCase(
        "peer_close_notify_behind_data_in_one_segment_is_end_of_stream",
        [STARTTLS, CloseNotify(b"one\ntwo\n"), EOF],
        [StartTLS(), BINARY, Call("read", "*l"), Call("read", "*l"), Call("read", "*l")],
    ),
    # A FIN at a record boundary without close_notify: the end of the stream, no error,
    # no alert sent back, and the socket can still write.
    TLSSocketCase(
        "peer_fin_without_close_notify_is_end_of_stream",
        [STARTTLS, b"half\n", EOF],
        _reads_then_write(
            [Call("read", "*l"), Call("read", "*l"), Call("read", 10)], "still writing\n"
        ),
        report_end=True,
        deliberate=CLOSES_WITH_CLOSE_NOTIFY,
    ),
    # cqueues reads a stream cut inside a record as complete; cqloop as truncated.
    TLSSocketCase(
        "peer_fin_inside_a_record",
        [STARTTLS, b"good\n", CutRecord(b"a line cut short\n", 10), EOF],
        [
            StartTLS(),
            BINARY,
            Call("read", "*l"),
            Call("read", "*l", label="cut"),
            Call("read", "*l", label="cut"),
        ],
        deliberate=Deliberate(
            "A FIN inside a TLS record", python={"cut": [[TLS_ERROR], [TLS_ERROR]]}
        ),
    ),
    TLSSocketCase(
        "garbage_instead_of_a_record",
        [STARTTLS, b"fine\n", Raw(b"this is not a TLS record\n" * 4), EOF],
        [StartTLS(), BINARY, Call("read", "*l"), Call("read", "*l"), Call("read", "*l")],
    ),
]


@pytest.mark.parametrize("case", params(END_CASES))
async def test_tls_end_of_stream_matches_cqueues(case: TLSSocketCase) -> None:
    await check(case)


# -- the socket under test as the TLS server -------------------------------------------------
# It starts TLS with a server context and no other word (both sides take the server's part
# from the context); the peer is the TLS client. The peer sends after the handshake, and
# with the ClientHello riding behind a plaintext line (pushback hands it to TLS).


def _server_cases() -> list[TLSSocketCase]:
    cases = []
    for payload in ("1MB", "lines", "mix"):
        for fmt, read_back in READ_BACKS.items():
            cases.append(
                TLSSocketCase(
                    f"tls-server-{fmt}-{payload}",
                    [STARTTLS, *PAYLOADS[payload], CloseNotify(), EOF],
                    [StartTLSServer(), BINARY, read_back, Call("read", "*l", label="after")],
                    tls_server=True,
                )
            )
    cases.append(
        TLSSocketCase(
            "tls-server-starttls-with-the-hello-behind-the-command",
            [HelloAfter(b"STARTTLS\r\n"), b"one\ntwo\n", Expect(b"reply\n"), CloseNotify(), EOF],
            [
                BINARY,
                Call("read", "*l"),
                StartTLSServer(),
                Call("read", "*l"),
                Call("read", "*l"),
                Call("write", "reply\n", ok=True),
                Call("flush", ok=True),
                Call("read", "*l"),
            ],
            tls_server=True,
        )
    )
    return cases


@pytest.mark.parametrize("case", params(_server_cases()))
async def test_tls_server_side_matches_cqueues(case: TLSSocketCase) -> None:
    await check(case)
