"""Text from outside (VM and socket names, guest strings, journal reasons) made safe to show
in a terminal."""

from __future__ import annotations

import unicodedata

__all__ = ["escape_text"]


def escape_text(text: str) -> str:
    """``text`` with control and format characters (ESC, newlines, bidi overrides...) shown
    as ``\\xNN``/``\\uNNNN`` escapes, so a name from outside cannot drive the terminal."""
    if text.isprintable():
        return text
    out: list[str] = []
    for ch in text:
        if ch.isprintable() or unicodedata.category(ch) == "Zs":  # spaces are harmless
            out.append(ch)
        else:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else
                       f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    return "".join(out)

