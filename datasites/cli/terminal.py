"""Text for the operator's terminal, made safe to print.

Much of what an operator reads was written by the scientist: the plan's strings, the code,
denial reasons echoed back, audit fields. Printed raw, an escape sequence in any of them is
obeyed by the terminal: it can recolour or erase a line, move the cursor, or with a carriage
return overwrite "custom" with "vetted"; a bidi override (U+202E) reorders what is shown,
and zero-width characters hide text in plain sight. `printable` replaces every such
character with a visible escape (`\\x1b`, `\\u202e`), so the operator sees that something
was there and nothing is obeyed. Newline and tab are kept: they only lay text out.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from typing import TextIO

__all__ = ["printable", "say"]

_KEPT = frozenset("\n\t")
# Control (C0, DEL, C1), format (bidi, zero-width), surrogate, line and paragraph separator.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
# Every character outside printable ASCII is a candidate; most text never reaches the check.
_CANDIDATE = re.compile(r"[^\x20-\x7e\n\t]")


def printable(text: str) -> str:
    """`text` with every character a terminal would act on, or that would hide or reorder
    text, replaced by a visible escape; ordinary text of any script is unchanged."""
    return _CANDIDATE.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _KEPT or unicodedata.category(char) not in _UNSAFE_CATEGORIES:
        return char
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def say(text: str, file: TextIO | None = None, *, flush: bool = False) -> None:
    """Print `text` for the operator, through `printable` (stdout unless `file` is given)."""
    print(printable(str(text)), file=file if file is not None else sys.stdout, flush=flush)
