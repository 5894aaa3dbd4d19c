/* The kernel's hooks into the cyclic GC: its traversal (kernel.pyx) and the tracking of
 * the handles its ready queue and timer heap keep out of the GC's lists (kernel.pyx,
 * timerheap.pyx). See kernel.pyx, "The ready queue, the timer heap and the cyclic GC". */
#ifndef CQLOOP_GC_H
#define CQLOOP_GC_H

#include <Python.h>

typedef int (*cq_visitproc)(PyObject *, void *);
typedef int (*cq_traverseproc)(PyObject *, cq_visitproc, void *);

/* The type's own traversal (Cython's), which the installed one calls first. */
static cq_traverseproc cq_base_traverse = NULL;

static inline int
cq_call_base_traverse(PyObject *self, cq_visitproc visit, void *arg)
{
    return cq_base_traverse(self, visit, arg);
}

static inline int
cq_install_traverse(PyTypeObject *tp, cq_traverseproc traverse)
{
    cq_base_traverse = (cq_traverseproc)tp->tp_traverse;
    tp->tp_traverse = (traverseproc)traverse;
    return 0;
}

static inline int
cq_gc_is_tracked(PyObject *op)
{
    return PyObject_GC_IsTracked(op);
}

/* Put an object the kernel took out of the GC's lists back in them (if it is not). */
static inline void
cq_gc_retrack(PyObject *op)
{
    if (!PyObject_GC_IsTracked(op)) {
        PyObject_GC_Track(op);
    }
}

#endif
