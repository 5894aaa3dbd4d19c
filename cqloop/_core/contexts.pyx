# cython: freethreading_compatible=False
"""Protocol callbacks in the context their transport captured.

Every transport captures the context current when it is made, and every protocol callback
runs in it, whatever set it off: a read, a timer, or a call from another task (write()
filling the buffer calls pause_writing, close() schedules connection_lost,
resume_reading() restarts delivery). Most callbacks are already in it (they run from
handles that carry it); the ones a caller's call sets off go through call_in_context,
which enters nothing when the caller is in the context already (the usual case: a
protocol writing from its own data_received). Used by the compiled stream and TLS
transports (call_in_context) and the Python transports (run_in_context).
"""

from cpython.exc cimport PyErr_Clear
from cpython.object cimport PyObject

from cqloop._core.includes.pyapi cimport (
    PyContext_Copy,
    PyContext_Enter,
    PyContext_Exit,
    cq_thread_state_get,
)


cdef object call_in_context(object context, object callback, tuple args):
    """callback(*args) in `context`; its result, or its exception."""
    if <PyObject *>context == cq_thread_state_get().context:
        return callback(*args)
    if PyContext_Enter(context) < 0:
        # Entered further up this thread's stack (a callback of ours called something
        # that ran another context, which called us): a copy has the same variables.
        PyErr_Clear()
        context = PyContext_Copy(context)
        PyContext_Enter(context)
    try:
        return callback(*args)
    finally:
        PyContext_Exit(context)


def run_in_context(context not None, callback, *args):
    """callback(*args) in `context` (a contextvars.Context): at once, entering nothing if
    it is current already. For the Python transports (datagram, pipes, TLS, processes),
    whose protocol callbacks must run in the context they were made in."""
    return call_in_context(context, callback, args)


def is_current_context(context):
    """Whether `context` is the Context the calling thread runs in now."""
    return <PyObject *>context == cq_thread_state_get().context
