from cqloop._core.handles import Handle

class FdWatcher:
    fd: int
    def __init__(self, fd: int) -> None: ...

class HandleWatcher(FdWatcher):
    reader: Handle | None
    writer: Handle | None
