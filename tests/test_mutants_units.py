"""Sizes shown exactly and in columns: the cases `./dev mutate` found untested.

Oracles come from the docstrings of ``format_exact`` ("the largest unit that shows it
exactly with at most three decimals ... failing that it is rounded and marked ``~``. Below
1 KiB: ``512 B``") and ``format_size_aligned`` (three significant digits, at most five
characters, units up to P), and "a clear error" for every wrong size or duration: one that
shows what a right one looks like.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from balloonctl.errors import SizeError
from balloonctl.units import (
    GiB,
    KiB,
    MiB,
    TiB,
    format_change,
    format_exact,
    format_size,
    format_size_aligned,
    parse_duration,
    parse_size,
    parse_target,
)

PiB = 1024 * TiB


@pytest.mark.parametrize(("n", "shown"), [
    (None, "-"),
    (0, "0 B"),
    (1023, "1023 B"),                                     # one step below 1 KiB
    (KiB, "1 KiB (1024 bytes)"),                          # at 1 KiB
    (1536, "1.5 KiB (1536 bytes)"),
    (1025, "~1.001 KiB (1025 bytes)"),                    # 1.0009765625 KiB: four decimals
    (MiB + 128 * KiB, "1.125 MiB (1179648 bytes)"),       # three decimals: still MiB
    (MiB + 64 * KiB, "1088 KiB (1114112 bytes)"),         # 1.0625 MiB needs four: KiB
    (2 * GiB, "2 GiB (2147483648 bytes)"),                # the largest unit, not 2048 MiB
    (3 * TiB, "3 TiB (3298534883328 bytes)"),
    (5 * PiB, "5 PiB (5629499534213120 bytes)"),
    (1024 * PiB, "1024 PiB (1152921504606846976 bytes)"),  # no unit above PiB
    (-2 * GiB, "-2 GiB (-2147483648 bytes)"),
    (3 * GiB + 1, "~3 GiB (3221225473 bytes)"),
    (GiB + 5 * MiB + 1, "~1.005 GiB (1078984705 bytes)"),
    (10 * GiB + 1, "~10 GiB (10737418241 bytes)"),         # a trailing 0 of the integer stays
])
def test_format_exact(n: int | None, shown: str) -> None:
    assert format_exact(n) == shown


def test_format_exact_without_the_bytes() -> None:
    assert format_exact(7 * GiB // 4, with_bytes=False) == "1.75 GiB"
    assert format_exact(GiB + 1, with_bytes=False) == "~1 GiB"
    assert format_exact(512, with_bytes=False) == "512 B"
    assert format_exact(None, with_bytes=False) == "-"


def test_aligned_sizes_stop_at_pib() -> None:
    assert format_size_aligned(PiB) == "1.00P"
    assert format_size_aligned(1024 * PiB) == "1024P"  # no unit above P: four digits
    assert format_size_aligned(-1024 * PiB) == "-1024P"


@pytest.mark.parametrize("parse", [parse_size, parse_target])
@pytest.mark.parametrize("text", ["", "  "])
def test_an_empty_size_error_shows_what_a_size_looks_like(parse: Callable[[str], object],
                                                          text: str) -> None:
    with pytest.raises(SizeError) as info:
        parse(text)
    assert "512M" in str(info.value)


@pytest.mark.parametrize("text", ["", "  ", "soon", "5 parsecs"])
def test_a_wrong_duration_error_shows_what_a_duration_looks_like(text: str) -> None:
    with pytest.raises(SizeError) as info:
        parse_duration(text)
    assert "30s" in str(info.value)


def test_a_change_plain_sizes_tell_apart_is_shown_plainly() -> None:
    # 1537 MiB reads "1.5 GiB" plainly and "1537 MiB" exactly: the exact form is only for a
    # change that plain sizes would hide, not for one they show, nor for no change at all.
    odd = 1537 * MiB
    assert format_size(odd) == "1.5 GiB" != format_exact(odd, with_bytes=False)
    assert format_change(odd, 3 * GiB) == ("1.5 GiB", "3 GiB")
    assert format_change(3 * GiB, odd) == ("3 GiB", "1.5 GiB")
    assert format_change(odd, odd) == ("1.5 GiB", "1.5 GiB")
