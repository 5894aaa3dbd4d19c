"""cqloop.worker_events.codec: the wire format between the broker and its clients.

Owns the frame layout, the frame kinds, the payload codecs (JSON by default, pickle when
asked for) and the incremental frame reader. Knows nothing of sockets or loops: the broker
(broker.py) and the client (client.py) call in with bytes and get frames back.

Frame layout (all integers big-endian):

    u32 length of what follows | u8 kind | body

    HELLO        client -> broker  JSON {"version", "pid", "codec", "window"}
    WELCOME      broker -> client  JSON {"next_seq", "post_window", "max_payload", ...}
    POST         client -> broker  u16 length of the unique key (0: none) | key | blob
    EVENT        broker -> client  u64 seq | blob
    UNIQUE       broker -> client  as EVENT, for the one client that handles a unique event
    SKIP         broker -> client  u64 seq (a unique event another worker handles)
    GAP          broker -> client  u64 first seq | u64 last seq (dropped for this client)
    CREDIT       client -> broker  u32 bytes of frames the client has handled
    POST_CREDIT  broker -> client  u32 bytes of POST frames the broker has sequenced
    REFUSED      broker -> client  JSON {"reason"}: the broker closes the connection

A blob is `u8 codec id | encoded [source, event, data, pid]`. The broker never decodes a
blob it forwards (only the ones it makes itself, for the "cqloop.workers" events), so its
cost per event does not depend on the payload, and a pickle blob is only ever unpickled by
a worker of the supervisor that started the poster.

Invariants: a frame's length field covers kind and body; no frame is longer than
`MAX_FRAME_BYTES` (a reader that sees a longer one raises ProtocolError before buffering
it); seq numbers start at 1 and grow by one per sequenced event.
"""

from __future__ import annotations

import enum
import json
import pickle
import struct
from typing import Any

__all__ = [
    "BLOB_OVERHEAD_BYTES",
    "FRAME_HEADER",
    "MAX_FRAME_BYTES",
    "Codec",
    "FrameKind",
    "FrameReader",
    "ProtocolError",
    "decode_blob",
    "encode_blob",
    "frame",
]

PROTOCOL_VERSION = 1

# The hard ceiling of one frame, whatever the configured payload limit (which is smaller):
# a peer that announces more is broken or hostile, and is cut off before we buffer it.
MAX_FRAME_BYTES = 256 * 1024 * 1024

FRAME_HEADER = struct.Struct("!IB")  # length of the rest, kind
SEQ = struct.Struct("!Q")
GAP_RANGE = struct.Struct("!QQ")
CREDIT = struct.Struct("!I")
KEY_LENGTH = struct.Struct("!H")
CODEC_ID = struct.Struct("!B")

# The largest credit one CREDIT frame carries (it is a u32); larger grants are split.
MAX_CREDIT_PER_FRAME = 2**32 - 1
# A unique key is a name, not a payload.
MAX_UNIQUE_KEY_BYTES = 1024
# What framing adds to a blob in an EVENT frame (header, seq): the broker's flow control
# counts whole frames.
BLOB_OVERHEAD_BYTES = FRAME_HEADER.size + SEQ.size


class ProtocolError(Exception):
    """The peer sent something that is not a well-formed frame of this protocol."""


class FrameKind(enum.IntEnum):
    HELLO = 1
    WELCOME = 2
    POST = 3
    EVENT = 4
    SKIP = 5
    GAP = 6
    CREDIT = 7
    POST_CREDIT = 8
    REFUSED = 9
    UNIQUE = 10


class Codec(enum.Enum):
    """How a blob's [source, event, data, pid] is encoded. Pickle runs code on load, so it
    is only accepted between the workers of one supervisor (never by the standalone
    broker, which any process of the same user may reach)."""

    JSON = "json"
    PICKLE = "pickle"

    @property
    def wire_id(self) -> int:
        return _WIRE_IDS[self]


_WIRE_IDS = {Codec.JSON: 1, Codec.PICKLE: 2}
_BY_WIRE_ID = {wire_id: codec for codec, wire_id in _WIRE_IDS.items()}
_JSON_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
# Decoding UTF-8 ourselves skips json.loads' sniffing of the encoding of bytes.
_JSON_DECODE = json.JSONDecoder().decode


def frame(kind: FrameKind, body: bytes = b"") -> bytes:
    return FRAME_HEADER.pack(len(body) + 1, kind) + body


def append_credit(out: list[bytes], kind: FrameKind, amount: int) -> None:
    """Append to `out` the frames of `kind` (CREDIT or POST_CREDIT) that return `amount`
    bytes of credit: one a MAX_CREDIT_PER_FRAME, since a frame's count is 32 bits."""
    while amount:
        chunk = min(amount, MAX_CREDIT_PER_FRAME)
        out.append(frame(kind, CREDIT.pack(chunk)))
        amount -= chunk


def json_frame(kind: FrameKind, value: dict[str, Any]) -> bytes:
    return frame(kind, _JSON_ENCODER.encode(value).encode())


def encode_blob(codec: Codec, source: str, event: str, data: Any, pid: int) -> bytes:
    """The blob of one event; raises TypeError/ValueError when `data` does not encode."""
    if codec is Codec.JSON:
        try:
            text = _JSON_ENCODER.encode([source, event, data, pid])
        except (TypeError, ValueError) as exc:
            raise TypeError(f"event data does not encode as JSON: {exc}") from None
        return b"\x01" + text.encode()
    return b"\x02" + pickle.dumps((source, event, data, pid), protocol=pickle.HIGHEST_PROTOCOL)


def decode_blob(blob: bytes | memoryview, accept: Codec) -> tuple[str, str, Any, int]:
    """(source, event, data, pid) from a blob of codec `accept`; another codec is refused
    (a JSON client never unpickles)."""
    if not blob:
        raise ProtocolError("empty event blob")
    codec = _BY_WIRE_ID.get(blob[0])
    if codec is None:
        raise ProtocolError(f"unknown codec id {blob[0]}")
    if codec is not accept:
        raise ProtocolError(f"a {codec.value} event reached a {accept.value} client")
    body = blob[1:]
    if codec is Codec.JSON:
        source, event, data, pid = _JSON_DECODE(str(body, "utf-8"))
    else:
        source, event, data, pid = pickle.loads(body)
    return source, event, data, pid


def decode_json(body: bytes | memoryview) -> dict[str, Any]:
    try:
        value = json.loads(bytes(body))
    except ValueError as exc:
        raise ProtocolError(f"malformed control frame: {exc}") from None
    if not isinstance(value, dict):
        raise ProtocolError(f"a control frame must hold a JSON object, not {value!r}")
    return value


class FrameReader:
    """Splits a byte stream into (kind, body) frames. feed() returns the complete frames
    the bytes so far hold; a partial frame waits for the next feed(). Bodies are
    memoryviews into an immutable bytes object, valid for as long as the caller keeps them.

    A large frame arrives in many reads: the chunks are kept in a list and joined once the
    frame is complete, not re-concatenated on every read (which would copy a 1 MiB frame
    read in 64 KiB pieces sixteen times over)."""

    __slots__ = ("_chunks", "_chunks_size", "_max_frame", "_need")

    def __init__(self, max_frame: int = MAX_FRAME_BYTES) -> None:
        self._chunks: list[bytes] = []
        self._chunks_size = 0
        self._need = FRAME_HEADER.size  # bytes to hold before parsing is worth trying
        self._max_frame = max_frame

    def buffered(self) -> int:
        return self._chunks_size

    def set_max_frame(self, max_frame: int) -> None:
        """Change the bound (a client learns the broker's from its WELCOME)."""
        self._max_frame = min(max_frame, MAX_FRAME_BYTES)

    def feed(self, data: bytes) -> list[tuple[int, memoryview]]:
        if self._chunks:
            self._chunks.append(bytes(data))
            self._chunks_size += len(data)
            if self._chunks_size < self._need:
                return []
            buffer = b"".join(self._chunks)
            self._chunks.clear()
        else:
            buffer = bytes(data)
        view = memoryview(buffer)
        frames: list[tuple[int, memoryview]] = []
        offset = 0
        end = len(buffer)
        header_size = FRAME_HEADER.size
        need = header_size
        while end - offset >= header_size:
            length, kind = FRAME_HEADER.unpack_from(buffer, offset)
            if length < 1 or length > self._max_frame:
                raise ProtocolError(f"frame length {length} is out of bounds")
            stop = offset + 4 + length
            if stop > end:
                need = 4 + length
                break
            frames.append((kind, view[offset + header_size : stop]))
            offset = stop
        if offset < end:
            self._chunks.append(buffer[offset:])
            self._chunks_size = end - offset
        else:
            self._chunks_size = 0
        self._need = need
        return frames
