"""The cq socket page (docs/cq-sockets.md) says what a newcomer must know first and tables
every mode flag and read format. (Its examples, and the module docstrings' examples, run
in tests/test_doc_examples.py with every other page's.)
"""

from __future__ import annotations

from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "cq-sockets.md"


def test_the_page_opens_with_the_newline_warning():
    head = "\n".join(DOC.read_text().splitlines()[:8])
    assert "`\\n`" in head and "`\\r\\n`" in head and 'mode="b"' in head
    assert "asyncio users expect" in head


def test_every_mode_flag_and_read_format_is_in_the_page_tables():
    text = DOC.read_text()
    for flag in "tbnlfaApP-":
        assert f"| `{flag}` |" in text, flag
    for fmt in ('"*l"', '"*L"', '"*a"', '"*h"', '"*H"', '"--B"', "`n` (int > 0)", "`-n`"):
        assert fmt in text, fmt
