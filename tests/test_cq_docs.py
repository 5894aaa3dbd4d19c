"""The code examples of the cq socket docs run as they are: every fenced python block of
docs/cq-sockets.md, and the examples in the module docstrings of cqloop.socket and
cqloop.signal. Each is a whole
program on loopback; each runs in a child interpreter (its own asyncio.run), bounded by
CHILD_TIMEOUT_S, and must exit 0 with nothing on stderr.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import cqloop.signal
import cqloop.socket

CHILD_TIMEOUT_S = 60
DOC = Path(__file__).resolve().parent.parent / "docs" / "cq-sockets.md"
FENCED_PYTHON = re.compile(r"^```python\n(.*?)^```$", re.S | re.M)
# A module docstring's example follows a line starting so, indented.
DOCSTRING_MARKER = "Example (a whole program; it runs as it is"


def doc_blocks() -> list[str]:
    return FENCED_PYTHON.findall(DOC.read_text())


def docstring_example(module: object) -> str:
    doc = getattr(module, "__doc__", None) or ""
    assert DOCSTRING_MARKER in doc
    rest = doc.split(DOCSTRING_MARKER, 1)[1].split("\n")[1:]  # after the marker's line
    block = []
    for line in rest:
        if line.strip() and not line.startswith("    "):
            break
        block.append(line)
    return textwrap.dedent("\n".join(block)).strip() + "\n"


def run_program(code: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=CHILD_TIMEOUT_S
    )
    assert proc.returncode == 0 and not proc.stderr, f"{code}\nstderr:\n{proc.stderr}"


def test_the_page_opens_with_the_newline_warning():
    head = "\n".join(DOC.read_text().splitlines()[:8])
    assert "`\\n`" in head and "`\\r\\n`" in head and 'mode="b"' in head
    assert "asyncio users expect" in head


def test_the_page_has_its_examples():
    assert len(doc_blocks()) >= 5


@pytest.mark.parametrize("index", range(len(doc_blocks())))
def test_each_example_of_the_page_runs(index):
    run_program(doc_blocks()[index])


@pytest.mark.parametrize("module", [cqloop.socket, cqloop.signal], ids=lambda m: m.__name__)
def test_the_module_docstring_example_runs(module):
    code = docstring_example(module)
    assert "asyncio.run(main())" in code
    run_program(code)


def test_every_mode_flag_and_read_format_is_in_the_page_tables():
    text = DOC.read_text()
    for flag in "tbnlfaApP-":
        assert f"| `{flag}` |" in text, flag
    for fmt in ('"*l"', '"*L"', '"*a"', '"*h"', '"*H"', '"--B"', "`n` (int > 0)", "`-n`"):
        assert fmt in text, fmt
