# The vectorcall entry of Kernel.call_soon (cqcallsoon.h); cimported by kernel.pyx only.


cdef extern from "cqcallsoon.h":
    # Install `impl` as the type's call_soon, behind a METH_FASTCALL|METH_KEYWORDS entry.
    ctypedef object (*cq_call_soon_fn)(object self, object callback, object args,
                                       object context)
    int cq_install_call_soon(type tp, cq_call_soon_fn impl) except -1
