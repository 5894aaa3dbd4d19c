"""cqloop._dnsrecords: what a DNS answer becomes in cqloop.dns: the typed records (`A`,
`AAAA`, `CNAME`, `MX`, `NS`, `PTR`, `SOA`, `SRV`, `TXT`, `CAA`, `NAPTR`) and `HostAddress`,
the `DNSError` hierarchy with the c-ares status each error stands for, and the conversion of
pycares results into records and host addresses. cqloop.dns re-exports the public names
(users import them from there); it alone calls the functions here, on its loop's thread.

One table (`_RECORD_TYPES`) says, for each query type, its c-ares code, its record class and
the pycares fields that fill the class's fields in order; `QUERY_TYPES` and the conversion
are read from it, so a new record type is one class and one row.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeAlias

try:
    import pycares
except ImportError as exc:  # pragma: no cover - pycares is a dependency
    raise ImportError("cqloop.dns needs pycares 5: pip install 'pycares>=5'") from exc

if int(pycares.__version__.split(".")[0]) < 5:  # pragma: no cover
    raise ImportError(f"cqloop.dns needs pycares 5 or later; this is pycares {pycares.__version__}")

# --- typed records --------------------------------------------------------------------------
# Frozen and slotted; every record carries the ttl (seconds) of the answer it came from.
# Names are returned as c-ares gives them: absolute, without the trailing dot.


@dataclass(frozen=True, slots=True)
class A:
    address: str
    ttl: int = 0


@dataclass(frozen=True, slots=True)
class AAAA:
    address: str
    ttl: int = 0


@dataclass(frozen=True, slots=True)
class CNAME:
    target: str
    ttl: int = 0


@dataclass(frozen=True, slots=True)
class MX:
    priority: int
    exchange: str
    ttl: int = 0


@dataclass(frozen=True, slots=True)
class NS:
    host: str
    ttl: int = 0


@dataclass(frozen=True, slots=True)
class PTR:
    name: str
    ttl: int = 0


@dataclass(frozen=True, slots=True)
class SOA:
    mname: str
    rname: str
    serial: int
    refresh: int
    retry: int
    expire: int
    minimum: int
    ttl: int = 0


@dataclass(frozen=True, slots=True)
class SRV:
    priority: int
    weight: int
    port: int
    target: str
    ttl: int = 0


@dataclass(frozen=True, slots=True)
class TXT:
    """A TXT record's text: bytes, because TXT data is arbitrary octets (RFC 1035 3.3.14);
    the record's character-strings are concatenated, which is how SPF (RFC 7208 3.3) and
    DKIM read them. `record.text.decode()` for the usual ASCII/UTF-8 content."""

    text: bytes
    ttl: int = 0


@dataclass(frozen=True, slots=True)
class CAA:
    flags: int
    tag: str
    value: str
    ttl: int = 0


@dataclass(frozen=True, slots=True)
class NAPTR:
    order: int
    preference: int
    flags: str
    service: str
    regexp: str
    replacement: str
    ttl: int = 0


Record: TypeAlias = A | AAAA | CNAME | MX | NS | PTR | SOA | SRV | TXT | CAA | NAPTR


class HostAddress(NamedTuple):
    """One address of a host, ready for socket(family).connect(sockaddr)."""

    family: socket.AddressFamily
    sockaddr: tuple[Any, ...]


# Each query type: c-ares' code, the record class, and the pycares fields (in the class's
# field order, before ttl). TXT's one field is read apart: see _record.
_RECORD_TYPES: dict[str, tuple[int, type[Any], tuple[str, ...]]] = {
    "A": (pycares.QUERY_TYPE_A, A, ("addr",)),
    "AAAA": (pycares.QUERY_TYPE_AAAA, AAAA, ("addr",)),
    "CNAME": (pycares.QUERY_TYPE_CNAME, CNAME, ("cname",)),
    "MX": (pycares.QUERY_TYPE_MX, MX, ("priority", "exchange")),
    "NS": (pycares.QUERY_TYPE_NS, NS, ("nsdname",)),
    "PTR": (pycares.QUERY_TYPE_PTR, PTR, ("dname",)),
    "SOA": (
        pycares.QUERY_TYPE_SOA,
        SOA,
        ("mname", "rname", "serial", "refresh", "retry", "expire", "minimum"),
    ),
    "SRV": (pycares.QUERY_TYPE_SRV, SRV, ("priority", "weight", "port", "target")),
    "TXT": (pycares.QUERY_TYPE_TXT, TXT, ("data",)),
    "CAA": (pycares.QUERY_TYPE_CAA, CAA, ("critical", "tag", "value")),
    "NAPTR": (
        pycares.QUERY_TYPE_NAPTR,
        NAPTR,
        ("order", "preference", "flags", "service", "regexp", "replacement"),
    ),
}
QUERY_TYPES: dict[str, int] = {name: code for name, (code, _, _) in _RECORD_TYPES.items()}
_RECORD_FOR_CODE: dict[int, tuple[type[Any], tuple[str, ...]]] = {
    code: (cls, fields) for code, cls, fields in _RECORD_TYPES.values()
}


# --- errors ---------------------------------------------------------------------------------


class DNSError(socket.gaierror):
    """A DNS query or host lookup failed.

    An OSError, and a socket.gaierror (with a getaddrinfo EAI_* errno), so code written for
    asyncio's resolution failures catches these too. Attributes: `name` and `qtype` (what was
    asked: "A", "MX", ... or "A/AAAA" for a host lookup) and `status` (c-ares' status code, or
    None)."""

    eai_errno: int = socket.EAI_FAIL
    name: str | None = None
    qtype: str | None = None
    status: int | None = None


class NameNotFound(DNSError):
    """The name does not exist (NXDOMAIN; for a host lookup, not in DNS nor the hosts file)."""

    eai_errno = socket.EAI_NONAME


class NoData(DNSError):
    """The name exists but has no address of the asked family. (query() returns [] for a
    name without records of the asked type instead of raising this.)"""

    eai_errno = socket.EAI_NODATA


class DNSTimeoutError(DNSError, TimeoutError):
    """No server answered in the resolver's timeout and tries."""

    eai_errno = socket.EAI_AGAIN


class ServerFailure(DNSError):
    """The server answered SERVFAIL."""

    eai_errno = socket.EAI_AGAIN


class Refused(DNSError):
    """The server refused the query (REFUSED)."""


class ServerUnreachable(DNSError):
    """No server could be contacted (connection refused, no route, ...)."""

    eai_errno = socket.EAI_AGAIN


class BadQuery(DNSError):
    """The query is malformed (bad name, bad type for the family), or the server said so
    (FORMERR, NOTIMP)."""

    eai_errno = socket.EAI_NONAME


_ERROR_FOR_STATUS: dict[int, tuple[type[DNSError], str]] = {
    pycares.errno.ARES_ENOTFOUND: (NameNotFound, "name not found (NXDOMAIN)"),
    pycares.errno.ARES_ENONAME: (NameNotFound, "name not found"),
    pycares.errno.ARES_ENODATA: (NoData, "no records of that type"),
    pycares.errno.ARES_ETIMEOUT: (DNSTimeoutError, "timed out"),
    pycares.errno.ARES_ESERVFAIL: (ServerFailure, "server failure (SERVFAIL)"),
    pycares.errno.ARES_EREFUSED: (Refused, "query refused (REFUSED)"),
    pycares.errno.ARES_ECONNREFUSED: (ServerUnreachable, "could not contact the DNS servers"),
    pycares.errno.ARES_EFORMERR: (BadQuery, "the server could not parse the query (FORMERR)"),
    pycares.errno.ARES_ENOTIMP: (BadQuery, "the server does not do this query (NOTIMP)"),
    pycares.errno.ARES_EBADNAME: (BadQuery, "bad name"),
    pycares.errno.ARES_EBADQUERY: (BadQuery, "bad query"),
    pycares.errno.ARES_EBADFAMILY: (BadQuery, "bad address family"),
    pycares.errno.ARES_EBADFLAGS: (BadQuery, "bad flags"),
    pycares.errno.ARES_EBADHINTS: (BadQuery, "bad hints"),
    pycares.errno.ARES_EBADSTR: (BadQuery, "bad string"),
    pycares.errno.ARES_EBADRESP: (DNSError, "malformed response"),
    pycares.errno.ARES_ECANCELLED: (DNSError, "cancelled: the resolver was closed"),
    pycares.errno.ARES_EDESTRUCTION: (DNSError, "cancelled: the resolver was closed"),
}


def error(
    cls: type[DNSError], reason: str, name: str, qtype: str, status: int | None = None
) -> DNSError:
    exc = cls(cls.eai_errno, f"DNS lookup of {name!r} ({qtype}) failed: {reason}")
    exc.name, exc.qtype, exc.status = name, qtype, status
    return exc


def error_for_status(status: int, name: str, qtype: str) -> DNSError:
    cls, reason = _ERROR_FOR_STATUS.get(
        status, (DNSError, text(pycares.errno.strerror(status)) or f"c-ares status {status}")
    )
    return error(cls, reason, name, qtype, status)


# --- converting pycares results -------------------------------------------------------------


def text(value: str | bytes) -> str:
    # pycares hands out str when a field is ASCII, bytes otherwise.
    return value if isinstance(value, str) else value.decode("utf-8", "backslashreplace")


def _field(value: Any) -> Any:
    return value if isinstance(value, int) else text(value)


def _record(rtype: int, ttl: int, data: Any) -> Record:
    cls, fields = _RECORD_FOR_CODE[rtype]
    if cls is TXT:
        # TXT data stays bytes (see TXT); every other text field is a name or ASCII.
        return TXT(bytes(data.data), ttl)
    return cls(*[_field(getattr(data, f)) for f in fields], ttl)


def records(result: Any, rtype: int) -> list[Record]:
    """The records of type rtype in a pycares query result. The answer section may start
    with the CNAME chain that led to the records asked for; only the asked type is returned
    (a CNAME query asks for the chain itself)."""
    return [_record(rtype, rr.ttl, rr.data) for rr in result.answer if rr.type == rtype]


def host_addresses(result: Any) -> list[HostAddress]:
    """The addresses of a pycares getaddrinfo result, without repeats, in c-ares' order."""
    seen: set[HostAddress] = set()
    out: list[HostAddress] = []
    for node in result.nodes:
        ip, *rest = node.addr
        entry = HostAddress(socket.AddressFamily(node.family), (text(ip), *rest))
        if entry not in seen:
            seen.add(entry)
            out.append(entry)
    return out
