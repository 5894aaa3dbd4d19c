# Handle and TimerHandle: a scheduled callback, as asyncio.Handle and asyncio.TimerHandle.
# The kernel creates them with new_handle/new_timer_handle (no __init__ call) and runs them
# with Handle._run, the only place a callback is entered.

cpdef enum WhenForm:
    WHEN_FLOAT = 0
    WHEN_INT = 1
    WHEN_NAN = 2


cdef class Handle:
    cdef readonly object _callback
    cdef readonly object _args
    # The Context the callback runs in; None until made from _vars (see _get_context).
    cdef object _ctx
    # The caller's context variables when scheduled (cqcompat.h, "Lazy contexts"), or None.
    cdef object _vars
    cdef readonly object _loop
    cdef readonly bint _cancelled
    cdef public object _source_traceback
    # A str: Cython leaves str fields out of the GC traversal every collection makes.
    cdef str _repr
    cdef object __weakref__

    cdef object _get_context(self)
    # cancel()'s work, as a C call for TimerHandle.cancel and the kernel.
    cdef int _cancel(self) except -1
    cdef int _run(self) except -1
    cdef int _on_callback_error(self) except -1
    cdef list _repr_info(self)


cdef class TimerHandle(Handle):
    # The heap's sort key: the deadline as a C double, a NaN replaced by the time it was
    # scheduled at (due at once; see Kernel._schedule_at).
    cdef double _deadline
    # How when() gives the deadline back (WhenForm): as the float it is, as the int
    # call_at was given (as asyncio keeps it), or as the NaN it was given. A C field, not
    # the object itself: an object field cost each timer 60 instructions (callgrind).
    cdef unsigned char _when_form
    # True while the handle sits in a loop's timer heap (asyncio's flag of the same name).
    cdef public bint _scheduled
    # Insertion order, so that timers due at the same instant run first-scheduled first.
    cdef unsigned long long _seq


cdef Handle new_handle(object callback, tuple args, object loop, object context)
# Fill the fields every handle has: a new one (new_handle, new_timer_handle) or one that
# clear_for_reuse() cleared.
cdef Handle refill_handle(Handle handle, object callback, tuple args, object loop,
                          object context)
# Clear a plain Handle that ran and that nothing but the caller holds (no other reference,
# no weak reference), for refill_handle; False, leaving it as it is, when it is not one.
cdef bint clear_for_reuse(Handle handle) except -1
cdef TimerHandle new_timer_handle(double deadline, unsigned char when_form,
                                  object callback, tuple args, object loop, object context,
                                  unsigned long long seq)
# The WhenForm of a deadline given from Python whose double is `deadline`.
cdef unsigned char when_form_of(object when, double deadline) except 255


# What a handle asks of a cqloop loop, as C calls (kernel.pyx installs them at import:
# handles.pyx cannot cimport the kernel, which cimports it). A handle whose loop is of
# another type calls asyncio's methods (get_debug, _timer_handle_cancelled) instead.
ctypedef bint (*LoopDebugHook)(object loop) noexcept
ctypedef int (*TimerCancelledHook)(object loop, TimerHandle timer) except -1
cdef int set_kernel_hooks(type kernel_type, LoopDebugHook debug,
                          TimerCancelledHook timer_cancelled) except -1
