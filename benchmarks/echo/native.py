"""The benchmarks' C programs: finding a compiler and building them into a cache.

loadgen.c (the load generator) and ceiling.c (the C echo server whose figure is the
ceiling) ship as sources beside this file and are compiled on first use with `cc -O2`. The
binaries go to a cache directory under a name that carries a hash of the source, the
compiler and its flags, so that a changed source is rebuilt and an unchanged one is not,
and so that runs from different checkouts or with different compilers do not collide.
build_tls_loadgen() builds loadgen.c a second time with its TLS option (-DLOADGEN_TLS,
linked with OpenSSL): only that build needs OpenSSL's headers (Debian's libssl-dev), so the
plain benchmarks build on a machine without them. build_io_uring_ceiling() builds ceiling.c
a second time on io_uring (-DCEILING_IO_URING, with cqloop's own cquring.h: no liburing).

Callers: benchmarks/echo/run.py, benchmarks/scale.py and benchmarks/http.py (build),
benchmarks/tls_echo.py (build_tls_loadgen).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

SOURCE_DIR = Path(__file__).resolve().parent
PROGRAMS = ("loadgen", "ceiling")
CFLAGS = ("-O2", "-std=gnu11", "-Wall")
TLS_DEFINES = ("-DLOADGEN_TLS",)
TLS_LIBS = ("-lssl", "-lcrypto")
COMPILERS = ("cc", "gcc", "clang")  # tried in this order when $CC is not set
HASH_CHARS = 16
COMPILE_TIMEOUT_S = 120.0


class NativeUnavailable(Exception):
    """The C programs cannot be built here (no compiler, or it failed)."""


@dataclass(frozen=True)
class Programs:
    loadgen: Path
    ceiling: Path
    compiler: str


def find_compiler() -> str:
    """The C compiler to use: $CC if set, else the first of COMPILERS on PATH."""
    wanted = os.environ.get("CC")
    candidates = (wanted,) if wanted else COMPILERS
    for name in candidates:
        found = shutil.which(name)
        if found:
            return found
    tried = f"$CC={wanted}" if wanted else ", ".join(COMPILERS)
    raise NativeUnavailable(f"no C compiler found (tried {tried})")


def cache_dir() -> Path:
    """$XDG_CACHE_HOME/cqloop-bench, else ~/.cache/cqloop-bench, else a per-user directory
    under the system's temporary directory (when the home directory is not writable)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    for candidate in (
        Path(base) / "cqloop-bench",
        Path(tempfile.gettempdir()) / f"cqloop-bench-{os.getuid()}",
    ):
        try:
            candidate.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(candidate, os.W_OK | os.X_OK):
            return candidate
    raise NativeUnavailable("no writable cache directory for the C programs")


def build() -> Programs:
    """Compile (or find already compiled) both programs; raise NativeUnavailable if not."""
    compiler = find_compiler()
    directory = cache_dir()
    built = {name: _build_one(compiler, name, directory) for name in PROGRAMS}
    return Programs(loadgen=built["loadgen"], ceiling=built["ceiling"], compiler=compiler)


def build_tls_loadgen() -> Path:
    """Compile (or find already compiled) loadgen.c with its TLS option (-t); raise
    NativeUnavailable if not (no compiler, or no OpenSSL headers)."""
    return _build_one(find_compiler(), "loadgen", cache_dir(), TLS_DEFINES, TLS_LIBS, "tls_loadgen")


def build_io_uring_ceiling() -> Path:
    """Compile (or find already compiled) ceiling.c on io_uring; raise NativeUnavailable if
    not."""
    import cqloop._core

    includes = Path(cqloop._core.__file__).resolve().parent / "includes"
    return _build_one(
        find_compiler(),
        "ceiling",
        cache_dir(),
        ("-DCEILING_IO_URING", f"-I{includes}"),
        (),
        "ceiling_io_uring",
        headers=(includes / "cquring.h",),
    )


def _build_one(
    compiler: str,
    name: str,
    directory: Path,
    defines: tuple[str, ...] = (),
    libs: tuple[str, ...] = (),
    binary: str | None = None,
    headers: tuple[Path, ...] = (),
) -> Path:
    """Compile SOURCE_DIR/name.c with CFLAGS, defines and libs into the cache as `binary`
    (name by default) plus the hash of all that and of the `headers` it includes."""
    binary = binary or name
    source = SOURCE_DIR / f"{name}.c"
    try:
        text = source.read_bytes() + b"".join(header.read_bytes() for header in headers)
    except OSError as exc:
        raise NativeUnavailable(f"cannot read {source} or its headers: {exc}") from exc
    flags = (*CFLAGS, *defines, *libs)
    key = hashlib.sha256(b"\0".join([text, compiler.encode(), *map(str.encode, flags)]))
    target = directory / f"{binary}-{key.hexdigest()[:HASH_CHARS]}"
    if os.access(target, os.X_OK):
        return target
    # Built in a private directory, then renamed into place: a run building at the same
    # time never sees, or runs, a half-written binary.
    with tempfile.TemporaryDirectory(prefix=f".{binary}-", dir=directory) as scratch:
        partial = os.path.join(scratch, binary)
        try:
            result = subprocess.run(
                [compiler, *CFLAGS, *defines, "-o", partial, str(source), *libs],
                capture_output=True,
                text=True,
                timeout=COMPILE_TIMEOUT_S,
                check=False,
            )
            if result.returncode != 0:
                needs = " (OpenSSL's headers are libssl-dev)" if libs == TLS_LIBS else ""
                raise NativeUnavailable(
                    f"{compiler} failed on {source.name}{needs}:\n{result.stderr.strip()}"
                )
            os.replace(partial, target)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise NativeUnavailable(f"cannot compile {source.name}: {exc}") from exc
    return target
