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

#endif
