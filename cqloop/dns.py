"""cqloop.dns: DNS queries and host name resolution on c-ares, for any asyncio loop.

    from cqloop import dns
    for mx in await dns.query("example.org", "MX"):
        print(mx.priority, mx.exchange, mx.ttl)
    addrs = await dns.resolve_host("example.org", 443)  # [(AF_INET6, (ip, 443, 0, 0)), ...]
    async with dns.Resolver(servers=["192.0.2.53"], timeout=0.5, tries=2) as r:
        await r.query("_imap._tcp.example.org", "SRV")

Owns: `Resolver` (options, and one c-ares channel per running loop it is used on) and the
module functions `query` and `resolve_host` on a default resolver configured from
/etc/resolv.conf. The typed records (`A`, `AAAA`, `CNAME`, `MX`, `NS`, `PTR`, `SOA`, `SRV`,
`TXT`, `CAA`, `NAPTR`), `HostAddress` and the `DNSError` hierarchy live in
cqloop/_dnsrecords.py with the conversion of pycares results; they are imported from here.
Who calls in: application code, and cqloop.socket's connect (through `resolve_host`), on
the threads that run their loops.

How it runs c-ares: pycares (the c-ares binding aiodns is built on) in its socket-state-
callback mode, driven by the loop itself, not by aiodns.DNSResolver. aiodns 4 on pycares 5
always takes c-ares' "event thread" mode: a native thread per channel with its own epoll
fd, eventfd and inotify watch, torn down asynchronously by a pycares background thread after
close() returns (measured: 4 fds still open after `await resolver.close()`, gone some
milliseconds later), which no caller can wait for. In socket-state-callback mode c-ares tells
us which sockets to watch; we watch them with loop.add_reader/add_writer (cqloop, stock
asyncio and uvloop alike) and run c-ares' timeouts on one loop timer. The invariants:
- No threads, and no fd while idle: c-ares opens its UDP (or TCP) sockets for a query and,
  without ARES_FLAG_STAYOPEN, closes them as soon as no query needs them, from inside our
  process_fd calls (so on the loop's thread, before the awaiting caller resumes).
- One channel per (Resolver, loop), held in a WeakKeyDictionary keyed by the loop and
  holding the loop only weakly, so a resolver never keeps a dead loop alive; an idle channel
  holds memory only.
- A query whose caller is cancelled is abandoned: its late answer is dropped. c-ares can
  only cancel a channel's queries all at once, so once every query in flight on a channel is
  abandoned, the channel is cancelled, which closes its sockets at once; while some caller
  still waits, the abandoned queries finish (or time out) with it.
- A timer is armed exactly while a query is in flight, at c-ares' next deadline.

Answers are cached by c-ares per channel up to their TTL (its query cache, on by default).

Who may call: code running on a loop (a Resolver shared by loops on several threads is
safe: one channel each); close() on the thread that runs those loops (from a coroutine
too, as `async with` does), or after they stopped.
"""

from __future__ import annotations

import asyncio
import atexit
import ipaddress
import os
import socket
import threading
import weakref
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

# _dnsrecords is imported first: its import of pycares fails with a clear error when pycares
# is missing or too old.
from cqloop._dnsrecords import (
    AAAA,
    CAA,
    CNAME,
    MX,
    NAPTR,
    NS,
    PTR,
    QUERY_TYPES,
    SOA,
    SRV,
    TXT,
    A,
    BadQuery,
    DNSError,
    DNSTimeoutError,
    HostAddress,
    NameNotFound,
    NoData,
    Record,
    Refused,
    ServerFailure,
    ServerUnreachable,
    error,
    error_for_status,
    host_addresses,
    records,
)
from cqloop._netargs import MAX_PORT, type_name
from cqloop._netargs import port_number as _port_number

import pycares  # isort: skip

__all__ = [
    "AAAA",
    "CAA",
    "CNAME",
    "MX",
    "NAPTR",
    "NS",
    "PTR",
    "QUERY_TYPES",
    "SOA",
    "SRV",
    "TXT",
    "A",
    "BadQuery",
    "DNSError",
    "DNSTimeoutError",
    "HostAddress",
    "NameNotFound",
    "NoData",
    "Record",
    "Refused",
    "Resolver",
    "ServerFailure",
    "ServerUnreachable",
    "default_resolver",
    "query",
    "resolve_host",
]

# --- constants ------------------------------------------------------------------------------

# ares.h: "#define ARES_AI_ENVHOSTS (1 << 8)": getaddrinfo reads the hosts file named by the
# CARES_HOSTS environment variable. pycares does not export it. Passed only while CARES_HOSTS
# is set: c-ares 1.34 with the flag and no variable fails the lookup with ARES_ECONNREFUSED
# before asking anyone (measured).
ARES_AI_ENVHOSTS = 1 << 8
HOSTS_ENV_VAR = "CARES_HOSTS"

# The longest the channel timer sleeps before asking c-ares again for its next deadline.
MAX_TIMER_INTERVAL_S = 1.0

_SOCKET_BAD = pycares.ARES_SOCKET_BAD

_QTYPE_FOR_FAMILY: dict[int, str] = {socket.AF_INET: "A", socket.AF_INET6: "AAAA"}


def _numeric_host(host: str, port: int, family: int) -> list[HostAddress] | None:
    """The addresses of a numeric host (IPv4 in any inet_aton form, IPv6 with a scope id
    by name or number), or None when host is a name. The C library parses it: with
    AI_NUMERICHOST it never consults DNS, the hosts file or NSS."""
    try:
        infos = socket.getaddrinfo(
            host,
            port,
            socket.AF_UNSPEC,
            socket.SOCK_STREAM,
            0,
            socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
        )
    except (socket.gaierror, UnicodeError):
        return None
    found = [HostAddress(fam, addr) for fam, _t, _p, _c, addr in infos]
    wanted = [a for a in found if family == socket.AF_UNSPEC or a.family == family]
    if not wanted:
        raise error(
            BadQuery,
            f"a numeric address of another family than {socket.AddressFamily(family).name}",
            host,
            _family_qtype(family),
        )
    return wanted


def _family_qtype(family: int) -> str:
    return _QTYPE_FOR_FAMILY.get(family, "A/AAAA")


def _server_string(server: str | tuple[str, int]) -> str:
    """A server as c-ares wants it ("ip", "ip:port", "[ipv6]:port"), checked here so that a
    typo fails in Resolver() with a message, not later inside c-ares."""
    if isinstance(server, tuple):
        host, port = server
    elif server.startswith("["):
        host, _, port_text = server[1:].partition("]")
        port = int(port_text.removeprefix(":")) if port_text else 0
    elif server.count(":") == 1:
        host, port_text = server.split(":")
        port = int(port_text)
    else:
        host, port = server, 0
    ip = ipaddress.ip_address(host)
    if not 0 <= port <= MAX_PORT:
        raise ValueError(f"bad DNS server port in {server!r}")
    if not port:
        return str(ip)
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


# --- one c-ares channel on one loop ---------------------------------------------------------


def _watch(
    fd: int,
    wanted: bool,
    watched: set[int],
    add: Callable[..., Any],
    remove: Callable[[int], Any],
    callback: Callable[[int], None],
) -> None:
    """Make the loop's watch of fd in one direction (add/remove: add_reader/remove_reader or
    the writer pair) what c-ares wants; `watched` holds the fds watched in that direction."""
    if wanted and fd not in watched:
        add(fd, callback, fd)
        watched.add(fd)
    elif not wanted and fd in watched:
        remove(fd)
        watched.discard(fd)


class _Query:
    __slots__ = ("finish", "fired", "future", "name", "nodata_is_empty", "qtype")

    def __init__(
        self,
        future: asyncio.Future[Any],
        name: str,
        qtype: str,
        finish: Callable[[Any], Any],
        nodata_is_empty: bool,
    ) -> None:
        self.future = future
        self.name = name
        self.qtype = qtype
        self.finish = finish
        # query() answers NODATA with []; a host lookup raises NoData.
        self.nodata_is_empty = nodata_is_empty
        self.fired = False


# pycares channels not closed by the time the interpreter exits (a resolver dropped with
# its loop still alive, say) are closed by an atexit hook, while pycares' module is still
# whole: left to the final garbage collection, each Channel.__del__ would print an
# AttributeError about pycares' globals, already torn down.
_unclosed_channels: weakref.WeakSet[pycares.Channel] = weakref.WeakSet()


@atexit.register
def _close_unclosed_channels() -> None:
    for channel in list(_unclosed_channels):
        channel.close()


class _Channel:
    """A pycares channel in socket-state-callback mode, driven by one loop."""

    def __init__(self, owner: Resolver, loop: asyncio.AbstractEventLoop) -> None:
        self._owner = owner
        self._loop_ref = weakref.ref(loop)
        self._readers: set[int] = set()
        self._writers: set[int] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._live: set[_Query] = set()
        self._closed = False
        # c-ares holds the state callback for the channel's life; through a weak reference
        # it keeps no cycle, and a call after we are gone (pycares destroys channels on a
        # background thread) does nothing.
        weak_self = weakref.ref(self)

        def on_sock_state(fd: int, readable: bool, writable: bool) -> None:
            this = weak_self()
            if this is not None:
                this._on_sock_state(fd, readable, writable)

        self._channel = pycares.Channel(sock_state_cb=on_sock_state, **owner._options)
        _unclosed_channels.add(self._channel)

    @property
    def pending(self) -> int:
        return len(self._live)

    def submit(
        self,
        name: str,
        qtype: str,
        finish: Callable[[Any], Any],
        start: Callable[[Callable[[Any, int | None], None]], None],
        nodata_is_empty: bool,
    ) -> asyncio.Future[Any]:
        """Start one c-ares request; the future gets finish(result) or a DNSError."""
        loop = self._loop_ref()
        assert loop is not None
        q = _Query(loop.create_future(), name, qtype, finish, nodata_is_empty)
        self._live.add(q)
        try:
            start(lambda result, status: self._on_answer(q, result, status))
        except pycares.AresError as exc:
            self._live.discard(q)
            if not q.fired:
                status = exc.args[0] if exc.args else pycares.errno.ARES_EBADQUERY
                q.future.set_exception(error_for_status(status, name, qtype))
        except (UnicodeError, ValueError, TypeError) as exc:
            self._live.discard(q)
            if not q.fired:  # a name pycares cannot encode, or with a NUL byte
                q.future.set_exception(error(BadQuery, f"bad name ({exc})", name, qtype))
        q.future.add_done_callback(lambda _fut: self._on_future_done(q))
        self._arm_timer()
        return q.future

    def close(self) -> None:
        """Fail the queries in flight, unregister everything, destroy the channel."""
        if self._closed:
            return
        # Cancel first, while still open: c-ares fails each query (our _on_answer) and
        # closes its sockets, reporting each through _on_sock_state.
        self._channel.cancel()
        self._closed = True
        loop = self._loop_ref()
        if loop is not None and not loop.is_closed():
            for fd in self._readers:
                loop.remove_reader(fd)
            for fd in self._writers:
                loop.remove_writer(fd)
        self._readers.clear()
        self._writers.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._channel.close()

    # -- private

    def _arm_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._live and not self._closed:
            loop = self._loop_ref()
            if loop is not None and not loop.is_closed():
                delay = self._channel.timeout(MAX_TIMER_INTERVAL_S)
                self._timer = loop.call_later(delay, self._on_timer)

    def _maybe_cancel_abandoned(self) -> None:
        # c-ares cancels per channel only: do it once no caller waits for any query.
        if not self._closed and self._live and all(q.future.done() for q in self._live):
            self._channel.cancel()
            self._arm_timer()

    # -- callbacks: from c-ares (inside process_fd, submit or cancel) and from the loop

    def _on_answer(self, q: _Query, result: Any, status: int | None) -> None:
        # Called by pycares from C: it must not raise.
        q.fired = True
        self._live.discard(q)
        if q.future.done():
            self._owner._abandoned += 1
            return
        loop = self._loop_ref()
        if loop is None or loop.is_closed():
            return  # close() after the loop closed: nobody can await the future any more
        if self._live and not self._closed:
            # Maybe the last query someone waited for: the rest, if abandoned, go. Not from
            # here: pycares warns against cancelling from inside a c-ares callback.
            loop.call_soon(self._maybe_cancel_abandoned)
        try:
            if status is None:
                value = q.finish(result)
            elif status == pycares.errno.ARES_ENODATA and q.nodata_is_empty:
                value = []  # query(): a name with no records of this type
            else:
                raise error_for_status(status, q.name, q.qtype)
        except Exception as exc:
            if isinstance(exc, DNSError):
                self._owner._failures += 1
            q.future.set_exception(exc)
        else:
            q.future.set_result(value)

    def _on_future_done(self, q: _Query) -> None:
        if q.future.cancelled() and not q.fired and not self._closed:
            self._maybe_cancel_abandoned()

    def _on_sock_state(self, fd: int, readable: bool, writable: bool) -> None:
        loop = self._loop_ref()
        if self._closed or loop is None or loop.is_closed():
            return
        _watch(fd, readable, self._readers, loop.add_reader, loop.remove_reader, self._on_readable)
        _watch(fd, writable, self._writers, loop.add_writer, loop.remove_writer, self._on_writable)

    def _on_readable(self, fd: int) -> None:
        self._channel.process_fd(fd, _SOCKET_BAD)
        self._arm_timer()

    def _on_writable(self, fd: int) -> None:
        self._channel.process_fd(_SOCKET_BAD, fd)
        self._arm_timer()

    def _on_timer(self) -> None:
        self._timer = None
        if not self._closed:
            self._channel.process_fd(_SOCKET_BAD, _SOCKET_BAD)
            self._arm_timer()


# --- the resolver ---------------------------------------------------------------------------


class Resolver:
    """DNS options, and one c-ares channel per loop the resolver is used on.

    servers: name servers as "ip", "ip:port", "[ipv6]:port" or (ip, port); default those of
        /etc/resolv.conf.
    timeout: seconds the first try waits for an answer. c-ares 1.34 takes it as a guide:
        it waits at least 250 ms, backs off (roughly doubling, with jitter) on each retry,
        and once it has measured a server it times out at 5x its latency (within 250 ms
        and 5 s). Measured with timeout=0.05, tries=4: tries sent at 0, 0.25, 0.53 and
        1.35 s, failure at 2.5 s. Default from resolv.conf, else c-ares' (2 s).
    tries: tries per server before giving up (default from resolv.conf, else 3).
    rotate: spread queries over the servers instead of always asking the first.
    ndots, domains: the search rules resolve_host applies (query() never searches); default
        resolv.conf's.

    Everything not given comes from /etc/resolv.conf. There is no option to read another
    resolv.conf: pycares 5.2.1 passes c-ares a path it has already freed (its Channel sets
    `options.resolvconf_path = ffi.new(...)`, and cffi frees that buffer at once): measured,
    c-ares then fell back to 127.0.0.1:53 nine times in ten. The same holds for `lookups`,
    so the hosts-then-DNS order is c-ares' default (resolv.conf, nsswitch.conf).

    Queries and lookups run on the running loop (cqloop, stock asyncio or uvloop). close()
    fails the queries in flight and frees every channel; `async with Resolver(...)` closes
    on exit.
    """

    def __init__(
        self,
        *,
        servers: Iterable[str | tuple[str, int]] | None = None,
        timeout: float | None = None,
        tries: int | None = None,
        rotate: bool = False,
        ndots: int | None = None,
        domains: Iterable[str] | None = None,
    ) -> None:
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be positive seconds, not {timeout!r}")
        if tries is not None and tries < 1:
            raise ValueError(f"tries must be at least 1, not {tries!r}")
        options: dict[str, Any] = {"rotate": rotate}
        self._servers = [_server_string(s) for s in servers] if servers is not None else None
        if self._servers:
            options["servers"] = self._servers
        if timeout is not None:
            options["timeout"] = timeout
        if tries is not None:
            options["tries"] = tries
        if ndots is not None:
            options["ndots"] = ndots
        if domains is not None:
            options["domains"] = list(domains)
        self._options = options
        self._channels: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Channel] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()
        self._closed = False
        self._queries = 0
        self._failures = 0
        self._abandoned = 0

    # -- public API

    async def query(self, name: str, type: str = "A") -> list[Record]:
        """The records of one type for name, from the DNS (no hosts file, no search list).

        type is one of QUERY_TYPES (any case). A name with no records of that type gives []
        (NODATA); a name that does not exist raises NameNotFound. For PTR, an IP address is
        turned into its reverse name (192.0.2.1 -> 1.2.0.192.in-addr.arpa)."""
        if not isinstance(name, str):
            raise TypeError(f"query: name must be a str, not {type_name(name)} ({name!r})")
        if not isinstance(type, str):
            raise TypeError(
                f"query: type must be a str such as 'A' or 'MX', not {type_name(type)} ({type!r})"
            )
        qtype = type.upper()
        if qtype not in QUERY_TYPES:
            raise ValueError(f"unknown DNS query type {type!r}; one of {', '.join(QUERY_TYPES)}")
        code = QUERY_TYPES[qtype]
        if qtype == "PTR":
            try:
                name = ipaddress.ip_address(name).reverse_pointer
            except ValueError:
                pass
        channel = self._channel()

        def start(callback: Callable[[Any, int | None], None]) -> None:
            channel._channel.query(name, code, callback=callback)

        return await self._run(channel, name, qtype, lambda r: records(r, code), start, True)

    async def resolve_host(
        self,
        host: str,
        port: int | str | None = None,
        *,
        family: int = socket.AF_UNSPEC,
    ) -> list[HostAddress]:
        """The addresses to connect to for host, in the order to try them.

        - A numeric host (IPv4, IPv6, with a scope id as "fe80::1%eth0") returns at once,
          without a query.
        - Otherwise c-ares' getaddrinfo: the hosts file first (/etc/hosts, or the file named
          by the CARES_HOSTS environment variable, c-ares' own override), then A and AAAA
          queries with the resolv.conf search rules; "localhost" is loopback (RFC 6761).
        - The order is c-ares' RFC 6724 destination address selection, as glibc's
          getaddrinfo sorts: IPv6 first when the host has a usable IPv6 source address.
        family: AF_UNSPEC (both), AF_INET or AF_INET6. port: a number, a numeric string or
        a TCP service name; None gives port 0 in the sockaddrs.
        Raises NameNotFound (also a socket.gaierror with EAI_NONAME), NoData,
        DNSTimeoutError, ... (all DNSError)."""
        if not isinstance(host, str):
            raise TypeError(
                f"resolve_host: host must be a str (a name or an address), not "
                f"{type_name(host)} ({host!r})"
            )
        if not host:
            raise ValueError("resolve_host: host is empty")
        if family not in (socket.AF_UNSPEC, socket.AF_INET, socket.AF_INET6):
            raise ValueError(f"family must be AF_UNSPEC, AF_INET or AF_INET6, not {family!r}")
        port_number = _port_number(port, "resolve_host: port")
        numeric = _numeric_host(host, port_number, family)
        if numeric is not None:
            return numeric
        qtype = _family_qtype(family)
        flags = ARES_AI_ENVHOSTS if os.environ.get(HOSTS_ENV_VAR) else 0
        channel = self._channel()

        def start(callback: Callable[[Any, int | None], None]) -> None:
            channel._channel.getaddrinfo(
                host,
                port_number,
                family=socket.AddressFamily(family),
                flags=flags,
                callback=callback,
            )

        return await self._run(channel, host, qtype, host_addresses, start, False)

    @property
    def servers(self) -> list[str] | None:
        """The servers given to the constructor (normalised), or None for resolv.conf's."""
        return list(self._servers) if self._servers is not None else None

    def statistics(self) -> dict[str, int]:
        """queries started, failures (DNSErrors raised), abandoned (answers that came after
        their caller was cancelled), in flight now, and channels (loops used on)."""
        channels = list(self._channels.values())
        return {
            "queries": self._queries,
            "failures": self._failures,
            "abandoned": self._abandoned,
            "in_flight": sum(c.pending for c in channels),
            "channels": len(channels),
        }

    def close(self) -> None:
        """Fail every query in flight (DNSError "resolver was closed") and free the
        channels. Idempotent; the resolver refuses queries afterwards."""
        with self._lock:
            self._closed = True
            channels = list(self._channels.values())
            self._channels.clear()
        for channel in channels:
            channel.close()

    async def __aenter__(self) -> Resolver:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._channels)} channels"
        return f"<Resolver servers={self._servers or 'resolv.conf'} {state}>"

    # -- private

    def _channel(self) -> _Channel:
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._closed:
                raise RuntimeError("this Resolver is closed")
            channel = self._channels.get(loop)
            if channel is None:
                channel = self._channels[loop] = _Channel(self, loop)
            return channel

    async def _run(
        self,
        channel: _Channel,
        name: str,
        qtype: str,
        finish: Callable[[Any], Any],
        start: Callable[[Callable[[Any, int | None], None]], None],
        nodata_is_empty: bool,
    ) -> Any:
        if "\x00" in name:  # C would cut the name at the NUL and ask for another one
            raise error(BadQuery, "bad name (a NUL character)", name, qtype)
        self._queries += 1
        return await channel.submit(name, qtype, finish, start, nodata_is_empty)


# --- module functions on the default resolver -----------------------------------------------

_default_resolver: Resolver | None = None
_default_lock = threading.Lock()


def default_resolver() -> Resolver:
    """The resolver query() and resolve_host() use when given none: /etc/resolv.conf's."""
    global _default_resolver
    with _default_lock:
        if _default_resolver is None:
            _default_resolver = Resolver()
        return _default_resolver


async def query(name: str, type: str = "A", *, resolver: Resolver | None = None) -> list[Record]:
    """`await dns.query("example.org", "MX")`: Resolver.query on resolver or the default."""
    return await (resolver or default_resolver()).query(name, type)


async def resolve_host(
    host: str,
    port: int | str | None = None,
    *,
    family: int = socket.AF_UNSPEC,
    resolver: Resolver | None = None,
) -> list[HostAddress]:
    """Resolver.resolve_host on resolver or the default: the addresses to connect to."""
    return await (resolver or default_resolver()).resolve_host(host, port, family=family)
