# cython: freethreading_compatible=False
"""The public socket transport's per-message methods, as C method descriptors.

A protocol writes with `self.transport.write(data)` on the public SocketTransport
(cqloop.transports.socket_transport), a Python class: asyncio.Transport's layout rules
out a compiled one. Its write, writelines, is_closing, is_reading, pause_reading,
resume_reading, get_write_buffer_size, close and abort are C method descriptors made
here, on that class (bind_engine_methods, called once when socket_transport is
imported): CPython's specialised method load and call (LOAD_METHOD_WITH_VALUES and
PRECALL_NO_KW_METHOD_DESCRIPTOR_O on 3.11) then go straight to these functions, with no
bound method made and no lookup in the instance. Each reads the engine (stream.pyx's
StreamTransport) from the class's `_core` slot at its offset, checked once as sockio.pyx
checks socket.socket's `_io_refs`, and calls its C method. Bound methods stored on each
instance, as before, cost a lookup the interpreter does not specialise (instance
attributes shadowing a class attribute): 160 instructions of a 1 KiB echo's 2,380, and
64 bytes per method per connection. An instance attribute still shadows them (test
suites replace `transport.write`).
"""

from cpython.object cimport PyObject

from cqloop._core.includes.pyapi cimport METH_NOARGS, METH_O, PyDescr_NewMethod, PyMethodDef
from cqloop._core.stream cimport StreamTransport

cdef Py_ssize_t _engine_offset = -1
cdef type _engine_owner = None
cdef PyMethodDef _owner_methods[9]


cdef inline StreamTransport _engine(object owner):
    cdef PyObject *core
    if _engine_offset >= 0:
        core = (<PyObject **>(<char *><PyObject *>owner + _engine_offset))[0]
        if core is not NULL and type(<object>core) is StreamTransport:
            return <StreamTransport>core
    # Unset (a transport whose __init__ failed), or the offset could not be trusted.
    return owner._core


cdef object _owner_write(object owner, object data):
    _engine(owner)._write(data)
    return None


cdef object _owner_writelines(object owner, object list_of_data):
    _engine(owner)._writelines(list_of_data)
    return None


cdef object _owner_is_closing(object owner, PyObject *unused):
    return _engine(owner)._closing


cdef object _owner_is_reading(object owner, PyObject *unused):
    cdef StreamTransport core = _engine(owner)
    return not core._paused and not core._closing


cdef object _owner_pause_reading(object owner, PyObject *unused):
    _engine(owner)._pause_reading()
    return None


cdef object _owner_resume_reading(object owner, PyObject *unused):
    _engine(owner)._resume_reading()
    return None


cdef object _owner_get_write_buffer_size(object owner, PyObject *unused):
    return _engine(owner)._write_pending


cdef object _owner_close(object owner, PyObject *unused):
    _engine(owner)._close()
    return None


cdef object _owner_abort(object owner, PyObject *unused):
    _engine(owner)._force_close(None)
    return None


cdef void _owner_method(int i, const char *name, void *function, int flags,
                        const char *doc) noexcept:
    _owner_methods[i].ml_name = name
    _owner_methods[i].ml_meth = function
    _owner_methods[i].ml_flags = flags
    _owner_methods[i].ml_doc = doc


def bind_engine_methods(type cls not None):
    """Give cls (the public socket transport, whose `_core` slot holds its StreamTransport)
    the engine's per-message methods as C method descriptors (see above). Once per
    process, for one class; its subclasses inherit them."""
    global _engine_offset, _engine_owner
    from cqloop._core.sockio import slot_offset

    if _engine_owner is not None:
        if cls is _engine_owner:
            return
        raise RuntimeError(f"the engine's methods are bound to {_engine_owner!r} already")
    _owner_method(0, "write", <void *>_owner_write, METH_O,
                  "write(data): send data, or queue what the socket does not take now.")
    _owner_method(1, "writelines", <void *>_owner_writelines, METH_O,
                  "writelines(list_of_data): write the items with one gathered send.")
    _owner_method(2, "is_closing", <void *>_owner_is_closing, METH_NOARGS,
                  "Whether the transport is closing or closed.")
    _owner_method(3, "is_reading", <void *>_owner_is_reading, METH_NOARGS,
                  "Whether the transport is receiving.")
    _owner_method(4, "pause_reading", <void *>_owner_pause_reading, METH_NOARGS,
                  "Pause the receiving end.")
    _owner_method(5, "resume_reading", <void *>_owner_resume_reading, METH_NOARGS,
                  "Resume the receiving end.")
    _owner_method(6, "get_write_buffer_size", <void *>_owner_get_write_buffer_size,
                  METH_NOARGS, "The bytes queued to send.")
    _owner_method(7, "close", <void *>_owner_close, METH_NOARGS,
                  "Close once the write buffer is sent; connection_lost follows.")
    _owner_method(8, "abort", <void *>_owner_abort, METH_NOARGS,
                  "Close at once, dropping the write buffer; connection_lost follows.")
    _engine_offset = slot_offset(cls, "_core")
    _engine_owner = cls
    for i in range(9):
        name = _owner_methods[i].ml_name.decode()
        setattr(cls, name, PyDescr_NewMethod(cls, &_owner_methods[i]))
