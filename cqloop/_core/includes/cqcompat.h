/* Small inline helpers for the kernel that Cython cannot express as cheaply. */
#ifndef CQLOOP_COMPAT_H
#define CQLOOP_COMPAT_H

#include <Python.h>

/* Ready lists up to this many items keep their array between iterations (512 KiB each). */
#define CQ_READY_KEEP_MAX 65536

/* callback(*args) through vectorcall: a tuple's items are contiguous, so they are the
 * argument vector as they stand and no new tuple is built. */
static inline PyObject *
cq_call_tuple(PyObject *callback, PyObject *args)
{
    Py_ssize_t n = PyTuple_GET_SIZE(args);
    if (n == 0) {
        return PyObject_CallNoArgs(callback);
    }
    return PyObject_Vectorcall(callback, &PyTuple_GET_ITEM(args, 0), (size_t)n, NULL);
}

/* Hand the pending exception on to Cython's error handling (see pyapi.pxd). */
static inline int
cq_reraise(void)
{
    return -1;
}

/* Take item i out of `list`, leaving NULL in its slot, and return the reference the list
 * held. The kernel runs its private ready batch this way so that each handle (and what it
 * holds: a task's bound step, a future) is freed as soon as it has run, as asyncio's
 * deque.popleft() frees it. Holding a whole batch until the iteration ends would keep
 * thousands of young objects alive, and the cyclic GC, which counts allocations net of
 * deallocations, would run far more often and traverse them all each time. Only for lists
 * nothing else can see; a NULL slot is fine for list_clear and for slicing past it. */
static inline PyObject *
cq_list_take(PyObject *list, Py_ssize_t i)
{
    PyListObject *lst = (PyListObject *)list;
    PyObject *item = lst->ob_item[i];
    lst->ob_item[i] = NULL;
    return item;
}

/* The item array and the size of a list whose items the caller moves about itself. */
static inline PyObject **
cq_list_items(PyObject *list)
{
    return ((PyListObject *)list)->ob_item;
}

static inline void
cq_list_set_size(PyObject *list, Py_ssize_t n)
{
    Py_SET_SIZE((PyListObject *)list, n);
}

/* Empty `list` but keep its allocated item array: the kernel's two ready lists are refilled
 * every iteration, and list.clear() would free the array only for append to allocate it
 * again. Items are detached before they are released, because releasing one may run
 * arbitrary code (a __del__) which must see a consistent, empty list. */
static inline void
cq_list_clear_keep(PyObject *list)
{
    PyListObject *lst = (PyListObject *)list;
    Py_ssize_t n = Py_SIZE(lst);
    Py_ssize_t i;
    PyObject **items = lst->ob_item;
    if (n == 0) {
        return;
    }
    if (n > CQ_READY_KEEP_MAX) {
        /* A burst: let the array go rather than pin a large one forever. */
        PyList_SetSlice(list, 0, n, NULL);
        return;
    }
    Py_SET_SIZE(lst, 0);
    for (i = 0; i < n; i++) {
        PyObject *item = items[i];
        items[i] = NULL;
        Py_XDECREF(item);
    }
}

/* Whether any weak reference to `op` exists; its type must support weak references. */
static inline int
cq_has_weakrefs(PyObject *op)
{
    return *(PyObject **)((char *)op + Py_TYPE(op)->tp_weaklistoffset) != NULL;
}

/* Lazy contexts. asyncio gives every scheduled callback its own copy of the caller's
 * contextvars.Context. A copy is a new GC-tracked object, and a batch of 50,000 pending
 * timers then holds 50,000 of them: the cyclic GC counts allocations net of frees, so that
 * alone set off a full collection and doubled the batch's cost. A Context is only a holder
 * of an immutable mapping (a HAMT) of its variables, so the kernel keeps the caller's
 * mapping instead, which costs a reference and no allocation, and makes the Context from it
 * when the callback runs or get_context() is called: same variables, same isolation (a set()
 * on either side after scheduling is not seen by the other), and the handle's own Context
 * object from then on. This reads the Context's layout, a CPython internal, checked the same
 * in 3.11, 3.12 and 3.13 (Include/internal/pycore_context.h); on any other version the
 * snapshot is an eager copy and making the Context returns it. */
#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030E0000
#define CQ_LAZY_CONTEXT 1
typedef struct {
    PyObject_HEAD
    PyObject *ctx_prev;
    PyObject *ctx_vars;
    PyObject *ctx_weakreflist;
    int ctx_entered;
} cq_context_layout;
#endif

/* The calling thread's context variables as they are now: a new reference. */
static inline PyObject *
cq_context_snapshot(void)
{
#ifdef CQ_LAZY_CONTEXT
    PyObject *current = PyThreadState_Get()->context;
    PyObject *vars;
    if (current == NULL) {
        /* No context in this thread yet: copying makes (and installs) the empty one. */
        return PyContext_CopyCurrent();
    }
    vars = ((cq_context_layout *)current)->ctx_vars;
    Py_INCREF(vars);
    return vars;
#else
    return PyContext_CopyCurrent();
#endif
}

#ifdef CQ_LAZY_CONTEXT
/* One Context kept from a callback that has run, for the next handle to make its Context
 * in (handles.pyx is the only user; a static per translation unit, guarded by the GIL). */
static PyObject *cq_spare_context = NULL;
#endif

/* A new Context holding the variables of `snapshot` (from cq_context_snapshot). */
static inline PyObject *
cq_context_from_snapshot(PyObject *snapshot)
{
#ifdef CQ_LAZY_CONTEXT
    PyObject *ctx;
    PyObject *old;
    if (PyContext_CheckExact(snapshot)) {
        /* The first snapshot taken in a thread is a Context already. */
        Py_INCREF(snapshot);
        return snapshot;
    }
    ctx = cq_spare_context;
    if (ctx != NULL) {
        cq_spare_context = NULL;
    }
    else {
        ctx = PyContext_New();
        if (ctx == NULL) {
            return NULL;
        }
    }
    old = ((cq_context_layout *)ctx)->ctx_vars;
    Py_INCREF(snapshot);
    ((cq_context_layout *)ctx)->ctx_vars = snapshot;
    Py_XDECREF(old);
    return ctx;
#else
    Py_INCREF(snapshot);
    return snapshot;
#endif
}

/* After a callback ran in `ctx`, the Context its handle made: when nothing but that handle
 * holds the Context (no other reference, no weak reference, not entered) and nothing but
 * the caller holds the handle (it is about to be freed, so no get_context() can ever ask
 * for it again), nobody can tell the Context from a new one, and it becomes the spare that
 * the next cq_context_from_snapshot fills instead of allocating. Returns 1 when it took
 * the Context (the caller then drops the handle's reference to it without freeing it). */
static inline int
cq_context_recycle(PyObject *handle, PyObject *ctx)
{
#ifdef CQ_LAZY_CONTEXT
    cq_context_layout *c = (cq_context_layout *)ctx;
    if (cq_spare_context != NULL || Py_REFCNT(handle) != 1 || Py_REFCNT(ctx) != 1
            || c->ctx_weakreflist != NULL || c->ctx_entered || !PyContext_CheckExact(ctx)) {
        return 0;
    }
    Py_INCREF(ctx);
    cq_spare_context = ctx;
    return 1;
#else
    (void)handle;
    (void)ctx;
    return 0;
#endif
}

/* Whether the weak reference `ref` refers to `obj`, which the caller holds (so a match
 * means alive): Kernel._wait_sock's proof that a registration is for the same socket.
 * PyWeakref_GetObject is deprecated from 3.13, where PyWeakref_GetRef replaces it. */
static inline int
cq_weakref_is(PyObject *ref, PyObject *obj)
{
#if PY_VERSION_HEX >= 0x030D0000
    PyObject *target = NULL;
    if (PyWeakref_GetRef(ref, &target) < 0) {
        PyErr_Clear();
        return 0;
    }
    Py_XDECREF(target);
    return target == obj;
#else
    return PyWeakref_GET_OBJECT(ref) == obj;
#endif
}

#endif
