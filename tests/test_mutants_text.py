"""Terminal escaping at its edges: the cases `./dev mutate` found untested.

Oracle: ``escape_text``'s docstring: every control, format, separator, surrogate, private or
unassigned character becomes a Python-style escape (as in a Python string literal: ``\\xNN``
up to U+00FF, ``\\uNNNN`` up to U+FFFF, ``\\UNNNNNNNN`` beyond); printable text is kept.
"""

from __future__ import annotations

import pytest

from balloonctl.text import escape_text


@pytest.mark.parametrize(("ch", "shown"), [
    ("\x00", "\\x00"), ("\x1b", "\\x1b"), ("\x7f", "\\x7f"),   # C0, DEL
    ("\x80", "\\x80"), ("\x9f", "\\x9f"), ("\xad", "\\xad"),   # C1, soft hyphen (Cf)
    ("\n", "\\n"), ("\r", "\\r"), ("\t", "\\t"),
    ("\u200b", "\\u200b"), ("\u202e", "\\u202e"),              # zero width, bidi override
    ("\u2028", "\\u2028"), ("\u2029", "\\u2029"), ("\ufeff", "\\ufeff"),
    ("\ue000", "\\ue000"), ("\uffff", "\\uffff"),              # private use; last BMP point
    ("\U000e0001", "\\U000e0001"), ("\U000f0000", "\\U000f0000"),  # a tag, private use
    ("\U0010ffff", "\\U0010ffff"),                             # the last code point
])
def test_unsafe_characters_are_escaped_the_way_python_writes_them(ch: str, shown: str) -> None:
    assert escape_text(f"a{ch}b") == f"a{shown}b"


def test_printable_text_next_to_the_escape_edges_is_kept() -> None:
    kept = "\xff\u0100\u00e9\U00010000 \\"  # letters at U+00FF, U+0100, U+10000; a backslash
    assert escape_text(kept) == kept
    assert escape_text(kept + "\x1b") == kept + "\\x1b"
