"""cq sockets over TLS against Debian's openssl command: s_server as the peer of a cq
client, s_client as the peer of a cq server, on 127.0.0.1.

s_server is driven only in its deterministic modes. Its stdin is not a data source:
when one select() finds both its stdin and the connection readable (the ClientHello,
or any record, arrived together with stdin data), s_server sends what it read from
stdin and then blocks in SSL_read on the connection, so it reads no more of its stdin,
its stdin's end included, until the client writes again. Whether that happens depends on
timing: a client waiting for the rest of the data, or for the end of the stream, waits
forever (with Python's blocking ssl client as well: 9 runs in 10 with a 9 KB stdin file,
strace showing the blocking read). The modes used instead:
- `-WWW` serves a file: the client sends one GET line, s_server answers with a fixed
  HTTP/1.0 header, the file's bytes (records of up to 16 KiB, back to back), then its
  close_notify. Payloads are the ones tests/test_cq_tls.py reads back (1 MB of lines of
  1 to 199 bytes, 1,000 short lines, a mix), read with every stream format.
- `-rev` echoes each line reversed, one record per line, and ends with close_notify
  when it reads the line CLOSE: 1,000 lines written in one write come back as 1,000
  records.
- the default mode with its stdin as a pipe the test writes to, only for what nothing
  else makes it do: a "Q" line makes it close the connection with no close_notify
  (a bare FIN). Each line is written once the client has read the one before and sends
  nothing, so the connection is never readable when stdin is.

Readiness: s_server binds 127.0.0.1:0 and prints "ACCEPT 127.0.0.1:<port>" (flushed)
after listen(2); the test reads that line. A probe connection would be the one
connection `-naccept 1` serves. s_server's output (stdout and stderr together) is read
by a thread to its end, so s_server never blocks on a full pipe, and is checked after
it exited: "CONNECTION CLOSED" is -rev's word for a close_notify received, and an
exit status of 0 says the session ended without error on its side.

Every wait is bounded (TIMEOUT): a stall fails the test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import socket as pysocket
import ssl
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from cqloop import socket as cqsocket
from tests.cqoracle.tls import Certificates, certificates
from tests.test_cq_tls import (
    HOST,
    PAYLOADS,
    STREAM_FORMATS,
    TIMEOUT,
    ThreadListener,
    _cq_accept,
    _cq_client,
    _cq_listen,
    read_back,
)

# What s_server -WWW sends before a file whose name does not end in .html.
WWW_HEADER = b"HTTP/1.0 200 ok\r\nContent-type: text/plain\r\n\r\n"
LINES_1000 = [b"line %d" % i for i in range(1000)]
REVERSED = b"".join(line[::-1] + b"\n" for line in LINES_1000)
# How the cq client gets into TLS: at connect(), or by starttls() on the plain socket.
HOW = ["connect", "starttls"]
# The socket timeout aclose() is given when the peer never answers its close_notify.
CLOSE_WAIT_SECONDS = 0.3


# -- certificates (the session's CA and server certificate, as PEM files) ----------------


@pytest.fixture
def pem_files() -> dict[str, str]:
    certs: Certificates = certificates()
    return {"ca": certs.ca_pem, "chain": certs.chain_pem}


@pytest.fixture
def client_ctx() -> ssl.SSLContext:
    return certificates().client_context()


@pytest.fixture
def server_ctx() -> ssl.SSLContext:
    return certificates().server_context()


# -- openssl ------------------------------------------------------------------------------


class OpenSSL:
    """One openssl s_server or s_client process; its output collected by a thread
    (with its stderr, unless split_stderr: then stderr goes to a file, `errors`)."""

    def __init__(
        self, args: Sequence[str], *, stdin: Any, cwd: str | None = None, split_stderr=False
    ):
        # Closed by stop(), after the process.
        self._errors = tempfile.TemporaryFile() if split_stderr else None  # noqa: SIM115
        self.proc = subprocess.Popen(
            ["openssl", *args],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=self._errors if split_stderr else subprocess.STDOUT,
            cwd=cwd,
        )
        self.output = bytearray()
        self.port: int | None = None
        self.listening = threading.Event()
        self._reader = threading.Thread(target=self._read, name="openssl-output", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        stdout = self.proc.stdout
        assert stdout is not None
        with stdout:
            for line in stdout:
                if self.port is None and line.startswith(b"ACCEPT "):
                    self.port = int(line.rsplit(b":", 1)[1])
                    self.listening.set()
                self.output += line
        self.listening.set()  # s_server exited: no port is coming

    async def wait_listening(self) -> int:
        await asyncio.to_thread(self.listening.wait, TIMEOUT)
        assert self.port is not None, f"s_server did not listen: {bytes(self.output)!r}"
        return self.port

    async def finish(self) -> tuple[int, bytes]:
        """Wait for the process to exit by itself: its status and its output."""
        status = await asyncio.to_thread(self.proc.wait, TIMEOUT)
        await asyncio.to_thread(self._reader.join, TIMEOUT)
        return status, bytes(self.output)

    def stop(self) -> None:
        """Kill the process if it is still running, and reap it (test teardown)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._reader.join(TIMEOUT)
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        if self._errors is not None:
            self._errors.close()

    @property
    def errors(self) -> bytes:
        if self._errors is None:
            return b""
        self._errors.seek(0)
        return self._errors.read()


def s_server(pem: dict[str, str], *mode: str, stdin: Any = subprocess.DEVNULL, cwd=None) -> OpenSSL:
    return OpenSSL(
        ["s_server", "-accept", f"{HOST}:0", "-naccept", "1", "-cert", pem["chain"], *mode],
        stdin=stdin,
        cwd=cwd,
    )


@pytest.fixture(scope="module")
def www_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with each payload as a file, for s_server -WWW."""
    folder = tmp_path_factory.mktemp("www")
    for name, payload in PAYLOADS.items():
        (folder / f"{name}.txt").write_bytes(payload)
    return folder


async def _cq_tls_client(port: int, context, how: str) -> cqsocket.Socket:
    if how == "connect":
        con = _cq_client(port, context)
        await con.connect()
    else:
        con = cqsocket.connect(HOST, port)
        con.settimeout(TIMEOUT)
        await con.connect()
        await con.starttls(context, server_hostname="localhost")
    assert con.checktls() is not None
    return con


# -- a cq client against s_server -------------------------------------------------------------


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("name", list(PAYLOADS))
@pytest.mark.parametrize("fmt", STREAM_FORMATS)
async def test_cq_client_reads_a_file_from_openssl_s_server_www(
    pem_files, client_ctx, www_root, how, name, fmt
):
    server = s_server(pem_files, "-WWW", cwd=str(www_root))
    try:
        port = await server.wait_listening()
        async with await _cq_tls_client(port, client_ctx, how) as con:
            con.setmode("b", "b")
            await con.write(f"GET /{name}.txt HTTP/1.0\r\n\r\n")
            assert await con.read(len(WWW_HEADER)) == WWW_HEADER
            assert await read_back(con, fmt) == PAYLOADS[name]
        status, output = await server.finish()
        assert status == 0, output
    finally:
        server.stop()


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("fmt", STREAM_FORMATS)
async def test_cq_client_reads_1000_reversed_lines_from_openssl_s_server_rev(
    pem_files, client_ctx, how, fmt
):
    server = s_server(pem_files, "-rev")
    try:
        port = await server.wait_listening()
        async with await _cq_tls_client(port, client_ctx, how) as con:
            con.setmode("b", "bf")
            # Every line in one write: s_server answers each with a record of its own.
            await con.write(b"".join(line + b"\n" for line in LINES_1000) + b"CLOSE\n")
            assert await read_back(con, fmt) == REVERSED
        status, output = await server.finish()
        assert status == 0, output
        assert b"CONNECTION CLOSED" in output
    finally:
        server.stop()


# -- closing, both ways ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("closer", "how"), [("aclose", "connect"), ("aclose", "starttls"), ("close", "connect")]
)
async def test_cq_close_sends_close_notify_to_openssl_s_server(pem_files, client_ctx, closer, how):
    # aclose() also waits for s_server's close_notify; close() sends ours and is done.
    server = s_server(pem_files, "-rev")
    try:
        port = await server.wait_listening()
        con = await _cq_tls_client(port, client_ctx, how)
        con.setmode("b", "b")
        await con.write("ping\n")
        assert await con.read("*l") == b"gnip"
        if closer == "aclose":
            await con.aclose()
            # aclose() saw s_server's close_notify (at its timeout it gives up without
            # marking the input ended).
            assert con.eof("r") == (True,)
        else:
            con.close()
        status, output = await server.finish()
        assert status == 0, output
        assert b"CONNECTION CLOSED" in output  # s_server read our close_notify
    finally:
        server.stop()


async def test_cq_aclose_waits_for_close_notify_no_longer_than_the_socket_timeout(
    server_ctx, client_ctx
):
    # What no openssl mode does: a peer that reads our close_notify and then holds the
    # connection open without answering (Python's ssl module, in a thread).
    released = threading.Event()

    def serve(conn: pysocket.socket) -> bytes:
        conn.settimeout(TIMEOUT)
        tls = server_ctx.wrap_socket(conn, server_side=True)
        got = tls.recv(100)  # b"" once our close_notify came
        released.wait(TIMEOUT)
        return got

    listener = ThreadListener(serve)
    serving = listener.start()
    try:
        con = _cq_client(listener.port, client_ctx)
        await con.connect()
        con.settimeout(CLOSE_WAIT_SECONDS)
        await con.aclose()  # returns at the timeout, without raising
        assert not released.is_set()  # the peer still holds the connection open
        assert con.eof("r") == (False,)  # no close_notify came
        released.set()
        assert await asyncio.wait_for(serving, TIMEOUT) == b""
    finally:
        released.set()
        listener.close()


@pytest.mark.parametrize("how", HOW)
async def test_openssl_s_server_fin_without_close_notify_is_end_of_stream(
    pem_files, client_ctx, how
):
    # s_server's "Q" command closes the connection's fd without a close_notify: a FIN
    # at a record boundary, read as the end of the stream (docs/cq-sockets.md).
    server = s_server(pem_files, stdin=subprocess.PIPE)
    stdin = server.proc.stdin
    assert stdin is not None
    try:
        port = await server.wait_listening()
        con = await _cq_tls_client(port, client_ctx, how)
        con.setmode("b", "b")
        stdin.write(b"12345\n")
        stdin.flush()
        assert await con.read("*l") == b"12345"
        stdin.write(b"Q\n")
        stdin.flush()
        assert await con.read("*l") is None
        assert con.eof("r") == (True,)
        assert con.error("r") == (None,)
        await con.aclose()  # our close_notify meets a closed peer: no error
        _, output = await server.finish()
        assert b"DONE" in output, output  # s_server's word for its "Q"
    finally:
        server.stop()


# -- a cq server against s_client -------------------------------------------------------------


def s_client(port: int, pem: dict[str, str], *args: str, stdin: Any) -> OpenSSL:
    """s_client: stdout is what it read, stderr (verification, state) apart."""
    return OpenSSL(
        ["s_client", "-connect", f"{HOST}:{port}", "-CAfile", pem["ca"], "-quiet", *args],
        stdin=stdin,
        split_stderr=True,
    )


@pytest.mark.parametrize("name", list(PAYLOADS))
async def test_cq_server_aclose_sends_close_notify_and_gets_openssl_s_clients(
    pem_files, server_ctx, name
):
    # s_client -ign_eof keeps the session after its stdin ends; our close_notify makes
    # it print what it read, answer with its own and exit 0.
    payload = PAYLOADS[name]
    server, port = _cq_listen(server_ctx)
    client = s_client(port, pem_files, "-ign_eof", stdin=subprocess.DEVNULL)
    try:
        con = await _cq_accept(server)
        con.setmode("b", "bf")
        await con.write(payload)
        await con.aclose()
        assert con.eof("r") == (True,)
        status, output = await client.finish()
        assert status == 0, client.errors
        assert output == payload
    finally:
        client.stop()
        server.close()


@pytest.mark.parametrize(("fmt", "name"), [(f, n) for f in STREAM_FORMATS for n in PAYLOADS])
async def test_cq_server_starttls_mid_stream_with_openssl_s_client_smtp(
    pem_files, server_ctx, tmp_path, fmt, name
):
    # s_client -starttls smtp: greeting, EHLO, STARTTLS in the clear, then TLS; it
    # sends its stdin (a file) and a close_notify at its end (-no_ign_eof).
    payload = PAYLOADS[name]
    source = tmp_path / "payload"
    source.write_bytes(payload)
    server, port = _cq_listen_plain()
    with source.open("rb") as stdin:
        client = s_client(
            port, pem_files, "-starttls", "smtp", "-no_ign_eof", "-nocommands", stdin=stdin
        )
    try:
        async with await _cq_accept(server) as con:
            con.setmode("b", "bf")
            await con.write("220 cq ESMTP\r\n")
            assert (await con.read("*l")).startswith(b"EHLO ")
            await con.write("250-cq\r\n250 STARTTLS\r\n")
            assert await con.read("*l") == b"STARTTLS\r"
            await con.write("220 go ahead\r\n")
            await con.starttls(server_ctx, TIMEOUT, server_side=True)
            assert await read_back(con, fmt) == payload
        status, _ = await client.finish()
        assert status == 0, client.errors
    finally:
        client.stop()
        server.close()


def _cq_listen_plain() -> tuple[cqsocket.Socket, int]:
    server = cqsocket.listen(HOST, 0)
    return server, server.localname()[2]
