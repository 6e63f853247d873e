"""Sizes and durations (balloonctl.units): round trips and garbage, property-based."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import pytest
from hypothesis import event, example, given
from hypothesis import strategies as st

from balloonctl.errors import SizeError, UnsafeTarget
from balloonctl.model import validate_target
from balloonctl.units import (
    GiB,
    KiB,
    MiB,
    SizeKind,
    TiB,
    format_change,
    format_duration,
    format_exact,
    format_size,
    format_size_aligned,
    parse_duration,
    parse_size,
    parse_target,
)

MAX = 2**63 - 1
BINARY = {"K": KiB, "M": MiB, "G": GiB, "T": TiB, "KiB": KiB, "MiB": MiB, "GiB": GiB,
          "TiB": TiB, "k": KiB, "m": MiB, "g": GiB, "gib": GiB}
DECIMAL = {"KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4, "": 1, "B": 1}
UNITS = {**BINARY, **DECIMAL}


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1073741824", GiB), ("512M", 512 * MiB), ("512MiB", 512 * MiB), ("1.5G", 1536 * MiB),
        ("2GB", 2 * 10**9), ("512m", 512 * MiB), (" 1G ", GiB), ("1 G", GiB), (".5G", GiB // 2),
        ("100B", 100), ("1T", TiB),
    ],
)
def test_examples(text: str, value: int) -> None:
    assert parse_size(text) == value


@given(n=st.integers(1, MAX))
def test_plain_bytes_round_trip(n: int) -> None:
    assert parse_size(str(n)) == n


@given(n=st.integers(1, 10**6), unit=st.sampled_from(sorted(UNITS)))
def test_units_multiply(n: int, unit: str) -> None:
    assert parse_size(f"{n}{unit}") == n * UNITS[unit]


@given(n=st.integers(1, 2**62))
def test_format_then_parse_is_close(n: int) -> None:
    text = format_size(n, compact=True)
    back = parse_size(text)
    assert abs(back - n) <= n * 0.05 + 1  # one decimal: at most 5% off
    long = format_size(n)
    assert long.split()[-1] in ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


@given(n=st.integers(1, 64), unit=st.sampled_from([MiB, GiB]))
def test_whole_units_format_exactly(n: int, unit: int) -> None:
    assert parse_size(format_size(n * unit, compact=True)) == n * unit


def test_format_examples() -> None:
    assert format_size(1536 * MiB) == "1.5 GiB"
    assert format_size(512 * MiB, compact=True) == "512M"
    assert format_size(0) == "0 B" and format_size(None) == "-"
    assert format_size(-256 * MiB) == "-256 MiB"


@pytest.mark.parametrize(
    "text",
    ["abc", "-1G", "1e999", "0", "0G", "0.0001B", "12XB", "", " ", "G", "1.2.3G", "1,5G",
     "nan", "inf", "0x10", "+1G", "1G2", "1 2G", "9223372036854775808", "9000000000T",
     "1QB", "½G", "9000P"],
)
def test_garbage_sizes(text: str) -> None:
    with pytest.raises(SizeError) as info:
        parse_size(text)
    assert "\n" not in str(info.value) and repr(text) in str(info.value)


@given(st.text(max_size=12))
@example("512M")  # random text rarely parses: the assertion below runs for certain
@example("1.5 GiB")
def test_any_text_is_a_size_or_a_size_error(text: str) -> None:
    try:
        n = parse_size(text)
    except SizeError as exc:
        event("refused")
        assert "\n" not in str(exc)
        return
    event("parsed")
    assert 0 < n <= MAX


@given(st.text(alphabet="0123456789.+-%kKmMgGtTiIbB ", max_size=10))
@example("75%")  # each kind of target is checked for certain
@example("1G")
@example("+1K")
@example("-2m")
def test_any_target_is_a_spec_or_a_size_error(text: str) -> None:
    try:
        spec = parse_target(text)
    except SizeError as exc:
        event("refused")
        assert str(exc).startswith(("invalid size", "empty size", "target"))
        return
    event(f"parsed: {spec.kind.value}")
    assert spec.kind in SizeKind
    assert 0 < spec.value <= 100 if spec.kind is SizeKind.PERCENT else spec.value != 0


def test_targets() -> None:
    rel = parse_target("+256M")
    assert (rel.kind, rel.value) == (SizeKind.RELATIVE, 256 * MiB)
    assert parse_target("-256M").value == -256 * MiB
    pct = parse_target("75%")
    assert (pct.kind, pct.value) == (SizeKind.PERCENT, Fraction(75))
    assert pct.resolve(guest_ram=2 * GiB, current=0) == 1536 * MiB
    assert parse_target("1G").resolve(guest_ram=2 * GiB, current=5) == GiB
    assert rel.resolve(guest_ram=2 * GiB, current=GiB) == GiB + 256 * MiB
    with pytest.raises(SizeError, match="negative"):
        parse_target("-2G").resolve(guest_ram=2 * GiB, current=GiB)
    with pytest.raises(SizeError, match="zero"):
        parse_target("-1G").resolve(guest_ram=2 * GiB, current=GiB)


@pytest.mark.parametrize("text", ["0%", "101%", "-5%", "%", "50 %%", "+", "-", "+-1G", "--1G",
                                  "+0M", "abc%", "1e2%"])
def test_garbage_targets(text: str) -> None:
    with pytest.raises(SizeError):
        parse_target(text)


@given(pct=st.integers(1, 100), ram=st.integers(GiB, 2**62))
def test_percent_of_big_ram_is_exact(pct: int, ram: int) -> None:
    assert parse_target(f"{pct}%").resolve(guest_ram=ram, current=0) == ram * pct // 100


def test_a_tiny_percent_resolves_to_a_refused_target() -> None:
    target = parse_target("0.001%").resolve(guest_ram=4 * GiB, current=4 * GiB)
    assert target == 4 * GiB // 100_000
    with pytest.raises(UnsafeTarget):
        validate_target(target, guest_ram=4 * GiB, force=True)


@pytest.mark.parametrize(("text", "seconds"), [("60s", 60), ("2m", 120), ("1h", 3600),
                                               ("250ms", 0.25), ("1.5", 1.5), (" 3S ", 3)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["0", "0s", "-1s", "soon", "1d", "", "1e3s", "inf"])
def test_garbage_durations(text: str) -> None:
    with pytest.raises(SizeError):
        parse_duration(text)


@given(s=st.integers(1, 59))
def test_format_duration_parses_back_when_short(s: int) -> None:
    assert parse_duration(format_duration(s)) == s


@given(s=st.integers(0, 10**6))
def test_format_duration_is_always_a_number_first(s: int) -> None:
    text = format_duration(s)
    assert text[0].isdigit()
    assert text.endswith(("s", "m"))
    assert format_duration(None) == "-"


@pytest.mark.parametrize("text", ["1.5", "1.5B", "0.5", " 2.25 b"])
def test_fractional_bytes_need_a_unit(text: str) -> None:
    with pytest.raises(SizeError, match="fractional bytes need a unit") as info:
        parse_size(text)
    assert repr(text) in str(info.value)
    with pytest.raises(SizeError, match="fractional bytes need a unit"):
        parse_target(text)
    assert parse_size("1.0") == 1 and parse_size("0.5K") == 512


@pytest.mark.parametrize("text", ["+-1G", "-0", "+0M", "--1G", "-", "+1.5", "-abc"])
def test_relative_target_errors_quote_what_was_typed(text: str) -> None:
    with pytest.raises(SizeError) as info:
        parse_target(text)
    assert f"invalid size {text!r}" in str(info.value)


# ---- ASCII digits only; empty and blank input said as such --------------------------------

# Characters Python's int()/float()/Fraction() or str.isdigit() take as digits, none ASCII.
NON_ASCII_DIGITS = st.characters(categories=["Nd", "No", "Nl"]).filter(lambda c: not c.isascii())


@pytest.mark.parametrize("text", ["１G", "٣M", "۳G", "२G", "1٠٠M", "2²G", "½G", "Ⅻ", "1.５G",
                                  "１０２４"])
def test_non_ascii_digits_are_refused_and_named(text: str) -> None:
    for parse in (parse_size, parse_target):
        with pytest.raises(SizeError, match="is not an ASCII digit; write sizes with 0-9"):
            parse(text)
    with pytest.raises(SizeError, match="is not an ASCII digit; write durations with 0-9"):
        parse_duration(text.rstrip("GM") + "s")


@given(prefix=st.sampled_from(["", "1", "+", "-", "1.", "12"]), digit=NON_ASCII_DIGITS,
       suffix=st.sampled_from(["", "0", "G", "M", "%", "s", "ms", "0K"]))
def test_any_non_ascii_digit_is_refused(prefix: str, digit: str, suffix: str) -> None:
    text = prefix + digit + suffix
    for parse in (parse_size, parse_target, parse_duration):
        with pytest.raises(SizeError) as info:
            parse(text)  # type: ignore[operator]
        assert repr(text) in str(info.value)


ALL_UNITS = {"": 1, "B": 1, "K": KiB, "M": MiB, "G": GiB, "T": 1024**4, "P": 1024**5,
         "KiB": KiB, "MiB": MiB, "GiB": GiB, "KB": 1000, "MB": 1000**2, "GB": 1000**3,
         "TB": 1000**4, "PB": 1000**5}


@given(n=st.integers(1, MAX), unit=st.sampled_from(sorted(ALL_UNITS)),
       space=st.sampled_from(["", " "]), lower=st.booleans())
def test_every_ascii_size_round_trips(n: int, unit: str, space: str, lower: bool) -> None:
    count = max(1, n // ALL_UNITS[unit])
    text = f"{count}{space}{unit.lower() if lower else unit}"
    assert parse_size(text) == count * ALL_UNITS[unit]
    assert parse_target(text).value == count * ALL_UNITS[unit]
    assert parse_target(f"+{text}").value == count * ALL_UNITS[unit]


@given(n=st.integers(1, 10**6), unit=st.sampled_from(["", "s", "ms", "m", "h"]))
def test_every_ascii_duration_round_trips(n: int, unit: str) -> None:
    factor = {"": 1, "s": 1, "ms": Fraction(1, 1000), "m": 60, "h": 3600}[unit]
    assert parse_duration(f"{n}{unit}") == float(n * factor)


def test_the_largest_size_and_one_byte_past_it() -> None:
    assert parse_size(str(MAX)) == MAX == 2**63 - 1
    with pytest.raises(SizeError, match="too large"):
        parse_size(str(MAX + 1))


@pytest.mark.parametrize("parse, what", [(parse_size, "size"), (parse_target, "size"),
                                         (parse_duration, "duration")])
def test_empty_and_whitespace_only_are_told_apart(parse: Any, what: str) -> None:
    with pytest.raises(SizeError, match=f"^empty {what} '': expected"):
        parse("")
    for blank in (" ", "\t", "  \n", "\u3000"):
        with pytest.raises(SizeError) as info:
            parse(blank)
        assert str(info.value).startswith(f"invalid {what} {blank!r}: whitespace only;")


def test_aligned_sizes_have_three_significant_digits_and_fit_five_cells() -> None:
    cases = {
        0: "0B", 1023: "1023B", 1024: "1.00K", 2 * GiB: "2.00G", 7 * GiB // 4: "1.75G",
        237 * MiB: "237M", 12 * GiB: "12.0G", 100 * MiB: "100M",
        # 9.996 GiB rounds to two decimals as 10.00: one decimal fewer, not six characters
        int(9.996 * GiB): "10.0G", 1023 * MiB: "1023M", -256 * MiB: "-256M",
    }
    for n, text in cases.items():
        assert format_size_aligned(n) == text, n
        assert len(text.lstrip("-")) <= 5
    assert format_size_aligned(None) == "-"


def test_exact_sizes_show_the_bytes_and_a_human_size_that_is_not_rounded() -> None:
    assert format_exact(7 * GiB // 4) == "1.75 GiB (1879048192 bytes)"
    assert format_exact(1800 * MiB) == "1800 MiB (1887436800 bytes)"  # 1.7578125 GiB
    assert format_exact(GiB + 1) == "~1 GiB (1073741825 bytes)"  # marked as rounded
    assert format_exact(512) == "512 B"
    assert parse_size(format_exact(7 * GiB // 4).split(" (")[0].replace(" ", "")) == 7 * GiB // 4


def test_format_change_shows_a_change_that_plain_sizes_would_hide() -> None:
    """docs: a change reads `before -> after` as format_size shows them, unless both would
    read alike though they differ: then exactly; an unknown `before` is `?`."""
    assert format_change(2 * GiB, 1536 * MiB) == ("2 GiB", "1.5 GiB")
    assert format_change(2 * GiB, 2026 * MiB) == ("2 GiB", "2026 MiB")
    assert format_change(2026 * MiB, 2 * GiB) == ("2026 MiB", "2 GiB")
    assert format_change(2 * GiB, 2 * GiB) == ("2 GiB", "2 GiB")  # no change: as it is
    assert format_change(None, 2 * GiB) == ("?", "2 GiB")
    assert format_change(None, 2026 * MiB) == ("?", format_size(2026 * MiB))
    # one byte apart: still told apart
    before, after = format_change(GiB, GiB - 1)
    assert before != after and before == "1 GiB"
