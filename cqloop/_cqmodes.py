"""cqueues' mode strings for cq sockets (setmode, getmode, setvbuf and the per-call
modes of xread, xwrite, send and flush), read as cqueues' lso_imode reads them. Used by
cqloop/_cqsocket.py only."""

from __future__ import annotations

# cqueues' initial mode (LSO_INITMODE): text, line-buffered, autoflush, pushback. setmode()
# applies its flags to this, not to the current mode.
INITIAL_MODE = (True, "l", True, True)
VBUF_FLAGS = {"no": "n", "nobuf": "n", "n": "n", "line": "l", "l": "l", "full": "f", "f": "f"}
VBUF_NAMES = {"n": "no", "l": "line", "f": "full"}


def parse_mode_flags(mode: str) -> tuple[bool, str, bool, bool]:
    """(text, buffering, autoflush, pushback) of a setmode() string, from the initial mode."""
    text, buffering, autoflush, pushback = INITIAL_MODE
    for flag in mode:
        if flag in "tb":
            text = flag == "t"
        elif flag in "nlf":
            buffering = flag
        elif flag in "aA":
            autoflush = flag == "a"
        elif flag in "pP":
            pushback = flag == "p"
        elif flag != "-":
            raise ValueError(f"unknown socket mode flag {flag!r} in {mode!r}")
    return (text, buffering, autoflush, pushback)


def mode_strings(
    intext: bool, pushback: bool, outtext: bool, buffering: str, autoflush: bool
) -> tuple[str, str]:
    """(input, output) modes as cqueues' setmode() reports them: input "t-p" (translation,
    no buffering flag, pushback), output "tla" (translation, buffering, autoflush)."""
    inmode = ("t" if intext else "b") + "-" + ("p" if pushback else "P")
    outmode = ("t" if outtext else "b") + buffering + ("a" if autoflush else "A")
    return (inmode, outmode)


def call_mode(mode: str | None) -> tuple[str | None, bool | None]:
    """The buffering flag (n/l/f) and text flag (t/b) a per-call mode string names, the
    last of each winning as in cqueues (None: the socket's own)."""
    if not mode:
        return (None, None)
    buffering = text = None
    for flag in mode:
        if flag in "nlf":
            buffering = flag
        elif flag in "tb":
            text = flag == "t"
        elif flag not in "aApP-":
            raise ValueError(f"unknown socket mode flag {flag!r} in {mode!r}")
    return (buffering, text)
