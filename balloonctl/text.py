"""Text from outside (socket file names, guest strings) made safe to print on a terminal.

A name that carries ESC can recolour or rewrite the operator's terminal, a newline can forge
an extra output line, and a bidi control (U+202E...) can make text read in another order
than it is stored. ``escape_text`` shows each such character as a visible escape.
"""

from __future__ import annotations

import unicodedata

__all__ = ["escape_text"]

# Cc: C0/C1 controls (ESC, newline, DEL); Cf: format characters, among them the bidi
# embeddings, overrides and isolates and the zero-width ones; Zl/Zp: line and paragraph
# separators, which some terminals break lines on.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})


def _escape_char(ch: str) -> str:
    # Python's own escape, as repr() writes an unprintable character inside its quotes:
    # \n \r \t, else \xNN, \uNNNN or \UNNNNNNNN by code point
    return repr(ch)[1:-1]


def escape_text(text: str) -> str:
    """``text`` with every control, format (bidi, zero-width), separator, surrogate or
    unassigned character shown as a Python-style escape (``\\x1b``, ``\\n``, ``\\u202e``);
    printable text, spaces included, is unchanged."""
    if text.isprintable():  # the common case: nothing to do (space is printable)
        return text
    return "".join(
        _escape_char(ch) if unicodedata.category(ch) in _UNSAFE_CATEGORIES else ch
        for ch in text
    )
