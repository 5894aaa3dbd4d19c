"""cqloop.notify: cqueues' notify module: changes in one directory, on inotify.

    from cqloop import notify
    with notify.opendir("/etc/myapp") as nfy:
        nfy.add("config.toml")
        async for flags, name in nfy.changes():
            print(name, notify.strflag(flags))

Owns: `Notifier` (an inotify fd with one watch on the directory, the names it tracks with
the changes each wants, and the changes read but not yet returned), the `Change` flags
and their helpers. A Notifier is pollable (`pollfd`/`events`/`timeout`), awaitable
(`await nfy` is `await nfy.get()`), usable on cqloop, stock asyncio and uvloop through
cqloop.pollable.poll, and from outside any loop with select() on `fileno()`.

What is reported (cqueues' semantics, on one directory watch):
- For a name given to add(): creation, deletion, attribute changes and modification of
  that entry, as (flags, name), limited to the changes add() asked for.
- For the directory itself, under the name ".": CREATE when an entry appears in it
  (created, or renamed into it), DELETE when one goes (deleted, or renamed away), whatever
  its name; ATTRIB for the directory's own metadata; DELETE when the directory itself is
  deleted or renamed; REVOKE when its file system is unmounted. Limited to the changes
  given to opendir(). Changes to untracked entries' contents are not reported.
- Changes to one name coalesce until get() returns them: a file written ten times
  between two gets is one (MODIFY, name). Names are returned in the order they first
  changed.
- When the kernel's event queue overflows (events were lost), "." is reported with
  CREATE|DELETE|ATTRIB|MODIFY: rescan the directory. (cqueues drops the overflow.)
- After the directory is deleted, the watch is gone and nothing more is reported;
  `watching` turns False.

Who calls in: application code, on one thread (a Notifier is not thread-safe). The
system calls are in cqloop._core.osext.
"""

from __future__ import annotations

import enum
import errno
import os
from collections.abc import AsyncIterator, Generator, Iterator
from typing import Any

from cqloop._core import osext
from cqloop.pollable import FdPollable, poll_until

__all__ = [
    "ALL",
    "ATTRIB",
    "CREATE",
    "DELETE",
    "MODIFY",
    "REVOKE",
    "Change",
    "Notifier",
    "flags",
    "opendir",
    "strflag",
]


class Change(enum.IntFlag):
    """The kinds of change a Notifier reports (cqueues' values)."""

    CREATE = 0x01
    ATTRIB = 0x02
    MODIFY = 0x04
    REVOKE = 0x08
    DELETE = 0x10


CREATE = Change.CREATE
ATTRIB = Change.ATTRIB
MODIFY = Change.MODIFY
REVOKE = Change.REVOKE
DELETE = Change.DELETE
ALL = CREATE | ATTRIB | MODIFY | REVOKE | DELETE

# The name the directory's own changes are reported under.
DIRECTORY = "."

_IN = osext.INOTIFY_FLAGS
# The one watch: every change of the directory's entries and of the directory itself.
_WATCH_MASK = (
    _IN["IN_ATTRIB"]
    | _IN["IN_CREATE"]
    | _IN["IN_DELETE"]
    | _IN["IN_DELETE_SELF"]
    | _IN["IN_MODIFY"]
    | _IN["IN_MOVE"]
    | _IN["IN_MOVE_SELF"]
    | _IN["IN_ONLYDIR"]
)
# inotify bit -> the change it means.
_DECODE = (
    (_IN["IN_ATTRIB"], ATTRIB),
    (_IN["IN_CREATE"], CREATE),
    (_IN["IN_DELETE"], DELETE),
    (_IN["IN_DELETE_SELF"], DELETE),
    (_IN["IN_MODIFY"], MODIFY),
    (_IN["IN_MOVE_SELF"], DELETE),
    (_IN["IN_MOVED_FROM"], DELETE),
    (_IN["IN_MOVED_TO"], CREATE),
    (_IN["IN_UNMOUNT"], REVOKE),
)
# Events on an entry that change the directory's listing.
_LISTING_MASK = _IN["IN_CREATE"] | _IN["IN_DELETE"] | _IN["IN_MOVE"]
_OVERFLOW_CHANGES = CREATE | DELETE | ATTRIB | MODIFY
# Bytes per read of the inotify fd: room for many events, and always for one with the
# longest name.
_READ_BYTES = max(16 * 1024, osext.INOTIFY_MIN_READ)


def _decode(mask: int) -> Change:
    changes = Change(0)
    for bit, change in _DECODE:
        if mask & bit:
            changes |= change
    return changes


def flags(*bitsets: int) -> Iterator[Change]:
    """Each single flag set in any of `bitsets`, lowest bit first: `for flag in
    flags(CREATE | DELETE, MODIFY)` gives CREATE, MODIFY, DELETE."""
    combined = 0
    for bits in bitsets:
        combined |= int(bits)
    while combined:
        bit = combined & -combined
        combined &= ~bit
        yield Change(bit)


def strflag(bits: int) -> str:
    """The names of the known flags in `bits`, lowest bit first, joined with "|"
    ("CREATE|DELETE"); "" when none is set."""
    return "|".join(flag.name for flag in flags(int(bits) & ALL) if flag.name)


def opendir(path: str | bytes | os.PathLike[Any], changes: int = ALL) -> Notifier:
    """A Notifier for directory `path`, reporting the directory's own changes limited to
    `changes`. Raises FileNotFoundError, NotADirectoryError, PermissionError as the
    kernel says."""
    return Notifier(path, changes)


class Notifier(FdPollable):
    """Changes in one directory: `await get()` returns the next (flags, name)."""

    _WHAT = "notifier"

    __slots__ = (
        "_changed",
        "_flags",
        "_path",
        "_stats",
        "_tracked",
        "_watching",
        "_wd",
    )

    def __init__(self, path: str | bytes | os.PathLike[Any], changes: int = ALL) -> None:
        self._fd = -1
        self._path = os.fsdecode(path)
        self._flags = Change(int(changes) & ALL)
        self._tracked: dict[str, Change] = {}
        self._changed: dict[str, Change] = {}
        self._stats = {"events": 0, "reads": 0, "overflows": 0}
        fd = osext.inotify_init()
        try:
            self._wd = osext.inotify_add_watch(fd, path, _WATCH_MASK)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._watching = True

    # -- the pollable protocol (the rest is FdPollable's) --

    def timeout(self) -> float | None:
        """0 while changes already read wait to be returned, else None."""
        return 0.0 if self._changed else None

    # -- tracking --

    @property
    def path(self) -> str:
        return self._path

    @property
    def closed(self) -> bool:
        return self._fd < 0

    @property
    def watching(self) -> bool:
        """False once the kernel has dropped the watch (the directory was deleted or its
        file system unmounted): no change will be reported after those already read."""
        return self._watching

    def add(self, name: str | bytes, changes: int = ALL) -> None:
        """Track entry `name` of the directory (a name, not a path), reporting the
        `changes` given. Adding a tracked name again changes what it reports."""
        self._check_open()
        key = os.fsdecode(name)
        encoded = os.fsencode(key)
        if not key or key in (".", "..") or "/" in key or "\0" in key:
            raise ValueError(f"not an entry name: {name!r}")
        if len(encoded) > osext.NAME_MAX_BYTES:
            raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), key)
        self._tracked[key] = Change(int(changes) & ALL)

    def discard(self, name: str | bytes) -> None:
        """Stop tracking `name` (and drop its unreturned changes); no error if untracked."""
        key = os.fsdecode(name)
        self._tracked.pop(key, None)
        if key != DIRECTORY:
            self._changed.pop(key, None)

    def get_nowait(self) -> tuple[Change, str] | None:
        """The next (flags, name) if a change has been seen, else None; never waits (the
        non-blocking twin of get())."""
        self._check_open()
        if not self._changed:
            self._read()
        if not self._changed:
            return None
        name = next(iter(self._changed))
        return (self._changed.pop(name), name)

    async def get(self, timeout: float | None = None) -> tuple[Change, str] | None:
        """Wait for a change and return (flags, name), name "." for the directory itself;
        None when `timeout` seconds pass first."""
        self._check_open()
        return await poll_until(self, self.get_nowait, timeout)

    async def changes(self, timeout: float | None = None) -> AsyncIterator[tuple[Change, str]]:
        """Each change as it comes, until `timeout` seconds pass without one (forever
        when None), as cqueues' `for flags, name in nfy:changes() do`."""
        while True:
            change = await self.get(timeout)
            if change is None:
                return
            yield change

    def __await__(self) -> Generator[Any, None, tuple[Change, str] | None]:
        return self.get().__await__()

    def statistics(self) -> dict[str, int]:
        """Counts since creation: inotify events and reads, queue overflows, names
        tracked, and names with changes not yet returned."""
        return {**self._stats, "tracked": len(self._tracked), "pending": len(self._changed)}

    # -- lifecycle --

    def close(self) -> None:
        """Close the inotify fd (the kernel drops the watch with it). Waits in progress
        wake and raise ValueError (at once on this thread's loops, at their next iteration
        on other threads'). Idempotent."""
        super().close()

    def _on_close(self) -> None:
        self._changed.clear()
        self._watching = False

    def __repr__(self) -> str:
        state = "closed" if self._fd < 0 else f"fd={self._fd}"
        return f"<cqloop.notify.Notifier {self._path!r} {state}>"

        # -- private --

        if self._fd < 0:
            raise ValueError("the notifier is closed")

    def _note(self, name: str, changes: Change) -> None:
        if changes:
            self._changed[name] = self._changed.get(name, Change(0)) | changes

    def _read(self) -> None:
        try:
            data = os.read(self._fd, _READ_BYTES)
        except BlockingIOError:
            return
        self._stats["reads"] += 1
        for wd, mask, _cookie, raw_name in osext.decode_inotify(data):
            self._stats["events"] += 1
            self._on_event(wd, mask, os.fsdecode(raw_name))

    def _on_event(self, wd: int, mask: int, name: str) -> None:
        if mask & _IN["IN_Q_OVERFLOW"]:
            self._stats["overflows"] += 1
            self._note(DIRECTORY, _OVERFLOW_CHANGES & self._flags)
            return
        if wd != self._wd:
            return  # not ours (cannot happen with one watch; be strict anyway)
        if mask & _IN["IN_IGNORED"]:
            self._watching = False
        if name:
            wanted = self._tracked.get(name)
            if wanted is not None:
                self._note(name, _decode(mask) & wanted)
            if mask & _LISTING_MASK:
                self._note(DIRECTORY, _decode(mask & _LISTING_MASK) & self._flags)
        else:
            self._note(DIRECTORY, _decode(mask) & self._flags)
