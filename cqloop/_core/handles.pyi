from collections.abc import Callable, Sequence
from contextvars import Context
from typing import Any

class Handle:
    _callback: Callable[..., object] | None
    _args: tuple[Any, ...] | None
    _context: Context
    _loop: Any
    _cancelled: bool
    _source_traceback: Any
    def __init__(
        self,
        callback: Callable[..., object],
        args: Sequence[Any],
        loop: Any,
        context: Context | None = None,
    ) -> None: ...
    def get_context(self) -> Context: ...
    def cancel(self) -> None: ...
    def cancelled(self) -> bool: ...
    def _run_handle(self) -> None: ...

class TimerHandle(Handle):
    _when: float
    _scheduled: bool
    def __init__(
        self,
        when: float,
        callback: Callable[..., object],
        args: Sequence[Any],
        loop: Any,
        context: Context | None = None,
    ) -> None: ...
    def when(self) -> float: ...
    def __lt__(self, other: object) -> bool: ...
    def __le__(self, other: object) -> bool: ...
    def __gt__(self, other: object) -> bool: ...
    def __ge__(self, other: object) -> bool: ...
