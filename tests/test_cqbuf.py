"""Tests for cqloop._core.cqbuf: the cq socket's byte buffers and read-format scanners.

The buffers are pure (no I/O, no loop), so these are plain sync tests that run once. Three
kinds: worked examples of each format and mode taken from cqueues' semantics (src/socket.c,
doc/cqueues.tex, socket.debug.lua's units); hypothesis runs that drive the compiled buffer
and a small slicing model of the same rules through identical operation sequences; and
bounded-memory checks against peers that never send an LF, a header end or a boundary.
"""

from __future__ import annotations

import pickle
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cqloop._core.cqbuf import (
    DEFAULT_BUFSIZ,
    DEFAULT_MAXLINE,
    NEED_MORE,
    InputBuffer,
)
from cqloop._core.cqoutbuf import OutputBuffer

# -- a slicing model of the read formats (the oracle for the hypothesis runs) -------------

BLANK = b" \t"
FIELD_NAME = re.compile(rb"[!-9;-~]+")


class InputModel:
    """The formats of cqbuf.pyx's docstring, written the slow and obvious way."""

    def __init__(self, maxline: int, text: bool, bufsiz: int) -> None:
        self.data = b""
        self.eof = False
        self.maxline = maxline
        self.text = text
        self.bufsiz = bufsiz

    def feed(self, chunk: bytes) -> None:
        self.data += chunk

    def unget(self, chunk: bytes) -> None:
        self.data = chunk + self.data
        self.eof = False

    def _take(self, n: int) -> bytes:
        out, self.data = self.data[:n], self.data[n:]
        return out

    def get(self, fmt: str | int) -> object:
        if isinstance(fmt, int):
            return self._block(fmt) if fmt > 0 else self._limit(-fmt) if fmt < 0 else b""
        if fmt in ("*l", "*L"):
            return self._line(fmt == "*L")
        if fmt == "*a":
            if not self.eof:
                return NEED_MORE
            if not self.data:
                return None
            out = self._take(len(self.data))
            return out.replace(b"\r\n", b"\n") if self.text else out
        if fmt in ("*h", "*H"):
            return self._header(fmt == "*h")
        return self._body(fmt.encode())

    def _line(self, keep: bool) -> object:
        d = self.data
        if not d:
            return None if self.eof else NEED_MORE
        k = d[: self.maxline].find(b"\n")
        if k < 0:
            if self.eof or len(d) >= self.maxline:
                return self._take(self.maxline)
            return NEED_MORE
        line = self._take(k + 1)
        if self.text and line.endswith(b"\r\n"):
            line = line[:-2] + b"\n"
        return line if keep else line[:-1]

    def _header(self, unfold: bool) -> object:
        win = self.data[: self.maxline]
        nomore = self.eof or len(self.data) >= self.maxline
        if win:
            m = FIELD_NAME.match(win)
            if not m:
                return None
            j = m.end()
            while j < len(win) and win[j] in BLANK:
                j += 1
            if j < len(win) and win[j] != ord(":"):
                return None
            pos = j
            while (k := win.find(b"\n", pos)) >= 0:
                if k + 1 < len(win) and win[k + 1] not in BLANK:
                    out = self._take(k + 1)
                    if unfold:
                        return out.replace(b"\r\n", b"").replace(b"\n", b"")
                    return out.replace(b"\r\n", b"\n") if self.text else out
                pos = k + 1
        return None if nomore else NEED_MORE

    def _body(self, marker: bytes) -> object:
        chunk = max(max(self.bufsiz, self.maxline) if self.text else self.bufsiz, 2)
        window = chunk + 2 + len(marker)
        tr = (lambda b: b.replace(b"\r\n", b"\n")) if self.text else (lambda b: b)
        k = self.data[:window].find(marker)
        if k == 0:
            return None
        if k > 0:
            seg = self._take(k)
            if seg.endswith(b"\n"):
                seg = seg[:-2] if seg.endswith(b"\r\n") else seg[:-1]
            return tr(seg) if seg else None
        if len(self.data) >= window:
            n = chunk
            if self.text:
                lf = self.data[:chunk].rfind(b"\n")
                if lf >= 0:
                    n = lf + 1
                if self.data[n - 1 : n] == b"\r":
                    n -= 1
            return tr(self._take(n))
        if self.eof:
            return tr(self._take(len(self.data))) if self.data else None
        return NEED_MORE

    def _units(self, limit: int) -> tuple[list[bytes], bool]:
        """Up to `limit` translated units (CRLF is one), and whether a CR whose next byte
        is unknown stopped the count."""
        units: list[bytes] = []
        i, d = 0, self.data
        while i < len(d) and len(units) < limit:
            if d[i : i + 2] == b"\r\n" and self.text:
                units.append(d[i : i + 2])
                i += 2
            elif d[i : i + 1] == b"\r" and self.text and i + 1 == len(d) and not self.eof:
                return units, True
            else:
                units.append(d[i : i + 1])
                i += 1
        return units, False

    def _emit(self, units: list[bytes]) -> bytes:
        raw = self._take(sum(map(len, units)))
        return raw.replace(b"\r\n", b"\n") if self.text else raw

    def _block(self, n: int) -> object:
        units, _ = self._units(n)
        if len(units) == n or (self.eof and units):
            return self._emit(units)
        return None if self.eof else NEED_MORE

    def _limit(self, n: int) -> object:
        units, _ = self._units(n)
        if units:
            return self._emit(units)
        return None if self.eof else NEED_MORE


# -- helpers --------------------------------------------------------------------------------


def drain(buf: InputBuffer, fmts: list) -> list:
    """Read formats in order until one needs more input; the results."""
    out = []
    while fmts:
        r = buf.get(fmts[0])
        if r is NEED_MORE:
            break
        out.append(r)
        fmts.pop(0)
    return out


def read_all(chunks: list[bytes], fmts: list, **kw) -> tuple[list, int]:
    """Feed chunks one by one, reading formats whenever they can complete, then EOF."""
    buf = InputBuffer(**kw)
    fmts = list(fmts)
    out = []
    for c in chunks:
        buf.feed(c)
        out += drain(buf, fmts)
    buf.feed_eof()
    out += drain(buf, fmts)
    assert not fmts, "a format returned NEED_MORE after EOF"
    return out, buf.pending()


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for p in [*points, len(data)]:
        pieces.append(data[last:p])
        last = p
    return pieces


# -- worked examples ----------------------------------------------------------------------


def test_defaults_are_cqueues():
    b, o = InputBuffer(), OutputBuffer()
    assert (b.maxline, b.bufsiz, b.text) == (4096, 4096, True)
    assert (DEFAULT_MAXLINE, DEFAULT_BUFSIZ) == (4096, 4096)
    assert (o.mode, o.bufsiz, o.maxline, o.text) == ("l", 4096, 4096, True)


def test_need_more_is_a_singleton():
    assert repr(NEED_MORE) == "NEED_MORE"
    assert pickle.loads(pickle.dumps(NEED_MORE)) is NEED_MORE
    assert InputBuffer().get("*l") is NEED_MORE


@pytest.mark.parametrize(
    ("text", "fmt", "expected"),
    [
        (True, "*l", [b"a", b"b", b"c\r", b"d"]),
        (False, "*l", [b"a\r", b"b", b"c\r", b"d"]),
        (True, "*L", [b"a\n", b"b\n", b"c\r", b"d"]),
        (False, "*L", [b"a\r\n", b"b\n", b"c\r", b"d"]),
    ],
)
def test_lines_crlf_lf_and_eof_mid_line(text, fmt, expected):
    b = InputBuffer(text=text)
    b.feed(b"a\r\nb\nc\r")
    assert [b.get(fmt), b.get(fmt)] == expected[:2]
    assert b.get(fmt) is NEED_MORE  # "c\r": no LF yet
    b.feed(b"")
    b.feed_eof()
    assert b.get(fmt) == expected[2]  # EOF mid-line: the rest, a lone CR is data
    assert b.get(fmt) is None
    assert b.at_eof
    b2 = InputBuffer(text=text)
    b2.feed(b"d")
    b2.feed_eof()
    assert b2.get(fmt) == expected[3]
    assert b2.get(fmt) is None


def test_line_longer_than_maxline_comes_back_in_maxline_chunks():
    # cqueues' setmaxline: "if a LF is not found within this limit then the data is
    # processed as-if EOF was reached at this boundary" - no error, bounded memory.
    b = InputBuffer(maxline=4)
    b.feed(b"abcdefghij\nxy")
    assert [b.get("*l"), b.get("*l"), b.get("*l")] == [b"abcd", b"efgh", b"ij"]
    assert b.get("*l") is NEED_MORE
    b.feed(b"zw")
    assert b.get("*l") == b"xyzw"


def test_no_format_raises_oserror_on_garbage():
    # Binary garbage in text mode: documented results, never an exception.
    garbage = bytes(range(256)) * 20
    for fmt in ("*l", "*L", "*h", "*H", "--X", 7, -7, "*a"):
        b = InputBuffer(maxline=64, bufsiz=32)
        b.feed(garbage)
        b.feed_eof()
        out = []
        for _ in range(2000):
            r = b.get(fmt)
            assert r is not NEED_MORE
            if r is None:
                break
            out.append(r)
        if fmt not in ("*h", "*H"):
            assert b.pending() == 0


def test_slurp():
    b = InputBuffer()
    b.feed(b"x\r\ny")
    assert b.get("*a") is NEED_MORE
    b.feed(b"\r\n")
    b.feed_eof()
    assert b.get("*a") == b"x\ny\n"
    assert b.get("*a") is None  # cqueues returns nil, not ""
    b = InputBuffer(text=False)
    b.feed(b"x\r\n")
    b.feed_eof()
    assert b.get("*a") == b"x\r\n"


def test_blocks_binary():
    b = InputBuffer(text=False)
    b.feed(b"abc")
    assert b.get(5) is NEED_MORE
    assert b.get(0) == b""
    assert b.get(-2) == b"ab"
    assert b.get(-10) == b"c"
    assert b.get(-10) is NEED_MORE
    b.feed(b"12345678")
    assert b.get(5) == b"12345"
    b.feed_eof()
    assert b.get(5) == b"678"  # fewer only at EOF
    assert b.get(5) is None
    assert b.get(-5) is None


def test_blocks_text_count_translated_bytes():
    b = InputBuffer(text=True)
    b.feed(b"a\r\nb\r\nc")
    assert b.get(4) == b"a\nb\n"
    b.feed(b"d\r")
    assert b.get(2) == b"cd"
    assert b.get(1) is NEED_MORE  # a final CR may be the start of a CRLF
    assert b.get(-5) is NEED_MORE
    b.feed(b"x")
    assert b.get(1) == b"\r"  # it was not
    assert b.get(-5) == b"x"
    b.feed(b"y\r")
    assert b.get(-5) == b"y"  # the CR is held back until the next byte is known
    b.feed_eof()
    assert b.get(-5) == b"\r"  # at EOF it is plain data (cqueues: the read failed)
    assert b.get(1) is None


def test_text_block_does_not_overshoot_on_lone_cr():
    # cqueues' iov_eot returned one byte past n when the n-th byte was a lone CR with a
    # non-LF byte already buffered after it; n bytes means n bytes here.
    b = InputBuffer(text=True)
    b.feed(b"ab\rX")
    assert b.get(3) == b"ab\r"
    assert b.get(1) == b"X"


def test_format_override_per_call():
    b = InputBuffer(text=False)
    b.feed(b"a\r\nb\r\n")
    assert b.get("*l", text=True) == b"a"
    assert b.get("*l") == b"b\r"
    assert b.text is False


def test_lua53_spellings_and_invalid_formats():
    b = InputBuffer()
    b.feed(b"x\ny\n")
    assert b.get("l") == b"x"
    assert b.get("L") == b"y\n"
    for bad in ("*n", "n", "*x", "", "-x", 1.5, None, True):
        with pytest.raises(ValueError):
            b.get(bad)


# MIME headers: cases from cqueues' socket.debug.lua iov_eoh unit.
@pytest.mark.parametrize(
    ("data", "eof", "expected_len"),
    [
        (b"Foo: bar\n", False, NEED_MORE),  # the next line has not started
        (b"Foo: bar\n \n\tbaz\n\n", True, 16),  # folded twice
        (b"Foo: bar\n\n", False, 9),
        (b"Foo : bar\n\n", False, 10),  # blanks before the colon
        (b"\n", False, None),  # the blank line ending a block
        (b"foo\n", False, None),  # not a header
        (b"Foo: bar\n", True, None),  # EOF is not a terminating condition
        (b"", True, None),
        (b"", False, NEED_MORE),
        (b"Foo", False, NEED_MORE),
        (b"\x80bad: x\nY", False, None),
    ],
)
def test_header_termination(data, eof, expected_len):
    b = InputBuffer(text=False)
    b.feed(data)
    if eof:
        b.feed_eof()
    r = b.get("*H")
    if isinstance(expected_len, int):
        assert r == data[:expected_len]
        assert b.pending() == len(data) - expected_len
    else:
        assert r is expected_len
        assert b.pending() == len(data)  # nothing consumed


def test_header_block_unfolded_and_kept():
    block = b"Host: x\r\nX-Long: a\r\n b\r\n\tc\r\nAccept: */*\r\n\r\nbody"
    b = InputBuffer(text=True)
    b.feed(block)
    assert b.get("*h") == b"Host: x"
    assert b.get("*H") == b"X-Long: a\n b\n\tc\n"
    assert b.get("*h") == b"Accept: */*"
    assert b.get("*h") is None
    assert b.get("*h") is None  # consumes nothing: the caller reads the break itself
    assert b.get("*L") == b"\n"
    b = InputBuffer(text=False)
    b.feed(block)
    b.get("*h")
    assert b.get("*H") == b"X-Long: a\r\n b\r\n\tc\r\n"


def test_unfold_removes_every_eol():
    # cqueues' iov_trimcrlf skipped an LF right after a removed CRLF; every EOL goes here.
    b = InputBuffer(text=False)
    b.feed(b"A: b\r\n\t\n\tc\r\n\nX")
    assert b.get("*h") == b"A: b\t\tc"


def test_header_longer_than_maxline_is_none_and_bounded():
    b = InputBuffer(maxline=16)
    b.feed(b"X-Big: " + b"a" * 20)
    assert b.get("*h") is None
    assert b.pending() == 27  # nothing consumed; the caller decides (cqueues' advice)
    assert b.get("*l") == b"X-Big: aaaaaaaaa"  # and can skip it line-wise


# MIME bodies: cqueues' iov_eob cases and the io.boundary units.
def test_boundary_basic_and_trailing_eol_belongs_to_boundary():
    b = InputBuffer(text=False)
    b.feed(b"part one\r\n--AAAA\r\npart two\n--AAAA--\r\n")
    assert b.get("--AAAA") == b"part one"
    assert b.get("--AAAA") is None  # at the marker: nothing consumed
    assert b.get("*l") == b"--AAAA\r"
    assert b.get("--AAAA") == b"part two"
    assert b.get("*l") == b"--AAAA--\r"


@pytest.mark.parametrize(
    ("data", "marker", "taken"),
    [
        (b"123--AAAA", "--AAAA", b"123"),
        (b"123--AAAA\n", "--AAAA", b"123"),
        (b"--AAAA", "--AAA", None),
        (b"\r\n--B", "--B", None),
    ],
)
def test_boundary_found_anywhere(data, marker, taken):
    b = InputBuffer(text=False)
    b.feed(data)
    assert b.get(marker) == taken
    assert b.pending() == len(data) - len(data.split(marker.encode())[0])


def test_boundary_marker_split_across_feeds_is_never_returned_as_data():
    b = InputBuffer(text=False, bufsiz=64)
    b.feed(b"abc\r\n--AA")
    assert b.get("--AAAA") is NEED_MORE  # cqueues returned "abc\r\n--AA" here
    b.feed(b"AA\r\n")
    assert b.get("--AAAA") == b"abc"


def test_boundary_chunks_binary_and_text():
    payload = b"x" * 10 + b"\r\n" + b"y" * 10 + b"\r\n--B"
    b = InputBuffer(text=False, bufsiz=8)
    b.feed(payload)
    assert [b.get("--B") for _ in range(4)] == [b"x" * 8, b"xx\r\nyyyy", b"yyyyyy", None]
    # text: chunks end at the last LF in them and never in a CR; CRLF -> LF
    b = InputBuffer(text=True, bufsiz=8, maxline=8)
    b.feed(b"ab\r\ncd\r\nefghijkl\r\n--B")
    assert b.get("--B") == b"ab\ncd\n"
    assert b.get("--B") == b"efghijkl"
    assert b.get("--B") is None


def test_boundary_at_eof_without_marker_returns_the_rest():
    b = InputBuffer(text=False, bufsiz=64)
    b.feed(b"truncated")
    assert b.get("--Z") is NEED_MORE
    b.feed_eof()
    assert b.get("--Z") == b"truncated"
    assert b.get("--Z") is None


def test_boundary_text_mode_reassembles_cqueues_io_boundary_text():
    # socket.debug.lua io.boundary.text, at a smaller scale and fed in odd pieces.
    message = b".\r\n.\r" * 3000
    marker = b"--AAAA"
    b = InputBuffer(text=True, bufsiz=256)
    parts = []
    stream = message + marker
    for i in range(0, len(stream), 97):
        b.feed(stream[i : i + 97])
        while (r := b.get("--AAAA")) is not NEED_MORE and r is not None:
            if parts:
                assert parts[-1].endswith(b"\n")
            parts.append(r)
    b.feed_eof()
    while (r := b.get("--AAAA")) is not None:
        parts.append(r)
    assert b"".join(parts) == message.replace(b"\r\n", b"\n")
    assert b.get("*l") == marker


def test_block_text_reassembles_cqueues_io_block_text():
    message = b".\r\n.\r" * 3000 + b"@"
    b = InputBuffer(text=True)
    for i in range(0, len(message), 1000):
        b.feed(message[i : i + 1000])
    b.feed_eof()
    parts = []
    while (r := b.get(127)) is not None:
        parts.append(r)
    assert all(len(p) == 127 for p in parts[:-1])
    assert b"".join(parts) == message.replace(b"\r\n", b"\n")


# -- unget, take, clear, feed rules -----------------------------------------------------


def test_unget_in_text_mode_is_raw_and_translated_on_read():
    # Ported from the idea of cqueues' unget in text mode: the bytes pushed back are
    # raw buffer content; the read that takes them applies the mode.
    b = InputBuffer(text=True)
    b.feed(b"tail\r\n")
    b.unget(b"head\r\nmid")
    assert b.pending() == 15
    assert b.get("*L") == b"head\n"
    assert b.get("*l") == b"midtail"
    b.unget(b"x\r")
    b.unget(bytearray(b"w"))
    b.feed(b"\n")
    assert b.get("*l") == b"wx"


def test_unget_clears_eof_as_cqueues_does():
    b = InputBuffer()
    b.feed(b"a")
    b.feed_eof()
    assert b.get("*l") == b"a"
    assert b.at_eof
    b.unget(b"again")
    assert not b.eof and not b.at_eof
    assert b.get("*l") is NEED_MORE  # the socket layer must see EOF again
    b.feed(b"\n")
    assert b.get("*l") == b"again"
    b.feed_eof()
    assert b.get("*l") is None


def test_unget_large_and_into_a_consumed_front():
    b = InputBuffer(text=False)
    b.feed(b"0123456789" * 500)
    assert b.get(4000) == (b"0123456789" * 400)
    b.unget(b"ab")  # fits in the consumed front
    b.unget(b"Z" * 100_000)  # does not
    assert b.get(100_002) == b"Z" * 100_000 + b"ab"
    assert b.get(-2000) == b"0123456789" * 100
    assert b.pending() == 0


def test_take_clear_and_feed_after_eof():
    b = InputBuffer()
    b.feed(memoryview(b"xx\r\nyy"))
    assert b.take() == b"xx\r\nyy"  # raw, whatever the mode
    assert b.pending() == 0
    b.feed(b"zz")
    b.clear()
    assert b.pending() == 0 and b.get(-1) is NEED_MORE
    b.feed_eof()
    b.feed_eof()  # idempotent
    with pytest.raises(ValueError):
        b.feed(b"late")
    b.clear()
    assert b.at_eof  # clear keeps the EOF state
    assert b.statistics()["eof"] is True


def test_limits_must_be_positive():
    with pytest.raises(ValueError):
        InputBuffer(maxline=0)
    b = InputBuffer()
    with pytest.raises(ValueError):
        b.bufsiz = 0
    with pytest.raises(ValueError):
        OutputBuffer(bufsiz=0)
    with pytest.raises(ValueError):
        OutputBuffer(mode="x")
    with pytest.raises(ValueError):
        OutputBuffer().mode = ""


# -- bounded memory against hostile peers ---------------------------------------------------


def test_endless_line_is_bounded():
    b = InputBuffer(maxline=256)
    for _ in range(2000):
        b.feed(b"a" * 100)
        while (r := b.get("*l")) is not NEED_MORE:
            assert len(r) == 256
        assert b.pending() < 256
    assert b.statistics()["capacity"] <= 4 * 1024


def test_endless_header_is_bounded_by_maxline_per_header():
    b = InputBuffer(maxline=128)
    b.feed(b"X: ")
    seen_none = 0
    for _ in range(2000):
        b.feed(b"a" * 50)
        r = b.get("*h")
        if r is None:
            seen_none += 1
            b.get("*l")  # the caller gives up on it line-wise, as cqueues suggests
        assert r is NEED_MORE or r is None
        assert b.pending() < 128 + 50
    assert seen_none > 0


def test_endless_boundary_search_is_bounded():
    b = InputBuffer(text=False, bufsiz=512)
    total = 0
    for _ in range(2000):
        b.feed(b"q" * 300)
        while (r := b.get("--NEVER")) is not NEED_MORE:
            assert r is not None and len(r) == 512
            total += len(r)
        assert b.pending() < 512 + 2 + 7 + 300
    assert total + b.pending() == 600_000


def test_endless_text_block_is_bounded():
    b = InputBuffer(text=True)
    for _ in range(1000):
        b.feed(b"\r\n" * 100)
        while (r := b.get(-64)) is not NEED_MORE:
            assert r == b"\n" * len(r) and 1 <= len(r) <= 64
        assert b.pending() < 64 * 2 + 200


# -- hypothesis: the compiled scanners against the model --------------------------------------

ALPHABET = st.sampled_from(
    [b"\r", b"\n", b"\r\n", b":", b" ", b"\t", b"A", b"b", b"-", b"\x00", b"\xff"]
)
DATA = st.lists(ALPHABET, max_size=80).map(b"".join)
MARKERS = st.sampled_from(["--A", "--Ab", "--"])
FORMATS = st.one_of(
    st.sampled_from(["*l", "*L", "*a", "*h", "*H"]),
    MARKERS,
    st.integers(1, 9),
    st.integers(-9, -1),
)
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("feed"), DATA),
        st.tuples(st.just("get"), FORMATS),
        st.tuples(st.just("unget"), DATA),
        st.tuples(st.just("eof"), st.none()),
    ),
    max_size=40,
)
CONFIG = st.fixed_dictionaries(
    {"maxline": st.integers(1, 12), "bufsiz": st.integers(1, 12), "text": st.booleans()}
)


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=CONFIG, ops=OPS)
def test_scanners_match_model(config, ops):
    real = InputBuffer(**config)
    model = InputModel(**config)
    for op, arg in ops:
        if op == "feed":
            if model.eof:
                continue
            real.feed(arg)
            model.feed(arg)
        elif op == "unget":
            real.unget(arg)
            model.unget(arg)
        elif op == "eof":
            real.feed_eof()
            model.eof = True
        else:
            assert real.get(arg) == model.get(arg), (op, arg)
        assert real.pending() == len(model.data)
        assert real.at_eof == (model.eof and not model.data)


@settings(max_examples=800, deadline=None)
@given(
    config=CONFIG,
    data=DATA,
    cuts=st.lists(st.integers(0, 10_000), max_size=12),
    fmts=st.lists(
        st.one_of(st.sampled_from(["*l", "*L", "*h", "*H", "*a"]), MARKERS, st.integers(1, 9)),
        max_size=30,
    ),
)
def test_any_split_reads_like_one_feed(config, data, cuts, fmts):
    # Every format except -n is a function of the stream, not of how it arrived.
    whole = read_all([data], fmts, **config)
    pieces = read_all(split_at(data, cuts), fmts, **config)
    bytewise = read_all([data[i : i + 1] for i in range(len(data))], fmts, **config)
    assert pieces == whole
    assert bytewise == whole


@settings(max_examples=400, deadline=None)
@given(
    config=CONFIG,
    data=DATA,
    cuts=st.lists(st.integers(0, 10_000), max_size=12),
    n=st.integers(1, 9),
)
def test_limit_reads_concatenate_to_the_stream(config, data, cuts, n):
    out, left = read_all(split_at(data, cuts), [-n] * (len(data) + 1), **config)
    got = b"".join(r for r in out if r is not None)
    assert left == 0
    assert got == (data.replace(b"\r\n", b"\n") if config["text"] else data)


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(st.binary(max_size=20).map(lambda b: b.replace(b"\n", b"")), max_size=20),
    crlf=st.lists(st.booleans(), min_size=20, max_size=20),
    cuts=st.lists(st.integers(0, 10_000), max_size=12),
)
def test_lines_round_trip_crlf_lf_mix(lines, crlf, cuts):
    stream = b"".join(ln + (b"\r\n" if c else b"\n") for ln, c in zip(lines, crlf, strict=False))
    out, left = read_all(split_at(stream, cuts), ["*l"] * (len(lines) + 1), maxline=64)
    assert left == 0
    expected = [
        ln[:-1] if (ln.endswith(b"\r") and not c) else ln
        for ln, c in zip(lines, crlf, strict=False)
    ]
    # "x\r" + "\n" is a CRLF in text mode: the CR belongs to the line end.
    assert out == [*expected, None]


# -- output -----------------------------------------------------------------------------


class OutputModel:
    """cqueues' output buffering as src/socket.c writes it (lso_send5's chunk loop and
    lso_doflush's amounts), over Python bytes: `fifo` is what cqueues would still hold,
    `held` what it would have sent and the real buffer keeps due until popped."""

    def __init__(self, mode: str, bufsiz: int, maxline: int, text: bool) -> None:
        self.fifo = b""
        self.held = b""
        self.eol = 0
        self.mode, self.bufsiz, self.maxline, self.text = mode, bufsiz, maxline, text
        self.bits = ""

    @property
    def pending(self) -> int:
        return len(self.held) + len(self.fifo)

    def decide(self, mode: str | None) -> None:
        mode = mode or self.mode
        if mode == "n":
            amount = len(self.fifo)
        elif mode == "l":
            amount = self.eol or (self.maxline if len(self.fifo) >= self.maxline else 0)
        else:
            amount = len(self.fifo) - len(self.fifo) % self.bufsiz
        self.held += self.fifo[:amount]
        self.fifo = self.fifo[amount:]
        self.eol -= min(self.eol, amount)

    def pop(self) -> bytes:
        out, self.held = self.held, b""
        return out

    def write(self, data: bytes, mode: str | None) -> bytes:
        byline = self.text or (mode or self.mode) == "l" or self.mode == "l"
        p = 0
        while p < len(data):
            if byline:
                n = min(len(data) - p, self.maxline)
                lf = data.find(b"\n", p, p + n)
                if lf >= 0:
                    self.fifo += data[p:lf] + (b"\r\n" if self.text else b"\n")
                    self.eol = len(self.fifo)
                    p = lf + 1
                else:
                    self.fifo += data[p : p + n]
                    p += n
            else:
                self.fifo += data[p : p + 4096]
                p += 4096
            if len(self.fifo) > self.bufsiz:
                self.decide(mode)
        self.decide(mode)
        return self.pop()

    def due(self, mode: str | None) -> bytes:
        self.decide(mode)
        return self.pop()

    def flush(self) -> bytes:
        self.decide("n")
        return self.pop()

    def pack(self, value: int, nbits: int) -> bytes:
        if nbits:
            self.bits += format(value & ((1 << nbits) - 1), f"0{nbits}b")
        while len(self.bits) >= 8:
            self.fifo += bytes([int(self.bits[:8], 2)])
            self.bits = self.bits[8:]
        return self.due(None)

    def unflush(self, data: bytes) -> None:
        self.held = data + self.held


OUT_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("write"), DATA, st.sampled_from([None, "n", "l", "f"])),
        st.tuples(st.just("due"), st.none(), st.sampled_from([None, "n", "l", "f"])),
        st.tuples(st.just("flush"), st.none(), st.none()),
        st.tuples(st.just("pack"), st.integers(-(2**64), 2**64), st.integers(0, 64)),
        st.tuples(st.just("unflush"), st.integers(0, 10), st.none()),
    ),
    max_size=40,
)


@settings(max_examples=500, deadline=None)
@given(
    mode=st.sampled_from(["n", "l", "f"]),
    bufsiz=st.integers(1, 12),
    maxline=st.integers(1, 12),
    text=st.booleans(),
    ops=OUT_OPS,
)
def test_output_matches_model(mode, bufsiz, maxline, text, ops):
    real = OutputBuffer(mode=mode, bufsiz=bufsiz, maxline=maxline, text=text)
    model = OutputModel(mode, bufsiz, maxline, text)
    last = b""
    for op, a, b in ops:
        if op == "write":
            last = real.write(a, b)
            assert last == model.write(a, b)
        elif op == "due":
            last = real.due(b)
            assert last == model.due(b)
        elif op == "flush":
            last = real.flush()
            assert last == model.flush()
        elif op == "pack":
            last = real.pack(a, b)
            assert last == model.pack(a, b)
        else:
            back = last[len(last) - min(a, len(last)) :]
            real.unflush(back)
            model.unflush(back)
            last = b""
        assert real.pending() == model.pending


def test_output_modes():
    o = OutputBuffer(mode="n", text=False)
    data = b"no copy\n"
    assert o.write(data) is data  # nothing buffered, all due: the caller's own object
    o = OutputBuffer(mode="l", text=False, maxline=8)
    assert o.write(b"one\ntw") == b"one\n"
    assert o.pending() == 2
    assert o.write(b"o\nthree") == b"two\n"
    # One maxline chunk per decision, as cqueues: the rest waits for the next one.
    assert o.write(b"threethreethree") == b"threethr"
    assert o.pending() == 12
    assert o.due() == b"eethreet"
    assert o.flush() == b"hree"
    o = OutputBuffer(mode="f", bufsiz=4, text=False)
    assert o.write(b"abcdefghij") == b"abcdefgh"
    assert o.due("l") == b""
    assert o.write(b"\n", "l") == b"ij\n"
    assert o.write(b"xy") == b""
    assert o.flush("") == b""  # "" is the buffer's own mode
    assert o.flush() == b"xy"


def test_output_text_mode_translates_every_lf():
    o = OutputBuffer(mode="n", text=True)
    assert o.write(b"a\nb\r\nc") == b"a\r\nb\r\r\nc"  # cqueues' rule: every LF
    o = OutputBuffer(mode="l", text=True)
    assert o.write(bytearray(b"x\ny")) == b"x\r\n"
    assert o.pending() == 1


def test_unflush_keeps_unsent_bytes_due():
    o = OutputBuffer(mode="f", bufsiz=100, text=False)
    o.write(b"abc")
    out = o.flush()
    o.unflush(out[1:])
    assert o.pending() == 2
    assert o.write(b"d") == b"bc"  # due whatever the mode
    assert o.flush() == b"d"


def test_setvbuf_and_mode_names():
    o = OutputBuffer()
    assert o.setvbuf("full", 10) == ("l", 4096)  # the buffer's names (the socket's: Lua's)
    assert (o.mode, o.bufsiz) == ("f", 10)
    assert o.setvbuf("no") == ("f", 10)
    o.mode = "line"
    assert o.mode == "l"


# -- pack / unpack ------------------------------------------------------------------------


def test_pack_unpack_cqueues_fifo_example():
    o = OutputBuffer(mode="n", text=True)
    assert o.pack(0x3, 4) == b""  # half a byte waits for more bits
    assert o.pack(0xA, 4) == b"\x3a"  # a packed 0x0A-ish byte is never translated
    assert o.pack(0x0A, 8) == b"\x0a"
    assert o.pack(-1, 12) == b"\xff"
    assert o.statistics()["pending_bits"] == 4
    i = InputBuffer()
    i.feed(b"\x3a\x0a\xff\xf0")
    assert i.unpack(4) == 3
    assert i.unpack(4) == 0xA
    assert i.unpack(8) == 0x0A
    assert i.unpack(12) == 0xFFF
    assert i.unpack(8) is NEED_MORE  # 4 bits left
    assert i.unpack(4) == 0
    i.feed_eof()
    assert i.unpack(1) is None


def test_unpack_leaves_byte_reads_byte_aligned():
    i = InputBuffer(text=False)
    i.feed(b"\xabXY")
    assert i.unpack(4) == 0xA
    assert i.get(1) == b"X"  # byte formats skip the half-read byte (cqueues)
    assert i.unpack(4) == 0xB  # its other half is still there


def test_pack_limits():
    with pytest.raises(ValueError):
        OutputBuffer().pack(1, 65)
    with pytest.raises(ValueError):
        InputBuffer().unpack(-1)


@settings(max_examples=500, deadline=None)
@given(
    fields=st.lists(st.tuples(st.integers(0, 64), st.integers(0, 2**64 - 1)), max_size=30),
    cuts=st.lists(st.integers(0, 10_000), max_size=8),
)
def test_pack_unpack_round_trip(fields, cuts):
    o = OutputBuffer(mode="f", bufsiz=3, text=False)
    sent = b"".join(o.pack(v, n) for n, v in fields)
    total_bits = sum(n for n, _ in fields)
    pad = (-total_bits) % 8
    sent += o.pack(0, pad) + o.flush()
    i = InputBuffer()
    pieces = split_at(sent, cuts)
    got = []
    for n, _ in fields:
        while (v := i.unpack(n)) is NEED_MORE:
            i.feed(pieces.pop(0))
        got.append(v)
    assert got == [v & ((1 << n) - 1) for n, v in fields]
