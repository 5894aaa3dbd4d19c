"""cqloop.worker_events across hosts, on a real redis-server (tests/redis_harness.py).

Each host is a cqloop.workers supervisor in a process of its own, bridged to one Redis
stream with serve(events="redis://..."); its workers post and log, and the test compares
the logs: every worker of every host handles every broadcast once, in the same order;
each unique event is handled once in the whole cluster (and at least once across a
SIGKILL); faults (Redis restarted, one host cut off, a host killed) lose nothing that was
appended and deliver nothing twice.

Skipped when redis-server is not installed, except in CI (CI=true), where that fails:
.ci/run installs it.
"""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import cqloop.workers
from cqloop.worker_events import Broker, ClientState, Codec, Limits
from cqloop.worker_events.client import Registry, open_client
from cqloop.worker_events.cluster import ClusterSettings
from tests.redis_harness import (
    CutProxy,
    Host,
    NetnsLink,
    RedisServer,
    read_json,
    redis_server_path,
    wait_files,
)
from tests.test_worker_events import group, until
from tests.workers_harness import wait_for

if redis_server_path() is None:
    if os.environ.get("CI") == "true":
        pytest.fail("redis-server is missing: apt-get install redis-server", pytrace=False)
    pytest.skip("redis-server is not installed", allow_module_level=True)
pytest.importorskip("redis", reason="the cluster extra is missing: pip install 'cqloop[cluster]'")
from cqloop.worker_events._redis_bridge import APPEND_SCRIPT, RedisBridge

HOSTS = 3
WORKERS = 3
RUN_DEADLINE_S = 180.0


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def hosts(outdir: Path, mode: str, urls: list[str], *args: str) -> Iterator[list[Host]]:
    started: list[Host] = []
    try:
        for index, url in enumerate(urls):
            started.append(Host(outdir, mode, url, index, "--hosts", str(len(urls)), *args))
        yield started
    finally:
        for host in started:
            host.kill()


def common(per_worker: int) -> list[str]:
    return ["--workers", str(WORKERS), "--posts", str(per_worker)]


def check_broadcast_logs(outdir: Path, count: int, per_worker: int) -> list[dict[str, Any]]:
    """Every log holds the same sequence, in which each worker's posts appear once and
    in the order it posted them; returns the logs."""
    logs = [read_json(p) for p in sorted(outdir.glob("log-*.json"))]
    assert len(logs) == count
    reference = logs[0]["events"]
    assert len(reference) == per_worker * count
    for log in logs:
        assert log["gaps"] == []
        assert log["events"] == reference, f"worker {log['tag']} saw another order"
    by_poster: dict[str, list[int]] = collections.defaultdict(list)
    for tag, i in reference:
        by_poster[tag].append(i)
    assert len(by_poster) == count
    for numbers in by_poster.values():
        assert numbers == list(range(per_worker))
    return logs


def test_broadcasts_from_every_host_reach_every_worker_in_one_order(
    redis_server: RedisServer, tmp_path: Path
):
    total = 10_000
    per_worker = total // (HOSTS * WORKERS) + 1  # 1,112 each: 10,008 in all
    urls = [redis_server.url + "?stream=t1"] * HOSTS
    start = time.monotonic()
    with hosts(
        tmp_path, "broadcast", urls, "--workers", str(WORKERS), "--posts", str(per_worker)
    ) as running:
        wait_files(
            tmp_path, "log-*.json", HOSTS * WORKERS, running, "every worker's log", RUN_DEADLINE_S
        )
        elapsed = time.monotonic() - start
        check_broadcast_logs(tmp_path, HOSTS * WORKERS, per_worker)
        for host in running:
            assert host.stop() == 0
    print(f"{per_worker * HOSTS * WORKERS} broadcasts x {HOSTS * WORKERS} workers: {elapsed:.2f} s")


def handled_keys(outdir: Path) -> list[tuple[str, int]]:
    """(key, pid) of every unique event handled so far, from every worker's file."""
    found = []
    for path in outdir.glob("handled-*.txt"):
        for line in path.read_text().splitlines():
            key, pid = line.split()
            found.append((key, int(pid)))
    return found


def wait_handled(
    outdir: Path, expected: set[str], running: list[Host], deadline_s: float
) -> list[tuple[str, int]]:
    def covered() -> list[tuple[str, int]] | None:
        for host in running:
            host.check_alive()
        found = handled_keys(outdir)
        return found if expected <= {key for key, _ in found} else None

    return wait_for(covered, f"{len(expected)} unique events to be handled", deadline_s)


def test_redis_restarted_mid_run_loses_nothing_and_duplicates_nothing(tmp_path: Path):
    server = RedisServer(tmp_path / "redis", appendonly=True)
    server.start()
    try:
        per_worker = 600
        url = server.url + "?stream=t2&backoff_max=0.5"
        args = (*common(per_worker), "--rate", "300", "--progress", "1500")
        with hosts(tmp_path, "broadcast", [url] * HOSTS, *args) as running:
            wait_files(
                tmp_path, "progress-*", 1, running, "a worker a quarter through", RUN_DEADLINE_S
            )
            server.restart()  # SIGTERM: Redis writes its append-only file; then again
            wait_files(
                tmp_path,
                "log-*.json",
                HOSTS * WORKERS,
                running,
                "every worker's log",
                RUN_DEADLINE_S,
            )
            check_broadcast_logs(tmp_path, HOSTS * WORKERS, per_worker)
            for host in running:
                assert host.stop() == 0
                assert "retrying with backoff" in host.stderr()
    finally:
        server.stop()


def test_unique_events_from_every_host_are_handled_once_in_the_cluster(
    redis_server: RedisServer, tmp_path: Path
):
    per_worker = 334  # 1,002 a host
    kill_key = "0.1:kill"
    shared = "everyone"  # posted by all 9 workers: coalesced into one, cluster-wide
    url = redis_server.url + "?stream=t3"
    args = (*common(per_worker), "--kill-key", kill_key, "--shared-key", shared)
    # The shared key coalesces within Limits.unique_window of its first post; each worker
    # posts it after its own 334, and on a loaded machine the last may come more than the
    # default 10 s after the first: a new event then, by design. The window spans the run.
    args += ("--limit", f"unique_window={RUN_DEADLINE_S}")
    expected = {
        f"{h}.{w}-{i}" for h in range(HOSTS) for w in range(WORKERS) for i in range(per_worker)
    }
    with hosts(tmp_path, "unique", [url] * HOSTS, *args) as running:
        expected |= {kill_key, shared}
        found = wait_handled(tmp_path, expected, running, RUN_DEADLINE_S)
        for host in running:
            assert host.stop() == 0
    found = handled_keys(tmp_path)
    killed_pid = int((tmp_path / f"killed-{kill_key}").read_text())
    counts = collections.Counter(key for key, _ in found)
    assert set(counts) == expected
    # Twice, never zero: only an event the SIGKILLed worker handled without having
    # acknowledged it yet (it read it with the kill key) may run twice.
    handlers: dict[str, list[int]] = collections.defaultdict(list)
    for key, pid in found:
        handlers[key].append(pid)
    assert killed_pid not in handlers[kill_key]
    twice = {key for key, count in counts.items() if count > 1}
    for key in twice:
        assert counts[key] == 2 and killed_pid in handlers[key], (key, handlers[key])
    print(f"{len(expected)} unique events, {len(twice)} handled twice across the SIGKILL")


def test_a_host_killed_while_holding_a_unique_event_is_replaced_and_restarts(
    redis_server: RedisServer, tmp_path: Path
):
    hold_key = "0.0:hold"
    url = redis_server.url + "?stream=t4&claim_timeout=2"
    base = ("--workers", "2", "--posts", "0")
    with contextlib.ExitStack() as stack:
        started = hosts(tmp_path, "hold", [url], *base, "--hold-key", hold_key)
        first = stack.enter_context(started)[0]
        holding = wait_files(
            tmp_path,
            f"holding-{hold_key}-*",
            1,
            [first],
            "a worker of host 0 to hold the unique event",
            RUN_DEADLINE_S,
        )
        holder = int(holding[0].name.rsplit("-", 1)[1])
        others = [
            Host(tmp_path, "hold", url, h, "--hosts", "3", "--barrier-hosts", "1,2", *base)
            for h in (1, 2)
        ]
        stack.callback(lambda: [h.kill() for h in others])
        wait_files(
            tmp_path, "started-[12]-*.json", 4, [first, *others], "hosts 1 and 2", RUN_DEADLINE_S
        )
        # While host 0 lives it keeps the event fresh: two and a half claim timeouts pass
        # (a duration of the check, not a synchronisation) and nobody else takes it.
        time.sleep(5.0)
        assert handled_keys(tmp_path) == []
        first.kill()
        found = wait_handled(tmp_path, {hold_key}, others, RUN_DEADLINE_S)
        assert [pid for key, pid in found if key == hold_key] != [holder]
        assert sum("claimed unique event" in h.stderr() for h in others) == 1
        # Host 0 comes back (a new process): it delivers from the stream's end on, and
        # its own unique events are handled once in the cluster; the old one is not
        # handled again.
        again_args = ["--hosts", "3", "--barrier-hosts", "0", "--workers", "2", "--posts", "50"]
        again = Host(tmp_path, "unique", url, 0, *again_args)
        stack.callback(again.kill)
        fresh = {f"0.{w}-{i}" for w in range(2) for i in range(50)}
        wait_handled(tmp_path, fresh, [again, *others], RUN_DEADLINE_S)
        for host in (again, *others):
            assert host.stop() == 0
        counts = collections.Counter(key for key, _ in handled_keys(tmp_path))
        assert counts == collections.Counter(fresh | {hold_key})


def test_a_host_cut_off_for_two_seconds_catches_up_and_a_killed_worker_disturbs_nobody(
    redis_server: RedisServer, tmp_path: Path
):
    per_worker = 500
    observer = WORKERS - 1
    proxy = CutProxy(redis_server.port)
    try:
        url = redis_server.url + "?stream=t5&backoff_max=0.25"
        cut_url = url.replace(f":{redis_server.port}/", f":{proxy.port}/")
        args = (
            *common(per_worker),
            "--rate",
            "250",
            "--progress",
            "600",
            "--observer",
            str(observer),
        )
        with hosts(tmp_path, "broadcast", [url, url, cut_url], *args) as running:
            wait_files(
                tmp_path, "progress-2.*", 1, running, "host 2 a fifth through", RUN_DEADLINE_S
            )
            victim = next(
                read_json(p)["pid"]
                for p in tmp_path.glob("started-0-*.json")
                if read_json(p)["observer"]
            )
            os.kill(victim, 9)
            proxy.cut()
            time.sleep(2.0)  # the length of the partition, not a synchronisation
            proxy.heal()
            posting = HOSTS * (WORKERS - 1)
            wait_files(
                tmp_path, "log-*.json", posting, running, "every poster's log", RUN_DEADLINE_S
            )
            check_broadcast_logs(tmp_path, posting, per_worker)
            for host in running:
                assert host.stop() == 0
            assert "retrying with backoff" in running[2].stderr()
            assert "retrying with backoff" not in running[0].stderr()
    finally:
        proxy.close()


def test_the_password_is_never_logged(tmp_path: Path):
    password = "s3cret-Pa55"
    server = RedisServer(tmp_path / "redis", password=password)
    server.start()
    proxy = CutProxy(server.port)
    try:
        url = server.url.replace(f":{server.port}/", f":{proxy.port}/") + "?stream=t6"
        with hosts(tmp_path, "broadcast", [url], "--workers", "2", "--posts", "10") as running:
            wait_files(tmp_path, "log-*.json", 2, running, "both logs", RUN_DEADLINE_S)
            proxy.cut()
            wait_for(lambda: "retrying with backoff" in running[0].stderr(), "the warning")
            proxy.heal()
            assert running[0].stop() == 0
        log = running[0].stderr()
        assert password not in log
        assert ":***@127.0.0.1" in log
    finally:
        proxy.close()
        server.stop()


def test_a_host_that_resumes_past_the_trimmed_part_gets_one_gap_event(
    redis_server: RedisServer, tmp_path: Path
):
    # Host 0 posts (paced) while host 1, which posts nothing, is cut off for longer than
    # the stream keeps (until host 0 has handled every event, 1,900 more): host 1 resumes
    # past the trimmed part. (Healed while host 0 still posted, host 1 could fall more than
    # the stream's 300 entries behind again on a loaded machine: a second gap, rightly.)
    per_worker = 1000
    proxy = CutProxy(redis_server.port)
    try:
        url = redis_server.url + "?stream=t7&maxlen=300&backoff_max=0.25"
        cut_url = url.replace(f":{redis_server.port}/", f":{proxy.port}/")
        pacing = ("--hosts", "2", "--workers", "2", "--rate", "400")
        pacing += ("--progress", "100", "--progress", str(2 * per_worker))
        running = [
            Host(tmp_path, "broadcast", url, 0, *pacing, "--posts", str(per_worker)),
            Host(tmp_path, "broadcast", cut_url, 1, *pacing, "--posts", "0"),
        ]
        try:
            wait_files(tmp_path, "progress-1.*-100", 1, running, "host 1 under way", RUN_DEADLINE_S)
            proxy.cut()
            # Host 0 handles the rest meanwhile, far past what the stream keeps.
            done = f"progress-0.0-{2 * per_worker}"
            wait_files(tmp_path, done, 1, running, "host 0 done", RUN_DEADLINE_S)
            proxy.heal()
            wait_files(tmp_path, "log-*.json", 4, running, "every log", RUN_DEADLINE_S)
            for host in running:
                assert host.stop() == 0
        finally:
            for host in running:
                host.kill()
        logs = {log["tag"]: log for log in map(read_json, tmp_path.glob("log-*.json"))}
        reference = logs["0.0"]["events"]
        assert len(reference) == 2 * per_worker
        assert logs["0.1"]["events"] == reference
        assert logs["0.0"]["gaps"] == logs["0.1"]["gaps"] == []
        assert logs["1.0"]["events"] == logs["1.1"]["events"]
        gaps = logs["1.0"]["gaps"]
        assert len(gaps) == 1 and gaps == logs["1.1"]["gaps"]
        missed = gaps[0]["missed"]
        assert missed > 0 and gaps[0]["last"] - gaps[0]["first"] + 1 == missed
        # What host 1 saw is the stream's order with one run of `missed` entries cut out.
        seen = logs["1.0"]["events"]
        assert len(seen) + missed == len(reference)
        start = next(i for i, (a, b) in enumerate(zip(seen, reference, strict=False)) if a != b)
        assert seen == reference[:start] + reference[start + missed :]
        assert "were trimmed before this host read them" in running[1].stderr()
        print(f"host 1 missed {missed} of {len(reference)} entries")
    finally:
        proxy.close()


def test_tls_with_rediss(tmp_path: Path):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    paths = {"ca": tmp_path / "ca.pem", "cert": tmp_path / "cert.pem", "key": tmp_path / "key.pem"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    cert.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    cert.private_key_pem.write_to_path(str(paths["key"]))
    server = RedisServer(tmp_path / "redis", tls={k: str(v) for k, v in paths.items()})
    server.start()
    try:
        url = f"{server.url}?stream=t8&ssl_ca_certs={paths['ca']}"
        with hosts(
            tmp_path, "broadcast", [url, url], "--workers", "2", "--posts", "200"
        ) as running:
            wait_files(tmp_path, "log-*.json", 4, running, "every log", RUN_DEADLINE_S)
            check_broadcast_logs(tmp_path, 4, 200)
            for host in running:
                assert host.stop() == 0
    finally:
        server.stop()


# -- settings, and the extra --------------------------------------------------------------


def test_events_url_parameters_are_ours_and_the_rest_is_the_redis_packages():
    settings = ClusterSettings.from_url(
        "redis://u:pw@10.1.2.3:6380/2?stream=s&maxlen=7&queue=4096&backoff_min=0.1"
        "&backoff_max=3&claim_timeout=5&ssl_cert_reqs=none"
    )
    assert (settings.stream, settings.maxlen, settings.queue) == ("s", 7, 4096)
    assert (settings.backoff_min, settings.backoff_max, settings.claim_timeout) == (0.1, 3.0, 5.0)
    assert settings.url == "redis://u:pw@10.1.2.3:6380/2?ssl_cert_reqs=none"
    assert "pw" not in repr(settings) and "u:***@10.1.2.3:6380" in repr(settings)


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("http://127.0.0.1:6379/0", "redis:// or rediss://"),
        ("redis:///0", "names no host"),
        ("redis://h:1/0?maxlen=0", "maxlen must be positive"),
        ("redis://h:1/0?maxlen=many", "not a int"),
        ("redis://h:1/0?claim_timeout=inf", "claim_timeout must be positive"),
        ("redis://h:1/0?stream=", "stream must not be empty"),
        ("redis://h:1/0?backoff_min=5&backoff_max=1", "backoff_min must not be above"),
    ],
)
def test_a_bad_events_url_is_refused_before_anything_starts(url: str, error: str):
    with pytest.raises(ValueError, match=error):
        ClusterSettings.from_url(url)


def test_serve_refuses_pickle_across_hosts():
    async def app(listener: Any) -> None:
        pass

    with pytest.raises(ValueError, match="speaks JSON"):
        cqloop.workers.serve(app, workers=1, port=0, codec="pickle", events="redis://h:1/0")


async def test_the_bridge_repr_hides_the_password():
    broker = Broker()
    bridge = RedisBridge(ClusterSettings.from_url("redis://:hunter2@127.0.0.1:1/0"), broker)
    try:
        assert "hunter2" not in repr(bridge)
        assert ":***@127.0.0.1:1/0" in repr(bridge)
    finally:
        await bridge.close()
        broker.close()


def test_without_the_redis_package_a_redis_url_names_the_extra():
    program = """
import sys
sys.modules["redis"] = None  # as if the package were not installed
import cqloop.workers
from cqloop import worker_events  # works without it

async def app(listener):
    pass

try:
    cqloop.workers.serve(app, workers=1, port=0, events="redis://127.0.0.1:1/0")
except ImportError as exc:
    print(exc)
"""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    proc = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert "pip install 'cqloop[cluster]'" in proc.stdout


def test_the_cluster_benchmark_runs_and_reports(tmp_path: Path):
    out = tmp_path / "cluster.json"
    argv = ["-m", "cqloop._bench.worker_events", "--cluster", "--quick", "--events", "100"]
    proc = subprocess.run(
        [sys.executable, *argv, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    figures = read_json(out)
    assert figures["cluster_deliveries_per_s"] > 0 and figures["single_host_deliveries_per_s"] > 0
    for name in ("paced", "single_paced"):
        p50, p99, top = (figures[f"{name}_latency_{q}_s"] for q in ("p50", "p99", "max"))
        assert 0 < p50 <= p99 <= top
    assert "3 hosts x 4 workers (one Redis stream)" in proc.stdout
    if shutil.which("redis-benchmark"):
        # The latency phase offers 10% of the XADD rate it measured, in deliveries/s.
        xadd = figures["redis_benchmark_xadd_per_s"]
        offered = figures["paced_rate_per_worker"] * (3 * 4) ** 2
        assert offered == pytest.approx(0.1 * xadd)
        assert "% of XADD" in proc.stdout


def test_posts_while_redis_is_down_queue_bounded_and_are_appended_in_order(tmp_path: Path):
    # A host's queue (1 KiB here), its broker's hold (one post window) and the worker's
    # own queue (Limits.max_queued) fill while Redis is down; then post() raises
    # PostQueueFull, and what was taken is appended, in order, once Redis is back.
    server = RedisServer(tmp_path / "redis", appendonly=True)
    server.start()
    try:
        url = server.url + "?stream=t9&queue=1024&backoff_max=0.25"
        limits = ["--limit", "max_payload=1024", "--limit", "max_queued=8192"]
        args = ("--workers", "1", "--hosts", "1", "--posts", "100000", *limits)
        with hosts(tmp_path, "flood", [url], *args) as running:
            wait_files(tmp_path, "ready-0.0", 1, running, "the worker past its barrier", 60)
            worker = read_json(next(tmp_path.glob("started-0-*.json")))["pid"]
            server.stop()
            os.kill(worker, signal.SIGUSR1)
            flooded = read_json(
                wait_files(tmp_path, "flooded-0.0.json", 1, running, "the flood", 60)[0]
            )
            assert flooded["error"] and flooded["error"].startswith("PostQueueFull")
            # The bound: the host's queue, one post window held by the broker, the
            # worker's own queue, and what was on its way between them.
            assert 60 < flooded["count"] < 400, flooded
            server.start()
            log = read_json(wait_files(tmp_path, "log-0.0.json", 1, running, "the log", 60)[0])
            assert log["flooded"] == list(range(flooded["count"]))
            assert running[0].stop() == 0
    finally:
        server.stop()


@contextlib.contextmanager
def standalone_broker(path: Path, url: str) -> Iterator[subprocess.Popen[bytes]]:
    argv = [sys.executable, "-m", "cqloop.worker_events", "--socket", str(path), "--events", url]
    with open(path.with_suffix(".err"), "wb") as stderr:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=stderr)
    try:
        wait_for(lambda: path.exists() or process.poll() is not None, f"{path} to appear")
        assert process.poll() is None, path.with_suffix(".err").read_text()
        yield process
    finally:
        process.terminate()
        process.wait(30)


async def test_standalone_brokers_bridged_to_one_stream(redis_server: RedisServer, tmp_path: Path):
    url = redis_server.url + "?stream=t10"
    with (
        standalone_broker(tmp_path / "a.sock", url),
        standalone_broker(tmp_path / "b.sock", url),
    ):
        logs: dict[str, list[Any]] = {"a": [], "b": []}
        clients = {}
        try:
            for name in ("a", "b"):
                registry = Registry()
                registry.register(
                    lambda data, event, source, pid, log=logs[name]: log.append((event, data)),
                    "t",
                    (),
                    weak=False,
                )
                clients[name] = await open_client(
                    path=str(tmp_path / f"{name}.sock"),
                    codec=Codec.JSON,
                    limits=Limits(),
                    registry=registry,
                )
                # Its own post coming back says its broker reads the stream.
                clients[name].post("t", "ping", name)
                await until(lambda name=name: ("ping", name) in logs[name], f"{name}'s ping", 30)
            for i in range(100):
                clients["a" if i % 2 else "b"].post("t", "n", i)
            sequences: dict[str, list[Any]] = {}

            def both() -> bool:
                for name, log in logs.items():
                    sequences[name] = [data for event, data in log if event == "n"]
                return len(sequences["a"]) == len(sequences["b"]) == 100

            await until(both, "every event on both", 30)
            assert sequences["a"] == sequences["b"] and sorted(sequences["a"]) == list(range(100))
        finally:
            for client in clients.values():
                await client.close()


@pytest.fixture
def netns_link() -> Iterator[NetnsLink]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("a network namespace needs root and iproute2")
    try:
        link = NetnsLink()
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot make a network namespace here: {exc.stderr!r}")
    try:
        yield link
    finally:
        link.close()


def test_a_host_in_its_own_network_namespace_rides_out_a_silent_partition(
    netns_link: NetnsLink, tmp_path: Path
):
    # Host 2 runs in a namespace of its own and reaches Redis over a veth pair; the link
    # goes down for 2 s (packets dropped, nothing reset), and comes back.
    # (Redis serves a non-loopback client only with a password: AUTH runs over the link.)
    bind = ("127.0.0.1", netns_link.local_address)
    server = RedisServer(tmp_path / "redis", bind=bind, password="over-the-veth")
    server.start()
    try:
        per_worker = 500
        url = server.url + "?stream=t11&backoff_max=0.25"
        far_url = url.replace("127.0.0.1", netns_link.local_address)
        args = [*common(per_worker), "--hosts", "3", "--rate", "250", "--progress", "600"]
        running = [Host(tmp_path, "broadcast", url, h, *args) for h in (0, 1)]
        running.append(Host(tmp_path, "broadcast", far_url, 2, *args, prefix=netns_link.prefix))
        try:
            wait_files(tmp_path, "progress-2.*", 1, running, "host 2 under way", RUN_DEADLINE_S)
            netns_link.cut()
            time.sleep(2.0)  # the length of the partition, not a synchronisation
            netns_link.heal()
            wait_files(
                tmp_path, "log-*.json", HOSTS * WORKERS, running, "every log", RUN_DEADLINE_S
            )
            check_broadcast_logs(tmp_path, HOSTS * WORKERS, per_worker)
            for host in running:
                assert host.stop() == 0
        finally:
            for host in running:
                host.kill()
    finally:
        server.stop()


def test_a_stalled_worker_is_evicted_and_the_rest_of_its_host_reads_on(
    redis_server: RedisServer, tmp_path: Path
):
    # Worker 0.2 blocks in its handler. Its backlog passes backlog_high: host 0's broker
    # stops sequencing and its bridge stops reading; after stall_timeout the broker evicts
    # it, and reading goes on. Every other worker of both hosts sees every event; 0.2,
    # once unblocked, sees one gap in their place and then the rest.
    per_worker = 300
    limits = ["max_payload=1024", "backlog_high=32768", "backlog_low=8192", "stall_timeout=0.5"]
    # Paced, so that the posting (and its "finished") outlasts the eviction.
    args = [*common(per_worker), "--hosts", "2", "--stall", "0.2", "--rate", "100"]
    args += [f"--limit={limit}" for limit in limits]
    url = redis_server.url + "?stream=t12"
    with hosts(tmp_path, "broadcast", [url, url], *args) as running:

        def evicted() -> bool:
            running[0].check_alive()
            return "evicted the backlog" in running[0].stderr()

        try:
            wait_for(evicted, "the eviction", RUN_DEADLINE_S)
        except AssertionError as exc:
            # (Seen once in a loaded CI run, not since: what each host logged says where
            # the events stopped.)
            logs = "".join(f"\n--- host {h.host}:\n{h.stderr()[-4000:]}" for h in running)
            raise AssertionError(f"{exc}{logs}") from None
        with open(tmp_path / "fifo", "wb") as fifo:
            fifo.write(b"!")
        wait_files(tmp_path, "log-*.json", 2 * WORKERS, running, "every log", RUN_DEADLINE_S)
        for host in running:
            assert host.stop() == 0
    logs = {log["tag"]: log for log in map(read_json, tmp_path.glob("log-*.json"))}
    reference = logs["0.0"]["events"]
    assert len(reference) == 2 * WORKERS * per_worker
    for tag, log in logs.items():
        if tag != "0.2":
            assert log["events"] == reference and log["gaps"] == [], tag
    stalled = logs["0.2"]
    assert len(stalled["gaps"]) == 1
    seen = stalled["events"]
    start = next(i for i, (a, b) in enumerate(zip(seen, reference, strict=False)) if a != b)
    lost = len(reference) - len(seen)
    assert 0 < lost <= stalled["gaps"][0]["missed"]
    assert seen == reference[:start] + reference[start + lost :]


def test_posts_whose_reply_was_lost_are_appended_once(redis_server: RedisServer, tmp_path: Path):
    # Host 1's replies from Redis are dropped for a while (its appends and reads reach
    # Redis and act there), then its connections break: it resends the batches whose
    # reply it never had and reads again from where it was. Nothing twice.
    per_worker = 600
    proxy = CutProxy(redis_server.port)
    try:
        url = redis_server.url + "?stream=t13&backoff_max=0.25"
        lossy_url = url.replace(f":{redis_server.port}/", f":{proxy.port}/")
        args = [*common(per_worker), "--hosts", "2", "--rate", "300", "--progress", "300"]
        with hosts(tmp_path, "broadcast", [url, lossy_url], *args) as running:
            wait_files(tmp_path, "progress-1.*", 1, running, "host 1 under way", RUN_DEADLINE_S)
            proxy.swallow()
            time.sleep(0.5)  # how long replies are lost, not a synchronisation
            proxy.cut()
            proxy.heal()
            wait_files(tmp_path, "log-*.json", 2 * WORKERS, running, "every log", RUN_DEADLINE_S)
            check_broadcast_logs(tmp_path, 2 * WORKERS, per_worker)
            for host in running:
                assert host.stop() == 0
    finally:
        proxy.close()


async def test_an_event_over_this_hosts_max_payload_becomes_a_gap_there(
    redis_server: RedisServer,
):
    # Host A allows 64 KiB events, host B 1 KiB: A's large event would break B's workers'
    # connections (their frame bound is B's), so B's get a gap event in its place.
    settings = ClusterSettings.from_url(redis_server.url + "?stream=t14")
    big, small = Limits(max_payload=64 * 1024), Limits(max_payload=1024)
    async with group(1, big) as (broker_a, [a]), group(1, small) as (broker_b, [b]):
        bridges = [RedisBridge(settings, broker) for broker in (broker_a, broker_b)]
        try:
            for bridge, broker, member in zip(bridges, (broker_a, broker_b), (a, b), strict=True):
                broker.set_upstream(bridge)
                bridge.start()
                member.client.post("t", "ping", id(member))
                await until(lambda m=member: id(m) in m.events(), "its own ping", 30)
            a.client.post("t", "big", "x" * 4000)
            a.client.post("t", "after", 1)
            await until(lambda: 1 in b.events() and 1 in a.events(), "the event after", 30)
            assert "x" * 4000 in a.events()
            assert "x" * 4000 not in b.events()
            gaps = [entry for entry in b.log if entry[1:3] == ("cqloop.worker_events", "gap")]
            assert [gap[3]["missed"] for gap in gaps] == [1]
            assert b.client.state is ClientState.READY
            assert bridges[1].statistics().missed == 1
        finally:
            for bridge in bridges:
                await bridge.close()


async def test_a_stream_reset_under_the_bridge_is_logged_and_delivery_goes_on(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
):
    # FLUSHALL stands for a Redis restarted without its data: the stream, its counter,
    # the posters' numbers and the unique events' group are gone.
    settings = ClusterSettings.from_url(redis_server.url + "?stream=t15")
    async with group(2) as (broker, members):
        bridge = RedisBridge(settings, broker)
        broker.set_upstream(bridge)
        bridge.start()
        try:
            first, second = members
            first.client.post("t", "n", 0)
            await until(lambda: all(m.events() == [0] for m in members), "event 0", 30)
            with contextlib.closing(redis_server.client()) as admin:
                admin.flushall()
            first.client.post("t", "n", 1)
            second.client.post("u", "job", "once", unique="once")
            await until(lambda: all(m.events() == [0, 1] for m in members), "event 1", 30)
            await until(lambda: sum(m.events("u") == ["once"] for m in members) == 1, "job", 30)
            await until(lambda: bridge.statistics().uniques_acknowledged == 1, "the ack", 30)
            assert "was reset" in caplog.text
        finally:
            await bridge.close()


def test_exited_comes_after_every_event_the_worker_posted(
    redis_server: RedisServer, tmp_path: Path
):
    # As on one host: a worker's "exited" (a system event of its own host) is sequenced
    # after its last posts have come back from the stream, not before.
    per_worker = 300
    url = redis_server.url + "?stream=t16"
    args = [*common(per_worker), "--hosts", "1", "--exit-after-posting", "0.1"]
    with hosts(tmp_path, "broadcast", [url], *args) as running:
        found = wait_files(tmp_path, "exited-*.json", 2, running, "the exits", RUN_DEADLINE_S)
        for host in running:
            assert host.stop() == 0
    for log in map(read_json, found):
        events = log["events"]
        exited = events.index(["exited", "0.1"])
        assert [["0.1", i] for i in range(per_worker)] == [
            e for e in events[:exited] if e[0] == "0.1"
        ], log["tag"]


def test_the_append_script_refuses_a_batch_that_does_not_follow_on_the_last_appended_post(
    redis_server: RedisServer,
):
    # Batches are pipelined: when one fails, the ones behind it on the line must not be
    # appended ahead of it (the script drops what it has seen, so it would be lost).
    keys = ["t17", "t17:count", "t17:poster:h", "t17:unique"]
    with contextlib.closing(redis_server.client()) as admin:

        def append(base: int, *numbers: int) -> list[int]:
            args: list[Any] = [1000, 60_000, 1000, "t17:key:", base]
            for number in numbers:
                args += [number, "", f"p{number}"]
            return admin.eval(APPEND_SCRIPT, len(keys), *keys, *args)

        assert append(0, 1, 2) == [2, 0, 0]
        assert append(0, 5, 6) == [0, 0, 1]  # 3 and 4 are not appended yet
        assert append(2, 2, 3, 4) == [2, 0, 0]  # 2 is sent again: appended once
        admin.delete("t17:poster:h")  # Redis lost the bridge's last number...
        assert append(4, 6) == [0, 0, 1]  # ...the bridge's own says where it stands
        assert append(4, 5, 6) == [2, 0, 0]
        blobs = [fields[b"b"] for _, fields in admin.xrange("t17")]
        assert blobs == [f"p{n}".encode() for n in range(1, 7)]


async def test_a_post_is_appended_while_an_earlier_batch_waits_for_its_reply(
    redis_server: RedisServer,
):
    # Redis's replies are dropped on the way back: no batch hears its reply, yet each new
    # post still reaches the stream (the append line pipelines batches; it does not
    # wait a round trip per batch). Then the connections break: the batches without a
    # reply are sent again and appended once, in order.
    proxy = CutProxy(redis_server.port)
    try:
        url = f"redis://127.0.0.1:{proxy.port}/0?stream=t18&backoff_max=0.25"
        async with group(1) as (broker, [member]):
            bridge = RedisBridge(ClusterSettings.from_url(url), broker)
            broker.set_upstream(bridge)
            bridge.start()
            try:
                member.client.post("t", "n", 0)
                await until(lambda: member.events() == [0], "event 0", 30)
                proxy.swallow()
                with contextlib.closing(redis_server.client()) as admin:
                    for i in (1, 2, 3):
                        member.client.post("t", "n", i)
                        await until(lambda i=i: admin.xlen("t18") == i + 1, f"post {i}", 30)
                    assert member.events() == [0]  # the reads' replies are dropped too
                    proxy.cut()
                    proxy.heal()
                    await until(lambda: member.events() == [0, 1, 2, 3], "posts 1-3", 30)
                    assert admin.xlen("t18") == 4
                assert bridge.statistics().reconnects >= 1
            finally:
                await bridge.close()
    finally:
        proxy.close()
