"""osext: the Linux system calls the standard library lacks, signalfd and inotify.

Owns nothing but thin calls: creating and re-arming a signalfd, creating an inotify
instance and adding or removing its watches, and decoding the records both fds yield.
Reading the fds is left to the caller (`os.read`, which raises BlockingIOError and retries
EINTR as Python's I/O does). The decoders take the bytes one read returned and use the C
headers' own struct layouts, so no offset or size is written by hand. Called by
cqloop.signal and cqloop.notify only; nothing here keeps state.

Every fd this module creates is non-blocking and close-on-exec.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE

from cqloop._core.includes.osext cimport (
    IN_ACCESS,
    IN_ATTRIB,
    IN_CLOEXEC,
    IN_CLOSE_NOWRITE,
    IN_CLOSE_WRITE,
    IN_CREATE,
    IN_DELETE,
    IN_DELETE_SELF,
    IN_DONT_FOLLOW,
    IN_EXCL_UNLINK,
    IN_IGNORED,
    IN_ISDIR,
    IN_MASK_ADD,
    IN_MODIFY,
    IN_MOVE,
    IN_MOVE_SELF,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    IN_NONBLOCK,
    IN_ONESHOT,
    IN_ONLYDIR,
    IN_OPEN,
    IN_Q_OVERFLOW,
    IN_UNMOUNT,
    SFD_CLOEXEC,
    SFD_NONBLOCK,
    inotify_add_watch as c_inotify_add_watch,
    inotify_event,
    inotify_init1 as c_inotify_init1,
    inotify_rm_watch as c_inotify_rm_watch,
    sigaddset,
    sigemptyset,
    signalfd as c_signalfd,
    signalfd_siginfo,
    sigset_t,
    strnlen,
)
from cqloop._core.includes.system cimport errno

import os

# Sizes of the records the fds yield, in bytes (a read must offer room for at least one).
SIGINFO_SIZE = sizeof(signalfd_siginfo)
INOTIFY_EVENT_SIZE = sizeof(inotify_event)  # without the name that follows it
NAME_MAX_BYTES = 255
# A buffer that always holds at least one inotify event with the longest name.
INOTIFY_MIN_READ = sizeof(inotify_event) + NAME_MAX_BYTES + 1

# inotify's event bits, as <sys/inotify.h> defines them.
INOTIFY_FLAGS = {
    "IN_ACCESS": IN_ACCESS,
    "IN_MODIFY": IN_MODIFY,
    "IN_ATTRIB": IN_ATTRIB,
    "IN_CLOSE_WRITE": IN_CLOSE_WRITE,
    "IN_CLOSE_NOWRITE": IN_CLOSE_NOWRITE,
    "IN_OPEN": IN_OPEN,
    "IN_MOVED_FROM": IN_MOVED_FROM,
    "IN_MOVED_TO": IN_MOVED_TO,
    "IN_MOVE": IN_MOVE,
    "IN_CREATE": IN_CREATE,
    "IN_DELETE": IN_DELETE,
    "IN_DELETE_SELF": IN_DELETE_SELF,
    "IN_MOVE_SELF": IN_MOVE_SELF,
    "IN_UNMOUNT": IN_UNMOUNT,
    "IN_Q_OVERFLOW": IN_Q_OVERFLOW,
    "IN_IGNORED": IN_IGNORED,
    "IN_ONLYDIR": IN_ONLYDIR,
    "IN_DONT_FOLLOW": IN_DONT_FOLLOW,
    "IN_EXCL_UNLINK": IN_EXCL_UNLINK,
    "IN_MASK_ADD": IN_MASK_ADD,
    "IN_ISDIR": IN_ISDIR,
    "IN_ONESHOT": IN_ONESHOT,
}


cdef int _raise_errno(str what) except -1:
    cdef int code = errno
    raise OSError(code, os.strerror(code), what)


def signalfd(int fd, signals):
    """signalfd(2): a new non-blocking, close-on-exec signalfd for `signals` when fd is
    -1, else replace the set an existing signalfd reports. Returns the fd.

    The signals must be blocked in every thread that could otherwise take them: a
    signalfd reports only signals that stay pending (cqloop.signal explains)."""
    cdef sigset_t mask
    cdef int signo, result
    sigemptyset(&mask)
    for value in signals:
        signo = value
        if sigaddset(&mask, signo) != 0:
            raise ValueError(f"not a signal number: {value!r}")
    cdef int flags = (SFD_NONBLOCK | SFD_CLOEXEC) if fd == -1 else 0
    result = c_signalfd(fd, &mask, flags)
    if result < 0:
        _raise_errno("signalfd")
    return result


def decode_siginfo(bytes data):
    """The records of one read of a signalfd, as (signo, code, pid, uid, status) tuples.
    A trailing partial record (the kernel never returns one) is ignored."""
    cdef const char *base = PyBytes_AS_STRING(data)
    cdef Py_ssize_t size = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t offset = 0
    cdef const signalfd_siginfo *info
    records = []
    while offset + <Py_ssize_t>sizeof(signalfd_siginfo) <= size:
        info = <const signalfd_siginfo *>(base + offset)
        records.append(
            (info.ssi_signo, info.ssi_code, info.ssi_pid, info.ssi_uid, info.ssi_status)
        )
        offset += sizeof(signalfd_siginfo)
    return records


def inotify_init():
    """inotify_init1(2): a new non-blocking, close-on-exec inotify fd."""
    cdef int fd = c_inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
    if fd < 0:
        _raise_errno("inotify_init1")
    return fd


def inotify_add_watch(int fd, path, unsigned int mask):
    """inotify_add_watch(2): watch `path` (str, bytes or os.PathLike) for the events in
    `mask`; returns the watch descriptor."""
    cdef bytes encoded = os.fsencode(path)
    if b"\0" in encoded:
        raise ValueError("embedded null byte in path")
    cdef int wd = c_inotify_add_watch(fd, encoded, mask)
    if wd < 0:
        _raise_errno(os.fsdecode(encoded))
    return wd


def inotify_rm_watch(int fd, int wd):
    """inotify_rm_watch(2): stop watch `wd` (the kernel then queues IN_IGNORED for it)."""
    if c_inotify_rm_watch(fd, wd) < 0:
        _raise_errno("inotify_rm_watch")


def decode_inotify(bytes data):
    """The events of one read of an inotify fd, as (wd, mask, cookie, name) tuples; name is
    bytes, b"" for an event on the watched object itself (the kernel pads names with NULs,
    which are stripped). Raises ValueError on a truncated record."""
    cdef const char *base = PyBytes_AS_STRING(data)
    cdef Py_ssize_t size = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t offset = 0
    cdef Py_ssize_t header = sizeof(inotify_event)
    cdef const inotify_event *event
    cdef const char *name
    events = []
    while offset < size:
        if offset + header > size:
            raise ValueError("truncated inotify event header")
        event = <const inotify_event *>(base + offset)
        if offset + header + <Py_ssize_t>event.len > size:
            raise ValueError("truncated inotify event name")
        name = base + offset + header
        events.append(
            (event.wd, event.mask, event.cookie, name[:strnlen(name, event.len)])
        )
        offset += header + event.len
    return events
