"""The readiness engines (epoll, io_uring): the ring layer, the probe, engine selection, and
epoll's semantics held by both engines (level-triggered reports, stale registrations, the
errors of a bad registration, a removal releasing the file, nesting either way, fork).

The whole suite runs on io_uring with CQLOOP_ENGINE=io_uring (.ci/run does); these tests
pin down what an engine must do, on both engines side by side."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import cqloop
from cqloop._core import uring
from cqloop.loop import Loop

pytestmark = pytest.mark.cqloop_only

USABLE, REASON = uring.probe()
needs_uring = pytest.mark.skipif(not USABLE, reason=f"io_uring not usable here: {REASON}")
ENGINES = [
    "epoll",
    pytest.param("io_uring", marks=needs_uring),
]
WAIT_S = 5.0


@pytest.fixture(params=ENGINES)
def engine_loop(request: pytest.FixtureRequest):
    loop = cqloop.new_event_loop(engine=request.param)
    try:
        yield loop
    finally:
        loop.close()


def run_steps(loop: Loop, n: int) -> None:
    """n iterations of the loop, each polling without blocking."""
    for _ in range(n):
        loop.step(0)


# -- the ring layer -------------------------------------------------------------------------


@needs_uring
def test_ring_fd_is_close_on_exec_and_closes():
    ring = uring.Ring(8)
    fd = ring.fileno()
    assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
    assert ring.sq_entries >= 8 and ring.cq_entries >= ring.sq_entries
    ring.close()
    assert ring.fileno() == -1
    with pytest.raises(OSError):
        os.fstat(fd)
    with pytest.raises(ValueError, match="closed"):
        ring.nop(1)


@needs_uring
def test_ring_nops_complete_with_their_user_data_in_order():
    ring = uring.Ring(8)
    try:
        for i in (7, 2**63 + 5, 0):
            ring.nop(i)
        assert ring.submit() == 3
        assert [(data, res) for data, res, _ in ring.reap()] == [(7, 0), (2**63 + 5, 0), (0, 0)]
        assert ring.reap() == []
    finally:
        ring.close()


@needs_uring
def test_ring_full_submission_queue_says_so():
    ring = uring.Ring(4)
    try:
        for i in range(ring.sq_entries):
            ring.nop(i)
        with pytest.raises(BlockingIOError, match="submit first"):
            ring.nop(99)
        assert ring.submit() == ring.sq_entries
        ring.nop(99)  # room again
        assert len(ring.wait(1.0)) == ring.sq_entries + 1
    finally:
        ring.close()


@needs_uring
def test_ring_wait_times_out_with_nothing_and_returns_at_once_with_something():
    ring = uring.Ring(8)
    try:
        t0 = time.monotonic()
        assert ring.wait(0.05) == []
        assert time.monotonic() - t0 >= 0.05
        ring.nop(1)
        t0 = time.monotonic()
        assert [c[0] for c in ring.wait(WAIT_S)] == [1]
        assert time.monotonic() - t0 < WAIT_S / 2
    finally:
        ring.close()


@needs_uring
def test_ring_wait_with_a_sigmask_is_ended_by_an_unblocked_signal():
    # A signal blocked in the thread but unblocked by the wait's mask ends the wait
    # (Loop.pause's masked wait), in a subprocess: the signal mask is process state.
    code = textwrap.dedent(
        """
        import os, signal, threading, time
        from cqloop._core import uring
        got = []
        signal.signal(signal.SIGUSR1, lambda *a: got.append(1))
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
        ring = uring.Ring(8)
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGUSR1)).start()
        t0 = time.monotonic()
        assert ring.wait(5.0, sigmask=[]) == []
        elapsed = time.monotonic() - t0
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})
        print(got, elapsed < 2.5)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["[1]", "True"]


# -- the probe and engine selection -------------------------------------------------------


def test_probe_answers_usable_and_why():
    usable, reason = uring.probe()
    assert isinstance(usable, bool)
    assert reason
    assert uring.probe() == (usable, reason)  # cached


def test_probe_reasons_name_the_cause():
    assert "ENOSYS" in uring._setup_failure(errno.ENOSYS)
    assert "EPERM" in uring._setup_failure(errno.EPERM) or "io_uring_disabled" in (
        uring._setup_failure(errno.EPERM)
    )
    assert "ulimit -l" in uring._setup_failure(errno.ENOMEM)


def test_engine_is_chosen_at_creation(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("CQLOOP_ENGINE", raising=False)
    for asked, got in [("epoll", "epoll"), ("auto", "epoll"), (None, "epoll")]:
        loop = cqloop.new_event_loop(engine=asked)
        assert loop.engine == got
        loop.close()
    if USABLE:
        loop = Loop(engine="io_uring")
        assert loop.engine == "io_uring"
        loop.close()
        monkeypatch.setenv("CQLOOP_ENGINE", "io_uring")
        loop = cqloop.new_event_loop()
        assert loop.engine == "io_uring"
        loop.close()
        loop = cqloop.new_event_loop(engine="epoll")  # the argument wins
        assert loop.engine == "epoll"
        loop.close()


def test_unknown_engine_is_refused_naming_the_choices(monkeypatch: pytest.MonkeyPatch):
    with pytest.raises(ValueError, match=r"engine must be one of 'auto', 'epoll', 'io_uring'"):
        cqloop.new_event_loop(engine="kqueue")
    monkeypatch.setenv("CQLOOP_ENGINE", "select")
    with pytest.raises(ValueError, match=r"CQLOOP_ENGINE must be one of .* not 'select'"):
        cqloop.new_event_loop()


@needs_uring
def test_io_uring_where_the_ring_cannot_be_set_up_raises_saying_why():
    # No fd left for the ring: io_uring_setup fails (EMFILE), and asking for the engine
    # says that it is not usable and why, rather than falling back silently.
    code = textwrap.dedent(
        """
        import resource
        import cqloop
        import cqloop._core.uring
        import os
        fds = os.listdir("/proc/self/fd")
        top = max(int(fd) for fd in fds)
        resource.setrlimit(resource.RLIMIT_NOFILE, (top + 1, top + 1))
        # Fill every free slot below the limit.
        held = []
        try:
            while True:
                held.append(os.dup(0))
        except OSError:
            pass
        try:
            cqloop.new_event_loop(engine="io_uring")
        except OSError as exc:
            print("refused:", exc)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("refused: the io_uring engine is not usable here: ")
    assert "Too many open files" in out.stdout


def test_info_command_tells_the_engines():
    out = subprocess.run(
        [sys.executable, "-m", "cqloop", "info"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "CQLOOP_ENGINE": "epoll"},
    )
    assert out.returncode == 0, out.stderr
    assert "engine epoll: available" in out.stdout
    assert f"engine io_uring: {'available' if USABLE else 'not available'}: {REASON}" in out.stdout
    assert "default engine: epoll (CQLOOP_ENGINE=epoll" in out.stdout


# -- epoll's semantics on both engines ----------------------------------------------------


def test_level_triggered_reader_is_called_while_data_is_left_and_then_no_more(engine_loop):
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        calls: list[bytes] = []
        engine_loop.add_reader(a, lambda: calls.append(a.recv(1)))
        b.send(b"xyz")
        deadline = time.monotonic() + WAIT_S
        while len(calls) < 3 and time.monotonic() < deadline:
            engine_loop.step(0.1)
        assert calls == [b"x", b"y", b"z"]
        # Drained: no spurious call (the reader's recv would raise BlockingIOError).
        run_steps(engine_loop, 5)
        engine_loop.step(0.05)
        assert calls == [b"x", b"y", b"z"]
        b.send(b"w")
        engine_loop.step(WAIT_S)
        assert calls[-1] == b"w"
        engine_loop.remove_reader(a)


def test_readiness_taken_by_a_callback_before_the_next_poll_is_not_reported(engine_loop):
    # Data arrives and a callback reads it (a direct, non-blocking read, as cq sockets and
    # sock_* make) between two polls. epoll decides readiness at the poll: the reader is
    # not called. On io_uring the completion posted meanwhile is history, not readiness.
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        calls: list[str] = []
        engine_loop.add_reader(a, lambda: calls.append("called"))
        run_steps(engine_loop, 2)  # the reader armed; nothing to read

        def arrive_and_take() -> None:
            b.send(b"x")
            select.select([a], [], [], WAIT_S)
            assert a.recv(1) == b"x"

        engine_loop.call_soon(arrive_and_take)
        run_steps(engine_loop, 3)
        assert calls == []
        b.send(b"y")  # and readiness that is real is still reported
        engine_loop.step(WAIT_S)
        assert calls == ["called"]
        engine_loop.remove_reader(a)


def test_reader_and_writer_on_one_fd_each_get_their_direction(engine_loop):
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        seen: list[str] = []
        engine_loop.add_writer(a, lambda: seen.append("w"))
        engine_loop.step(WAIT_S)
        assert seen == ["w"]
        engine_loop.remove_writer(a)
        engine_loop.add_reader(a, lambda: seen.append("r") or a.recv(10))
        run_steps(engine_loop, 3)
        assert seen == ["w"]
        b.send(b"1")
        engine_loop.step(WAIT_S)
        assert seen == ["w", "r"]
        engine_loop.remove_reader(a)


def test_a_closed_fds_number_reused_gets_none_of_the_old_files_events(engine_loop):
    a, b = socket.socketpair()
    old_calls: list[int] = []
    engine_loop.add_reader(a, lambda: old_calls.append(1))
    number = a.fileno()
    keep = os.dup(number)  # the old file stays open (the classic epoll trap)
    a.close()
    c, d = socket.socketpair()
    try:
        # The lowest free numbers come back: one of the new pair has the old number.
        reused = c if c.fileno() == number else d
        other = d if reused is c else c
        new_calls: list[int] = []
        engine_loop.add_reader(reused, lambda: new_calls.append(reused.recv(10)))
        b.send(b"old file")  # a's peer: nobody should hear of it
        run_steps(engine_loop, 3)
        assert old_calls == [] and new_calls == []
        other.send(b"new")
        engine_loop.step(WAIT_S)
        assert new_calls == [b"new"]
        engine_loop.remove_reader(reused)
    finally:
        os.close(keep)
        for s in (b, c, d):
            s.close()


def test_bad_registrations_fail_as_epolls_do(engine_loop, tmp_path):
    path = tmp_path / "regular"
    path.write_bytes(b"data")
    with open(path, "rb") as f:
        with pytest.raises(PermissionError):
            engine_loop.add_reader(f.fileno(), lambda: None)
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(OSError) as info:
        engine_loop.add_reader(r, lambda: None)
    assert info.value.errno == errno.EBADF
    assert engine_loop._kernel_statistics()["fds"] == 0


def test_removing_a_reader_then_closing_the_socket_closes_it_for_the_peer(engine_loop):
    # A registration that still held the file would keep the connection open.
    a, b = socket.socketpair()
    with b:
        engine_loop.add_reader(a, lambda: None)
        engine_loop.step(0)
        engine_loop.remove_reader(a)
        a.close()
        b.settimeout(WAIT_S)
        assert b.recv(10) == b""


def test_sock_recv_waits_release_the_socket_when_it_is_closed(engine_loop):
    async def main() -> bytes:
        a, b = socket.socketpair()
        a.setblocking(False)
        with b:
            b.send(b"one")
            assert await engine_loop.sock_recv(a, 10) == b"one"
            recv = engine_loop.create_task(engine_loop.sock_recv(a, 10))
            await asyncio.sleep(0.01)
            b.send(b"two")
            assert await recv == b"two"
            a.close()  # no wait pending: the peer must see the close at once
            b.settimeout(WAIT_S)
            return b.recv(10)

    assert engine_loop.run_until_complete(main()) == b""


@pytest.mark.parametrize("outer_engine", ENGINES)
def test_loops_nest_either_way_across_engines(engine_loop, outer_engine):
    outer = cqloop.new_event_loop(engine=outer_engine)
    try:
        engine_loop.nest_in(outer)
        a, b = socket.socketpair()
        with a, b:
            a.setblocking(False)

            async def inner_main() -> bytes:
                await asyncio.sleep(0.01)
                return await engine_loop.sock_recv(a, 10)

            task = engine_loop.create_task(inner_main())
            outer.call_later(0.05, b.send, b"nested")
            done = outer.create_future()
            task.add_done_callback(lambda t: done.set_result(t.result()))
            assert outer.run_until_complete(asyncio.wait_for(done, WAIT_S)) == b"nested"
        engine_loop.unnest()
    finally:
        outer.close()


def test_loop_fd_is_readable_exactly_while_a_reader_is_ready(engine_loop):
    fd = engine_loop.fileno()
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        engine_loop.add_reader(a, lambda: None)  # reads nothing: stays ready
        engine_loop.step(0)
        assert select.select([fd], [], [], 0)[0] == []
        b.send(b"x")
        assert select.select([fd], [], [], WAIT_S)[0] == [fd]
        engine_loop.step(0)
        assert select.select([fd], [], [], 0)[0] == [fd]  # level-triggered: still ready
        a.recv(10)
        engine_loop.step(0)  # the reader runs on the last report; the data is gone now
        assert select.select([fd], [], [], 0)[0] == []
        engine_loop.remove_reader(a)


@pytest.mark.parametrize("engine", ENGINES)
def test_forked_child_gets_a_ring_of_its_own_and_leaves_the_parents_alone(engine):
    # In a subprocess (fork). The child resets its copy of the loop (a new queue), runs a
    # task and exits; the parent's loop and registration work on afterwards.
    code = textwrap.dedent(
        f"""
        import asyncio, os, socket
        import cqloop
        loop = cqloop.new_event_loop(engine={engine!r})
        a, b = socket.socketpair()
        a.setblocking(False)
        got = []
        loop.add_reader(a, lambda: got.append(a.recv(10)))
        parent_fd = loop.fileno()
        pid = os.fork()
        if pid == 0:
            try:
                try:
                    loop.step(0)
                except RuntimeError as exc:
                    assert "reset" in str(exc)
                loop.reset()
                assert loop.engine == {engine!r}
                out = loop.run_until_complete(asyncio.sleep(0.01, "child ran"))
                assert out == "child ran" and got == []
                loop.close()
                os._exit(0)
            except BaseException as exc:
                print("child failed:", repr(exc))
                os._exit(1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        b.send(b"parent")
        loop.step(5)
        assert got == [b"parent"], got
        assert loop.fileno() == parent_fd
        loop.remove_reader(a)
        loop.close()
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.split() == ["ok"]


@pytest.mark.parametrize("engine", ENGINES)
def test_pause_wait_is_ended_by_a_signal_on_either_engine(engine):
    # Loop.pause: the masked wait (in a subprocess: signals).
    code = textwrap.dedent(
        f"""
        import os, signal, threading, time
        import cqloop
        loop = cqloop.new_event_loop(engine={engine!r})
        signal.signal(signal.SIGUSR1, lambda *a: None)
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGUSR1)).start()
        t0 = time.monotonic()
        loop.pause(signal.SIGUSR1)
        print(time.monotonic() - t0 < 2.5)
        loop.close()
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.split() == ["True"]


# -- the C ceiling on io_uring (the echo benchmark's `--ceiling io_uring`) -----------------


@needs_uring
def test_io_uring_ceiling_echoes_small_and_large_messages_and_exits_on_stdin_eof():
    from cqloop._bench.echo import native

    try:
        program = native.build_io_uring_ceiling()
    except native.NativeUnavailable as exc:
        pytest.skip(f"the C ceiling cannot be built here: {exc}")
    server = subprocess.Popen(
        [str(program), "-a", "tcp:127.0.0.1:0"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdin is not None
        report = server.stdout.readline()
        host, port = report.split('"')[3][len("tcp:") :].rsplit(":", 1)
        conns = [socket.create_connection((host, int(port)), timeout=WAIT_S) for _ in range(3)]
        try:
            for round_no in range(50):
                for conn in conns:
                    conn.sendall(b"%d" % round_no)
                for conn in conns:
                    assert conn.recv(100) == b"%d" % round_no
            big = bytes(range(256)) * 2048  # 512 KiB: twice the server's buffer
            conns[0].sendall(big)
            got = bytearray()
            while len(got) < len(big):
                got += conns[0].recv(1 << 20)
            assert got == big
        finally:
            for conn in conns:
                conn.close()
        server.stdin.close()
        assert server.wait(WAIT_S) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        if server.stdout is not None:
            server.stdout.close()


@needs_uring
def test_a_forked_child_does_not_keep_the_parents_ring_and_its_files_alive():
    # The parent's armed poll request holds the watched socket's file; a child holding a
    # copy of the ring fd would keep the ring, the request and the socket alive after the
    # parent dies, and the peer would never see the close (a prefork server's workers
    # waiting for their killed supervisor's connection to drop).
    a, b = socket.socketpair()
    code = textwrap.dedent(
        f"""
        import os, socket, sys, time
        import cqloop
        a = socket.socket(fileno={a.fileno()})
        loop = cqloop.new_event_loop(engine="io_uring")
        loop.add_reader(a, lambda: None)
        loop.step(0)
        child = os.fork()
        if child == 0:
            a.close()
            time.sleep(30)
            os._exit(0)
        a.close()  # only the request (the ring) holds the file now
        print(child, flush=True)
        time.sleep(30)
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, pass_fds=[a.fileno()]
    )
    a.close()
    child_pid = None
    try:
        assert parent.stdout is not None
        child_pid = int(parent.stdout.readline())
        parent.kill()  # SIGKILL: nothing in the parent cleans up
        parent.wait()
        b.settimeout(WAIT_S)
        assert b.recv(10) == b""
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if child_pid is not None:
            try:
                os.kill(child_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if parent.stdout is not None:
            parent.stdout.close()
        b.close()


def test_a_reader_added_by_a_thread_that_has_exited_still_fires(engine_loop):
    # io_uring cancels a thread's requests when it exits; the engine re-arms them.
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        calls: list[bytes] = []
        adder = threading.Thread(
            target=engine_loop.add_reader, args=(a, lambda: calls.append(a.recv(10)))
        )
        adder.start()
        adder.join()
        b.send(b"after")
        deadline = time.monotonic() + WAIT_S
        while not calls and time.monotonic() < deadline:
            engine_loop.step(0.1)
        assert calls == [b"after"]
        engine_loop.remove_reader(a)
