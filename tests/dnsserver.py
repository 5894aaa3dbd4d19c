"""A small authoritative DNS server for tests: UDP and TCP on 127.0.0.1, an ephemeral port.

    from tests.dnsserver import DNSServer

    with DNSServer() as server:
        server.add("www.example.test", "A", "192.0.2.10")
        server.add("www.example.test", "AAAA", "2001:db8::10")
        resolver = cqloop.dns.Resolver(servers=[server.nameserver], timeout=0.2, tries=1)
        ...
        assert server.count("www.example.test", "A") == 1

Owns: a UDP socket bound to 127.0.0.1 on an ephemeral port, a TCP listener on the same port
(RFC 1035 4.2.2: two-byte length before each message), and one thread that answers both from a
records table. The wire format is written here by hand from RFC 1035 (no DNS library): the
tests check cqloop.dns against an independent encoder, not against a copy of what they test.

What it answers:
- A name with records: NOERROR (authoritative) with the records of the asked type, after any
  CNAME of the name (followed through the table); none of that type is an empty NOERROR
  answer (NODATA).
- A name with no records at all: NXDOMAIN.
- A name given `set_rcode(name, Rcode.SERVFAIL)` (or REFUSED, FORMERR, ...): that rcode.
- `server.silent = True`: nothing at all (queries are still counted): the timeout case;
  `server.mute(name)` / `unmute(name)` for one name.
- `server.truncate(name)`: over UDP, an empty answer with the TC bit set, which sends the
  client to TCP, where the full answer is given.
Every query is logged (`queries`, `count()`, `wait_for_queries()`) before it is answered, so
a test that got its answer can count at once; a test waiting on a silent server uses
`wait_for_queries`, a bounded wait on a condition, never a sleep.

Record values by type: A/AAAA an address string; CNAME/NS/PTR a name; MX (preference,
exchange); SRV (priority, weight, port, target); TXT bytes, str, or a tuple of them (one
character-string each, split at 255 bytes); SOA (mname, rname, serial, refresh, retry, expire,
minimum); CAA (flags, tag, value); NAPTR (order, preference, flags, services, regexp,
replacement).

Names compare case-insensitively, without a trailing dot; the question is echoed as received.
Responses carry no name compression (allowed, and simpler to check). Who uses it: the tests of
cqloop.dns (tests/test_cq_dns.py) and of cq socket connect.
"""

from __future__ import annotations

import enum
import ipaddress
import select
import socket
import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

__all__ = ["TYPE_CODES", "DNSServer", "Query", "Rcode"]

# RFC 1035 4.1.1 header flag bits.
_FLAG_QR = 0x8000
_FLAG_AA = 0x0400
_FLAG_TC = 0x0200
_FLAG_RD = 0x0100
_FLAG_RA = 0x0080
_OPCODE_MASK = 0x7800
_HEADER = struct.Struct("!HHHHHH")
_QUESTION_TAIL = struct.Struct("!HH")
_RR_TAIL = struct.Struct("!HHIH")
_TCP_LENGTH = struct.Struct("!H")
_TCP_BACKLOG = 8
# Tries at finding a port free for both UDP and TCP.
_PORT_TRIES = 50
_CLASS_IN = 1
_MAX_LABEL_BYTES = 63
_MAX_CHARSTRING_BYTES = 255
# Large enough for any query (c-ares adds an EDNS OPT record).
_MAX_DATAGRAM_BYTES = 65535
# How long server.close() waits for its thread, which only needs to see the stop byte.
_JOIN_TIMEOUT_S = 10.0

TYPE_CODES = {
    "A": 1,
    "NS": 2,
    "CNAME": 5,
    "SOA": 6,
    "PTR": 12,
    "MX": 15,
    "TXT": 16,
    "AAAA": 28,
    "SRV": 33,
    "NAPTR": 35,
    "CAA": 257,
}
_TYPE_NAMES = {code: name for name, code in TYPE_CODES.items()}


class Rcode(enum.IntEnum):
    """Response codes (RFC 1035 4.1.1)."""

    NOERROR = 0
    FORMERR = 1
    SERVFAIL = 2
    NXDOMAIN = 3
    NOTIMP = 4
    REFUSED = 5


@dataclass(frozen=True)
class Query:
    """One query as received: the name as sent (case kept), the type's name, and "udp" or
    "tcp"."""

    name: str
    type: str
    transport: str = "udp"


@dataclass(frozen=True)
class _Record:
    type: str
    value: Any
    ttl: int


def _norm(name: str) -> str:
    return name.rstrip(".").lower()


# --- encoding -------------------------------------------------------------------------------


def _encode_name(name: str) -> bytes:
    out = bytearray()
    for label in name.rstrip(".").split("."):
        if not label:
            continue
        raw = label.encode("ascii")
        if len(raw) > _MAX_LABEL_BYTES:
            raise ValueError(f"DNS label too long: {label!r}")
        out.append(len(raw))
        out += raw
    out.append(0)
    return bytes(out)


def _charstrings(value: bytes | str | tuple[bytes | str, ...]) -> bytes:
    parts = value if isinstance(value, tuple) else (value,)
    out = bytearray()
    for part in parts:
        raw = part.encode() if isinstance(part, str) else bytes(part)
        chunks = [
            raw[i : i + _MAX_CHARSTRING_BYTES] for i in range(0, len(raw), _MAX_CHARSTRING_BYTES)
        ] or [b""]
        for chunk in chunks:
            out.append(len(chunk))
            out += chunk
    return bytes(out)


def _charstring(value: str) -> bytes:
    raw = value.encode()
    if len(raw) > _MAX_CHARSTRING_BYTES:
        raise ValueError(f"character-string too long: {value!r}")
    return bytes([len(raw)]) + raw


def _encode_rdata(rtype: str, value: Any) -> bytes:
    if rtype == "A":
        return ipaddress.IPv4Address(value).packed
    if rtype == "AAAA":
        return ipaddress.IPv6Address(value).packed
    if rtype in ("CNAME", "NS", "PTR"):
        return _encode_name(value)
    if rtype == "MX":
        preference, exchange = value
        return struct.pack("!H", preference) + _encode_name(exchange)
    if rtype == "TXT":
        return _charstrings(value)
    if rtype == "SRV":
        priority, weight, port, target = value
        return struct.pack("!HHH", priority, weight, port) + _encode_name(target)
    if rtype == "SOA":
        mname, rname, *numbers = value
        return _encode_name(mname) + _encode_name(rname) + struct.pack("!IIIII", *numbers)
    if rtype == "CAA":
        flags, tag, text = value
        raw_tag = tag.encode("ascii")
        return bytes([flags, len(raw_tag)]) + raw_tag + text.encode()
    if rtype == "NAPTR":
        order, preference, flags, services, regexp, replacement = value
        return (
            struct.pack("!HH", order, preference)
            + _charstring(flags)
            + _charstring(services)
            + _charstring(regexp)
            + _encode_name(replacement)
        )
    raise ValueError(f"the test DNS server cannot encode {rtype} records")


def _encode_rr(name: str, record: _Record) -> bytes:
    rdata = _encode_rdata(record.type, record.value)
    tail = _RR_TAIL.pack(TYPE_CODES[record.type], _CLASS_IN, record.ttl, len(rdata))
    return _encode_name(name) + tail + rdata


# --- decoding -------------------------------------------------------------------------------


def _decode_question(packet: bytes) -> tuple[int, int, str, int, int, int]:
    """(id, flags, name, qtype, qclass, end offset of the question) of a query."""
    qid, flags, qdcount, _an, _ns, _ar = _HEADER.unpack_from(packet, 0)
    if qdcount != 1:
        raise ValueError(f"expected one question, got {qdcount}")
    offset = _HEADER.size
    labels = []
    while True:
        length = packet[offset]
        offset += 1
        if length == 0:
            break
        if length > _MAX_LABEL_BYTES:  # a compression pointer has no place in a question
            raise ValueError("bad label in question")
        # latin-1 maps every byte: a name c-ares sends must be counted and answered whatever
        # its bytes.
        labels.append(packet[offset : offset + length].decode("latin-1"))
        offset += length
    qtype, qclass = _QUESTION_TAIL.unpack_from(packet, offset)
    return qid, flags, ".".join(labels), qtype, qclass, offset + _QUESTION_TAIL.size


# --- the server -----------------------------------------------------------------------------


def _bind_udp_and_tcp(host: str) -> tuple[socket.socket, socket.socket]:
    """A UDP socket and a listening TCP socket on one ephemeral port of host (a client asks
    a server over TCP on the port it used for UDP)."""
    for _ in range(_PORT_TRIES):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            udp.bind((host, 0))
            tcp.bind((host, udp.getsockname()[1]))
            tcp.listen(_TCP_BACKLOG)
        except OSError:
            udp.close()
            tcp.close()
            continue  # that port is taken for TCP: another one
        except BaseException:
            udp.close()
            tcp.close()
            raise
        return udp, tcp
    raise OSError(f"no port on {host} free for both UDP and TCP in {_PORT_TRIES} tries")


class DNSServer:
    """The server; a context manager (start on enter, stop and close on exit)."""

    def __init__(
        self, records: Iterable[tuple[str, str, Any]] = (), *, host: str = "127.0.0.1"
    ) -> None:
        self._lock = threading.Condition()
        self._records: dict[str, list[_Record]] = {}
        self._rcodes: dict[str, Rcode] = {}
        self._muted: set[str] = set()
        self._truncated: set[str] = set()
        self._tcp_clients: dict[socket.socket, bytearray] = {}
        self._queries: list[Query] = []
        self.silent = False
        for name, rtype, value in records:
            self.add(name, rtype, value)
        self._sock, self._listener = _bind_udp_and_tcp(host)
        try:
            self._stop_r, self._stop_w = socket.socketpair()
        except BaseException:
            self._sock.close()
            self._listener.close()
            raise
        self.address: tuple[str, int] = self._sock.getsockname()
        self._thread = threading.Thread(target=self._serve, name="test-dns-server", daemon=True)
        self._thread.start()

    @property
    def host(self) -> str:
        return self.address[0]

    @property
    def port(self) -> int:
        return self.address[1]

    @property
    def nameserver(self) -> str:
        """The server as c-ares (and cqloop.dns.Resolver(servers=...)) writes it: "ip:port"."""
        return f"{self.host}:{self.port}"

    # -- the records table

    def add(self, name: str, rtype: str, value: Any, *, ttl: int = 0) -> None:
        """Serve one more record. ttl defaults to 0 so that no client caches it."""
        if rtype not in TYPE_CODES:
            raise ValueError(f"unknown record type {rtype!r}")
        _encode_rdata(rtype, value)  # refuse a bad value here, not in the server thread
        with self._lock:
            self._records.setdefault(_norm(name), []).append(_Record(rtype, value, ttl))

    def remove(self, name: str) -> None:
        """Forget every record of name: it answers NXDOMAIN from now on."""
        with self._lock:
            self._records.pop(_norm(name), None)

    def set_rcode(self, name: str, rcode: Rcode) -> None:
        """Answer every query for name with rcode and no records."""
        with self._lock:
            self._rcodes[_norm(name)] = rcode

    def mute(self, name: str) -> None:
        """Never answer queries for name (they are still logged)."""
        with self._lock:
            self._muted.add(_norm(name))

    def unmute(self, name: str) -> None:
        with self._lock:
            self._muted.discard(_norm(name))

    def truncate(self, name: str) -> None:
        """Answer name over UDP truncated (TC, no records): the client must ask over TCP."""
        with self._lock:
            self._truncated.add(_norm(name))

    # -- the query log

    @property
    def queries(self) -> list[Query]:
        with self._lock:
            return list(self._queries)

    def count(
        self, name: str | None = None, rtype: str | None = None, transport: str | None = None
    ) -> int:
        """How many queries arrived, for name, type and/or transport when given."""
        with self._lock:
            return sum(
                1
                for q in self._queries
                if (name is None or _norm(q.name) == _norm(name))
                and (rtype is None or q.type == rtype)
                and (transport is None or q.transport == transport)
            )

    def wait_for_queries(self, n: int, timeout: float) -> bool:
        """Block until at least n queries arrived in all (or timeout seconds pass)."""
        with self._lock:
            return self._lock.wait_for(lambda: len(self._queries) >= n, timeout)

    # -- lifecycle

    def close(self) -> None:
        if self._sock.fileno() < 0:
            return
        self._stop_w.send(b"x")
        self._thread.join(_JOIN_TIMEOUT_S)
        for client in self._tcp_clients:
            client.close()
        self._tcp_clients.clear()
        self._sock.close()
        self._listener.close()
        self._stop_r.close()
        self._stop_w.close()

    def __enter__(self) -> DNSServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the thread

    def _serve(self) -> None:
        while True:
            watched = [self._sock, self._listener, self._stop_r, *self._tcp_clients]
            readable, _, _ = select.select(watched, [], [])
            if self._stop_r in readable:
                return
            for sock in readable:
                if sock is self._sock:
                    self._serve_udp()
                elif sock is self._listener:
                    client, _ = self._listener.accept()
                    self._tcp_clients[client] = bytearray()
                else:
                    self._serve_tcp(sock)

    def _serve_udp(self) -> None:
        try:
            packet, peer = self._sock.recvfrom(_MAX_DATAGRAM_BYTES)
        except OSError:
            return  # an error queued on the socket: the server carries on
        try:
            reply = self._answer(packet, "udp")
        except (ValueError, IndexError, struct.error):
            return  # not a query we understand: drop it, as a server may
        if reply is not None:
            try:
                self._sock.sendto(reply, peer)
            except OSError:
                pass  # the client went away; a UDP server does not care

    def _serve_tcp(self, client: socket.socket) -> None:
        try:
            data = client.recv(_MAX_DATAGRAM_BYTES)
        except OSError:
            data = b""
        if not data:
            del self._tcp_clients[client]
            client.close()
            return
        buffer = self._tcp_clients[client]
        buffer += data
        while len(buffer) >= _TCP_LENGTH.size:
            (length,) = _TCP_LENGTH.unpack_from(buffer)
            if len(buffer) < _TCP_LENGTH.size + length:
                break
            packet = bytes(buffer[_TCP_LENGTH.size : _TCP_LENGTH.size + length])
            del buffer[: _TCP_LENGTH.size + length]
            try:
                reply = self._answer(packet, "tcp")
            except (ValueError, IndexError, struct.error):
                continue
            if reply is not None:
                try:
                    client.sendall(_TCP_LENGTH.pack(len(reply)) + reply)
                except OSError:
                    pass  # the client went away; its close shows up as a read

    def _answer(self, packet: bytes, transport: str) -> bytes | None:
        qid, qflags, name, qtype, qclass, end = _decode_question(packet)
        type_name = _TYPE_NAMES.get(qtype, str(qtype))
        with self._lock:
            self._queries.append(Query(name, type_name, transport))
            self._lock.notify_all()
            if self.silent or _norm(name) in self._muted:
                return None
            if transport == "udp" and _norm(name) in self._truncated:
                rcode, answers, truncated = Rcode.NOERROR, [], _FLAG_TC
            else:
                (rcode, answers), truncated = self._lookup(name, type_name), 0
        flags = _FLAG_QR | _FLAG_AA | _FLAG_RA | (qflags & (_OPCODE_MASK | _FLAG_RD)) | rcode
        flags |= truncated
        header = _HEADER.pack(qid, flags, 1, len(answers), 0, 0)
        question = packet[_HEADER.size : end]
        del qclass  # echoed as received, inside `question`
        return header + question + b"".join(answers)

    def _lookup(self, name: str, type_name: str) -> tuple[int, list[bytes]]:
        """(rcode, encoded answer RRs); the lock is held."""
        key = _norm(name)
        if key in self._rcodes:
            return self._rcodes[key], []
        if key not in self._records:
            return Rcode.NXDOMAIN, []
        answers: list[bytes] = []
        owner = name
        seen = set()
        while key in self._records and key not in seen:
            seen.add(key)
            records = self._records[key]
            matching = [r for r in records if r.type == type_name]
            cnames = [r for r in records if r.type == "CNAME"]
            if matching or not cnames or type_name == "CNAME":
                answers += [_encode_rr(owner, r) for r in matching]
                break
            answers.append(_encode_rr(owner, cnames[0]))
            owner = cnames[0].value
            key = _norm(owner)
        return Rcode.NOERROR, answers
