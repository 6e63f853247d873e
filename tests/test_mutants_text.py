"""Terminal escaping at its edges: the cases `./dev mutate` found untested.

Oracle: ``escape_text``'s docstring ("a Python-style escape"), checked against Python's own
``unicode_escape`` codec, which picks ``\\xNN``, ``\\uNNNN`` or ``\\UNNNNNNNN`` by code point.
"""

from __future__ import annotations

import unicodedata

import pytest

from balloonctl.text import escape_text


def python_escape(ch: str) -> str:
    return ch.encode("unicode_escape").decode("ascii")


@pytest.mark.parametrize("ch", [
    "\x00", "\x1b", "\x7f", "\x80", "\x9f", "\xad",      # C0, DEL, C1, soft hyphen (Cf)
    "\u200b", "\u202e", "\u2028", "\u2029", "\ufeff",    # zero width, bidi, Zl, Zp, BOM
    "\ue000", "\uffff",                                  # private use; the last BMP code point
    "\U000e0001", "\U000f0000", "\U0010ffff",            # a tag (Cf), private use, the last
])
def test_unsafe_characters_are_escaped_the_way_python_escapes_them(ch: str) -> None:
    assert escape_text(f"a{ch}b") == f"a{python_escape(ch)}b"


def test_every_escaped_character_below_u0100_is_escaped_as_python_does() -> None:
    unsafe = [chr(c) for c in range(0x100) if unicodedata.category(chr(c)).startswith("C")]
    assert "".join(escape_text(ch) for ch in unsafe) == "".join(map(python_escape, unsafe))
    assert escape_text("\xff\u0100\U00010000") == "\xff\u0100\U00010000"  # printable
