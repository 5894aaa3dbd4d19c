"""python -m cqloop: run an asyncio program on cqloop, or run the benchmarks.

python -m cqloop run path/to/script.py [args...]
python -m cqloop bench [--quick] [...]
"""

from __future__ import annotations

import argparse
import runpy
import sys

USAGE = __doc__


def _run_script(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m cqloop run path/to/script.py [args...]", file=sys.stderr)
        return 2
    import cqloop

    cqloop.install()
    script = argv[0]
    sys.argv = list(argv)
    runpy.run_path(script, run_name="__main__")
    return 0


def _bench(argv: list[str]) -> int:
    from cqloop._bench import main as bench_main

    return bench_main(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m cqloop", usage=USAGE)
    parser.add_argument("command", choices=["run", "bench"])
    if not argv or argv[0] not in ("run", "bench"):
        parser.print_usage(sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    if command == "run":
        return _run_script(rest)
    return _bench(rest)


if __name__ == "__main__":
    sys.exit(main())
