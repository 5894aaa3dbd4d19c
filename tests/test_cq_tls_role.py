"""Which side of TLS a cq socket takes: the context's, when it was made for one side (as
cqueues takes it from its context), else starttls(server_side=), else how the socket came.
The differential cases against cqueues are tests/test_cq_oracle_tls.py's server cases."""

# ruff: noqa: F811 (the fixtures imported by name are the test functions' parameters)
from __future__ import annotations

import asyncio
import socket as pysocket

import pytest

from cqloop import socket as cqsocket
from tests.test_cq_tls import (  # noqa: F401 (fixtures)
    ThreadListener,
    _client_ctx_for_thread,
    ca,
    cert,
    client_ctx,
    server_ctx,
)

HOST = "127.0.0.1"
TIMEOUT = 10


async def test_a_connected_socket_with_a_server_context_is_the_tls_server(server_ctx, ca):
    # The connecting side serves TLS; a blocking ssl client sits on the accepting side.
    thread_ctx = _client_ctx_for_thread(ca)

    def accepting_side(conn: pysocket.socket) -> bytes:
        conn.settimeout(TIMEOUT)
        tls = thread_ctx.wrap_socket(conn, server_hostname="localhost")
        tls.sendall(b"over tls\n")
        return tls.recv(100)

    with ThreadListener(accepting_side) as listener:
        answered = listener.start()
        con = cqsocket.connect(HOST, listener.port, mode="b")
        con.settimeout(TIMEOUT)
        async with con:
            await con.starttls(server_ctx)
            assert con.checktls().server_side
            assert await con.read("*l") == b"over tls"
            await con.write(b"served\n")
            await con.flush()
            assert await asyncio.wait_for(answered, TIMEOUT) == b"served\n"


@pytest.mark.parametrize("side", [False, True])
async def test_server_side_against_the_contexts_side_is_refused_before_anything_changes(
    server_ctx, client_ctx, side
):
    context = client_ctx if side else server_ctx
    a, b = cqsocket.pair(mode="b")
    try:
        await a.write(b"plain\n")
        with pytest.raises(ValueError, match="made for the"):
            await a.starttls(context, server_side=side)
        # Still plaintext both ways: nothing was switched.
        assert a.checktls() is None
        assert await b.read("*l") == b"plain"
        await b.write(b"back\n")
        assert await a.read("*l") == b"back"
    finally:
        a.close()
        b.close()
