"""cqloop's benchmarks, installed as cqloop._bench so that `python -m cqloop bench` runs them."""

from __future__ import annotations


def main(argv: list[str]) -> int:
    from cqloop._bench import micro

    return micro.main(argv)
