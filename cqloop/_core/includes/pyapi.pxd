# CPython C-API entry points the kernel calls directly, bypassing their Python-level
# wrappers (Context.run costs about twice what PyContext_Enter/PyContext_Exit around a
# vectorcall does: see docs/design.md, "the only place callbacks run").

from cpython.object cimport PyObject, PyTypeObject


cdef extern from "Python.h":
    object PyContext_CopyCurrent()
    # No `except` clause: _run checks the result itself, the error path is cold.
    int PyContext_Enter(object ctx)
    int PyContext_Exit(object ctx)
    object PyContext_Copy(object ctx)
    # The calling thread's current Context (a public field of PyThreadState in 3.11-3.14;
    # NULL before any context was made): transports compare it to their own, so that a
    # call made in their context already enters nothing.
    ctypedef struct cq_thread_state "PyThreadState":
        PyObject *context
    cq_thread_state *cq_thread_state_get "PyThreadState_Get"() noexcept
    int PyErr_CheckSignals() except -1
    # With a NULL value: the generic attribute deletion (Kernel.__delattr__).
    int cq_generic_delattr "PyObject_GenericSetAttr"(object o, object name,
                                                     PyObject *value) except -1


cdef extern from "cqcompat.h":
    # Whether weak reference `ref` refers to `obj` (held by the caller).
    bint cq_weakref_is(object ref, object obj) noexcept
    # Call callback(*args) with vectorcall; args must be a tuple. Returns NULL with an
    # exception set on failure (the caller decides what to do with it).
    PyObject *cq_call_tuple(object callback, object args)
    # Returns -1 and leaves the pending exception in place, so that a `try` around the
    # call catches the exception an earlier raw C-API call left set.
    int cq_reraise() except -1
    # Empty a list but keep its item array, so that refilling it does not reallocate.
    void cq_list_clear_keep(list lst)
    # Steal item i out of a private list (its slot becomes NULL); see cqcompat.h.
    object cq_list_take(list lst, Py_ssize_t i)
    # A list's item array, to move items within it without touching reference counts,
    # and its size, set directly (timerheap.pyx). Only for lists the caller owns.
    PyObject **cq_list_items(list lst)
    void cq_list_set_size(list lst, Py_ssize_t n)
    # Lazy contexts (see cqcompat.h): the caller's context variables now, and a new
    # Context made from them later.
    object cq_context_snapshot()
    object cq_context_from_snapshot(object snapshot)
    # Whether any weak reference to `op` exists (its type must support them).
    int cq_has_weakrefs(PyObject *op)
    # Borrowed references: the reference counts are what it judges by.
    int cq_context_recycle(PyObject *handle, PyObject *ctx)


cdef extern from "Python.h":
    # A C function as a method of a type (stream.pyx gives the public socket transport
    # its hot methods this way). ml_meth is PyCFunction; typed void * here so that a cdef
    # function of the matching C signature can be stored in it.
    ctypedef struct PyMethodDef:
        const char *ml_name
        void *ml_meth
        int ml_flags
        const char *ml_doc
    enum:
        METH_NOARGS
        METH_O
    # A method descriptor of `tp` for `meth`, which must outlive it (static storage).
    object PyDescr_NewMethod(type tp, PyMethodDef *meth)


cdef extern from "Python.h":
    # A new, empty instance of a type whose tp_alloc is the generic one (object.__new__'s
    # work, without its argument checks; acceptor.pyx makes transports with it).
    object cq_type_generic_alloc "PyType_GenericAlloc"(PyTypeObject *tp, Py_ssize_t nitems)
