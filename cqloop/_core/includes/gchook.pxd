# The kernel's hooks into the cyclic GC (cqgc.h); cimported by kernel.pyx and timerheap.pyx.

from cpython.object cimport PyObject


cdef extern from "cqgc.h":
    ctypedef int (*cq_visitproc)(PyObject *, void *) noexcept
    ctypedef int (*cq_traverseproc)(PyObject *, cq_visitproc, void *) noexcept
    int cq_call_base_traverse(PyObject *self, cq_visitproc visit, void *arg) noexcept
    # Make `traverse` the type's tp_traverse; it must call cq_call_base_traverse first.
    int cq_install_traverse(type tp, cq_traverseproc traverse) except -1
    int cq_gc_is_tracked(PyObject *op) noexcept
    void cq_gc_retrack(PyObject *op) noexcept
    void PyObject_GC_Track(object op)
    void PyObject_GC_UnTrack(object op)
