"""Every Python example in README.md, the guide (docs/*.md) and the package's docstrings
runs.

A docstring's example follows a line that says `Example (a whole program; it runs as it
is ...)`, indented under it. Each fenced ```python block, and each docstring example, is a
whole program: it runs in a fresh interpreter (so a policy
it installs or a signal it blocks stays there), from an empty folder, with loopback only,
and must exit 0 within a bounded time. A block's own asserts are its checks. A block that
opens a window (tkinter) runs under a virtual X server (`xvfb-run`, Debian's xvfb package)
when there is no display; without one it is skipped, except in CI, where that fails.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```$", re.S | re.M)
DOCSTRING_MARKER = "Example (a whole program; it runs as it is"
TIMEOUT_S = 60


def docstring_examples() -> list[pytest.ParameterSet]:
    found = []
    for path in sorted((ROOT / "cqloop").glob("**/*.py")):
        text = path.read_text()
        if DOCSTRING_MARKER not in text:
            continue
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        doc = importlib.import_module(module).__doc__ or ""
        for number, part in enumerate(doc.split(DOCSTRING_MARKER)[1:], 1):
            block = []
            for line in part.split("\n")[1:]:  # after the marker's line
                if line.strip() and not line.startswith("    "):
                    break
                block.append(line)
            source = textwrap.dedent("\n".join(block)).strip() + "\n"
            found.append(pytest.param(source, id=f"{module}#{number}"))
    return found


def examples() -> list[pytest.ParameterSet]:
    found = docstring_examples()
    for page in PAGES:
        text = page.read_text()
        for number, match in enumerate(BLOCK.finditer(text), 1):
            line = text.count("\n", 0, match.start()) + 1
            name = f"{page.relative_to(ROOT)}:{line}"
            found.append(pytest.param(match.group(1), id=f"{name}#{number}"))
    return found


def test_the_pages_and_docstrings_have_examples():
    ids = [param.id for param in examples()]
    assert len(ids) >= 10
    assert any(i.startswith("cqloop.socket#") for i in ids)
    assert any(i.startswith("cqloop.signal#") for i in ids)


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
