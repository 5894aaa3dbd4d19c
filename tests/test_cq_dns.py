"""cqloop.dns against a DNS server written in the tests (tests/dnsserver.py), on cqloop, stock
asyncio and uvloop (the conftest parametrisation).

The server speaks RFC 1035 on 127.0.0.1 (an ephemeral UDP port) from a thread and logs every
query, so the tests can assert what was asked as well as what was answered: numeric hosts and
hosts-file names must reach it zero times, a timed-out query `tries` times. Records are served
with ttl 0 unless a test says otherwise, so c-ares' answer cache never hides a query.
"""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cqloop
from cqloop import dns
from tests.conftest import open_fds
from tests.dnsserver import DNSServer, Rcode

# Long enough that a test never sees a retry it did not ask for, on a loaded 2-core machine.
PATIENT_TIMEOUT_S = 5.0
# Short: c-ares 1.34 raises it to its 250 ms floor, then backs off on each retry.
QUICK_TIMEOUT_S = 0.05
# A query's first try, when the test wants its retry.
RETRY_TIMEOUT_S = 0.2
# How long a test waits, at most, for the server thread to log a query it must receive.
SERVER_WAIT_S = 10.0


@pytest.fixture
def server() -> Iterator[DNSServer]:
    with DNSServer() as srv:
        srv.add("www.example.test", "A", "192.0.2.10")
        srv.add("www.example.test", "AAAA", "2001:db8::10")
        srv.add("v4only.example.test", "A", "192.0.2.20")
        srv.add("v6only.example.test", "AAAA", "2001:db8::20")
        yield srv


@pytest.fixture
def make_resolver(server: DNSServer) -> Iterator[Callable[..., dns.Resolver]]:
    """Resolver(**options) asking the test server, closed after the test. ndots 1 and the
    names the tests use (two dots or more) make the machine's search domains irrelevant:
    a name is asked as given first."""
    made: list[dns.Resolver] = []

    def make(**options: Any) -> dns.Resolver:
        options = {
            "servers": [server.nameserver],
            "ndots": 1,
            "timeout": PATIENT_TIMEOUT_S,
            "tries": 1,
            **options,
        }
        made.append(dns.Resolver(**options))
        return made[-1]

    yield make
    for res in made:
        res.close()


@pytest.fixture
def resolver(make_resolver: Callable[..., dns.Resolver]) -> dns.Resolver:
    return make_resolver()


async def wait_for_queries(server: DNSServer, n: int) -> None:
    """Wait, without blocking the loop, until the server has logged n queries."""
    loop = asyncio.get_running_loop()
    arrived = asyncio.Event()

    def wait() -> None:
        if server.wait_for_queries(n, SERVER_WAIT_S):
            loop.call_soon_threadsafe(arrived.set)

    thread = threading.Thread(target=wait)
    thread.start()
    try:
        await asyncio.wait_for(arrived.wait(), SERVER_WAIT_S)
    finally:
        thread.join()


def client_fds(server: DNSServer) -> set[int]:
    """The fds open in the process, less the server's sockets (its thread closes its end of a
    TCP connection when it sees the client's close: a moment after the client's answer)."""

    def is_clients(fd: int) -> bool:
        try:
            copy = os.dup(fd)
        except OSError:
            # Closed since open_fds() listed it: most often the server's end of a TCP
            # connection, which its thread closes a moment after the answer. Not open,
            # so not counted.
            return False
        try:
            sock = socket.socket(fileno=copy)
        except OSError:
            os.close(copy)
            return True  # not a socket
        try:
            return not (sock.family == socket.AF_INET and sock.getsockname() == server.address)
        finally:
            sock.close()

    return {fd for fd in open_fds() if is_clients(fd)}


# --- query(): each record type --------------------------------------------------------------

SERVED = [
    ("A", "192.0.2.1", dns.A("192.0.2.1")),
    ("AAAA", "2001:db8::1", dns.AAAA("2001:db8::1")),
    ("CNAME", "target.example.test", dns.CNAME("target.example.test")),
    ("MX", (10, "mail.example.test"), dns.MX(10, "mail.example.test")),
    ("NS", "ns1.example.test", dns.NS("ns1.example.test")),
    ("PTR", "host.example.test", dns.PTR("host.example.test")),
    (
        "SOA",
        ("ns1.example.test", "admin.example.test", 2026112301, 7200, 900, 1209600, 300),
        dns.SOA("ns1.example.test", "admin.example.test", 2026112301, 7200, 900, 1209600, 300),
    ),
    ("SRV", (0, 5, 5060, "sip.example.test"), dns.SRV(0, 5, 5060, "sip.example.test")),
    ("TXT", "v=spf1 -all", dns.TXT(b"v=spf1 -all")),
    ("CAA", (0, "issue", "ca.example.net"), dns.CAA(0, "issue", "ca.example.net")),
    (
        "NAPTR",
        (100, 10, "S", "SIP+D2U", "", "_sip._udp.example.test"),
        dns.NAPTR(100, 10, "S", "SIP+D2U", "", "_sip._udp.example.test"),
    ),
]


@pytest.mark.parametrize(("rtype", "value", "expected"), SERVED, ids=[s[0] for s in SERVED])
async def test_query_returns_typed_records(
    server: DNSServer, resolver: dns.Resolver, rtype: str, value: object, expected: dns.Record
) -> None:
    server.add("rec.example.test", rtype, value, ttl=0)
    assert await resolver.query("rec.example.test", rtype) == [expected]
    assert server.count("rec.example.test", rtype) == 1


async def test_query_type_is_case_insensitive_and_defaults_to_a(
    resolver: dns.Resolver,
) -> None:
    assert await resolver.query("www.example.test") == [dns.A("192.0.2.10")]
    assert await resolver.query("www.example.test", "aaaa") == [dns.AAAA("2001:db8::10")]


async def test_query_keeps_every_record_and_its_ttl(
    server: DNSServer, resolver: dns.Resolver
) -> None:
    server.add("multi.example.test", "MX", (20, "b.example.test"), ttl=300)
    server.add("multi.example.test", "MX", (10, "a.example.test"), ttl=300)
    records = await resolver.query("multi.example.test", "MX")
    assert sorted(records, key=lambda r: r.priority) == [
        dns.MX(10, "a.example.test", 300),
        dns.MX(20, "b.example.test", 300),
    ]


async def test_query_srv_records(server: DNSServer, resolver: dns.Resolver) -> None:
    server.add("_imap._tcp.example.test", "SRV", (10, 60, 143, "imap1.example.test"))
    server.add("_imap._tcp.example.test", "SRV", (20, 0, 993, "imap2.example.test"))
    records = await resolver.query("_imap._tcp.example.test", "SRV")
    assert set(records) == {
        dns.SRV(10, 60, 143, "imap1.example.test"),
        dns.SRV(20, 0, 993, "imap2.example.test"),
    }


async def test_txt_text_is_bytes_with_character_strings_joined(
    server: DNSServer, resolver: dns.Resolver
) -> None:
    long = b"k=" + b"x" * 400  # two character-strings on the wire (255 bytes at most each)
    server.add("txt.example.test", "TXT", ("v=DKIM1; ", long))
    server.add("bin.example.test", "TXT", b"\x00\xff\xfe")
    [record] = await resolver.query("txt.example.test", "TXT")
    assert record.text == b"v=DKIM1; " + long
    assert await resolver.query("bin.example.test", "TXT") == [dns.TXT(b"\x00\xff\xfe")]


async def test_truncated_answer_is_asked_again_over_tcp(
    server: DNSServer, resolver: dns.Resolver
) -> None:
    # c-ares connects a TCP socket (a writability wait on the loop, then reads) for the
    # answer the UDP reply said was truncated.
    text = b"v=long; " + b"x" * 1000
    server.add("big.example.test", "TXT", text)
    server.truncate("big.example.test")
    fds = client_fds(server)
    assert await resolver.query("big.example.test", "TXT") == [dns.TXT(text)]
    assert server.count("big.example.test", transport="udp") == 1
    assert server.count("big.example.test", transport="tcp") == 1
    assert client_fds(server) == fds  # c-ares closed its connection with the query


async def test_query_after_cname_returns_only_the_asked_type(
    server: DNSServer, resolver: dns.Resolver
) -> None:
    server.add("alias.example.test", "CNAME", "www.example.test")
    assert await resolver.query("alias.example.test", "A") == [dns.A("192.0.2.10")]
    assert await resolver.query("alias.example.test", "CNAME") == [dns.CNAME("www.example.test")]


async def test_query_ptr_turns_an_address_into_its_reverse_name(
    server: DNSServer, resolver: dns.Resolver
) -> None:
    server.add("10.2.0.192.in-addr.arpa", "PTR", "www.example.test")
    assert await resolver.query("192.0.2.10", "PTR") == [dns.PTR("www.example.test")]
    assert server.queries[-1].name == "10.2.0.192.in-addr.arpa"


async def test_query_name_without_records_of_the_type_returns_empty(
    server: DNSServer, resolver: dns.Resolver
) -> None:
    assert await resolver.query("v4only.example.test", "MX") == []
    assert server.count("v4only.example.test", "MX") == 1


async def test_module_query_takes_a_resolver(resolver: dns.Resolver) -> None:
    assert await dns.query("www.example.test", "A", resolver=resolver) == [dns.A("192.0.2.10")]


# --- errors ---------------------------------------------------------------------------------


async def test_nxdomain_raises_name_not_found_naming_name_and_type(
    resolver: dns.Resolver,
) -> None:
    with pytest.raises(dns.NameNotFound) as info:
        await resolver.query("missing.example.test", "MX")
    exc = info.value
    assert isinstance(exc, dns.DNSError)
    assert isinstance(exc, OSError)
    assert isinstance(exc, socket.gaierror)
    assert exc.errno == socket.EAI_NONAME
    assert (exc.name, exc.qtype) == ("missing.example.test", "MX")
    assert "'missing.example.test'" in str(exc)
    assert "MX" in str(exc)
    assert "NXDOMAIN" in str(exc)


async def test_timeout_raises_after_the_given_tries(
    server: DNSServer, make_resolver: Callable[..., dns.Resolver]
) -> None:
    server.silent = True
    tries = 2
    resolver = make_resolver(timeout=QUICK_TIMEOUT_S, tries=tries)
    with pytest.raises(dns.DNSTimeoutError) as info:
        await resolver.query("slow.example.test", "A")
    assert isinstance(info.value, TimeoutError)
    assert isinstance(info.value, dns.DNSError)
    assert "'slow.example.test'" in str(info.value)
    assert "timed out" in str(info.value)
    # Every try reached the server, and no more than the tries asked for.
    assert server.wait_for_queries(tries, SERVER_WAIT_S)
    assert server.count("slow.example.test", "A") == tries


@pytest.mark.parametrize(
    ("rcode", "error"),
    [
        (Rcode.SERVFAIL, dns.ServerFailure),
        (Rcode.REFUSED, dns.Refused),
        (Rcode.FORMERR, dns.BadQuery),
        (Rcode.NOTIMP, dns.BadQuery),
    ],
    ids=lambda v: getattr(v, "__name__", None) or str(v.name),
)
async def test_server_rcodes_raise_their_errors(
    server: DNSServer, resolver: dns.Resolver, rcode: Rcode, error: type[dns.DNSError]
) -> None:
    server.set_rcode("bad.example.test", rcode)
    with pytest.raises(error) as info:
        await resolver.query("bad.example.test", "A")
    assert info.value.name == "bad.example.test"
    assert "'bad.example.test' (A)" in str(info.value)


async def test_unreachable_server_raises_server_unreachable(
    make_resolver: Callable[..., dns.Resolver],
) -> None:
    # A port nothing listens on: the kernel answers the query with ICMP port unreachable.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()
    resolver = make_resolver(servers=[dead])
    with pytest.raises(dns.ServerUnreachable, match="could not contact"):
        await resolver.query("www.example.test")


@pytest.mark.parametrize("name", ["a" * 64 + ".example.test", "a\x00b.test", "..", " "])
async def test_bad_names_raise_bad_query_without_asking(
    server: DNSServer, resolver: dns.Resolver, name: str
) -> None:
    with pytest.raises(dns.BadQuery):
        await resolver.query(name)
    assert server.count() == 0


async def test_unknown_type_is_a_value_error(resolver: dns.Resolver) -> None:
    with pytest.raises(ValueError, match="unknown DNS query type 'HINFO'"):
        await resolver.query("www.example.test", "HINFO")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"servers": ["not-an-ip"]}, "not-an-ip"),
        ({"servers": ["127.0.0.1:99999"]}, "port"),
        ({"timeout": 0}, "timeout"),
        ({"tries": 0}, "tries"),
    ],
)
def test_bad_resolver_options_are_value_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dns.Resolver(**kwargs)


def test_servers_are_normalised() -> None:
    resolver = dns.Resolver(
        servers=["192.0.2.53", "192.0.2.54:5353", "[2001:db8::53]:53", ("2001:db8::54", 5300)]
    )
    assert resolver.servers == [
        "192.0.2.53",
        "192.0.2.54:5353",
        "[2001:db8::53]:53",
        "[2001:db8::54]:5300",
    ]


# --- resolve_host ---------------------------------------------------------------------------


async def test_resolve_host_asks_for_a_and_aaaa(server: DNSServer, resolver: dns.Resolver) -> None:
    addrs = await resolver.resolve_host("www.example.test", 443)
    assert sorted(addrs) == sorted(
        [
            dns.HostAddress(socket.AF_INET, ("192.0.2.10", 443)),
            dns.HostAddress(socket.AF_INET6, ("2001:db8::10", 443, 0, 0)),
        ]
    )
    assert server.count("www.example.test", "A") == 1
    assert server.count("www.example.test", "AAAA") == 1


async def test_resolve_host_sockaddrs_connect(server: DNSServer, resolver: dns.Resolver) -> None:
    # What a cq socket connect does with the result: a loopback name, a real connection.
    server.add("loop.example.test", "A", "127.0.0.1")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        [addr] = await resolver.resolve_host("loop.example.test", port, family=socket.AF_INET)
        with socket.socket(addr.family, socket.SOCK_STREAM) as client:
            client.connect(addr.sockaddr)
            accepted, _ = listener.accept()
            accepted.close()


@pytest.mark.parametrize(
    ("family", "expected"),
    [
        (socket.AF_INET, [dns.HostAddress(socket.AF_INET, ("192.0.2.10", 0))]),
        (socket.AF_INET6, [dns.HostAddress(socket.AF_INET6, ("2001:db8::10", 0, 0, 0))]),
    ],
    ids=["AF_INET", "AF_INET6"],
)
async def test_resolve_host_family_asks_one_type(
    server: DNSServer, resolver: dns.Resolver, family: int, expected: list
) -> None:
    assert await resolver.resolve_host("www.example.test", family=family) == expected
    assert server.count() == 1


async def test_resolve_host_returns_the_family_there_is(resolver: dns.Resolver) -> None:
    assert await resolver.resolve_host("v4only.example.test", 80) == [
        dns.HostAddress(socket.AF_INET, ("192.0.2.20", 80))
    ]
    assert await resolver.resolve_host("v6only.example.test", 80) == [
        dns.HostAddress(socket.AF_INET6, ("2001:db8::20", 80, 0, 0))
    ]


async def test_resolve_host_without_an_address_of_the_family_raises_no_data(
    resolver: dns.Resolver,
) -> None:
    with pytest.raises(dns.NoData) as info:
        await resolver.resolve_host("v4only.example.test", family=socket.AF_INET6)
    assert info.value.qtype == "AAAA"
    assert info.value.errno == socket.EAI_NODATA


async def test_resolve_host_nxdomain_is_a_gaierror(resolver: dns.Resolver) -> None:
    with pytest.raises(socket.gaierror) as info:
        await resolver.resolve_host("missing.example.test", 80)
    assert isinstance(info.value, dns.NameNotFound)
    assert "'missing.example.test'" in str(info.value)


async def test_resolve_host_port_by_service_name(resolver: dns.Resolver) -> None:
    assert await resolver.resolve_host("v4only.example.test", "80") == [
        dns.HostAddress(socket.AF_INET, ("192.0.2.20", 80))
    ]
    https = socket.getservbyname("https", "tcp")
    assert await resolver.resolve_host("192.0.2.1", "https") == [
        dns.HostAddress(socket.AF_INET, ("192.0.2.1", https))
    ]


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("192.0.2.1", dns.HostAddress(socket.AF_INET, ("192.0.2.1", 80))),
        ("127.1", dns.HostAddress(socket.AF_INET, ("127.0.0.1", 80))),
        ("::1", dns.HostAddress(socket.AF_INET6, ("::1", 80, 0, 0))),
        ("2001:db8::1", dns.HostAddress(socket.AF_INET6, ("2001:db8::1", 80, 0, 0))),
        ("fe80::1%1", dns.HostAddress(socket.AF_INET6, ("fe80::1", 80, 0, 1))),
        ("fe80::1%lo", dns.HostAddress(socket.AF_INET6, ("fe80::1", 80, 0, 1))),
    ],
)
async def test_numeric_hosts_are_never_queried(
    server: DNSServer, resolver: dns.Resolver, host: str, expected: dns.HostAddress
) -> None:
    assert await resolver.resolve_host(host, 80) == [expected]
    assert server.count() == 0
    assert resolver.statistics()["queries"] == 0


async def test_numeric_host_of_another_family_raises_bad_query(
    server: DNSServer, resolver: dns.Resolver
) -> None:
    with pytest.raises(dns.BadQuery, match="AF_INET"):
        await resolver.resolve_host("::1", 80, family=socket.AF_INET)
    assert server.count() == 0


async def test_hosts_file_is_honoured_before_dns(
    server: DNSServer,
    resolver: dns.Resolver,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text(
        "# a test hosts file\n"
        "192.0.2.77   fromhosts.test  alias.fromhosts.test\n"
        "2001:db8::77 fromhosts.test\n"
        "192.0.2.99   www.example.test\n"
    )
    monkeypatch.setenv(dns.HOSTS_ENV_VAR, str(hosts))
    assert sorted(await resolver.resolve_host("fromhosts.test", 22)) == sorted(
        [
            dns.HostAddress(socket.AF_INET, ("192.0.2.77", 22)),
            dns.HostAddress(socket.AF_INET6, ("2001:db8::77", 22, 0, 0)),
        ]
    )
    assert await resolver.resolve_host("alias.fromhosts.test", 22, family=socket.AF_INET) == [
        dns.HostAddress(socket.AF_INET, ("192.0.2.77", 22))
    ]
    # The hosts file wins over the DNS for a name in both.
    assert await resolver.resolve_host("www.example.test", 22, family=socket.AF_INET) == [
        dns.HostAddress(socket.AF_INET, ("192.0.2.99", 22))
    ]
    assert server.count() == 0
    # query() is a DNS query: it does not read the hosts file.
    with pytest.raises(dns.NameNotFound):
        await resolver.query("fromhosts.test")
    assert server.count("fromhosts.test") == 1


async def test_localhost_is_loopback_without_a_query(
    server: DNSServer, resolver: dns.Resolver
) -> None:
    addrs = await resolver.resolve_host("localhost", 80)
    assert dns.HostAddress(socket.AF_INET, ("127.0.0.1", 80)) in addrs
    assert {a.family for a in addrs} <= {socket.AF_INET, socket.AF_INET6}
    assert server.count() == 0


@pytest.mark.parametrize(("host", "error"), [("", ValueError), (None, TypeError), (42, TypeError)])
async def test_resolve_host_refuses_what_is_not_a_host(resolver: dns.Resolver, host, error) -> None:
    with pytest.raises(error, match="host"):
        await resolver.resolve_host(host, 80)


@pytest.mark.parametrize("port", [-1, 65536, "no-such-service"])
async def test_resolve_host_refuses_bad_ports(resolver: dns.Resolver, port) -> None:
    with pytest.raises(ValueError, match=r"port|service"):
        await resolver.resolve_host("www.example.test", port)


# --- cancellation, close and leaks ----------------------------------------------------------


async def test_cancelled_query_leaves_no_socket_or_timer(
    server: DNSServer, resolver: dns.Resolver
) -> None:
    before = open_fds()
    server.mute("slow.example.test")
    task = asyncio.ensure_future(resolver.query("slow.example.test"))
    await wait_for_queries(server, 1)
    assert open_fds() != before  # c-ares' socket is open while the query is in flight
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The future's done-callbacks ran before the task resumed: the channel was cancelled and
    # its socket closed.
    assert open_fds() == before
    stats = resolver.statistics()
    assert stats["in_flight"] == 0
    assert stats["abandoned"] == 1
    # and the resolver carries on.
    assert await resolver.query("www.example.test") == [dns.A("192.0.2.10")]


async def test_cancelling_one_query_keeps_the_others(
    server: DNSServer, make_resolver: Callable[..., dns.Resolver]
) -> None:
    resolver = make_resolver(timeout=RETRY_TIMEOUT_S, tries=3)
    try:
        server.add("late.example.test", "A", "192.0.2.30")
        server.mute("slow.example.test")
        server.mute("late.example.test")
        before = open_fds()
        abandoned = asyncio.ensure_future(resolver.query("slow.example.test"))
        wanted = asyncio.ensure_future(resolver.query("late.example.test"))
        await wait_for_queries(server, 2)
        abandoned.cancel()
        with pytest.raises(asyncio.CancelledError):
            await abandoned
        # The late query is still in flight; its retry is answered.
        server.unmute("late.example.test")
        assert await wanted == [dns.A("192.0.2.30")]
        # Then nobody waits for the abandoned query any more: the channel let it go before
        # the caller resumed.
        assert resolver.statistics()["in_flight"] == 0
        assert open_fds() == before
    finally:
        resolver.close()


async def test_close_fails_the_queries_in_flight(
    server: DNSServer, make_resolver: Callable[..., dns.Resolver]
) -> None:
    resolver = make_resolver()
    server.silent = True
    task = asyncio.ensure_future(resolver.query("slow.example.test"))
    await wait_for_queries(server, 1)
    resolver.close()
    with pytest.raises(dns.DNSError, match="closed"):
        await task
    with pytest.raises(RuntimeError, match="closed"):
        await resolver.query("www.example.test")
    resolver.close()  # idempotent


async def test_async_with_closes(server: DNSServer) -> None:
    async with dns.Resolver(servers=[server.nameserver], ndots=1) as resolver:
        assert await resolver.query("www.example.test") == [dns.A("192.0.2.10")]
    with pytest.raises(RuntimeError, match="closed"):
        await resolver.query("www.example.test")


async def test_many_queries_hold_no_fd_or_thread(server: DNSServer, resolver: dns.Resolver) -> None:
    # The first channel starts pycares' one process-wide shutdown thread: warm up first.
    await resolver.query("www.example.test")
    fds = open_fds()
    threads = set(os.listdir("/proc/self/task"))  # native threads too: c-ares' would show
    results = await asyncio.gather(
        *(resolver.query("www.example.test", t) for t in ("A", "AAAA", "MX") * 10),
        *(resolver.resolve_host("www.example.test", 80) for _ in range(10)),
    )
    assert len(results) == 40
    assert open_fds() == fds
    assert set(os.listdir("/proc/self/task")) <= threads  # (another test's may have ended)
    assert resolver.statistics()["in_flight"] == 0
    assert resolver.statistics()["channels"] == 1


async def test_statistics_count_queries_and_failures(resolver: dns.Resolver) -> None:
    await resolver.query("www.example.test")
    with pytest.raises(dns.NameNotFound):
        await resolver.query("missing.example.test")
    stats = resolver.statistics()
    assert stats["queries"] == 2
    assert stats["failures"] == 1
    assert stats["in_flight"] == 0


def test_one_channel_per_loop(loop_factory, make_resolver: Callable[..., dns.Resolver]) -> None:
    resolver = make_resolver()
    for _ in range(2):
        loop = loop_factory()
        try:
            answer = loop.run_until_complete(resolver.query("www.example.test"))
            assert answer == [dns.A("192.0.2.10")]
            assert resolver.statistics()["channels"] == 1
        finally:
            loop.close()
        # The loop is gone: the resolver holds neither it nor its channel.
        del loop
        gc.collect()
        assert resolver.statistics()["channels"] == 0


# --- configuration and the default resolver -------------------------------------------------


async def test_search_domains_apply_to_resolve_host_not_query(
    server: DNSServer, make_resolver: Callable[..., dns.Resolver]
) -> None:
    server.add("db.corp.test", "A", "192.0.2.40")
    resolver = make_resolver(domains=["other.test", "corp.test"])
    # A name with fewer dots than ndots: the search domains first, in order ...
    assert await resolver.resolve_host("db", 5432, family=socket.AF_INET) == [
        dns.HostAddress(socket.AF_INET, ("192.0.2.40", 5432))
    ]
    assert [q.name for q in server.queries] == ["db.other.test", "db.corp.test"]
    # ... while query() asks for the name as given.
    with pytest.raises(dns.NameNotFound):
        await resolver.query("db")
    assert server.queries[-1].name == "db"


async def test_default_resolver_for_numeric_hosts_and_localhost() -> None:
    assert dns.default_resolver() is dns.default_resolver()
    assert await dns.resolve_host("192.0.2.1", 80) == [
        dns.HostAddress(socket.AF_INET, ("192.0.2.1", 80))
    ]
    addrs = await dns.resolve_host("localhost", 80, family=socket.AF_INET)
    assert addrs == [dns.HostAddress(socket.AF_INET, ("127.0.0.1", 80))]


# --- nesting --------------------------------------------------------------------------------


def _run_inner_task_from_outer(outer: asyncio.AbstractEventLoop, coro: Any) -> Any:
    """Run coro as a task of a cqloop loop nested in outer, while only outer runs."""
    inner = cqloop.new_event_loop()
    try:
        inner.nest_in(outer)
        task = inner.create_task(coro)
        done = outer.create_future()
        task.add_done_callback(lambda _t: done.set_result(None))
        outer.run_until_complete(done)
        return task.result()
    finally:
        inner.close()


def test_query_on_a_cqloop_nested_in_another_loop(
    loop: asyncio.AbstractEventLoop, make_resolver: Callable[..., dns.Resolver]
) -> None:
    resolver = make_resolver()
    answer = _run_inner_task_from_outer(loop, resolver.query("www.example.test", "AAAA"))
    assert answer == [dns.AAAA("2001:db8::10")]


def test_timeout_on_a_cqloop_nested_in_another_loop(
    loop: asyncio.AbstractEventLoop,
    server: DNSServer,
    make_resolver: Callable[..., dns.Resolver],
) -> None:
    # The c-ares timer is an inner-loop timer: it must wake the outer loop by itself.
    server.silent = True
    resolver = make_resolver(timeout=QUICK_TIMEOUT_S, tries=1)
    with pytest.raises(dns.DNSTimeoutError):
        _run_inner_task_from_outer(loop, resolver.query("slow.example.test"))


# --- bad input ------------------------------------------------------------------------------


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(name=st.text(max_size=80) | st.lists(st.text(max_size=70), max_size=5).map(".".join))
def test_any_name_is_refused_or_answered_never_hangs(
    loop: asyncio.AbstractEventLoop,
    server: DNSServer,
    make_resolver: Callable[..., dns.Resolver],
    name: str,
) -> None:
    # The server knows none of these names: each is refused up front (BadQuery), or asked
    # and answered NXDOMAIN. A name that reached the server but was not answered would
    # time out instead (the test resolver waits PATIENT_TIMEOUT_S): that fails the test.
    resolver = make_resolver(timeout=PATIENT_TIMEOUT_S, tries=1)
    asked = server.count()
    try:
        result = loop.run_until_complete(resolver.query(name, "TXT"))
    except (dns.NameNotFound, dns.BadQuery):
        pass
    else:
        assert result == []  # one of the table's names: none has TXT records (NODATA)
    assert server.count() - asked <= 1
    assert resolver.statistics()["in_flight"] == 0


def test_channels_left_open_are_closed_at_exit_before_pycares_is_torn_down():
    # A resolver dropped unclosed with its loop alive: its pycares channel must be closed
    # by cqloop.dns's atexit hook, not by Channel.__del__ during module teardown (which
    # prints AttributeErrors about pycares' globals). atexit runs hooks last-registered
    # first, so the checker registered before cqloop.dns is imported runs after its hook.
    program = textwrap.dedent(
        """
        import atexit, asyncio

        def check():
            print("closed" if channel._channel is None else "open")

        atexit.register(check)

        import cqloop
        from cqloop import dns

        resolver = dns.Resolver(servers=["127.0.0.1:9"], timeout=0.2, tries=1)

        async def main():
            try:
                await resolver.query("nothing.invalid", "A")
            except dns.DNSError:
                pass
            return resolver._channels[asyncio.get_running_loop()]._channel

        loop = cqloop.new_event_loop()
        channel = loop.run_until_complete(main())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["closed"]
    assert "Exception ignored" not in done.stderr
