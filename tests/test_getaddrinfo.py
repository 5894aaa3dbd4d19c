"""The loop's name resolution, getaddrinfo and getnameinfo, checked on cqloop against the
standard library's answers and against stock asyncio and uvloop: numeric hosts (also as a
hypothesis property), localhost, service names, the standard library's errors, debug-mode
logging, and cqloop's promise that a numeric host needs no thread.

Each test runs once per loop kind, on loopback, without sleeps (see test_sock_ops.py).
"""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import skip_where_uvloop_differs
from tests.sock_ops_harness import HAS_IPV6, client, executor, listener, within  # noqa: F401

# The harness's fixtures are imported by name and taken as parameters:
# ruff: noqa: F811


# -- getaddrinfo and getnameinfo ------------------------------------------------------------

NUMERIC_QUERIES = [
    ("127.0.0.1", 80, 0, 0, 0, 0),
    ("127.0.0.1", "80", socket.AF_INET, socket.SOCK_STREAM, 0, 0),
    ("127.0.0.1", None, 0, socket.SOCK_DGRAM, 0, 0),
    (b"127.0.0.1", b"443", 0, 0, 0, 0),
    ("127.1", 0, 0, 0, 0, 0),
    ("0.0.0.0", 8080, socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, socket.AI_PASSIVE),
    ("::1", 443, 0, socket.SOCK_STREAM, 0, 0),
    ("::1", 443, socket.AF_INET6, 0, 0, socket.AI_CANONNAME),
    ("::ffff:127.0.0.1", 1, socket.AF_INET6, 0, 0, 0),
    ("127.0.0.1", 53, socket.AF_INET6, socket.SOCK_DGRAM, 0, socket.AI_V4MAPPED),
    (None, 8080, 0, socket.SOCK_STREAM, 0, socket.AI_PASSIVE),
    (None, 8080, socket.AF_INET, socket.SOCK_STREAM, 0, 0),
    (None, "0", 0, 0, 0, 0),
]


@pytest.mark.parametrize("query", NUMERIC_QUERIES, ids=repr)
async def test_getaddrinfo_of_a_numeric_host_is_the_standard_librarys(query):
    loop = asyncio.get_running_loop()
    host, port, family, type_, proto, flags = query
    expected = socket.getaddrinfo(host, port, family, type_, proto, flags)
    got = await loop.getaddrinfo(host, port, family=family, type=type_, proto=proto, flags=flags)
    assert got == expected


@pytest.mark.parametrize("family", [0, socket.AF_INET, socket.AF_INET6])
async def test_getaddrinfo_of_localhost_is_the_standard_librarys(family):
    loop = asyncio.get_running_loop()
    try:
        expected = socket.getaddrinfo("localhost", 80, family, socket.SOCK_STREAM)
    except socket.gaierror as exc:
        with pytest.raises(socket.gaierror) as raised:
            await loop.getaddrinfo("localhost", 80, family=family, type=socket.SOCK_STREAM)
        assert raised.value.args == exc.args
        return
    got = await loop.getaddrinfo("localhost", 80, family=family, type=socket.SOCK_STREAM)
    assert got == expected


async def test_getaddrinfo_with_a_service_name_is_the_standard_librarys():
    loop = asyncio.get_running_loop()
    expected = socket.getaddrinfo("127.0.0.1", "http", 0, socket.SOCK_STREAM)
    assert await loop.getaddrinfo("127.0.0.1", "http", type=socket.SOCK_STREAM) == expected


@pytest.mark.parametrize(
    "query",
    [
        ("127.0.0.1", "no-such-service-name", 0, socket.SOCK_STREAM, 0, 0),
        ("", 80, 0, 0, 0, 0),
        (None, None, 0, 0, 0, 0),
    ],
    ids=repr,
)
async def test_getaddrinfo_raises_the_standard_librarys_error(query):
    loop = asyncio.get_running_loop()
    host, port, family, type_, proto, flags = query
    with pytest.raises(socket.gaierror) as expected:
        socket.getaddrinfo(host, port, family, type_, proto, flags)
    with pytest.raises(socket.gaierror) as raised:
        await loop.getaddrinfo(host, port, family=family, type=type_, proto=proto, flags=flags)
    assert raised.value.args == expected.value.args


_ip_hosts = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
    st.none(),
)
_ports = st.one_of(st.none(), st.integers(0, 65535), st.integers(0, 65535).map(str))


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    host=_ip_hosts,
    port=_ports,
    family=st.sampled_from([0, socket.AF_INET, socket.AF_INET6]),
    type_=st.sampled_from([0, socket.SOCK_STREAM, socket.SOCK_DGRAM, socket.SOCK_RAW]),
    proto=st.sampled_from([0, socket.IPPROTO_TCP, socket.IPPROTO_UDP]),
    flags=st.sampled_from(
        [0, socket.AI_PASSIVE, socket.AI_CANONNAME, socket.AI_V4MAPPED | socket.AI_ALL]
    ),
)
def test_getaddrinfo_of_any_numeric_query_is_the_standard_librarys(
    loop, host, port, family, type_, proto, flags
):
    skip_where_uvloop_differs(
        loop,
        "it answers an IP host itself, without the C library's checks of the type and "
        "protocol (SOCK_STREAM with IPPROTO_UDP gets an answer, not an error)",
    )
    try:
        expected = socket.getaddrinfo(host, port, family, type_, proto, flags)
    except socket.gaierror as exc:
        with pytest.raises(socket.gaierror) as raised:
            loop.run_until_complete(
                loop.getaddrinfo(host, port, family=family, type=type_, proto=proto, flags=flags)
            )
        assert raised.value.args == exc.args
        return
    got = loop.run_until_complete(
        loop.getaddrinfo(host, port, family=family, type=type_, proto=proto, flags=flags)
    )
    assert got == expected


@pytest.mark.cqloop_only
async def test_getaddrinfo_of_a_numeric_host_uses_no_thread(executor):
    loop = asyncio.get_running_loop()
    for host, port, family, type_, proto, flags in NUMERIC_QUERIES:
        await loop.getaddrinfo(host, port, family=family, type=type_, proto=proto, flags=flags)
    assert executor.submitted == []
    # A name, a service name and an error go to the executor, as in asyncio.
    await loop.getaddrinfo("localhost", 80)
    await loop.getaddrinfo("127.0.0.1", "http")
    with pytest.raises(socket.gaierror):
        await loop.getaddrinfo("", 80)
    assert executor.submitted == ["getaddrinfo"] * 3


@pytest.mark.cqloop_only
async def test_sock_connect_to_an_ip_uses_no_thread(listener, client, executor):
    loop = asyncio.get_running_loop()
    await within(loop.sock_connect(client, listener.getsockname()))
    conn, _ = await within(loop.sock_accept(listener))
    conn.close()
    assert executor.submitted == []


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_getaddrinfo_in_debug_mode_logs_the_query(host, caplog):
    loop = asyncio.get_running_loop()
    skip_where_uvloop_differs(loop, "it does not log name resolution")
    caplog.set_level(logging.DEBUG, logger="asyncio")
    loop.set_debug(True)
    try:
        got = await loop.getaddrinfo(host, 80, type=socket.SOCK_STREAM)
    finally:
        loop.set_debug(False)
    assert got == socket.getaddrinfo(host, 80, 0, socket.SOCK_STREAM)
    messages = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert f"Get address info {host}:80, type={socket.SOCK_STREAM!r}" in messages
    assert any(
        m.startswith(f"Getting address info {host}:80, type={socket.SOCK_STREAM!r} took ")
        and m.endswith(f": {got!r}")
        for m in messages
    )


@pytest.mark.parametrize(
    "flags", [socket.NI_NUMERICHOST | socket.NI_NUMERICSERV, socket.NI_NUMERICSERV, 0]
)
async def test_getnameinfo_is_the_standard_librarys(flags):
    loop = asyncio.get_running_loop()
    expected = socket.getnameinfo(("127.0.0.1", 80), flags)
    assert await loop.getnameinfo(("127.0.0.1", 80), flags) == expected


@pytest.mark.skipif(not HAS_IPV6, reason="no IPv6 on this machine")
async def test_getnameinfo_of_an_ipv6_address_is_the_standard_librarys():
    loop = asyncio.get_running_loop()
    sockaddr = ("::1", 443, 0, 0)
    flags = socket.NI_NUMERICHOST | socket.NI_NUMERICSERV
    assert await loop.getnameinfo(sockaddr, flags) == socket.getnameinfo(sockaddr, flags)
