# Protocol callbacks in a transport's captured context (see contexts.pyx).

# callback(*args) in `context`, entering nothing if it is current.
cdef object call_in_context(object context, object callback, tuple args)
