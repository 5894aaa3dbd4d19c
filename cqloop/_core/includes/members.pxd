# CPython's member descriptors: what a class's __slots__ entry is, and where in an
# instance its value lives (sockio.pyx reads socket.socket's `_io_refs` slot by offset on
# the sock_* waiting path, where a generic attribute lookup cost most of the wait's set-up).
# The layout is CPython's public descrobject.h/structmember.h, the same from 3.11 to 3.14;
# sockio.pyx checks it against a real socket at import and reads by name if it differs.


cdef extern from "Python.h":
    ctypedef struct PyMemberDef:
        int type
        Py_ssize_t offset
    ctypedef struct PyMemberDescrObject:
        PyMemberDef *d_member

cdef enum:
    # descrobject.h's Py_T_OBJECT_EX (structmember.h's T_OBJECT_EX before 3.12): the member
    # type of a __slots__ entry, an object pointer (NULL while unset).
    MEMBER_OBJECT_EX = 16
