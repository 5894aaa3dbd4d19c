"""Build the Cython kernel (cqloop/_core). Everything else lives in pyproject.toml."""

import os
import sys

from Cython.Build import cythonize
from setuptools import Extension, setup

if not sys.platform.startswith("linux"):
    raise SystemExit("cqloop builds on Linux only (it is written on epoll, eventfd and timerfd)")

CORE_MODULES = [
    "handles",
    "timerheap",
    "poller",
    "watchers",
    "kernel",
    "stream",
    "osext",
    "tls",
    "cqbuf",
]
DEBUG = os.environ.get("CQLOOP_DEBUG_BUILD") == "1"

extensions = [
    Extension(
        f"cqloop._core.{name}",
        [f"cqloop/_core/{name}.pyx"],
        include_dirs=["cqloop/_core/includes"],
        extra_compile_args=["-O0", "-g"] if DEBUG else ["-O2"],
    )
    for name in CORE_MODULES
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "embedsignature": True,
            "freethreading_compatible": False,
        },
        annotate=DEBUG,
    ),
)
