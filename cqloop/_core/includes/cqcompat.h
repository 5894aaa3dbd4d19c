/* Small inline helpers for the kernel that Cython cannot express as cheaply. */
#ifndef CQLOOP_COMPAT_H
#define CQLOOP_COMPAT_H

#include <Python.h>

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

#endif
