/* The vectorcall entry of Kernel.call_soon; included by kernel.pyx only. */
#ifndef CQLOOP_CALLSOON_H
#define CQLOOP_CALLSOON_H

#include <Python.h>

/* call_soon(callback, *args, context=None) as a METH_FASTCALL|METH_KEYWORDS method.
 * kernel.pyx installs it on its Kernel type in place of the Cython-generated wrapper, whose
 * generic keyword matching cost more than scheduling the callback itself. It builds the
 * argument tuple, picks out `context` and calls the kernel's implementation. */
typedef PyObject *(*cq_call_soon_fn)(PyObject *self, PyObject *callback, PyObject *args,
                                     PyObject *context);

static cq_call_soon_fn cq_call_soon_impl = NULL;
static PyObject *cq_str_context = NULL;
/* The last other string object equal to "context" that came as a keyword name. asyncio's C
 * Task passes its own static "context" string, which on 3.11 is not the interned one: one
 * string comparison per task step cost about 1.5% of the tasks benchmark. Holds a
 * reference. */
static PyObject *cq_str_context_seen = NULL;

static PyObject *
cq_call_soon_fastcall(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                      PyObject *kwnames)
{
    PyObject *context = Py_None;
    PyObject *callback_args;
    PyObject *result;
    Py_ssize_t i;

    if (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, 0);
        int is_context = name == cq_str_context || name == cq_str_context_seen;
        if (!is_context && PyUnicode_Check(name)) {
            is_context = PyUnicode_Compare(name, cq_str_context) == 0;
            if (PyErr_Occurred()) {
                return NULL;
            }
            if (is_context) {
                Py_INCREF(name);
                Py_XSETREF(cq_str_context_seen, name);
            }
        }
        if (!is_context || PyTuple_GET_SIZE(kwnames) != 1) {
            if (is_context) {
                name = PyTuple_GET_ITEM(kwnames, 1);
            }
            PyErr_Format(PyExc_TypeError,
                         "call_soon() got an unexpected keyword argument '%S'", name);
            return NULL;
        }
        context = args[nargs];
    }
    if (nargs < 1) {
        PyErr_SetString(PyExc_TypeError,
                        "call_soon() missing 1 required positional argument: 'callback'");
        return NULL;
    }
    callback_args = PyTuple_New(nargs - 1);
    if (callback_args == NULL) {
        return NULL;
    }
    for (i = 1; i < nargs; i++) {
        Py_INCREF(args[i]);
        PyTuple_SET_ITEM(callback_args, i - 1, args[i]);
    }
    result = cq_call_soon_impl(self, args[0], callback_args, context);
    Py_DECREF(callback_args);
    return result;
}

static PyMethodDef cq_call_soon_def = {
    "call_soon",
    (PyCFunction)(void (*)(void))cq_call_soon_fastcall,
    METH_FASTCALL | METH_KEYWORDS,
    "call_soon(callback, *args, context=None)\n--\n\n"
    "Run callback(*args) in the next iteration, in `context` (default: a copy of the\n"
    "current one). Returns a Handle.",
};

static int
cq_install_call_soon(PyTypeObject *tp, cq_call_soon_fn impl)
{
    PyObject *descr;
    int err;
    cq_str_context = PyUnicode_InternFromString("context");
    if (cq_str_context == NULL) {
        return -1;
    }
    cq_call_soon_impl = impl;
    descr = PyDescr_NewMethod(tp, &cq_call_soon_def);
    if (descr == NULL) {
        return -1;
    }
    err = PyDict_SetItemString(tp->tp_dict, "call_soon", descr);
    Py_DECREF(descr);
    if (err < 0) {
        return -1;
    }
    PyType_Modified(tp);
    return 0;
}

#endif
