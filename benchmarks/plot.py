"""A chart of cqloop against the best peer loop, from the benchmarks' JSON results.

    python -m cqloop bench --plot chart.png ...      runs the suites, then draws this
    python -m cqloop._bench.plot chart.png results-echo.json results-http.json

One horizontal bar per measured cell (echo: transport, mode and message size; http: the
app): cqloop's rate over the faster of uvloop and rloop, with the line at 1.0 where they
are level. Needs matplotlib (in the `bench` extra); without it the chart is skipped with a
message.
"""

from __future__ import annotations

import json
import platform
import sys
from typing import Any

PEERS = ("uvloop", "rloop")


def echo_bars(document: dict[str, Any]) -> list[tuple[str, float]]:
    bars = []
    for row in document.get("results", []):
        ratio = row.get("ratios", {}).get("best")
        if ratio is not None:
            size = row["message_bytes"]
            label = f"echo {row['transport']} {row['mode']} {size // 1024 or size}K"
            bars.append((label, float(ratio)))
    return bars


def http_bars(document: dict[str, Any]) -> list[tuple[str, float]]:
    by_app: dict[str, dict[str, float]] = {}
    for server in document.get("servers", []):
        summary = server.get("summary")
        if summary and summary.get("rps"):
            by_app.setdefault(server["app"], {})[server["loop"]] = summary["rps"]
    bars = []
    for app, rates in by_app.items():
        peers = [rates[name] for name in PEERS if name in rates]
        if "cqloop" in rates and peers:
            bars.append((f"http {app}", rates["cqloop"] / max(peers)))
    return bars


def bars_of(document: dict[str, Any]) -> list[tuple[str, float]]:
    if "servers" in document:
        return http_bars(document)
    return echo_bars(document)


def plot(out: str, paths: list[str]) -> bool:
    """Draw the chart into `out` (PNG); False (with a message) when there is nothing to
    draw or no matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench --plot: matplotlib is not installed (pip install matplotlib); no chart")
        return False
    bars: list[tuple[str, float]] = []
    for path in paths:
        with open(path, encoding="utf-8") as fh:
            bars += bars_of(json.load(fh))
    if not bars:
        print("bench --plot: no cell has both cqloop and a peer; no chart")
        return False
    labels = [label for label, _ in bars]
    values = [value for _, value in bars]
    figure, axes = plt.subplots(figsize=(8, 0.28 * len(bars) + 1.5))
    colours = ["#2a7" if value >= 1.0 else "#c54" for value in values]
    axes.barh(range(len(bars)), values, color=colours)
    axes.set_yticks(range(len(bars)), labels, fontsize=8)
    axes.invert_yaxis()
    axes.axvline(1.0, color="black", linewidth=0.8)
    axes.set_xlabel("cqloop / best of uvloop and rloop (rate; above 1.0 is faster)")
    axes.set_title(f"cqloop against the best peer loop (Python {platform.python_version()})")
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    plt.close(figure)
    print(f"bench --plot: wrote {out} ({len(bars)} cells)")
    return True


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    plot(argv[0], argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
