"""Fails the import of cqloop, with a message that says why, when the compiled core is
missing: what happens when python runs from the root of a source tree that was never built
(the uncompiled `cqloop/` folder there shadows the installed package). Imported first by
cqloop/__init__.py; nothing else imports it."""

import os

try:
    import cqloop._core.kernel  # noqa: F401
except ModuleNotFoundError as exc:
    if not (exc.name or "").startswith("cqloop._core"):
        raise
    raise ImportError(
        f"cqloop's compiled core is missing: {os.path.dirname(__file__)} is a source tree "
        f"that was not built. Build it in place (pip install -e .) or run from a folder "
        f"outside it, so that the installed cqloop is imported."
    ) from exc
