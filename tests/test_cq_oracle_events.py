"""Differential cases, events(): what a socket reports it waits for after each kind of
operation, plain and over TLS. cqueues (lua5.3 + lua-cqueues + luaossl) is the oracle:
every operation starts by clearing the events, and sets "r" or "w" only when it found the
kernel not ready that way (a finished connect or handshake, a read answered from the
buffer, a flushed write: ""). A poll of the socket watches its fd for what events()
says, so an answer of "w" after connect would make poll() return at once for a socket
with nothing to read. The harness is tests/cqoracle/."""

from __future__ import annotations

import pytest

from tests.cqoracle import EOF, SIGNAL, Call, Expect, SocketCase, WaitPeer, check, params
from tests.cqoracle.dgram import Datagrams, DgramCase
from tests.cqoracle.tls import STARTTLS, CloseNotify, StartTLS, TLSSocketCase


def _events(after: str) -> Call:
    return Call("events", label=f"events after {after}")


PLAIN_CASES = [
    SocketCase(
        "events_follow_each_operation",
        [Expect(b"go"), b"a\nb\nc\n", Expect(b"more"), b"d\n", Expect(b"bye"), EOF],
        [
            _events("connect"),
            Call("recv", "*l", label="recv before data"),
            _events("recv that found nothing"),
            Call("write", "go\n", ok=True),
            _events("write"),
            Call("read", "*l", label="read that waited"),
            _events("read that waited"),
            Call("read", "*l", label="read from the buffer"),
            _events("read from the buffer"),
            Call("recv", "*l", label="recv from the buffer"),
            _events("recv from the buffer"),
            Call("recv", "*l", label="recv of nothing"),
            _events("recv of nothing"),
            Call("flush", ok=True),
            _events("flush"),
            Call("write", "more\n", ok=True),
            Call("read", "*l", label="read of d"),
            _events("read of d"),
            Call("write", "bye\n", ok=True),
            Call("read", "*l", label="read at EOF"),
        ],
    ),
    SocketCase(
        "events_after_reads_that_waited",
        [Expect(b"go"), b"abcd", Expect(b"more"), b"ef\n", Expect(b"last"), b"gh", EOF],
        [
            Call("write", "go\n", ok=True),
            Call("read", 4, label="read of 4 that waited"),
            _events("a read of 4 that waited"),
            Call("write", "more\n", ok=True),
            Call("read", "*l", label="line read that waited"),
            _events("a line read that waited"),
            Call("write", "last\n", ok=True),
            Call("fill", 2, label="fill that waited"),
            _events("a fill that waited"),
            Call("read", "*a"),
        ],
    ),
    SocketCase(
        "events_after_reads_of_input_already_in_the_kernel",
        [b"x\n", b"y\nzz", SIGNAL, Expect(b"go"), EOF],
        [
            WaitPeer(),
            Call("read", "*l", label="line read"),
            _events("a line read"),
            Call("read", 1, label="read of 1"),
            _events("a read of 1 from the buffer"),
            Call("read", 3, label="read of 3"),
            _events("a read of 3 that drained the buffer"),
            Call("write", "go\n", ok=True),
            Call("read", "*a"),
            _events("a read to EOF"),
        ],
    ),
]

TLS_CASES = [
    TLSSocketCase(
        "events_after_a_tls_connect",
        [STARTTLS, Expect(b"go"), b"hello\n", CloseNotify(), EOF],
        [
            StartTLS(),
            _events("the handshake"),
            Call("recv", "*l", label="recv before data"),
            _events("recv that found nothing"),
            Call("write", "go\n", ok=True),
            Call("read", "*l"),
        ],
        tls_at_connect=True,
    ),
    TLSSocketCase(
        "events_after_starttls",
        [STARTTLS, Expect(b"go"), b"hello\n", CloseNotify(), EOF],
        [
            StartTLS(),
            _events("starttls"),
            Call("write", "go\n", ok=True),
            _events("write"),
            Call("read", "*l"),
        ],
    ),
]


DGRAM_CASES = [
    DgramCase(
        "datagram_events_follow_each_operation",
        [Datagrams(1), b"one", b"two", SIGNAL],
        [
            _events("the hello"),
            Call("recv", "*a", label="recv before data"),
            _events("recv that found nothing"),
            Call("write", "go", ok=True),
            Call("flush", ok=True),
            Call("read", "*a", label="read that waited"),
            _events("read that waited"),
            WaitPeer(),
            Call("read", "*a", label="read of a queued datagram"),
            _events("read of a queued datagram"),
        ],
    ),
]


@pytest.mark.parametrize("case", params(DGRAM_CASES))
async def test_datagram_events_match_cqueues(case: DgramCase) -> None:
    await check(case)


@pytest.mark.parametrize("case", params(PLAIN_CASES))
async def test_events_match_cqueues(case: SocketCase) -> None:
    await check(case)


@pytest.mark.parametrize("case", params(TLS_CASES))
async def test_tls_events_match_cqueues(case: TLSSocketCase) -> None:
    await check(case)
