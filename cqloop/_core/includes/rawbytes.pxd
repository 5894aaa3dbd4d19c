# bytes objects handled by pointer (stream.pyx's read path): made at a size, filled by
# recv, shrunk where they are. Declared on PyObject * so that the reference the resize may
# release is never one Cython also counts.

from cpython.object cimport PyObject


cdef extern from "Python.h":
    # A new, uninitialised bytes object of n bytes when v is NULL (a new reference).
    PyObject *cq_bytes_new "PyBytes_FromStringAndSize"(const char *v, Py_ssize_t n) except NULL
    # Shrink *s (sole reference) to n bytes; on failure *s is released and set to NULL.
    int cq_bytes_resize "_PyBytes_Resize"(PyObject **s, Py_ssize_t n) except -1
    char *cq_bytes_data "PyBytes_AS_STRING"(PyObject *s)
    void cq_decref "Py_DECREF"(PyObject *o)
