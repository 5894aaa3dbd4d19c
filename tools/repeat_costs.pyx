# cython: language_level=3
"""Models of two repeats that docs/design.md keeps on purpose, each beside the shared form
that would replace it, for tools/repeat_costs.sh to count under callgrind:
- a compiled coroutine whose wait-and-finish tail is inline, against one that awaits the
  same tail through a second coroutine (`_core/sockio.pyx`'s sock_recv/sock_recv_into);
- a compiled write that applies the flow-control rule inline, against one that calls it as
  a Python method (`_core/stream.pyx` against `transports/flow.py`)."""


cdef class Ready:
    """An awaitable that is done at once: the wait itself costs nothing here."""

    def __await__(self):
        return iter(())


async def _tail(Ready wait):
    await wait
    return 1


async def tail_inline(Ready wait):
    await wait
    return 1


async def tail_shared(Ready wait):
    return await _tail(wait)


class PythonRule:
    def should_pause(self, size):
        return size > 65536


cdef class Transport:
    cdef Py_ssize_t size
    cdef object rule

    def __init__(self):
        self.size = 10
        self.rule = PythonRule()

    def write_rule_inline(self, n):
        self.size += n
        paused = self.size > 65536
        self.size -= n
        return paused

    def write_rule_in_python(self, n):
        self.size += n
        paused = self.rule.should_pause(self.size)
        self.size -= n
        return paused


cdef object _run(coro):
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value


def run(str model, int n):
    """Run `model` n times."""
    cdef Ready wait = Ready()
    cdef Transport transport = Transport()
    cdef int _i
    if model == "tail_inline":
        for _i in range(n):
            _run(tail_inline(wait))
    elif model == "tail_shared":
        for _i in range(n):
            _run(tail_shared(wait))
    elif model == "rule_inline":
        for _i in range(n):
            transport.write_rule_inline(1)
    elif model == "rule_in_python":
        for _i in range(n):
            transport.write_rule_in_python(1)
    else:
        raise ValueError(f"unknown model {model!r}")
