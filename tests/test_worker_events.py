"""cqloop.worker_events: one total order, no silent loss, unique events, bounded memory.

Two halves:
- in-process: a Broker and several clients on one loop, over socketpairs (the code the
  supervisor and its workers run, minus the fork); these run on cqloop, asyncio and
  uvloop like every behavioural test, since the event system is written against the
  public asyncio API;
- multi-process: tests/workers_app.py runs cqloop.workers.serve() in a subprocess, its
  workers post and log, and the test compares the logs they write (tests/workers_harness.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cqloop import worker_events
from cqloop.worker_events import (
    Broker,
    Client,
    Codec,
    Limits,
    PayloadTooLarge,
    PostQueueFull,
    WorkerEventsError,
)
from cqloop.worker_events.client import Registry, open_client
from cqloop.worker_events.codec import FrameKind, FrameReader, frame
from tests.workers_harness import peak_rss_kib, supervisor, wait_for

KIB = 1024
MIB = 1024 * KIB


@dataclass
class Member:
    """One client of an in-process broker, with its own callbacks and log."""

    client: Client
    registry: Registry
    log: list[tuple[int, str, str, Any, int]] = field(default_factory=list)

    def on_event(self, data: Any, event: str, source: str, pid: int) -> None:
        self.log.append((self.client.statistics().next_seq - 1, source, event, data, pid))

    def events(self, source: str = "t") -> list[Any]:
        return [entry[3] for entry in self.log if entry[1] == source]


@contextlib.asynccontextmanager
async def group(
    count: int, limits: Limits | None = None, codec: Codec = Codec.JSON
) -> AsyncIterator[tuple[Broker, list[Member]]]:
    limits = limits or Limits()
    broker = Broker(codec=codec, limits=limits, allow_pickle=True)
    members: list[Member] = []
    try:
        for index in range(count):
            ours, theirs = socket.socketpair()
            await broker.add_peer(ours, worker=index, pid=10_000 + index)
            registry = Registry()
            member = Member(Client(codec=codec, limits=limits, registry=registry), registry)
            registry.register(member.on_event, None, (), weak=False)
            await member.client.connect(sock=theirs)
            members.append(member)
        yield broker, members
    finally:
        for member in members:
            member.client.abort()
        broker.close()
        # Let the transports finish closing (their sockets close in connection_lost).
        for member in members:
            await asyncio.shield(member.client._closed)
        await asyncio.sleep(0)


async def until(condition: Any, what: str, timeout: float = 10.0) -> None:
    """Yield to the loop until `condition()` holds (bounded)."""

    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.001)

    try:
        await asyncio.wait_for(poll(), timeout)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def caught_up(broker: Broker, members: list[Member]) -> bool:
    """Every post of `members` sequenced (its POST_CREDIT came back), and every member has
    handled everything the broker sequenced."""
    stats = [m.client.statistics() for m in members]
    if any(s.unsequenced_bytes or s.queued_bytes for s in stats):
        return False
    next_seq = broker.statistics().next_seq
    return all(s.next_seq == next_seq for s in stats)


def assert_gap_free(log: list[tuple[int, str, str, Any, int]]) -> None:
    seqs = [entry[0] for entry in log]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


# -- in-process: order, guarantees at post time --------------------------------------------


async def test_every_client_gets_every_event_in_one_order() -> None:
    async with group(3) as (broker, members):
        for i in range(3000):
            members[i % 3].client.post("t", "n", i)
            if i % 100 == 0:
                await asyncio.sleep(0)  # posts from different clients interleave
        await until(lambda: caught_up(broker, members), "every client to catch up")
        logs = [m.log for m in members]
        assert logs[0][-3000:] == logs[1][-3000:] == logs[2][-3000:]
        for log in logs:
            assert_gap_free(log)
        # Each poster's own posts keep their order; every post arrived once.
        assert sorted(members[0].events()) == list(range(3000))
        for k in range(3):
            mine = [n for n in members[0].events() if n % 3 == k]
            assert mine == sorted(mine)
        # The broker's own events are in the same order for all: the later clients joined.
        started = [e[3]["worker"] for e in members[0].log if e[2] == "started"]
        assert started == [0, 1, 2]
        assert broker.statistics().sequenced == 3003


async def test_oversized_payload_is_refused_at_post_time() -> None:
    limits = Limits(max_payload=64 * KIB)
    async with group(1, limits) as (broker, [member]):
        with pytest.raises(PayloadTooLarge, match="over the broker's max_payload of 65536"):
            member.client.post("t", "big", "x" * (64 * KIB))
        with pytest.raises(PayloadTooLarge):
            await member.client.post_async("t", "big", "x" * (64 * KIB))
        member.client.post("t", "small", "x" * (60 * KIB))
        await until(lambda: caught_up(broker, [member]), "the small post")
        assert [e[2] for e in member.log if e[1] == "t"] == ["small"]
        assert broker.statistics().posts == 1


async def test_data_that_does_not_encode_is_refused_at_post_time() -> None:
    async with group(1) as (_, [member]):
        with pytest.raises(TypeError, match="does not encode as JSON"):
            member.client.post("t", "n", {1, 2})
        with pytest.raises(TypeError, match="source must be a non-empty str"):
            member.client.post(b"t", "n")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="unique must be a non-empty str"):
            member.client.post("t", "n", unique=5)  # type: ignore[arg-type]
        assert member.client.statistics().posted == 0


async def test_pickle_codec_carries_python_objects_between_members() -> None:
    async with group(2, codec=Codec.PICKLE) as (broker, members):
        members[0].client.post("t", "n", {1, 2, 3})
        await until(lambda: caught_up(broker, members), "the post")
        assert members[1].events() == [{1, 2, 3}]


def _explode() -> None:
    raise ValueError("cannot be rebuilt here")


class Unloadable:
    def __reduce__(self) -> tuple[Any, ...]:
        return (_explode, ())


async def test_an_event_that_does_not_decode_is_reported_and_the_stream_goes_on() -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: reported.append(context))
    try:
        async with group(1, codec=Codec.PICKLE) as (broker, [member]):
            member.client.post("t", "n", Unloadable())
            member.client.post("t", "n", "after")
            await until(lambda: caught_up(broker, [member]), "both posts")
            assert member.events() == ["after"]
            assert member.client.statistics().undecodable == 1
    finally:
        loop.set_exception_handler(None)
    [context] = reported
    assert "cannot be decoded here" in context["message"]
    assert str(context["exception"]) == "cannot be rebuilt here"


async def test_a_standalone_broker_refuses_pickle() -> None:
    with pytest.raises(ValueError, match="pickle codec is only for the workers"):
        Broker(codec=Codec.PICKLE)


async def test_a_client_of_another_codec_is_refused() -> None:
    broker = Broker(codec=Codec.JSON)
    ours, theirs = socket.socketpair()
    await broker.add_peer(ours, worker=0, pid=1)
    with pytest.raises(WorkerEventsError, match="speaks json, not 'pickle'"):
        await open_client(sock=theirs, codec=Codec.PICKLE, limits=Limits(), registry=Registry())
    broker.close()
    await asyncio.sleep(0)


async def test_post_async_inside_a_handler_raises_and_post_does_not_block() -> None:
    async with group(1) as (_, [member]):
        outcomes: list[str] = []

        def handler(data: Any, event: str, source: str, pid: int) -> None:
            coro = member.client.post_async("t", "from-handler")
            try:
                coro.send(None)
            except RuntimeError as exc:
                outcomes.append(str(exc))
            except StopIteration:
                outcomes.append("did not raise")
            finally:
                coro.close()
            member.client.post("t", "posted-from-handler")

        member.registry.register(handler, "t", ("trigger",), weak=False)
        await member.client.post_async("t", "trigger")
        await until(lambda: "posted-from-handler" in [e[2] for e in member.log], "the re-post")
        assert (
            len(outcomes) == 1
            and "cannot be awaited inside a worker_events handler" in (outcomes[0])
        )


async def test_plain_post_raises_past_max_queued_and_post_async_waits() -> None:
    limits = Limits(max_payload=16 * KIB, post_window=80 * KIB, max_queued=64 * KIB)
    async with group(1, limits) as (broker, [member]):
        payload = "x" * (15 * KIB)
        # No loop iteration runs here, so no credit comes back: the window fills, then
        # the queue, then post() refuses.
        with pytest.raises(PostQueueFull, match="await post_async"):
            for _ in range(100):
                member.client.post("t", "n", payload)
        posted = member.client.statistics().posted
        assert 5 <= posted < 100
        for _ in range(50):
            await member.client.post_async("t", "n", payload)
        await until(lambda: caught_up(broker, [member]), "every post")
        assert len(member.events()) == posted + 50


async def test_callbacks_run_in_order_and_unregister() -> None:
    async with group(1) as (_, [member]):
        calls: list[str] = []

        def everything(data: Any, event: str, source: str, pid: int) -> None:
            calls.append(f"all:{event}")

        def whole_source(data: Any, event: str, source: str, pid: int) -> None:
            calls.append(f"source:{event}")

        def one_event(data: Any, event: str, source: str, pid: int) -> None:
            calls.append(f"event:{event}")

        reg = member.registry
        reg.register(one_event, "s", ("a",), weak=False)
        reg.register(whole_source, "s", (), weak=False)
        reg.register(everything, None, (), weak=False)
        member.client.post("s", "a")
        member.client.post("s", "b")
        await until(lambda: len([c for c in calls if c.endswith("b")]) == 2, "both events")
        assert calls == ["all:a", "source:a", "event:a", "all:b", "source:b"]
        assert reg.unregister(whole_source, "s", ())
        assert not reg.unregister(whole_source, "s", ())
        calls.clear()
        member.client.post("s", "a")
        await until(lambda: len(calls) == 2, "the third event")
        assert calls == ["all:a", "event:a"]


async def test_register_weak_does_not_keep_the_callback() -> None:
    async with group(1) as (_, [member]):
        calls: list[int] = []

        class Holder:
            def on(self, data: Any, event: str, source: str, pid: int) -> None:
                calls.append(data)

        holder = Holder()
        member.registry.register(holder.on, "t", (), weak=True)
        member.client.post("t", "n", 1)
        await until(lambda: calls == [1], "the first event")
        del holder
        member.client.post("t", "n", 2)
        await until(lambda: 2 in member.events(), "the second event")
        assert calls == [1]


async def test_module_api_post_local_reaches_only_this_process() -> None:
    seen: list[tuple[Any, str, str, int]] = []

    def handler(data: Any, event: str, source: str, pid: int) -> None:
        seen.append((data, event, source, pid))

    worker_events.register(handler, "local-test")
    try:
        data = {"not": "encoded"}
        worker_events.post_local("local-test", "ping", data)
        assert seen == []  # on the next loop iteration
        await until(lambda: seen, "the local event")
        assert seen == [(data, "ping", "local-test", os.getpid())]
        assert seen[0][0] is data
        with pytest.raises(WorkerEventsError, match="not connected in this process"):
            worker_events.post("local-test", "ping")
    finally:
        assert worker_events.unregister(handler, "local-test")


# -- in-process: unique events ---------------------------------------------------------


async def test_unique_event_is_handled_by_exactly_one_client_within_its_window() -> None:
    async with group(3, Limits(unique_window=60.0)) as (broker, members):
        for member in members:
            for k in range(200):
                member.client.post("t", "u", k, unique=f"key-{k}")
        await until(lambda: caught_up(broker, members), "every client to catch up")
        handled = sorted(n for m in members for n in m.events())
        assert handled == list(range(200))
        assert all(m.events() for m in members)  # spread over the clients
        assert broker.statistics().coalesced == 400
        for member in members:
            stats = member.client.statistics()
            assert stats.unique_events + stats.skipped >= 200


async def test_unique_event_of_a_lost_client_goes_to_another() -> None:
    async with group(2, Limits(unique_window=60.0)) as (broker, members):
        first, second = members
        # `first` stops reading: what the broker sends it is never handled.
        assert first.client._transport is not None
        first.client._transport.pause_reading()
        for k in range(10):
            second.client.post("t", "u", k, unique=f"key-{k}")
        await until(lambda: broker.statistics().next_seq >= 13, "the posts to be sequenced")
        first.client.abort()
        await until(lambda: sorted(second.events()) == list(range(10)), "all ten handled")
        assert first.events() == []
        assert broker.statistics().unique_reassigned == 5


# -- in-process: flow control and eviction ------------------------------------------------


async def test_a_client_that_stops_reading_slows_the_posters_within_bounded_memory() -> None:
    limits = Limits(
        max_payload=64 * KIB, backlog_high=256 * KIB, backlog_low=64 * KIB, stall_timeout=60
    )
    async with group(2, limits) as (broker, members):
        poster, stuck = members
        assert stuck.client._transport is not None
        stuck.client._transport.pause_reading()
        payload = "y" * (60 * KIB)
        posts = asyncio.ensure_future(post_many(poster.client, payload, 64))
        await until(lambda: broker.statistics().backpressure, "backpressure")
        await until(lambda: poster.client.statistics().queued_bytes > 0, "the poster to queue")
        assert not posts.done()
        stats = broker.statistics()
        window = limits.effective_receive_window
        # Bounded: the backlog stops near backlog_high (one read's worth of frames past
        # it), the rest waits in the poster, within its post window.
        assert stats.peak_backlog_bytes <= limits.backlog_high + limits.effective_post_window
        stuck.client._transport.resume_reading()
        await posts
        await until(lambda: caught_up(broker, members), "the stuck client to catch up")
        assert stuck.events() == poster.events() == [payload] * 64
        assert broker.statistics().evictions == 0
        assert window >= 4 * limits.max_frame


async def post_many(client: Client, payload: str, count: int) -> None:
    for _ in range(count):
        await client.post_async("t", "n", payload)


async def test_a_stalled_client_is_evicted_with_a_gap_event_and_warnings(
    caplog: pytest.LogCaptureFixture,
) -> None:
    limits = Limits(
        max_payload=16 * KIB, backlog_high=64 * KIB, backlog_low=16 * KIB, stall_timeout=0.2
    )
    async with group(2, limits) as (broker, members):
        poster, stuck = members
        assert stuck.client._transport is not None
        stuck.client._transport.pause_reading()
        payload = "z" * (8 * KIB)
        with caplog.at_level("WARNING", logger="cqloop.worker_events"):
            await post_many(poster.client, payload, 40)  # completes only after eviction
            assert broker.statistics().evictions >= 1
            stuck.client._transport.resume_reading()
            await until(lambda: caught_up(broker, members), "the evicted client to resume")
        gaps = [e for e in stuck.log if e[1] == "cqloop.worker_events"]
        assert gaps and all(e[2] == "gap" for e in gaps)
        missed = sum(e[3]["missed"] for e in gaps)
        assert missed == broker.statistics().events_evicted > 0
        assert stuck.client.statistics().missed == missed
        # Nothing else is missing: what it handled plus what it was told it lost is all.
        assert len(stuck.events()) + missed == 40
        assert poster.events() == [payload] * 40
        messages = [r.getMessage() for r in caplog.records]
        assert any("evicted the backlog of client pid 10001" in m for m in messages)
        assert any("fell behind and was evicted" in m for m in messages)


# -- the wire format ------------------------------------------------------------------


@given(
    bodies=st.lists(st.binary(max_size=300), max_size=20),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=30),
)
def test_frame_reader_reassembles_frames_however_the_stream_is_cut(
    bodies: list[bytes], cuts: list[int]
) -> None:
    stream = b"".join(frame(FrameKind.EVENT, body) for body in bodies)
    points = sorted({c % (len(stream) + 1) for c in cuts})
    reader = FrameReader()
    got: list[tuple[int, bytes]] = []
    start = 0
    for point in [*points, len(stream)]:
        got += [(kind, bytes(body)) for kind, body in reader.feed(stream[start:point])]
        start = point
    assert got == [(FrameKind.EVENT, body) for body in bodies]
    assert reader.buffered() == 0


async def test_garbage_from_a_client_gets_it_refused() -> None:
    broker = Broker()
    ours, theirs = socket.socketpair()
    await broker.add_peer(ours, worker=0, pid=1)
    loop = asyncio.get_running_loop()
    theirs.setblocking(False)
    await loop.sock_sendall(theirs, b"\xff\xff\xff\xff\x01")  # a 4 GiB frame
    reply = b""
    while chunk := await loop.sock_recv(theirs, 4096):
        reply += chunk
    theirs.close()
    assert b"frame length 4294967295 is out of bounds" in reply
    broker.close()
    await asyncio.sleep(0)


# -- the standalone broker ------------------------------------------------------------


async def test_standalone_broker_serves_clients_of_this_user(tmp_path: Path) -> None:
    path = str(tmp_path / "events.sock")
    process = subprocess.Popen(
        [sys.executable, "-m", "cqloop.worker_events", "--socket", path],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        await until(lambda: os.path.exists(path), "the socket file", timeout=20)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        registries = [Registry(), Registry()]
        logs: list[list[Any]] = [[], []]
        for registry, log in zip(registries, logs, strict=True):
            registry.register(
                lambda d, e, s, p, log=log: log.append((s, e, d)), None, (), weak=False
            )
        clients = [
            await open_client(path=path, codec=Codec.JSON, limits=Limits(), registry=r)
            for r in registries
        ]
        for i in range(100):
            clients[i % 2].post("t", "n", i)
        await until(lambda: len([e for e in logs[0] if e[0] == "t"]) == 100, "client 0")
        await until(lambda: len([e for e in logs[1] if e[0] == "t"]) == 100, "client 1")
        assert [e for e in logs[0] if e[0] == "t"] == [e for e in logs[1] if e[0] == "t"]
        # The broker knows its clients by their kernel credentials: this process.
        started = [e[2]["pid"] for e in logs[0] if e[1] == "started"]
        assert started == [os.getpid(), os.getpid()]
        with pytest.raises(WorkerEventsError, match="speaks json"):
            await open_client(path=path, codec=Codec.PICKLE, limits=Limits(), registry=Registry())
        await clients[1].close()
        await until(lambda: any(e[1] == "exited" for e in logs[0]), "the exited event")
        await clients[0].close()
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.get_running_loop().run_in_executor(
            None, lambda: process.communicate(timeout=20)
        )
    assert process.returncode == 0, stderr.decode()
    assert not os.path.exists(path)


# A client that runs as another user (as `nobody`, with the system Python: the test's own
# interpreter may live where `nobody` cannot read). It connects and prints what it gets.
OTHER_USER_CLIENT = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
data = b""
while chunk := s.recv(4096):
    data += chunk
sys.stdout.buffer.write(data)
"""
NOBODY_UID = 65534
SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to run a client as another user")
@pytest.mark.skipif(not os.path.exists(SYSTEM_PYTHON), reason=f"needs {SYSTEM_PYTHON}")
async def test_standalone_broker_refuses_a_client_of_another_user() -> None:
    # Not in tmp_path: pytest's base directory is 0700, which `nobody` cannot traverse.
    with tempfile.TemporaryDirectory() as directory:
        os.chmod(directory, 0o755)
        await _refuses_another_user(os.path.join(directory, "events.sock"))


async def _refuses_another_user(path: str) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "cqloop.worker_events", "--socket", path],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    loop = asyncio.get_running_loop()
    try:
        await until(lambda: os.path.exists(path), "the socket file", timeout=20)
        # The file mode alone would stop `nobody`; open it up to reach the credential check.
        os.chmod(path, 0o666)
        other = await loop.run_in_executor(
            None,
            lambda: subprocess.run(
                [SYSTEM_PYTHON, "-c", OTHER_USER_CLIENT, path],
                user=NOBODY_UID,
                capture_output=True,
                timeout=20,
            ),
        )
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = await loop.run_in_executor(None, lambda: process.communicate(timeout=20))
    assert other.returncode == 0, other.stderr.decode()
    assert b"peer uid 65534 is not this broker's uid 0" in other.stdout
    assert b"refusing client" in stderr


# -- multi-process: cqloop.workers with worker_events ---------------------------------


def run_events(tmp_path: Path, mode: str, *args: str, survivors: int = 4) -> dict[int, Any]:
    """Run a supervisor in `mode`, wait for `survivors` workers to finish, stop it, and
    return the logs by pid."""
    with supervisor(tmp_path, mode, *args) as sup:
        wait_for(
            lambda: (sup.check_alive(), len(sup.done()) >= survivors)[1],
            f"{survivors} workers to finish",
            deadline_s=60,
        )
        code, _ = sup.stop()
        assert code == 0, sup.stderr()
        return sup.logs()


def check_identical_and_gap_free(logs: list[list[list[Any]]]) -> list[list[Any]]:
    """Each log gap-free; from the first seq they all hold, all identical. Returns it."""
    for log in logs:
        seqs = [entry[0] for entry in log]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "a log has a gap"
    common = max(log[0][0] for log in logs)
    tails = [[entry for entry in log if entry[0] >= common] for log in logs]
    last = min(tail[-1][0] for tail in tails)
    tails = [[entry for entry in tail if entry[0] <= last] for tail in tails]
    for tail in tails[1:]:
        assert tail == tails[0]
    return tails[0]


def test_four_workers_posting_20000_events_each_have_identical_gap_free_logs(
    tmp_path: Path,
) -> None:
    posts = 20_000
    logs = run_events(tmp_path, "events", "--workers", "4", "--posts", str(posts))
    assert len(logs) == 4
    common = check_identical_and_gap_free([value["log"] for value in logs.values()])
    posted = [tuple(e[3]) for e in common if e[1:3] == ["test", "n"]]
    assert sorted(posted) == [(w, i) for w in range(4) for i in range(posts)]
    for w in range(4):
        assert [i for (ww, i) in posted if ww == w] == list(range(posts))
    assert all(value["gaps"] == 0 for value in logs.values())


def test_a_worker_killed_mid_stream_leaves_the_others_identical_and_told(tmp_path: Path) -> None:
    posts = 20_000
    logs = run_events(
        tmp_path,
        "events",
        "--workers",
        "4",
        "--posts",
        str(posts),
        "--kill-worker",
        "2",
        "--kill-at",
        str(posts // 2),
        survivors=3,
    )
    survivors = [value for value in logs.values() if value["index"] != 2]
    assert len(survivors) == 3
    common = check_identical_and_gap_free([value["log"] for value in survivors])
    exited = [e for e in common if e[1:3] == ["cqloop.workers", "exited"]]
    assert [(e[3]["worker"], e[3]["exitcode"]) for e in exited] == [(2, -signal.SIGKILL)]
    # The victim's posts before its death, all of them, in order, and before "exited".
    victim = [e[3][1] for e in common if e[1:3] == ["test", "n"] and e[3][0] == 2]
    assert victim == list(range(len(victim))) and 0 < len(victim) <= posts // 2
    exited_at = exited[0][0]
    assert all(e[0] < exited_at for e in common if e[1:3] == ["test", "n"] and e[3][0] == 2)
    for w in (0, 1, 3):
        assert [e[3][1] for e in common if e[1:3] == ["test", "n"] and e[3][0] == w] == list(
            range(posts)
        )


def test_500_unique_keys_posted_by_every_worker_are_each_handled_once(tmp_path: Path) -> None:
    logs = run_events(
        tmp_path,
        "unique",
        "--workers",
        "4",
        "--posts",
        "500",
        "--limits",
        '{"unique_window": 120}',
    )
    handled = [key for value in logs.values() for key in value["unique"]]
    assert sorted(handled) == sorted(f"key-{k}" for k in range(500))
    assert all(value["unique"] for value in logs.values())  # the work was spread


def test_a_burst_of_1mib_payloads_to_a_slow_consumer_arrives_complete_in_bounded_memory(
    tmp_path: Path,
) -> None:
    count = 48
    limits = (
        '{"max_payload": 1200000, "backlog_high": 4194304, "backlog_low": 1048576,'
        ' "stall_timeout": 60}'
    )
    with supervisor(
        tmp_path,
        "burst",
        "--workers",
        "3",
        "--posts",
        str(count),
        "--payload",
        str(MIB),
        "--slow-worker",
        "2",
        "--limits",
        limits,
    ) as sup:
        sup.wait_started(3)
        before = peak_rss_kib(sup.pid)
        wait_for(lambda: (sup.check_alive(), len(sup.done()) == 3)[1], "the burst", 60)
        supervisor_growth = peak_rss_kib(sup.pid) - before
        code, _ = sup.stop()
        assert code == 0, sup.stderr()
        logs = sup.logs()
    assert len(logs) == 3
    for value in logs.values():
        assert value["received"] == count and value["bad"] == 0
        assert [e[3] for e in value["log"] if e[1:3] == ["test", "blob"]] == list(range(count))
        assert value["gaps"] == 0
    # 48 MiB went to each of 3 workers (144 MiB in all); the supervisor held a bounded
    # part of it: backlog_high (4 MiB), 3 post windows (~7 MiB) and the frames in its
    # transports' buffers, shared between the workers.
    assert supervisor_growth < 40 * 1024, f"the supervisor grew by {supervisor_growth} KiB"
    for value in logs.values():
        assert value["peak_rss_kib"] < 120 * 1024


def test_a_stalled_worker_is_evicted_with_a_gap_event_and_warnings(tmp_path: Path) -> None:
    posts = 400
    limits = (
        '{"max_payload": 16384, "backlog_high": 65536, "backlog_low": 16384, "stall_timeout": 0.5}'
    )
    os.mkfifo(tmp_path / "fifo")
    with supervisor(
        tmp_path,
        "stall",
        "--workers",
        "2",
        "--posts",
        str(posts),
        "--payload",
        "4000",
        "--slow-worker",
        "1",
        "--limits",
        limits,
    ) as sup:
        # Worker 1 blocks in its handler on the fifo; the broker evicts it...
        wait_for(lambda: "evicted the backlog of client pid" in sup.stderr(), "an eviction")
        # ...and worker 0 goes on posting; then worker 1 is let go.
        with open(tmp_path / "fifo", "wb") as fifo:
            fifo.write(b"x")
        wait_for(lambda: (sup.check_alive(), len(sup.done()) == 2)[1], "both workers", 30)
        code, _ = sup.stop()
        assert code == 0, sup.stderr()
        logs = {value["index"]: value for value in sup.logs().values()}
        stderr = sup.stderr()
    assert "fell behind and was evicted" in stderr  # the worker's own warning
    fast, slow = logs[0], logs[1]
    assert fast["gaps"] == 0 and slow["gaps"] >= 1
    posted = [e[3]["i"] for e in fast["log"] if e[1:3] == ["test", "n"]]
    assert posted == list(range(posts))
    # The slow worker's log accounts for every sequence number: events, or gap ranges.
    expected = slow["log"][0][0]
    missed = 0
    for seq, source, event, data, _pid in slow["log"]:
        if (source, event) == ("cqloop.worker_events", "gap"):
            assert data["first"] == expected and data["last"] == seq
            missed += data["missed"]
        else:
            assert seq == expected
        expected = seq + 1
    assert missed == slow["missed"] > 0
    got = [e[3]["i"] for e in slow["log"] if e[1:3] == ["test", "n"]]
    assert len(got) + missed == posts  # what it lost is what the gaps say
    assert got == sorted(got)


def test_pickle_codec_between_workers(tmp_path: Path) -> None:
    logs = run_events(
        tmp_path, "events", "--workers", "2", "--posts", "200", "--codec", "pickle", survivors=2
    )
    common = check_identical_and_gap_free([value["log"] for value in logs.values()])
    assert len([e for e in common if e[1:3] == ["test", "n"]]) == 400
