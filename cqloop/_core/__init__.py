"""cqloop._core: the compiled kernel (Cython). It never imports the modules above it."""
