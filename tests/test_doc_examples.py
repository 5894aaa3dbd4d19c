"""Every Python example in README.md and the guide (docs/*.md) runs.

Each fenced ```python block is a whole program: it runs in a fresh interpreter (so a policy
it installs or a signal it blocks stays there), from an empty folder, with loopback only,
and must exit 0 within a bounded time. A block's own asserts are its checks. A block that
opens a window (tkinter) runs under a virtual X server (`xvfb-run`, Debian's xvfb package)
when there is no display; without one it is skipped, except in CI, where that fails.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```$", re.S | re.M)
TIMEOUT_S = 60


def examples() -> list[pytest.ParameterSet]:
    found = []
    for page in PAGES:
        text = page.read_text()
        for number, match in enumerate(BLOCK.finditer(text), 1):
            line = text.count("\n", 0, match.start()) + 1
            name = f"{page.relative_to(ROOT)}:{line}"
            found.append(pytest.param(match.group(1), id=f"{name}#{number}"))
    return found


def test_the_pages_have_examples():
    assert len(examples()) >= 3


def _display_prefix(source: str) -> list[str]:
    """What runs the example with a display, if it needs one."""
    if "tkinter" not in source or os.environ.get("DISPLAY"):
        return []
    xvfb_run = shutil.which("xvfb-run")
    if xvfb_run is not None:
        return [xvfb_run, "-a"]
    if os.environ.get("CI") == "true":
        pytest.fail("this example needs a display: apt-get install xvfb xauth")
    pytest.skip("this example needs a display: apt-get install xvfb xauth")


@pytest.mark.parametrize("source", examples())
def test_example_runs(source: str, tmp_path: Path):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [*_display_prefix(source), sys.executable, "-W", "error::RuntimeWarning", "-c", source],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
