"""Sizes and durations (balloonctl.units): round trips and garbage, property-based."""

from __future__ import annotations

from fractions import Fraction

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
    format_duration,
    format_size,
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
        assert str(exc).startswith(("invalid size", "target"))
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
