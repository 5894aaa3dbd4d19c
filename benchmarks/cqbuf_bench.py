"""Micro-benchmark of cqbuf's line reader ("*l") against pure-Python line splitting.

Run: `python benchmarks/cqbuf_bench.py [--lines N] [--rounds R] [--chunk BYTES]`.

What is measured: the same stream of N lines (about 40 bytes each, a few CRLF), fed in
`--chunk`-byte pieces, is cut into lines by:

  cqbuf            InputBuffer.feed() + get("*l") until NEED_MORE (binary mode)
  cqbuf text       the same in text mode (CRLF -> LF)
  bytearray        what asyncio.StreamReader.readline does underneath: extend a
                   bytearray, find(b"\\n"), bytes(buf[:n]), del buf[:n]
  offset split     a careful pure-Python reader: one bytes object per chunk, find() from
                   an offset, slice each line (joining the unterminated tail to the next)
  StreamReader     asyncio.StreamReader itself: feed_data() then `await readline()`

Every reader's line count is checked. Rounds are interleaved (each round runs every reader,
rotating their order) after one discarded warm-up round; the figure is the median lines per
second, and the ratios divide cqbuf's median by each peer's (above 1.00: cqbuf is faster).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
from collections.abc import Callable

from cqloop._core.cqbuf import NEED_MORE, InputBuffer

LINE_BYTES = 40


def make_stream(n: int) -> bytes:
    lines = []
    for i in range(n):
        body = (b"line %d " % i).ljust(LINE_BYTES - 2, b"x")
        lines.append(body + (b"\r\n" if i % 7 == 0 else b"\n"))
    return b"".join(lines)


def chunks_of(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def read_cqbuf(chunks: list[bytes], text: bool) -> int:
    buf = InputBuffer(text=text)
    get = buf.get
    count = 0
    for c in chunks:
        buf.feed(c)
        while get("*l") is not NEED_MORE:
            count += 1
    return count


def read_bytearray(chunks: list[bytes]) -> int:
    buf = bytearray()
    count = 0
    for c in chunks:
        buf.extend(c)
        while True:
            i = buf.find(b"\n")
            if i < 0:
                break
            line = bytes(buf[: i + 1])
            del buf[: i + 1]
            count += 1 if line else 0
    return count


def read_offset(chunks: list[bytes]) -> int:
    tail = b""
    count = 0
    for c in chunks:
        data = tail + c if tail else c
        pos = 0
        while True:
            i = data.find(b"\n", pos)
            if i < 0:
                break
            _line = data[pos:i]
            pos = i + 1
            count += 1
        tail = data[pos:]
    return count


def read_streamreader(chunks: list[bytes]) -> int:
    async def body() -> int:
        reader = asyncio.StreamReader(limit=2**20)
        for c in chunks:
            reader.feed_data(c)
        reader.feed_eof()
        count = 0
        while await reader.readline():
            count += 1
        return count

    return asyncio.run(body())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--chunk", type=int, default=65536)
    args = parser.parse_args()

    chunks = chunks_of(make_stream(args.lines), args.chunk)
    readers: dict[str, Callable[[], int]] = {
        "cqbuf": lambda: read_cqbuf(chunks, False),
        "cqbuf text": lambda: read_cqbuf(chunks, True),
        "bytearray": lambda: read_bytearray(chunks),
        "offset split": lambda: read_offset(chunks),
        "StreamReader": lambda: read_streamreader(chunks),
    }
    names = list(readers)
    results: dict[str, list[float]] = {name: [] for name in names}
    for rnd in range(args.rounds + 1):
        order = names[rnd % len(names) :] + names[: rnd % len(names)]
        for name in order:
            gc.collect()
            t0 = time.perf_counter()
            count = readers[name]()
            elapsed = time.perf_counter() - t0
            if count != args.lines:
                raise SystemExit(f"{name}: {count} lines, expected {args.lines}")
            if rnd:
                results[name].append(args.lines / elapsed)

    base = statistics.median(results["cqbuf"])
    print(
        f"{args.lines} lines of ~{LINE_BYTES} bytes in {args.chunk}-byte chunks, "
        f"median of {args.rounds} interleaved rounds"
    )
    print(f"{'reader':14} {'lines/s':>12} {'cqbuf ratio':>12}")
    for name in names:
        med = statistics.median(results[name])
        print(f"{name:14} {med / 1e6:10.2f} M {base / med:11.2f}x")


if __name__ == "__main__":
    main()
