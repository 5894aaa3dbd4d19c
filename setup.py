"""Build the Cython kernel (cqloop/_core). Everything else lives in pyproject.toml."""

import os
import sys

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.editable_wheel import editable_wheel

if not sys.platform.startswith("linux"):
    raise SystemExit("cqloop builds on Linux only (it is written on epoll, eventfd and timerfd)")

CORE_MODULES = [
    "handles",
    "timerheap",
    "poller",
    "uring",
    "watchers",
    "sockaddr",
    "sockends",
    "fdtable",
    "loopfd",
    "kernel",
    "contexts",
    "ringread",
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
    "acceptor",
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


# Installed beside an editable install (below), as one .pth line that runs this at every
# interpreter start. Not a module of its own: pytest would warn at each run that it cannot
# rewrite a module of a plugin's distribution that was imported before it started.
INSTALLED_FIRST = '''"""Makes `import cqloop` take cqloop's editable install even when the current
folder holds a folder named cqloop with no __init__.py (a clone of cqloop's repository
named cqloop): as with a regular install, a real package wins over such a namespace
folder. Without this, Python's path finder, which runs before the editable install's
finder, returns the folder as an empty namespace package. Written by cqloop's setup.py."""

import sys
from importlib.machinery import PathFinder


class InstalledFirst:
    # Known by this mark, not by identity: site.py may run the line twice (a site dir
    # reached twice), which makes a second class.
    cqloop_installed_first = True

    @staticmethod
    def find_spec(fullname, path=None, target=None):
        if fullname != "cqloop":
            return None
        spec = PathFinder.find_spec(fullname, path)
        if spec is not None and spec.has_location:
            return None  # a real package on sys.path: the usual order applies
        for finder in sys.meta_path:
            if finder is PathFinder or getattr(finder, "cqloop_installed_first", False):
                continue
            find_spec = getattr(finder, "find_spec", None)
            found = find_spec(fullname, path, target) if find_spec else None
            if found is not None and found.has_location:
                return found
        return None


if not any(getattr(finder, "cqloop_installed_first", False) for finder in sys.meta_path):
    sys.meta_path.insert(0, InstalledFirst)
'''


class _InstalledFirstStrategy:
    """Wraps setuptools' editable strategy: writes what it writes, then a .pth line that
    runs INSTALLED_FIRST (its name sorts after setuptools' own .pth, so that finder is in
    place first)."""

    def __init__(self, strategy):
        self._strategy = strategy

    def __enter__(self):
        self._strategy.__enter__()
        return self

    def __exit__(self, *exc_info):
        return self._strategy.__exit__(*exc_info)

    def __call__(self, wheel, files, mapping):
        self._strategy(wheel, files, mapping)
        # site.py runs a .pth line that starts with "import"; the code gets a namespace of
        # its own, so that the finder's method sees the names the code defines.
        namespace = {"__name__": "cqloop-installed-first"}
        line = f"import sys; exec({INSTALLED_FIRST!r}, {namespace!r})\n"
        wheel.writestr("cqloop-installed-first.pth", line.encode())


class EditableWheel(editable_wheel):
    """The editable install, plus the finder that keeps a clone named cqloop in the
    current folder from shadowing it (see INSTALLED_FIRST)."""

    def _select_strategy(self, name, tag, build_lib):
        return _InstalledFirstStrategy(super()._select_strategy(name, tag, build_lib))


setup(
    cmdclass={"build_ext": ParallelBuildExt, "editable_wheel": EditableWheel},
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
