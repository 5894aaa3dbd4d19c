# cqloop._core.includes: every `cdef extern` the kernel uses lives in this package.
