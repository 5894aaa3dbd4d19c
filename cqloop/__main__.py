"""python -m cqloop: run an asyncio program on cqloop, run the benchmarks, or tell the engines.

usage: python -m cqloop [-h] {run,bench,info} ...

  run [-h] script.py [args...]     run a script as `python script.py args...` would, with
                                   asyncio's loop made by cqloop (cqloop.install())
  run [-h] -m module [args...]     run a module as `python -m module args...` would
  bench [-h] [suite] [options]     the side-by-side benchmarks (`bench --help`)
  info                             the readiness engines (epoll, io_uring): which can run
                                   here, why not, and which a new loop gets

`run` keeps python's contract for the program: sys.argv, sys.path[0] (the script's folder,
or the current one for -m), __file__, __name__ == "__main__", the exit status (1 and the
traceback for an uncaught exception, SystemExit's code, death by SIGINT after a
KeyboardInterrupt) and the traceback itself (only the program's frames).
"""

from __future__ import annotations

import builtins
import importlib.machinery
import io
import os
import runpy
import signal
import sys
import traceback
import types
import zipfile
from types import TracebackType

USAGE = __doc__.split("\n\n")[1] + "\n"
RUN_USAGE = (
    "usage: python -m cqloop run [-h] script.py [args...]\n"
    "       python -m cqloop run [-h] -m module [args...]\n"
)
EXIT_USAGE = 2


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        stream = sys.stdout if argv else sys.stderr
        stream.write(USAGE)
        return 0 if argv else EXIT_USAGE
    command, rest = argv[0], argv[1:]
    if command == "run":
        return _run(rest)
    if command == "bench":
        return _bench(rest)
    if command == "info":
        return _info(rest)
    sys.stderr.write(USAGE + f"python -m cqloop: unknown command {command!r}\n")
    return EXIT_USAGE


def _bench(argv: list[str]) -> int:
    from cqloop._bench import main as bench_main

    return bench_main(argv)


def _info(argv: list[str]) -> int:
    if argv:
        sys.stderr.write(USAGE + f"python -m cqloop info: takes no arguments, got {argv[0]!r}\n")
        return EXIT_USAGE
    import cqloop
    from cqloop._core.poller import resolve_engine
    from cqloop._core.uring import probe

    usable, reason = probe()
    sys.stdout.write(f"cqloop {cqloop.__version__} on Linux {os.uname().release}\n")
    sys.stdout.write("engine epoll: available\n")
    sys.stdout.write(f"engine io_uring: {'available' if usable else 'not available'}: {reason}\n")
    setting = os.environ.get("CQLOOP_ENGINE")
    try:
        default = resolve_engine(None)
    except ValueError as exc:
        sys.stdout.write(f"default engine: none ({exc})\n")
        return 1
    origin = f"CQLOOP_ENGINE={setting}" if setting else "engine='auto'"
    sys.stdout.write(
        f"default engine: {default} ({origin}; 'auto' is epoll until io_uring is measured faster)\n"
    )
    return 0


def _run(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        sys.stdout.write(RUN_USAGE)
        return 0
    if argv and argv[0] == "-m":
        if len(argv) < 2:
            sys.stderr.write(RUN_USAGE + "python -m cqloop run: -m needs a module name\n")
            return EXIT_USAGE
        return _run_program(argv[1], argv[2:], as_module=True)
    if not argv or argv[0].startswith("-"):
        problem = f"unknown option {argv[0]!r}" if argv else "no script given"
        sys.stderr.write(RUN_USAGE + f"python -m cqloop run: {problem}\n")
        return EXIT_USAGE
    return _run_program(argv[0], argv[1:], as_module=False)


def _run_program(target: str, args: list[str], *, as_module: bool) -> int:
    import cqloop

    cqloop.install()
    program_files: set[str] | None = None
    if not as_module:
        path = os.path.abspath(target)
        if not os.path.exists(path):
            sys.stderr.write(
                f"python -m cqloop run: can't open file {path!r}: "
                f"[Errno 2] No such file or directory\n"
            )
            return EXIT_USAGE
        program_files = {path}
    sys.argv = [target, *args]
    try:
        if as_module:
            # `python -m cqloop` already made sys.path[0] the current folder, as `python -m
            # module` does; run_module sets sys.argv[0] to the module's file.
            runpy.run_module(target, run_name="__main__", alter_sys=True)
        else:
            sys.path[0] = os.path.dirname(os.path.realpath(path))
            if os.path.isfile(path) and not zipfile.is_zipfile(path):
                _exec_as_main(path)
            else:  # a folder or zip file with a __main__.py, as python runs them
                runpy.run_path(target, run_name="__main__")
    except SystemExit:
        raise
    except BaseException as exc:
        _report(exc, program_files)
        if isinstance(exc, KeyboardInterrupt):
            _die_by_sigint()
        return 1
    return 0


def _exec_as_main(path: str) -> None:
    """Run a source file as python runs its script: in a fresh `__main__` module that stays
    sys.modules["__main__"] (pickle and multiprocessing look there), with an absolute
    __file__ and no __spec__."""
    with io.open_code(path) as file:
        source = file.read()
    module = types.ModuleType("__main__")
    module.__file__ = path
    module.__loader__ = importlib.machinery.SourceFileLoader("__main__", path)
    module.__spec__ = None
    module.__cached__ = None  # type: ignore[attr-defined]
    module.__builtins__ = builtins  # type: ignore[attr-defined]
    sys.modules["__main__"] = module
    exec(compile(source, path, "exec"), module.__dict__)


def _report(exc: BaseException, program_files: set[str] | None) -> None:
    """Hand the uncaught exception to sys.excepthook as python would: the traceback starts
    at the program's first frame (runpy's and ours are not the program's)."""
    tb: TracebackType | None = exc.__traceback__
    ours = {os.path.abspath(__file__), os.path.abspath(runpy.__file__)}
    while tb is not None:
        filename = os.path.abspath(tb.tb_frame.f_code.co_filename)
        if program_files is not None and filename in program_files:
            break
        if program_files is None and filename not in ours and not _is_import_machinery(tb):
            break
        tb = tb.tb_next
    exc.__traceback__ = tb  # the default excepthook prints the exception's own
    try:
        sys.excepthook(type(exc), exc, tb)
    except Exception:
        traceback.print_exception(type(exc), exc, tb)


def _is_import_machinery(tb: TracebackType) -> bool:
    return tb.tb_frame.f_code.co_filename.startswith("<frozen ")


def _die_by_sigint() -> None:
    # What python itself does after an uncaught KeyboardInterrupt: end by SIGINT, so that
    # the parent (a shell: status 130) sees the program was interrupted.
    sys.stdout.flush()
    sys.stderr.flush()
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGINT)


if __name__ == "__main__":
    sys.exit(main())
