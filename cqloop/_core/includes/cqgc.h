/* The kernel's hook into the cyclic GC's traversal; included by kernel.pyx only.
 * See kernel.pyx, "The ready queue and the cyclic GC". */
#ifndef CQLOOP_GC_H
#define CQLOOP_GC_H

#include <Python.h>

typedef int (*cq_visitproc)(PyObject *, void *);
typedef int (*cq_traverseproc)(PyObject *, cq_visitproc, void *);

/* The type's own traversal (Cython's), which the installed one calls first. */
static cq_traverseproc cq_base_traverse = NULL;

static int
cq_call_base_traverse(PyObject *self, cq_visitproc visit, void *arg)
{
    return cq_base_traverse(self, visit, arg);
}

static int
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

#endif
