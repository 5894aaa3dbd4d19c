"""The differential harness: Lua's cqueues is the oracle of cqloop's cqueues modules.

A case is one scenario run twice: as a Lua script on Debian's lua5.3 + lua-cqueues, and
as the same steps in Python on cqloop.socket (on whichever asyncio loop the test runs).
Both sides report what each call returned in one normalised form (one JSON line per
call, tests/cqoracle/prelude.lua's out()), and the test asserts the two reports agree.

Socket cases (SocketCase) are written once, as a list of steps:
`Call("read", "*l", "*l")` becomes `step("read", "out", s.read, s, "*l", "*l")` in Lua
(a protected call whose results out() records) and a recorded
`await s.read("*l", "*l")` in Python; `Both(lua_code, python_fn)` says what Call cannot;
`WaitPeer()` waits until the peer reached SIGNAL; ReadAll joins the pieces of a format
whose piece sizes depend on timing. Both sides talk to a fresh Peer: a plain blocking
Python socket on 127.0.0.1, run by the test in a thread, that sends scripted bytes
(whole, or cut into 1-byte pieces with TCP_NODELAY), waits for bytes from the socket
under test (Expect), shuts its write side (EOF), resets the connection (RESET), and
records every byte it received. The peer's bytes are part of the report, so output
modes are compared byte for byte as the peer received them. Adding a case:

    SocketCase("name", [b"bytes the peer sends", EOF],
               [Call("setmode", "b", None), Call("read", "*l"), Call("pending")])

and it runs on every loop. A difference kept on purpose is a case with
`deliberate=Deliberate(row, python={label: [values, ...]})`, where `row` begins a row
of docs/cqueues-differences.md's table.

Other cases (RawCase: controllers, conditions, promises) give the Lua body and a Python
function that records through the same Recorder. Datagram sockets have their own case
and UDP peer, in tests/cqoracle/dgram.py, on the same Recorder and report.

Normalised form, both sides: bytes as strings whose code points are the byte values;
nil/None as null and trailing nulls dropped (Lua's `return` of nothing); an error as
{"error": "ETIMEDOUT"} (cqueues' `nil, errno`, or the errno of the OSError cqloop
raises); an error Lua throws (cqueues' default handler throws all but EPIPE and
ETIMEDOUT) as the errno its message names; a Lua argument error and a Python ValueError
or TypeError as {"raised": "bad argument"}; a socket as "<socket>". A multi-format read
that fails part way reports the values read before the error, then the error.

Lua results do not depend on the loop the Python half runs on: each case's Lua report
is computed once per test session.
"""

from __future__ import annotations

import errno
import inspect
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

LUA = "lua5.3"
INSTALL_HINT = "apt-get install lua5.3 lua-cqueues lua-luaossl"
PRELUDE = Path(__file__).with_name("prelude.lua")
# Bounds for everything a case may wait for, so that a broken case fails instead of hanging.
CASE_TIMEOUT_S = 20.0

# What Lua throws names the error by its strerror text ("socket:read: Connection reset
# by peer"): map those back to errno names.
# A Lua argument error and a Python ValueError/TypeError, in the report.
BAD_ARGUMENT = "bad argument"
_BY_STRERROR = {os.strerror(code): name for code, name in sorted(errno.errorcode.items())}

# -- availability ----------------------------------------------------------------------


def _lua_status() -> str | None:
    """None when lua5.3 with cqueues runs here, else why not."""
    if shutil.which(LUA) is None:
        return f"{LUA} is not installed"
    probe = subprocess.run(
        [LUA, "-e", 'require "cqueues"; require "cqueues.socket"; require "openssl"'],
        capture_output=True,
        text=True,
        timeout=CASE_TIMEOUT_S,
    )
    if probe.returncode != 0:
        return f"{LUA} cannot load cqueues/luaossl: {probe.stderr.strip()}"
    return None


_STATUS: list[str | None] = []


def require_lua() -> None:
    """Skip (outside CI) or fail (CI=true) when the oracle is not installed."""
    if not _STATUS:
        _STATUS.append(_lua_status())
    reason = _STATUS[0]
    if reason is None:
        return
    message = f"the cqueues oracle is missing ({reason}); install it with: {INSTALL_HINT}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


# -- normalisation ---------------------------------------------------------------------


def _errno_name(code: int) -> str:
    return errno.errorcode.get(code, str(code))


def normalise(value: Any) -> Any:
    """One Python value in the report's form (see the module docstring)."""
    from cqloop.socket import Socket

    if value is None or isinstance(value, bool | int | float | str | dict):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("latin-1")
    if isinstance(value, ssl.SSLError):
        return {"error": "TLS"}  # no errno: see tests/cqoracle/tls.py
    if isinstance(value, OSError):
        return {"error": _errno_name(value.errno) if value.errno else type(value).__name__}
    if isinstance(value, Socket):
        return "<socket>"
    if isinstance(value, tuple | list):
        return [normalise(v) for v in value]
    raise TypeError(f"no normalised form for {value!r}")


def _strip(values: list[Any]) -> list[Any]:
    while values and values[-1] is None:
        values.pop()
    return values


def _from_lua(record: Any) -> Any:
    """Lua's report in the final form: errno numbers and thrown messages as names."""
    if isinstance(record, dict):
        if "error" in record:
            code = record["error"]
            return {"error": _errno_name(code) if isinstance(code, int) else code}
        message = record["raised"]
        if "bad argument" in message:
            return {"raised": BAD_ARGUMENT}
        if "SSL routines" in message or "TLS/SSL" in message:
            return {"error": "TLS"}  # OpenSSL's reason, or cqueues' word for one
        reason = message.rsplit(": ", 1)[-1]
        if reason in _BY_STRERROR:
            return {"error": _BY_STRERROR[reason]}
        # Without the "file:line: " Lua puts in front, which depends on the install.
        return {"raised": re.sub(r"^[^:]*:\d+: ", "", message)}
    if isinstance(record, list):
        return [_from_lua(v) for v in record]
    return record


class Recorder:
    """The Python half's out(): a list of [label, values] in the report's form."""

    def __init__(self) -> None:
        self.records: list[list[Any]] = []

    def __call__(self, label: str, *values: Any) -> None:
        self.records.append([label, _strip([normalise(v) for v in values])])

    async def call(self, label: str, awaitable: Awaitable[Any], *, ok: bool = False) -> None:
        """Record what awaitable returned (a tuple spread as several values), or the
        values read before its error and the error."""
        try:
            result = await awaitable
        except OSError as exc:
            self(label, *getattr(exc, "values_read", ()), exc)
            return
        except (ValueError, TypeError):
            self(label, {"raised": BAD_ARGUMENT})
            return
        self._result(label, result, ok)

    def sync(self, label: str, fn: Callable[..., Any], *args: Any, ok: bool = False) -> None:
        if inspect.iscoroutinefunction(fn):
            raise TypeError(f"{label}: {fn!r} is async; name it in _ASYNC_METHODS")
        try:
            result = fn(*args)
        except OSError as exc:
            self(label, exc)
            return
        except (ValueError, TypeError):
            self(label, {"raised": BAD_ARGUMENT})
            return
        self._result(label, result, ok)

    def _result(self, label: str, result: Any, ok: bool) -> None:
        if ok:
            self(label, "ok")
        elif isinstance(result, tuple):
            self(label, *result)
        else:
            self(label, result)


# -- the peer --------------------------------------------------------------------------


@dataclass(frozen=True)
class Pieces:
    """Peer step: send these bytes one byte per send(), TCP_NODELAY on."""

    data: bytes


@dataclass(frozen=True)
class Expect:
    """Peer step: wait until these bytes have arrived (after the previous Expect's)."""

    data: bytes


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


EOF = _Marker("EOF")  # peer step: shutdown(SHUT_WR)
RESET = _Marker("RESET")  # peer step: close with SO_LINGER 0 (the socket under test sees RST)
SIGNAL = _Marker("SIGNAL")  # peer step: let a WaitPeer step of the socket under test go on

PeerStep = bytes | Pieces | Expect | _Marker


class Peer:
    """The scripted other end: listens on 127.0.0.1, serves one connection in a thread,
    runs the script, then receives until EOF. `received` holds every byte it got."""

    def __init__(self, script: Sequence[PeerStep]) -> None:
        self.script = list(script)
        self.received = bytearray()
        self.error: BaseException | None = None
        self.signalled = threading.Event()
        self._conn: socket.socket | None = None
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(1)
        self._listener.settimeout(CASE_TIMEOUT_S)
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, name="cqoracle-peer", daemon=True)
        self._thread.start()

    def join(self) -> bytes:
        self._thread.join(CASE_TIMEOUT_S)
        self.signalled.set()
        self._listener.close()
        if self._conn is not None:
            self._conn.close()
        if self._thread.is_alive():
            raise AssertionError("the peer did not finish its script")
        if self.error is not None:
            raise AssertionError(f"the peer failed: {self.error!r}")
        return bytes(self.received)

    def _serve(self) -> None:
        try:
            conn, _ = self._listener.accept()
        except OSError as exc:
            self.error = exc
            return
        self._conn = conn
        with conn:
            conn.settimeout(CASE_TIMEOUT_S)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                if self._run(conn) and conn.fileno() >= 0:
                    self._drain(conn)
            except OSError as exc:
                # The socket under test closed (with bytes unread: a reset) before the
                # script ended: the script ends there. Anything else is the peer's failure.
                if exc.errno not in (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN):
                    self.error = exc

    def _run(self, conn: socket.socket) -> bool:
        expected_from = 0
        for step in self.script:
            if isinstance(step, bytes):
                conn.sendall(step)
            elif isinstance(step, Pieces):
                for i in range(len(step.data)):
                    conn.sendall(step.data[i : i + 1])
            elif isinstance(step, Expect):
                while (at := self.received.find(step.data, expected_from)) < 0:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return False  # the socket under test closed first: the script ends
                    self.received += chunk
                expected_from = at + len(step.data)
            elif step is EOF:
                conn.shutdown(socket.SHUT_WR)
            elif step is RESET:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
                conn.close()
            elif step is SIGNAL:
                self.signalled.set()
            else:
                raise TypeError(f"unknown peer step {step!r}")
        return True

    def _drain(self, conn: socket.socket) -> None:
        while True:
            try:
                chunk = conn.recv(65536)
            except ConnectionResetError:
                return
            if not chunk:
                return
            self.received += chunk


# -- Lua -------------------------------------------------------------------------------


def lua_repr(value: Any) -> str:
    """A Python argument as a Lua literal."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        value = value.encode()
    if isinstance(value, bytes):
        return '"' + "".join(_lua_char(b) for b in value) + '"'
    raise TypeError(f"no Lua literal for {value!r}")


def _lua_char(byte: int) -> str:
    char = chr(byte)
    if 32 <= byte < 127 and char not in '"\\':
        return char
    return f"\\{byte:03d}"


def run_lua(body: str, peer: Peer | None = None) -> list[list[Any]]:
    """Run a Lua case body after the prelude; its out() records, in the report's form.
    With a peer, the script's stdin gets a line when the peer reaches SIGNAL (the Lua
    half of WaitPeer reads it)."""
    script = f"dofile({lua_repr(str(PRELUDE))})\n{body}\n"
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    try:
        with tempfile.TemporaryFile() as errors:
            proc = subprocess.Popen(
                [LUA, f.name],
                stdin=subprocess.PIPE if peer is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=errors,
            )
            watchdog = threading.Timer(CASE_TIMEOUT_S, proc.kill)
            watchdog.start()
            feeder = None
            if peer is not None:
                feeder = threading.Thread(target=_signal_lua, args=(peer, proc), daemon=True)
                feeder.start()
            try:
                assert proc.stdout is not None
                stdout = proc.stdout.read().decode()
                proc.wait()
            finally:
                watchdog.cancel()
                proc.stdout.close()  # type: ignore[union-attr]
                if feeder is not None:
                    peer.signalled.set()  # type: ignore[union-attr]
                    feeder.join()
            errors.seek(0)
            stderr = errors.read().decode()
    finally:
        os.unlink(f.name)
    if proc.returncode != 0:
        raise AssertionError(f"the Lua case failed:\n{stderr}\n--- script ---\n{script}")
    return [_from_lua(json.loads(line)) for line in stdout.splitlines()]


def _signal_lua(peer: Peer, proc: subprocess.Popen[bytes]) -> None:
    peer.signalled.wait(CASE_TIMEOUT_S)
    assert proc.stdin is not None
    try:
        proc.stdin.write(b"\n")
        proc.stdin.close()
    except OSError:
        pass  # the script ended without waiting


# -- socket cases ----------------------------------------------------------------------

# Socket methods that wait (async in cqloop); the rest are plain calls in both.
_ASYNC_METHODS = {
    "read",
    "write",
    "flush",
    "xread",
    "xwrite",
    "fill",
    "connect",
    "pack",
    "unpack",
}
# Methods whose values are errno numbers in Lua and OSErrors in Python.
_ERROR_METHODS = {"error", "clearerr"}


@dataclass(frozen=True)
class Call:
    """One socket method call, recorded under `label` (default: the method's name).
    ok=True records only success ("ok") or the error, for calls whose success value is
    a language convention (Lua's true, Python's None or self)."""

    method: str
    args: tuple[Any, ...] = ()
    label: str | None = None
    ok: bool = False

    def __init__(self, method: str, *args: Any, label: str | None = None, ok: bool = False):
        object.__setattr__(self, "method", method)
        object.__setattr__(self, "args", args)
        object.__setattr__(self, "label", label)
        object.__setattr__(self, "ok", ok)

    @property
    def name(self) -> str:
        return self.label or self.method

    def lua(self) -> str:
        kind = "ok" if self.ok else "errs" if self.method in _ERROR_METHODS else "out"
        args = "".join(f", {lua_repr(a)}" for a in self.args)
        return f"step({lua_repr(self.name)}, {lua_repr(kind)}, s.{self.method}, s{args})"

    async def python(self, s: Any, out: Recorder) -> None:
        method = getattr(s, self.method)
        if self.method in _ASYNC_METHODS:
            await out.call(self.name, method(*self.args), ok=self.ok)
        else:
            out.sync(self.name, method, *self.args, ok=self.ok)


@dataclass(frozen=True)
class ReadAll:
    """read(fmt) until it yields nothing (or fails), recorded as one joined value plus
    whether every piece respected `limit` bytes: for formats whose piece sizes depend
    on how the bytes arrived (-n with 1-byte pieces). "*l" pieces are joined with the line
    ends they lost; with count=True the number of pieces follows the joined value."""

    fmt: Any
    limit: int
    label: str = "readall"
    count: bool = False

    def lua(self) -> str:
        newline = ' .. "\\n"' if self.fmt == "*l" else ""
        count = "#parts, " if self.count else ""
        return f"""do
  local parts, within, last = {{}}, true, nil
  while true do
    local v, e = s:read({lua_repr(self.fmt)})
    if not v then last = e and {{error = e}} or nil break end
    if #v > {self.limit} then within = false end
    parts[#parts + 1] = v{newline}
  end
  out({lua_repr(self.label)}, table.concat(parts), {count}within, last)
end"""

    async def python(self, s: Any, out: Recorder) -> None:
        parts: list[bytes] = []
        last: OSError | None = None
        while True:
            try:
                value = await s.read(self.fmt)
            except OSError as exc:
                last = exc
                break
            if value is None:
                break
            parts.append(value)
        within = all(len(p) <= self.limit for p in parts)
        joined = b"".join(p + b"\n" for p in parts) if self.fmt == "*l" else b"".join(parts)
        counted = [len(parts)] if self.count else []
        out(self.label, joined, *counted, within, last)


@dataclass(frozen=True)
class WaitPeer:
    """Wait until the peer has run its script up to SIGNAL (for states that only the
    peer's side can make sure of, such as a reset having arrived)."""

    def lua(self) -> str:
        return 'assert(io.read("l"), "the harness closed stdin before the peer signalled")'

    async def python(self, s: Any, out: Recorder, peer: Peer) -> None:
        import asyncio

        await asyncio.get_running_loop().run_in_executor(None, peer.signalled.wait, CASE_TIMEOUT_S)


@dataclass(frozen=True)
class Both:
    """A step written twice, for what Call cannot say (a Lua function as an argument):
    `lua` is Lua code with the socket in `s`; `python(s, out)` may be async."""

    lua_code: str
    python_fn: Callable[[Any, Recorder], Any]

    def lua(self) -> str:
        return self.lua_code

    async def python(self, s: Any, out: Recorder) -> None:
        result = self.python_fn(s, out)
        if inspect.isawaitable(result):
            await result


Step = Call | ReadAll | WaitPeer | Both


@dataclass(frozen=True)
class Deliberate:
    """A difference from cqueues kept on purpose: `row` starts its row in the table of
    docs/cqueues-differences.md, and `python` gives, per label, the values cqloop
    reports instead of cqueues' (in order of the label's records). The case then asserts
    that cqueues still does what the table says it does, and cqloop what it says it
    does."""

    row: str
    python: dict[str, list[list[Any]]]

    def apply(self, lua: list[list[Any]]) -> list[list[Any]]:
        replacements = {label: list(values) for label, values in self.python.items()}
        out = []
        for label, values in lua:
            if replacements.get(label):
                values = replacements[label].pop(0)
            out.append([label, values])
        unused = {label: rest for label, rest in replacements.items() if rest}
        assert not unused, f"the Lua report has no records left for {unused}"
        return out


DIFFERENCES_DOC = Path(__file__).parents[2] / "docs" / "cqueues-differences.md"


@dataclass
class SocketCase:
    """A socket under test connected to a Peer running `peer` (connect() waited for);
    `steps` run in order,
    then the socket is closed (without a flush) and the peer's received bytes are
    recorded as "peer"."""

    name: str
    peer: Sequence[PeerStep]
    steps: Sequence[Step]
    marks: Sequence[Any] = field(default_factory=tuple)
    deliberate: Deliberate | None = None

    # What a kind of case (tests/cqoracle/dgram.py: datagrams) changes: its peer, how the
    # socket under test is opened in each language, and the peer's record.
    LUA_CONNECT = 'socket.connect{{host = "127.0.0.1", port = {port}}}'
    LUA_OPENED = ""

    def make_peer(self) -> Any:
        return Peer(self.peer)

    async def open_python(self, peer: Any) -> Any:
        from cqloop import socket as cqsocket

        s = cqsocket.connect("127.0.0.1", peer.port)
        await s.connect()
        return s

    def peer_values(self, received: Any) -> list[bytes]:
        return [received]

    def peer_report(self, peer: Any, received: Any) -> list[list[Any]]:
        """The peer's records in the report: what it received (peer_values), as "peer"."""
        return [["peer", [v.decode("latin-1") for v in self.peer_values(received)]]]

    def lua(self, port: int) -> str:
        body = "\n    ".join(step.lua() for step in self.steps)
        return f"""local cq = cqueues.new()
cq:wrap(function()
    local s = {self.LUA_CONNECT.format(port=port)}
    assert(s:connect()){self.LUA_OPENED}
    {body}
    s:close()
end)
local okay, err = cq:loop()
if not okay then error(err) end
"""

    async def python(self, peer: Any, out: Recorder) -> None:
        s = await self.open_python(peer)
        try:
            for step in self.steps:
                if isinstance(step, WaitPeer):
                    await step.python(s, out, peer)
                else:
                    await step.python(s, out)
        finally:
            s.close()


_LUA_REPORTS: dict[str, list[list[Any]]] = {}


def lua_report(case: SocketCase) -> list[list[Any]]:
    if case.name not in _LUA_REPORTS:
        peer = case.make_peer()
        try:
            records = run_lua(case.lua(peer.port), peer)
        finally:
            received = peer.join()
        records += case.peer_report(peer, received)
        _LUA_REPORTS[case.name] = records
    return _LUA_REPORTS[case.name]


async def python_report(case: SocketCase) -> list[list[Any]]:
    import asyncio

    peer = case.make_peer()
    out = Recorder()
    try:
        await case.python(peer, out)
    finally:
        received = await asyncio.get_running_loop().run_in_executor(None, peer.join)
    return out.records + case.peer_report(peer, received)


async def check(case: SocketCase) -> None:
    """The differential assertion: the Lua and Python reports agree."""
    require_lua()
    lua = lua_report(case)
    got = await python_report(case)
    expected = _expected(case.name, lua, case.deliberate)
    assert got == expected, _diff(case.name, expected, got)


def _expected(name: str, lua: list[list[Any]], deliberate: Deliberate | None) -> list[list[Any]]:
    """What cqloop must report: cqueues' report, with a deliberate difference applied
    (after checking that cqueues still differs and that the table lists it)."""
    if deliberate is None:
        return lua
    expected = deliberate.apply(lua)
    assert expected != lua, f"cqueues no longer differs in case {name!r}: {lua}"
    assert _documented(deliberate.row), (
        f"{deliberate.row!r} is not a row of {DIFFERENCES_DOC.name}'s table"
    )
    return expected


def _documented(row: str) -> bool:
    return any(line.startswith(f"| {row}") for line in DIFFERENCES_DOC.read_text().splitlines())


def _diff(name: str, expected: list[list[Any]], got: list[list[Any]]) -> str:
    lines = [f"cqloop differs from cqueues in case {name!r}:"]
    for i in range(max(len(expected), len(got))):
        lua = expected[i] if i < len(expected) else "(nothing)"
        py = got[i] if i < len(got) else "(nothing)"
        mark = "  " if lua == py else "!="
        lines.append(f"{mark} lua: {json.dumps(lua)}\n   py:  {json.dumps(py)}")
    return "\n".join(lines)


def params(cases: Sequence[SocketCase]) -> list[Any]:
    """pytest parameters for a list of cases, ids their names, marks kept."""
    return [pytest.param(case, id=case.name, marks=list(case.marks)) for case in cases]


# -- raw cases (no socket) -------------------------------------------------------------


@dataclass
class RawCase:
    """A Lua body and a Python function (recording through a Recorder) that do the same
    thing without a peer: controllers, conditions, promises."""

    name: str
    lua: str
    python: Callable[[Recorder], Any]
    marks: Sequence[Any] = field(default_factory=tuple)
    deliberate: Deliberate | None = None


_RAW_REPORTS: dict[str, list[list[Any]]] = {}


def check_raw(case: RawCase, python_records: list[list[Any]]) -> None:
    require_lua()
    if case.name not in _RAW_REPORTS:
        _RAW_REPORTS[case.name] = run_lua(case.lua)
    expected = _expected(case.name, _RAW_REPORTS[case.name], case.deliberate)
    assert python_records == expected, _diff(case.name, expected, python_records)


def raw_params(cases: Sequence[RawCase]) -> list[Any]:
    return [pytest.param(case, id=case.name, marks=list(case.marks)) for case in cases]
