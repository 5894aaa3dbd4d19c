"""Kernel: the run-once step under cqloop's Loop.

Owns: the ready queue and the timer heap, scheduling, the dispatch of the poller's events,
and the loop's lifecycle. Its base classes hold the rest: LoopFd (loopfd.pyx) the
poller, the kernel's own fds and the loop as a pollable object (fileno, timeout), and
FdTable (fdtable.pyx) the table of fd watchers. cqloop.loop.Loop subclasses Kernel and
adds the rest of the asyncio API in Python; nothing here imports the public modules.
`_iterate` is the single place callbacks run (through Handle._run), and the only caller
of Poller.wait.

Invariants:
- A callback scheduled during an iteration runs in the next one: each iteration swaps the
  ready list for an empty spare and runs only what was queued before it started.
- Every deadline in the timer heap is a number (a NaN is keyed as due at once, see
  _schedule_at), and no wait passes to the poller is NaN or past MAX_POLL_TIMEOUT_S.
- The scheduler reads its clock through _clock() (loopfd.pxd): loop.time() as the
  instance answers it.
"""

import threading

from libc.math cimport ceil
from libc.stdint cimport uint32_t, uint64_t

from asyncio import Future
from asyncio import tasks as _tasks

from cpython.mem cimport PyMem_RawFree, PyMem_RawMalloc
from cpython.object cimport PyObject, PyObject_Call, PyObject_GenericSetAttr
from cpython.pythread cimport PyThread_get_thread_ident
from cpython.ref cimport Py_DECREF, Py_INCREF, Py_REFCNT, Py_XDECREF, _Py_REFCNT

from cqloop._core.handles cimport (
    Handle,
    TimerHandle,
    clear_for_reuse,
    new_handle,
    WHEN_FLOAT,
    WHEN_NAN,
    new_timer_handle,
    refill_handle,
    set_kernel_hooks,
    when_form_of,
)
from cqloop._core.includes.callsoon cimport cq_install_call_soon
from cqloop._core.includes.gchook cimport (
    PyObject_GC_UnTrack,
    cq_call_base_traverse,
    cq_gc_is_tracked,
    cq_gc_retrack,
    cq_install_traverse,
    cq_visitproc,
)
from cqloop._core.includes.pyapi cimport (
    cq_generic_delattr,
    cq_list_clear_keep,
    cq_list_items,
    cq_list_take,
)
from cqloop._core.loopfd cimport (
    MAX_POLL_TIMEOUT_S,
    LoopFd,
    _clock,
    _wait_limit,
)
from cqloop._core.poller cimport EV_RECEIVED
from cqloop._core.timerheap cimport TimerHeap
from cqloop._core.watchers cimport FdWatcher

# A timer is due when its deadline is within the clock's resolution of now (asyncio's rule;
# CLOCK_MONOTONIC counts nanoseconds on Linux).
cdef double CLOCK_RESOLUTION_S = 1e-9

# See _settle_heap: the size of the block whose release raises glibc's thresholds, so that
# blocks up to this size come from the heap and up to twice it stays there when freed.
cdef size_t SETTLED_HEAP_BYTES = 1024 * 1024
cdef bint _heap_settled = False

cdef object _get_ident = threading.get_ident
cdef object _Future = Future


cdef int _settle_heap() except -1:
    """Once per process, when the first loop is made: allocate and free one block of
    SETTLED_HEAP_BYTES.

    Why: a stream of large messages (the echo benchmark's 100 KiB) makes the read paths
    (a transport's reads, sock_recv's bytes objects) and the code above them (asyncio's
    StreamReader copies into a bytearray and slices it) allocate and free blocks of tens to
    hundreds of KiB at every message. glibc's malloc starts with a 128 KiB mmap threshold
    and a 128 KiB trim threshold: blocks above the first are mmap'd and munmap'd one by
    one, and whenever more than the second is free at the top of the heap, free() gives it
    back to the kernel, so the next message's allocations fault fresh zeroed pages in
    again. Measured on the echo server with 10
    connections of 100 KiB: 10 to 35 page faults per message and 1.5 to 2.5 times the
    CPU time per message, against none once the thresholds have moved. glibc moves them
    itself (to the size of any mmap'd block that is freed, and twice that) the first time
    the program frees such a block, which is why the same server is sometimes fast and
    sometimes slow depending on what ran before. This makes that first time happen here,
    with a block no larger than one a busy server allocates anyway: the process then keeps
    up to 2 MiB of free heap instead of 128 KiB. No effect on other allocators (musl,
    jemalloc), which have no such thresholds or ignore the pattern.

    PyMem_RawMalloc, not malloc: the compiler may drop a malloc/free pair it can see."""
    global _heap_settled
    cdef void *block
    if _heap_settled:
        return 0
    _heap_settled = True
    block = PyMem_RawMalloc(SETTLED_HEAP_BYTES)
    if block != NULL:
        PyMem_RawFree(block)
    return 0


cdef class Kernel(LoopFd):

    def __cinit__(self, *args, **kwargs):
        # (LoopFd.__cinit__ made the poller and the wake-up eventfd.)
        self._ready = []
        self._ready_spare = []
        self._pool_len = 0
        self._timers = TimerHeap()
        self._timer_seq = 0
        self.slow_callback_duration = 0.1
        self._thread_id = None
        # A subclass with its own time() schedules by it (see _clock).
        self._clock_patched = type(self).time is not Kernel.time
        _settle_heap()

    def __dealloc__(self):
        _drain_pool(self)

    # -- time ---------------------------------------------------------------------------

    def time(self):
        """The loop's clock: time.monotonic()."""
        return self._now()

    def __setattr__(self, name, value):
        # Loop instances take attributes (libraries patch loop methods); replacing `time`
        # must reach the scheduler. A C-level slot: other attributes cost one comparison.
        PyObject_GenericSetAttr(self, name, value)
        if name == "time":
            self._clock_patched = True

    def __delattr__(self, name):
        cq_generic_delattr(self, name, NULL)
        if name == "time":
            self._clock_patched = type(self).time is not Kernel.time

    # -- scheduling ---------------------------------------------------------------------

    def call_soon(self, callback, *args, context=None):
        """Run callback(*args) in the next iteration, in `context` (default: a copy of the
        current one). Returns a Handle."""
        # Replaced on the type by a vectorcall entry at import (see the end of this file);
        # kept as the reference signature and for the .pyi stub.
        return self._call_soon(callback, args, context)

    cdef Handle _call_soon(self, object callback, tuple args, object context):
        cdef Handle handle
        if self._closed:
            self._check_closed()
        if self._debug:
            self._debug_checks(callback, "call_soon")
        if self._pool_len:
            # Cleared, and already out of the GC's lists; the pool's reference becomes ours.
            self._pool_len -= 1
            handle = <Handle>self._handle_pool[self._pool_len]
            Py_DECREF(handle)
            refill_handle(handle, callback, args, self, context)
        else:
            handle = new_handle(callback, args, self, context)
            # Out of the GC's generations while it waits in the queue (see "The ready
            # queue and the cyclic GC" at the end of this file).
            PyObject_GC_UnTrack(handle)
        if self._debug:
            handle._source_traceback = self._source_traceback()
        if self._external and not self._running and not self._efd_signalled:
            self._signal_wakeup()
        self._ready.append(handle)
        return handle

    def call_soon_threadsafe(self, callback, *args, context=None):
        """call_soon from any thread: also wakes the loop if it is blocked."""
        cdef Handle handle
        self._check_closed()
        if self._debug:
            self._debug_checks_nothread(callback, "call_soon_threadsafe")
        handle = new_handle(callback, args, self, context)
        if self._debug:
            handle._source_traceback = self._source_traceback()
        self._ready.append(handle)
        self._signal_wakeup()
        return handle

    def call_later(self, delay, callback, *args, context=None):
        """Run callback(*args) after `delay` seconds. Returns a TimerHandle."""
        cdef double seconds
        if delay is None:
            raise TypeError("delay must not be None")
        seconds = delay
        if self._closed:
            self._check_closed()
        if self._debug:
            self._debug_checks(callback, "call_later")
        return self._schedule_at(_clock(self) + seconds, WHEN_FLOAT, callback, args, context)

    def call_at(self, when, callback, *args, context=None):
        """Run callback(*args) at loop time `when`. Returns a TimerHandle."""
        cdef double deadline
        if when is None:
            raise TypeError("when cannot be None")
        deadline = when
        if self._closed:
            self._check_closed()
        if self._debug:
            self._debug_checks(callback, "call_at")
        # when() gives back what it was given: an int stays an int, as in asyncio.
        return self._schedule_at(
            deadline, WHEN_FLOAT if type(when) is float else when_form_of(when, deadline),
            callback, args, context)

    cdef TimerHandle _schedule_at(self, double when, unsigned char when_form,
                                  object callback, tuple args, object context):
        """Push a timer due at `when` (loop time; when() gives it back in `when_form`).
        Any double is a deadline: infinities and huge values sort where they belong (past
        the poll's cap they are never due, and never block others). A NaN
        compares false with everything, so as a key it would break the heap order and,
        at the head, never be due while blocking every timer behind it: it is due at once,
        keyed at the time it was scheduled, as asyncio runs a NaN timer at the heap's
        head at once (its when() stays NaN)."""
        cdef TimerHandle timer
        if when != when:
            when_form = WHEN_NAN
            when = _clock(self)
        self._timer_seq += 1
        timer = new_timer_handle(when, when_form, callback, args, self, context,
                                 self._timer_seq)
        if self._debug:
            timer._source_traceback = self._source_traceback()
        self._timers.push(timer)
        if self._external and not self._running:
            if not self._tfd_armed or when < self._tfd_deadline:
                self._arm_timerfd(when, True)
        return timer

    def _timer_handle_cancelled(self, TimerHandle handle):
        # asyncio's name for the notification; TimerHandle.cancel calls _timer_cancelled.
        _timer_cancelled(self, handle)

    def create_task(self, coro, *, name=None, context=None, **kwargs):
        """Schedule a coroutine; return its Task. Extra keyword arguments (eager_start on
        3.12+) go to the Task, or to the task factory when one is set."""
        # Compiled: a Python method with **kwargs cost a frame and a dict per task. asyncio's
        # Task is looked up at each call, as asyncio's loop does (instrumentation replaces
        # it). A debug-mode Task records the stack from its caller's frame, which here is
        # create_task's caller already (a compiled function has no frame).
        if self._closed:
            self._check_closed()
        if self._task_factory is None:
            if name is None and context is None and not kwargs:
                return PyObject_Call(_tasks.Task, (coro,), self._loop_kwargs())
            return _tasks.Task(coro, loop=self, name=name, context=context, **kwargs)
        if context is not None:
            kwargs["context"] = context
        task = self._task_factory(self, coro, **kwargs)
        if name is not None:
            task.set_name(name)
        return task

    cdef dict _loop_kwargs(self):
        """{"loop": self}, made once: the keyword arguments of every Future and Task this
        loop makes, passed as they are (their constructors only read them): building one
        per call was a fifth of what a future cost."""
        if self._future_kwargs is None:
            self._future_kwargs = {"loop": self}
        return self._future_kwargs

    def create_future(self):
        """A new asyncio.Future bound to this loop."""
        # Always with loop=: a Future made without it asks get_running_loop(), which in
        # CPython 3.11 checks getpid() (a system call) on every call.
        return PyObject_Call(_Future, (), self._loop_kwargs())

    # -- debug --------------------------------------------------------------------------

    def get_debug(self):
        return self._debug

    def set_debug(self, enabled):
        self._debug = bool(enabled)

    cdef int _debug_checks(self, object callback, str method) except -1:
        self._check_thread()
        self._check_callback(callback, method)
        return 0

    def _debug_checks_nothread(self, callback, method):
        self._check_callback(callback, method)

    def _check_thread(self):
        """In debug mode, refuse a non-threadsafe call from a thread the loop is not
        running in (asyncio's check and message)."""
        if self._thread_id is None:
            return
        if _get_ident() != self._thread_id:
            raise RuntimeError(
                "Non-thread-safe operation invoked on an event loop other "
                "than the current one")

    def _source_traceback(self):
        # Overridden in cqloop.loop (it formats stacks); the kernel only asks for one.
        return None

    def _check_callback(self, callback, method):
        # Overridden in cqloop.loop.
        pass

    # -- lifecycle ----------------------------------------------------------------------

    def is_closed(self):
        return self._closed

    def is_running(self):
        return self._running

    def _enter_running(self):
        """Mark the loop running in this thread (run_forever and step call it)."""
        self._running = True
        self._thread_id = PyThread_get_thread_ident()

    def _exit_running(self):
        self._running = False
        self._thread_id = None

    def _close_kernel(self):
        """Release the kernel queue: watchers, timers, ready callbacks and every fd."""
        cdef FdWatcher watcher
        if self._closed:
            return
        self._closed = True
        _track_all(self._ready)
        self._ready.clear()
        self._ready_spare.clear()
        _drain_pool(self)
        self._timers.clear()
        for watcher in self._table_values():
            if watcher.registered:
                if not self._forked:
                    # (A forked child's epoll set is the parent's: leave it be.)
                    self._poller.unregister(watcher.fd)
                watcher.registered = 0
        self._table_clear()
        self._close_fds()

    def _reset_kernel(self):
        """Give the loop a kernel queue of its own: a new epoll fd, eventfd and (lazily)
        timerfd. For a forked child (Loop.reset).

        After fork() the child's epoll fd, eventfd and timerfd are copies of the parent's
        fds and share their open files: an epoll_ctl in the child adds to or removes from
        the *parent's* epoll set, a read of the eventfd swallows the parent's wake-ups, and
        a timerfd_settime moves the parent's timer. So the old fds are only closed (the
        child's copies; the parent's stay), never operated on, and every fd watcher is
        dropped without unregistering it: the registrations are the parent's. Ready
        callbacks and timers are kept."""
        cdef FdWatcher watcher
        self._check_closed()
        if self._running:
            raise RuntimeError("cannot reset a running event loop")
        self._renew_fds()
        for watcher in self._table_values():
            watcher.registered = 0
            watcher.disarmed = False
        self._table_clear()
        self._io_fresh = False
        self._forked = False
        if self._external:
            self._sync_external()

    # -- running ------------------------------------------------------------------------

    def _run_until_stopped(self):
        """The body of run_forever: iterate until stop(). Loop.run_forever does the set-up."""
        self._running_forever = True
        try:
            while True:
                self._iterate(-1.0)
                if self._stopping:
                    break
        finally:
            self._stopping = False
            self._running_forever = False

    def _step_once(self, timeout, int max_rounds):
        """The body of step(): one iteration waiting at most `timeout` seconds for work
        (None: until there is some), then up to max_rounds - 1 more rounds of the ready
        queue alone, then leave the fd readable iff work remains.

        cqueues' step resumes every coroutine whose wait ended before it began; here a
        resumption is a chain of callbacks (a due timer sets a future, the future queues
        its task's wake-up, the finished task queues its done callbacks), one round each.
        The extra rounds neither poll nor collect timers, so they never block and a
        timer or fd wait that starts during the step (cqueues.sleep(0) included) ends in
        the next one, as in cqueues. The bound returns control to the outer poller when
        callbacks keep queueing callbacks. run_forever's iteration is untouched."""
        cdef double max_wait = -1.0 if timeout is None else timeout
        cdef int rounds = 1
        if max_wait < 0 and timeout is not None:
            raise ValueError("timeout must be non-negative or None")
        max_wait = _wait_limit(max_wait)
        self._external = True
        try:
            self._iterate(max_wait)
            while self._ready and rounds < max_rounds:
                rounds += 1
                self._run_ready()
        finally:
            self._sync_external()

    cdef int _iterate(self, double max_wait) except -1:
        """One iteration: poll fds (waiting at most max_wait seconds, < 0 meaning no cap,
        and not at all when callbacks are ready), queue due timers, run the callbacks
        that were ready when it started."""
        cdef double timeout
        cdef int timeout_ms
        cdef int nevents
        cdef TimerHeap timers = self._timers

        if timers._nfresh:
            timers.settle()
        if timers._heap:
            timers.drop_cancelled_head()

        if self._ready or self._stopping:
            timeout = 0.0
        else:
            if timers._heap:
                timeout = timers.peek_when() - _clock(self)
                if not timeout > 0.0:  # (a patched clock may make it NaN)
                    timeout = 0.0
                if max_wait >= 0.0 and timeout > max_wait:
                    timeout = max_wait
            else:
                timeout = max_wait
        if timeout > MAX_POLL_TIMEOUT_S:
            timeout = MAX_POLL_TIMEOUT_S

        if timeout == 0.0 and (self._io_fresh or self._count == 0):
            # Work is due (ready callbacks or a due timer) and polling now would tell
            # nothing worth a system call:
            # - no fd is watched: the only fds in the epoll set are the kernel's own eventfd
            #   and timerfd, which exist to end a *blocking* wait (call_soon_threadsafe has
            #   already queued its handle) or to be seen by an outside poller; they are
            #   drained the next time the loop polls;
            # - or the previous iteration's poll returned events: what is ready now is
            #   mostly what those events led to (a task woken by data_received, say), and
            #   the fds were polled one batch ago. Running it first halves the polls of a
            #   busy server, as libuv's (uvloop's) iteration runs I/O callbacks and the
            #   callbacks they schedule between two polls. The next iteration polls again,
            #   so I/O is never more than one batch behind.
            self._io_fresh = False
        else:
            if timeout < 0.0:
                timeout_ms = -1
            else:
                # Round up, as asyncio does: waking before the timer is due costs a spin.
                timeout_ms = <int>ceil(timeout * 1e3)
            nevents = self._poller.wait(timeout_ms)
            self._io_fresh = nevents > 0
            if nevents:
                self._dispatch(nevents)

        if timers._heap:
            self._run_due_timers()
        return self._run_ready()

    cdef int _run_due_timers(self) except -1:
        cdef TimerHeap timers = self._timers
        cdef TimerHandle timer
        cdef double end = _clock(self) + CLOCK_RESOLUTION_S
        cdef list ready = self._ready
        while timers._heap and timers.peek_when() < end:
            timer = timers.pop()
            if not timer._cancelled:
                ready.append(timer)
        return 0

    cdef int _run_ready(self) except -1:
        # The only place callbacks run.
        cdef list batch = self._ready
        cdef Py_ssize_t n = len(batch)
        cdef Py_ssize_t i = 0
        cdef Handle handle
        cdef bint debug = self._debug
        if n == 0:
            return 0
        self._ready = self._ready_spare
        try:
            while i < n:
                # Taken out of the batch, so it is freed once it has run (see cqcompat.h).
                handle = <Handle>cq_list_take(batch, i)
                i += 1
                if not handle._cancelled:
                    if debug:
                        self._run_timed(handle)
                    else:
                        handle._run()
                if Py_REFCNT(handle) > 1:
                    # It lives on outside the queue: back under the GC's eye.
                    _track(handle)
                elif (
                    self._pool_len < HANDLE_POOL_MAX
                    and not cq_gc_is_tracked(<PyObject *>handle)
                    and clear_for_reuse(handle)
                ):
                    Py_INCREF(handle)
                    self._handle_pool[self._pool_len] = <PyObject *>handle
                    self._pool_len += 1
        except BaseException:
            # SystemExit or KeyboardInterrupt left a callback: the rest of this batch is
            # still due and runs first when the loop runs again, as asyncio keeps it.
            if handle is not None and Py_REFCNT(handle) > 1:
                _track(handle)
            self._ready = batch[i:] + self._ready
            batch.clear()
            self._ready_spare = batch
            raise
        handle = None
        cq_list_clear_keep(batch)
        self._ready_spare = batch
        return 0

    cdef int _run_timed(self, Handle handle) except -1:
        # Debug mode: time the callback and report it if it was slow.
        cdef double t0 = self._now()
        cdef double elapsed
        handle._run()
        elapsed = self._now() - t0
        if elapsed >= self.slow_callback_duration:
            self._on_slow_callback(handle, elapsed)
        return 0

    def _on_slow_callback(self, handle, duration):
        # Overridden in cqloop.loop (it logs the warning asyncio logs).
        pass

    # -- fd events ----------------------------------------------------------------------

    cdef int _dispatch(self, int nevents) except -1:
        cdef int i
        cdef int fd
        cdef uint64_t data
        cdef uint32_t events
        cdef int changed
        cdef PyObject *found
        cdef FdWatcher watcher
        cdef list ready = self._ready
        cdef int res
        cdef const char *buf
        cdef bint more
        cdef PyObject *owner
        for i in range(nevents):
            data = self._poller.events[i].data.u64
            events = self._poller.events[i].events
            if events & EV_RECEIVED:
                # A receive the engine ran (io_uring) goes to the watcher that started it,
                # which the engine holds until its last completion: in the table or not
                # (a transport lending its fd to sendfile), and whatever holds the fd
                # number by now (the engine reports only the number's current receive).
                more = self._poller.received(i, &res, &buf, &owner)
                if owner != NULL:
                    (<FdWatcher>owner)._on_received(res, buf, more, ready)
                continue
            if data == <uint64_t>self._efd:
                self._drain_wakeup()
                continue
            if self._tfd >= 0 and data == <uint64_t>self._tfd:
                self._drain_timerfd()
                continue
            fd = <int>(data & 0xffffffffu)
            # The fd-indexed table (fdtable.pyx); `watcher` takes a
            # reference, so a watcher _on_events drops from the table lives to the end.
            if fd < 0 or fd >= self._by_fd_len:
                continue
            found = self._by_fd[fd]
            if found == NULL:
                continue
            watcher = <FdWatcher>found
            if watcher.gen != <uint32_t>(data >> 32):
                # A registration that outlived its fd number (see poller.pyx): not ours.
                continue
            changed = watcher._on_events(events, ready)
            if changed == 1:
                self._update_watcher(watcher, True)
            elif changed == 2:
                self._remove_watcher(watcher)
        return 0

    # -- statistics ---------------------------------------------------------------------

    def _kernel_statistics(self):
        return {
            "ready": len(self._ready),
            "timers": self._timers.size(),
            "timers_cancelled": self._timers.cancelled,
            # Inert one-shot registrations (see _update_watcher) are not watched fds.
            "fds": sum(1 for w in self._table_values() if (<FdWatcher>w).wanted()
                       or (<FdWatcher>w).persistent),
            "external": bool(self._external),
            "timerfd": self._tfd >= 0,
            # Stream transports read through the engine's receives (io_uring).
            "stream_reads": bool(self._poller.stream_reads),
        }


# -- call_soon's entry point ----------------------------------------------------------------
# call_soon is the hottest method of the loop: every future's done callback and every task
# step is scheduled through it, by C code (asyncio's Task and Future) that passes
# `context=` as a keyword. Cython's generic keyword parsing costs more than the rest of
# call_soon, so the type gets a METH_FASTCALL entry (cqcompat.h) that reads the one keyword
# call_soon takes directly, then calls Kernel._call_soon.

# The ready queue, the timer heap and the cyclic GC.
#
# The collector counts allocations net of frees and runs when the young generation grows;
# each run walks every young tracked object. A loop running tens of thousands of tasks has
# as many handles in its ready queue at once, each a young tracked object holding a bound
# method and a Context, and walking them was most of what separated cqloop's tasks
# benchmark from rloop's (whose handles the GC does not see). So a handle that _call_soon
# queues leaves the GC's lists (PyObject_GC_UnTrack) while it waits, and _run_ready puts
# it back if anything still holds it after it ran (most are freed there and then). Timers
# do the same in the heap (timerheap.pyx's docstring): untracked when pushed, back in the
# GC's lists at the next iteration if the caller kept the handle, and when they leave the
# heap cancelled; a due timer moves to the ready queue untracked.
#
# An untracked object's references look external to the collector, which would make a loop
# dropped without close() uncollectable while callbacks are queued or timers pending
# (asyncio collects it, with a ResourceWarning). So the kernel's traversal takes over for
# the queued handles and heap timers it alone holds (reference count 1: the ready list's or
# the heap's; no handle is in both): it visits their callback, arguments, Context and loop
# as if they were its own fields, which, for an object nothing else can reach, is exactly
# the reference structure. An untracked handle someone else also holds is not visited (its
# references stay external: a leak in the rare case of such a handle in a dropped, unclosed
# loop, never a premature free).

cdef void _drain_pool(Kernel kernel) noexcept:
    """Free the handles kept for reuse. A function, not a method: __dealloc__ calls it,
    and a Kernel whose base's __cinit__ failed (an unknown engine) is deallocated before
    its method table is set."""
    cdef PyObject *handle
    while kernel._pool_len:
        kernel._pool_len -= 1
        handle = kernel._handle_pool[kernel._pool_len]
        kernel._handle_pool[kernel._pool_len] = NULL
        Py_XDECREF(handle)


cdef inline void _track(Handle handle) noexcept:
    cq_gc_retrack(<PyObject *>handle)


cdef int _track_all(list handles) except -1:
    cdef Handle handle
    for handle in handles:
        _track(handle)
    return 0


cdef inline int _visit(object field, cq_visitproc visit, void *arg) noexcept:
    if field is None:
        return 0
    return visit(<PyObject *>field, arg)


cdef int _visit_owned(object handles, cq_visitproc visit, void *arg) noexcept:
    """Visit the fields of the untracked handles in `handles` (a list) held by it alone."""
    cdef PyObject **items
    cdef Py_ssize_t i
    cdef Handle handle
    cdef int err
    if handles is None:
        return 0
    items = cq_list_items(handles)
    for i in range(len(<list>handles)):
        # Judged on the raw pointer, before any reference of ours is taken.
        if items[i] is NULL or _Py_REFCNT(items[i]) != 1 or cq_gc_is_tracked(items[i]):
            continue
        handle = <Handle>items[i]
        err = (
            _visit(handle._callback, visit, arg)
            or _visit(handle._args, visit, arg)
            or _visit(handle._ctx, visit, arg)
            or _visit(handle._vars, visit, arg)
            or _visit(handle._loop, visit, arg)
            or _visit(handle._source_traceback, visit, arg)
        )
        if err:
            return err
    return 0


cdef int _visit_watchers(Kernel kernel, cq_visitproc visit, void *arg) noexcept:
    """Visit the fd table's watchers: the table is a C array (fdtable.pyx), which the
    generated traversal does not know of; a loop dropped unclosed with transports open is
    a cycle (transport -> loop -> table -> transport) the collector must see whole."""
    cdef Py_ssize_t i
    cdef int err
    for i in range(kernel._by_fd_len):
        if kernel._by_fd[i] != NULL:
            err = visit(kernel._by_fd[i], arg)
            if err:
                return err
    return 0


cdef int _kernel_traverse(PyObject *obj, cq_visitproc visit, void *arg) noexcept:
    cdef int err = cq_call_base_traverse(obj, visit, arg)
    cdef TimerHeap timers
    if err:
        return err
    err = _visit_owned((<Kernel>obj)._ready, visit, arg)
    if err:
        return err
    err = _visit_watchers(<Kernel>obj, visit, arg)
    if err:
        return err
    if (<Kernel>obj)._poller is not None:
        # The owners of the engine's receives (transports), held by the engine alone.
        err = (<Kernel>obj)._poller.visit_receivers(visit, arg)
        if err:
            return err
    timers = (<Kernel>obj)._timers
    if timers is None:
        return 0
    return _visit_owned(timers._heap, visit, arg)


cq_install_traverse(Kernel, _kernel_traverse)


cdef bint _kernel_debug(object kernel) noexcept:
    return (<Kernel>kernel)._debug


cdef int _timer_cancelled(object kernel, TimerHandle timer) except -1:
    if timer._scheduled:
        (<Kernel>kernel)._timers.cancelled += 1
    return 0


set_kernel_hooks(Kernel, _kernel_debug, _timer_cancelled)


cdef object _call_soon_entry(object self, object callback, object args, object context):
    return (<Kernel>self)._call_soon(callback, <tuple>args, context)


cq_install_call_soon(Kernel, _call_soon_entry)
