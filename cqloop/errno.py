"""cqloop.errno: cqueues' errno module: the system's error numbers by name, their names by
number, and strerror.

    from cqloop import errno
    errno.EAGAIN              # the number, as in the standard library's errno module
    errno.names[errno.EAGAIN] # "EAGAIN"
    errno.strerror(errno.ETIMEDOUT)

Owns no state: the constants are the standard library's (so they compare equal to
`OSError.errno` everywhere), `names` is a read-only view of `errno.errorcode`. Where two
names share a number (EAGAIN/EWOULDBLOCK, EDEADLK/EDEADLOCK, ENOTSUP/EOPNOTSUPP), `names`
gives the one the C library's table gives first, as the standard library does. Used by
cqloop.auxlib and by applications; pure Python, any loop or none.
"""

from __future__ import annotations

import errno as _errno
import os
from collections.abc import Mapping
from errno import *  # noqa: F403  (the constants, under their system names)
from types import MappingProxyType

# Number -> name, e.g. names[11] == "EAGAIN". The names -> numbers direction is this
# module's attributes (errno.EAGAIN), as cqueues' errno table has both.
names: Mapping[int, str] = MappingProxyType(dict(_errno.errorcode))


def strerror(code: int) -> str:
    """The C library's description of error number `code` (strerror(3)); an unknown number
    gives "Unknown error N", as the C library says."""
    if not isinstance(code, int) or isinstance(code, bool):
        raise TypeError(f"an error number is an int, not {type(code).__name__}")
    return os.strerror(code)


def name(code: int) -> str | None:
    """The macro name of error number `code` ("EAGAIN"), or None when the system has none."""
    return names.get(code)
