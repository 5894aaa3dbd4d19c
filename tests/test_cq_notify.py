"""cqloop.notify: directory change notification on inotify.

Async tests run on every loop kind through conftest's pytest-asyncio hook. Changes are
made by the test itself (file creation, writes, renames), so every expected event is
already queued in the kernel by the time the test waits for it: no timing involved. The
short timeouts below only bound waits that must come back empty.
"""

from __future__ import annotations

import asyncio
import os
import select
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cqloop import notify
from cqloop._core import osext
from cqloop.pollable import poll

EMPTY_WAIT_S = 0.02  # how long a wait that must find nothing waits


async def drain(nfy: notify.Notifier) -> list[tuple[notify.Change, str]]:
    """Every change already seen, without waiting for more."""
    seen = []
    while (change := nfy.get_nowait()) is not None:
        seen.append(change)
    return seen


async def test_created_entry_is_a_create_of_the_directory(tmp_path: Path) -> None:
    with notify.opendir(tmp_path) as nfy:
        (tmp_path / "new").write_text("x")
        assert await nfy.get() == (notify.CREATE, ".")
        # Writing an untracked entry is not reported.
        assert await nfy.get(EMPTY_WAIT_S) is None


async def test_added_name_reports_its_own_changes(tmp_path: Path) -> None:
    target = tmp_path / "config"
    target.write_text("a")
    with notify.opendir(tmp_path) as nfy:
        nfy.add("config")
        target.write_text("b")
        assert await nfy.get() == (notify.MODIFY, "config")
        os.chmod(target, 0o600)
        assert await nfy.get() == (notify.ATTRIB, "config")
        target.unlink()
        assert await drain(nfy) == [(notify.DELETE, "config"), (notify.DELETE, ".")]


async def test_repeated_changes_to_one_name_coalesce(tmp_path: Path) -> None:
    target = tmp_path / "log"
    target.write_text("")
    with notify.opendir(tmp_path) as nfy:
        nfy.add("log")
        with open(target, "a") as fh:
            for line in range(10):
                fh.write(f"{line}\n")
                fh.flush()
        assert await nfy.get() == (notify.MODIFY, "log")
        assert await nfy.get(EMPTY_WAIT_S) is None


async def test_add_limits_a_name_to_the_changes_asked_for(tmp_path: Path) -> None:
    target = tmp_path / "data"
    target.write_text("a")
    with notify.opendir(tmp_path, notify.MODIFY) as nfy:
        nfy.add("data", notify.DELETE)
        target.write_text("b")  # MODIFY: not wanted for "data"
        (tmp_path / "other").write_text("x")  # CREATE of an entry: not wanted for "."
        assert await nfy.get(EMPTY_WAIT_S) is None
        target.unlink()
        assert await nfy.get() == (notify.DELETE, "data")


async def test_rename_reports_delete_and_create(tmp_path: Path) -> None:
    (tmp_path / "old").write_text("a")
    with notify.opendir(tmp_path) as nfy:
        nfy.add("old")
        nfy.add("new")
        os.rename(tmp_path / "old", tmp_path / "new")
        changes = await drain(nfy)
        assert changes == [
            (notify.DELETE, "old"),
            (notify.CREATE | notify.DELETE, "."),
            (notify.CREATE, "new"),
        ]


async def test_deleted_directory_reports_delete_of_dot_and_stops(tmp_path: Path) -> None:
    watched = tmp_path / "watched"
    watched.mkdir()
    with notify.opendir(watched) as nfy:
        assert nfy.watching
        watched.rmdir()
        assert await nfy.get() == (notify.DELETE, ".")
        assert await nfy.get(EMPTY_WAIT_S) is None
        assert not nfy.watching


async def test_changes_iterates_until_a_timeout_passes_quietly(tmp_path: Path) -> None:
    # cqueues' examples/notify.lua: a loop over nfy:changes().
    with notify.opendir(tmp_path) as nfy:
        for name in ("a", "b"):
            nfy.add(name)
            (tmp_path / name).write_text(name)
        seen = [(notify.strflag(flags), name) async for flags, name in nfy.changes(0.05)]
        # Each file was created and then written: both changes, coalesced.
        assert seen == [("CREATE|MODIFY", "a"), ("CREATE", "."), ("CREATE|MODIFY", "b")]


async def test_await_notifier_is_get_and_it_works_with_poll(tmp_path: Path) -> None:
    with notify.opendir(tmp_path) as nfy:
        assert await poll(nfy, timeout=0) == ()
        (tmp_path / "x").write_text("x")
        assert await poll(nfy) == (nfy,)
        assert await nfy == (notify.CREATE, ".")


async def test_close_wakes_a_waiting_get(tmp_path: Path) -> None:
    nfy = notify.opendir(tmp_path)
    waiting = asyncio.ensure_future(nfy.get())
    asyncio.get_running_loop().call_soon(nfy.close)
    with pytest.raises(ValueError, match="closed"):
        await waiting
    assert nfy.closed
    nfy.close()


def test_notifier_is_pollable_with_select_outside_any_loop(tmp_path: Path) -> None:
    with notify.opendir(tmp_path) as nfy:
        assert nfy.events() == "r"
        assert nfy.timeout() is None
        assert select.select([nfy], [], [], 0)[0] == []
        (tmp_path / "f").write_text("x")
        assert select.select([nfy], [], [], 30)[0] == [nfy]
        assert nfy.get_nowait() == (notify.CREATE, ".")
        assert select.select([nfy.pollfd()], [], [], 0)[0] == []


def test_timeout_is_zero_while_changes_wait_to_be_returned(tmp_path: Path) -> None:
    with notify.opendir(tmp_path) as nfy:
        nfy.add("a")
        (tmp_path / "a").touch()
        assert nfy.get_nowait() == (notify.CREATE, "a")
        assert nfy.timeout() == 0.0  # "." is still to come
        assert nfy.get_nowait() == (notify.CREATE, ".")
        assert nfy.timeout() is None
        stats = nfy.statistics()
        assert stats["tracked"] == 1 and stats["pending"] == 0 and stats["events"] >= 1


def test_opendir_reports_what_the_kernel_refuses(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        notify.opendir(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        notify.opendir(tmp_path / "file")


def test_add_takes_names_not_paths(tmp_path: Path) -> None:
    with notify.opendir(tmp_path) as nfy:
        for bad in ("a/b", "", ".", "..", "nul\0"):
            with pytest.raises(ValueError):
                nfy.add(bad)
        with pytest.raises(OSError) as caught:
            nfy.add("n" * 256)
        assert caught.value.errno == 36  # ENAMETOOLONG
        nfy.add(b"bytes-name")
        nfy.discard("bytes-name")
        assert nfy.statistics()["tracked"] == 0


def test_closed_notifier_refuses_use(tmp_path: Path) -> None:
    nfy = notify.opendir(tmp_path)
    nfy.close()
    for call in (nfy.pollfd, nfy.get_nowait, lambda: nfy.add("x")):
        with pytest.raises(ValueError, match="closed"):
            call()


def test_flags_iterates_single_flags_lowest_first() -> None:
    assert list(notify.flags(notify.CREATE ^ notify.DELETE, notify.MODIFY)) == [
        notify.CREATE,
        notify.MODIFY,
        notify.DELETE,
    ]
    assert list(notify.flags()) == []
    assert notify.ALL == 0x1F
    assert [int(f) for f in notify.flags(notify.ALL)] == [1, 2, 4, 8, 16]


def test_strflag_names_the_known_flags() -> None:
    assert notify.strflag(notify.CREATE) == "CREATE"
    assert notify.strflag(notify.ATTRIB | notify.REVOKE) == "ATTRIB|REVOKE"
    assert notify.strflag(0) == ""
    assert notify.strflag(0x100 | notify.MODIFY) == "MODIFY"


# -- the record decoder (compiled): bad input never reads out of bounds ----------------------


def _event(wd: int, mask: int, cookie: int, name: bytes, padded: int) -> bytes:
    field = name + b"\0" * padded
    return struct.pack("=iIII", wd, mask, cookie, len(field)) + field


@given(
    st.lists(
        st.tuples(
            st.integers(-(2**31), 2**31 - 1),
            st.integers(0, 2**32 - 1),
            st.integers(0, 2**32 - 1),
            st.binary(max_size=40).filter(lambda b: b"\0" not in b),
            st.integers(0, 16),
        ),
        max_size=8,
    )
)
def test_decode_inotify_reads_back_well_formed_records(records) -> None:
    data = b"".join(_event(*record) for record in records)
    assert osext.decode_inotify(data) == [(wd, m, c, name) for wd, m, c, name, _ in records]


def _reference_decode(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """inotify(7)'s record layout, read with struct: the oracle for the compiled decoder."""
    events, offset, header = [], 0, struct.calcsize("=iIII")
    while offset < len(data):
        if offset + header > len(data):
            raise ValueError("truncated header")
        wd, mask, cookie, length = struct.unpack_from("=iIII", data, offset)
        if offset + header + length > len(data):
            raise ValueError("truncated name")
        name = data[offset + header : offset + header + length].split(b"\0", 1)[0]
        events.append((wd, mask, cookie, name))
        offset += header + length
    return events


@given(st.binary(max_size=200))
def test_decode_inotify_agrees_with_the_layout_on_any_bytes(data: bytes) -> None:
    try:
        expected = _reference_decode(data)
    except ValueError:
        with pytest.raises(ValueError):
            osext.decode_inotify(data)
        return
    assert osext.decode_inotify(data) == expected
