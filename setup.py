"""Build the Cython kernel (cqloop/_core). Everything else lives in pyproject.toml."""

import os
import sys

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

if not sys.platform.startswith("linux"):
    raise SystemExit("cqloop builds on Linux only (it is written on epoll, eventfd and timerfd)")

CORE_MODULES = [
    "handles",
    "timerheap",
    "poller",
    "watchers",
    "fdtable",
    "kernel",
    "stream",
    "transportmethods",
    "osext",
    "tlsrecord",
    "tls",
    "cqbuf",
    "cqoutbuf",
    "cqtls",
    "cqsock",
    "sockio",
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


class ParallelBuildExt(build_ext):
    """Compile the extensions in parallel (one job per CPU): each `pip install -e .`
    builds the whole core, and CI does that three times."""

    def finalize_options(self) -> None:
        super().finalize_options()
        if not self.parallel:
            self.parallel = os.cpu_count() or 1


setup(
    cmdclass={"build_ext": ParallelBuildExt},
    ext_modules=cythonize(
        extensions,
        nthreads=os.cpu_count() or 1,
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
