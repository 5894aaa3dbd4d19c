# cython: freethreading_compatible=False
"""Handle and TimerHandle: scheduled callbacks with asyncio's behaviour.

Owns: the callback, its arguments and the contextvars.Context it runs in; cancellation; the
debug-mode source traceback and repr. Invariant: a cancelled handle has dropped its callback
and arguments (as asyncio does, so that cancelling frees what the callback held) and is
never run. Handle._run is the only place in cqloop where a scheduled callback is called;
the kernel's run-once step (kernel.pyx) is the only caller of _run.
"""

import sys
from asyncio import format_helpers

cimport cython

from cpython.object cimport PyObject, PyObject_TypeCheck, PyTypeObject
from cpython.ref cimport Py_REFCNT, Py_XDECREF

from cqloop._core.includes.pyapi cimport (
    PyContext_CopyCurrent,
    PyContext_Enter,
    PyContext_Exit,
    cq_call_tuple,
    cq_context_from_snapshot,
    cq_context_recycle,
    cq_context_snapshot,
    cq_has_weakrefs,
    cq_reraise,
)

cdef object _extract_stack = format_helpers.extract_stack
cdef object _format_callback_source = format_helpers._format_callback_source
cdef object _getframe = sys._getframe
cdef object _NAN = float("nan")

# See set_kernel_hooks.
cdef type _kernel_type = None
cdef LoopDebugHook _kernel_debug = NULL
cdef TimerCancelledHook _kernel_timer_cancelled = NULL


cdef int set_kernel_hooks(type kernel_type, LoopDebugHook debug,
                          TimerCancelledHook timer_cancelled) except -1:
    global _kernel_type, _kernel_debug, _kernel_timer_cancelled
    _kernel_type = kernel_type
    _kernel_debug = debug
    _kernel_timer_cancelled = timer_cancelled
    return 0


# The last type found to be a Kernel subclass (cqloop's Loop, in practice): checked first,
# by identity, because PyObject_TypeCheck walks the type's MRO (about 30 instructions, twice
# per cancel() of a timer, a third of it). Held, so that its address cannot be reused by
# another type while it is compared with.
cdef type _kernel_subtype = None


cdef inline bint _is_kernel(object loop) noexcept:
    global _kernel_subtype
    if <PyObject *>(<PyObject *>loop).ob_type == <PyObject *>_kernel_subtype:
        return True
    if _kernel_type is not None and PyObject_TypeCheck(loop, <PyTypeObject *>_kernel_type):
        _kernel_subtype = type(loop)
        return True
    return False


cdef inline bint _loop_debug(object loop) except -1:
    if _is_kernel(loop):
        return _kernel_debug(loop)
    return bool(loop.get_debug())


# Handles are created and dropped at the rate callbacks run: keep freed ones for reuse.
@cython.freelist(256)
cdef class Handle:
    """A callback scheduled with call_soon, as asyncio.Handle."""

    def __init__(self, callback, args, loop, context=None):
        if context is None:
            context = PyContext_CopyCurrent()
        self._ctx = context
        self._loop = loop
        self._callback = callback
        self._args = tuple(args)
        self._cancelled = False
        self._repr = None
        self._source_traceback = None
        if _loop_debug(loop):
            self._source_traceback = _extract_stack(_getframe(1))

    # -- public API ------------------------------------------------------------------

    def get_context(self):
        return self._get_context()

    @property
    def _context(self):
        # asyncio.Handle's attribute of the same name (read by tools and tests).
        return self._get_context()

    cdef object _get_context(self):
        if self._ctx is None:
            self._ctx = cq_context_from_snapshot(self._vars)
            self._vars = None
        return self._ctx

    def cancel(self):
        self._cancel()

    cdef int _cancel(self) except -1:
        if not self._cancelled:
            self._cancelled = True
            if self._loop is not None and _loop_debug(self._loop):
                # Keep a representation so that a debug message can still name the callback.
                self._repr = repr(self)
            self._callback = None
            self._args = None
        return 0

    def cancelled(self):
        return self._cancelled

    def __repr__(self):
        if self._repr is not None:
            return self._repr
        return "<{}>".format(" ".join(self._repr_info()))

    # -- running ---------------------------------------------------------------------

    cdef int _run(self) except -1:
        """Run the callback inside its context. Errors go to the loop's exception handler;
        only SystemExit and KeyboardInterrupt propagate, as in asyncio."""
        cdef PyObject *result
        # Whether this run makes the handle's Context from its snapshot (cqcompat.h).
        cdef bint made = self._ctx is None
        # Local references: a callback may cancel its own handle, which drops these.
        cdef object context = self._get_context() if made else self._ctx
        cdef object callback = self._callback
        cdef object args = self._args
        if PyContext_Enter(context) < 0:
            # The context is already entered elsewhere (asyncio reports the same
            # RuntimeError through the exception handler).
            return self._on_callback_error()
        result = cq_call_tuple(callback, args)
        if PyContext_Exit(context) < 0:
            Py_XDECREF(result)
            return self._on_callback_error()
        if result is NULL:
            return self._on_callback_error()
        Py_XDECREF(result)
        if made:
            # A Context nobody else can see again is handed to the next handle.
            context = None
            if cq_context_recycle(<PyObject *>self, <PyObject *>self._ctx):
                self._ctx = None
        return 0

    def _run_handle(self):
        """Run the handle from Python (asyncio.Handle._run's name; tests and tools call it)."""
        self._run()

    cdef int _on_callback_error(self) except -1:
        # Called with the callback's exception set; cq_reraise hands it to this try.
        try:
            cq_reraise()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            cb = format_helpers._format_callback_source(self._callback, self._args)
            context = {
                "message": f"Exception in callback {cb}",
                "exception": exc,
                "handle": self,
            }
            if self._source_traceback:
                context["source_traceback"] = self._source_traceback
            self._loop.call_exception_handler(context)
            exc = None
            context = None
        return 0

    cdef list _repr_info(self):
        info = [type(self).__name__]
        if self._cancelled:
            info.append("cancelled")
        if self._callback is not None:
            info.append(_format_callback_source(self._callback, self._args))
        if self._source_traceback:
            frame = self._source_traceback[len(self._source_traceback) - 1]
            info.append(f"created at {frame[0]}:{frame[1]}")
        return info


cdef class TimerHandle(Handle):
    """A callback scheduled with call_later/call_at, as asyncio.TimerHandle."""

    def __init__(self, when, callback, args, loop, context=None):
        super().__init__(callback, args, loop, context)
        if self._source_traceback:
            self._source_traceback.pop()
        _set_when(self, when)
        self._scheduled = False

    def when(self):
        """The deadline as given: an int given to call_at stays an int, as in asyncio
        (aiohttp schedules at ceil(t) and compares), a NaN stays NaN. Other numbers (an
        int past 2**53, a Decimal, a numpy float) come back as the float they made."""
        if self._when_form == WHEN_FLOAT:
            return self._deadline
        if self._when_form == WHEN_INT:
            return int(self._deadline)
        return _NAN

    @property
    def _when(self):
        # asyncio.TimerHandle's attribute of the same name (read by tools and tests).
        return self.when()

    @cython.always_allow_keywords(False)
    def cancel(self):
        # Handle._cancel's work, in line: a program that schedules and cancels timeouts
        # by the million calls this once per timeout (119 -> 80 instructions).
        cdef object loop = self._loop
        cdef bint debug = False
        if self._cancelled:
            return
        if loop is not None:
            if _is_kernel(loop):
                _kernel_timer_cancelled(loop, self)
                debug = _kernel_debug(loop)
            else:
                loop._timer_handle_cancelled(self)
                debug = bool(loop.get_debug())
        self._cancelled = True
        if debug:
            # Keep a representation so that a debug message can still name the callback.
            self._repr = repr(self)
        self._callback = None
        self._args = None

    # Comparisons and hash on when()'s value, as asyncio's on `_when`.

    def __hash__(self):
        return hash(self.when())

    def __lt__(self, other):
        if isinstance(other, TimerHandle):
            return self.when() < other.when()
        return NotImplemented

    def __le__(self, other):
        if isinstance(other, TimerHandle):
            return self.when() < other.when() or self == other
        return NotImplemented

    def __gt__(self, other):
        if isinstance(other, TimerHandle):
            return self.when() > other.when()
        return NotImplemented

    def __ge__(self, other):
        if isinstance(other, TimerHandle):
            return self.when() > other.when() or self == other
        return NotImplemented

    def __eq__(self, other):
        if isinstance(other, TimerHandle):
            return (
                self.when() == other.when()
                and self._callback == (<TimerHandle>other)._callback
                and self._args == (<TimerHandle>other)._args
                and self._cancelled == (<TimerHandle>other)._cancelled
            )
        return NotImplemented

    cdef list _repr_info(self):
        info = Handle._repr_info(self)
        info.insert(2 if self._cancelled else 1, f"when={self.when()}")
        return info


cdef int _set_when(TimerHandle handle, object when) except -1:
    """A deadline given from Python (TimerHandle's constructor)."""
    cdef double deadline = when
    handle._deadline = deadline
    handle._when_form = when_form_of(when, deadline)
    return 0


cdef unsigned char when_form_of(object when, double deadline) except 255:
    if deadline != deadline:
        return WHEN_NAN
    if type(when) is int and <double>(<long long>deadline) == deadline and deadline == when:
        return WHEN_INT
    return WHEN_FLOAT


cdef Handle new_handle(object callback, tuple args, object loop, object context):
    return refill_handle(Handle.__new__(Handle), callback, args, loop, context)


cdef Handle refill_handle(Handle handle, object callback, tuple args, object loop,
                          object context):
    handle._callback = callback
    handle._args = args
    handle._loop = loop
    if context is None:
        handle._vars = cq_context_snapshot()
    else:
        handle._ctx = context
    return handle


cdef bint clear_for_reuse(Handle handle) except -1:
    if (
        type(handle) is not Handle
        or Py_REFCNT(handle) != 1
        or cq_has_weakrefs(<PyObject *>handle)
        or handle._source_traceback is not None
    ):
        return False
    handle._callback = None
    handle._args = None
    handle._ctx = None
    handle._vars = None
    handle._loop = None
    handle._cancelled = False
    handle._repr = None
    return True


cdef TimerHandle new_timer_handle(double deadline, unsigned char when_form,
                                  object callback, tuple args, object loop, object context,
                                  unsigned long long seq):
    cdef TimerHandle handle = TimerHandle.__new__(TimerHandle)
    refill_handle(handle, callback, args, loop, context)
    handle._deadline = deadline
    handle._when_form = when_form
    handle._seq = seq
    return handle
