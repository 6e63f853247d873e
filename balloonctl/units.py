"""Sizes and durations: the only place where strings become bytes and bytes become strings.

Everything else in balloonctl passes sizes around as ``int`` bytes.

Suffixes follow QEMU and virsh: ``K``/``M``/``G``/``T``/``P`` and ``KiB``..``PiB``
are powers of 1024, ``KB``..``PB`` are powers of 1000, ``B`` or no suffix means
bytes. Case is ignored (``512m`` == ``512M``).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from fractions import Fraction

from balloonctl.errors import SizeError

__all__ = [
    "MAX_BYTES",
    "GiB",
    "KiB",
    "MiB",
    "PiB",
    "SizeKind",
    "TargetSpec",
    "TiB",
    "format_change",
    "format_duration",
    "format_exact",
    "format_size",
    "format_size_aligned",
    "parse_duration",
    "parse_size",
    "parse_target",
]

KiB = 1024
MiB = 1024**2
GiB = 1024**3
TiB = 1024**4
PiB = 1024**5

# Larger sizes than this cannot be a guest's memory and would overflow QEMU's int64 'value'.
MAX_BYTES = 2**63 - 1
_MAX_BYTES = MAX_BYTES

_MULTIPLIERS: dict[str, int] = {
    "": 1,
    "b": 1,
    "k": KiB,
    "m": MiB,
    "g": GiB,
    "t": TiB,
    "p": PiB,
    "kib": KiB,
    "mib": MiB,
    "gib": GiB,
    "tib": TiB,
    "pib": PiB,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "pb": 1000**5,
}

# ASCII digits only: Python's \d, int(), float() and Fraction() also take '１' (fullwidth),
# '٣' (Arabic-Indic) and the like, which no operator means as a size.
_SIZE_RE = re.compile(r"^(?P<num>[0-9]+(?:\.[0-9]+)?|\.[0-9]+)[ \t]*(?P<unit>[a-zA-Z]*)$")
_PERCENT_RE = re.compile(r"^(?P<num>[0-9]+(?:\.[0-9]+)?)[ \t]*%$")
_DURATION_RE = re.compile(r"^(?P<num>[0-9]+(?:\.[0-9]+)?)[ \t]*(?P<unit>ms|s|m|h|)$")
_DURATION_UNITS: dict[str, Fraction] = {
    "ms": Fraction(1, 1000),
    "": Fraction(1),
    "s": Fraction(1),
    "m": Fraction(60),
    "h": Fraction(3600),
}


_SIZE_EXAMPLES = "a positive number with an optional unit (e.g. 1073741824, 512M, 512MiB, " \
                 "1.5G, 2GB)"
_DURATION_EXAMPLES = "e.g. 30s, 2m, 1h, 500ms"


def _blank(text: str, what: str, expected: str) -> None:
    """Raise SizeError for text with nothing in it, saying which kind of nothing."""
    if not text:
        raise SizeError(f"empty {what} {text!r}: expected {expected}")
    if not text.strip():
        raise SizeError(f"invalid {what} {text!r}: whitespace only; expected {expected}")


def _invalid(text: str, what: str, expected: str) -> str:
    """Why ``text`` is not a ``what``: a non-ASCII digit in it (Unicode has hundreds, and
    superscripts and fractions besides), else what was expected."""
    digit = next((ch for ch in text if ch.isnumeric() and not ch.isascii()), None)
    if digit is not None:
        return (f"invalid {what} {text!r}: {digit!r} (U+{ord(digit):04X}) is not an ASCII "
                f"digit; write {what}s with 0-9")
    return f"invalid {what} {text!r}: expected {expected}"


def _explain(text: str) -> str:
    return _invalid(text, "size", _SIZE_EXAMPLES)


def parse_size(text: str) -> int:
    """Parse an absolute, positive size such as ``512M``, ``1.5G`` or ``2GB`` into bytes.

    Digits are ASCII only. Fractions of a byte from a unit are rounded down (``0.3K`` is
    307 bytes); a fraction without a unit (``1.5``, ``1.5B``) is refused.

    Raises:
        SizeError: the text is empty or whitespace only (and says which), is not a size,
            is zero, is negative, is a fraction of a byte or is absurdly large.
    """
    return _size_bytes(text, text)


def _size_bytes(text: str, shown: str) -> int:
    """``parse_size`` of ``text``; errors quote ``shown``, what the user typed."""
    _blank(shown, "size", _SIZE_EXAMPLES)
    m = _SIZE_RE.match(text.strip())
    if m is None:
        raise SizeError(_explain(shown))
    unit = m.group("unit").lower()
    if unit not in _MULTIPLIERS:
        raise SizeError(f"invalid size {shown!r}: unknown unit {m.group('unit')!r} "
                        "(use B, K, M, G, T, P, KiB..PiB or KB..PB)")
    number = Fraction(m.group("num"))
    if _MULTIPLIERS[unit] == 1 and number.denominator != 1:
        raise SizeError(f"invalid size {shown!r}: fractional bytes need a unit (e.g. 1.5G)")
    value = int(number * _MULTIPLIERS[unit])
    if value <= 0:
        raise SizeError(f"invalid size {shown!r}: must be greater than zero")
    if value > _MAX_BYTES:
        raise SizeError(f"invalid size {shown!r}: too large")
    return value


class SizeKind(enum.StrEnum):
    ABSOLUTE = "absolute"
    PERCENT = "percent"
    RELATIVE = "relative"


@dataclass(frozen=True, slots=True)
class TargetSpec:
    """A balloon target as the user wrote it, before it is resolved for one VM.

    ``value`` is bytes for ABSOLUTE, a signed byte delta for RELATIVE, and a
    percentage (as an exact Fraction) of guest RAM for PERCENT.
    """

    kind: SizeKind
    value: int | Fraction
    text: str

    def resolve(self, *, guest_ram: int, current: int) -> int:
        """Turn this spec into absolute target bytes for a VM.

        ``current`` is the VM's current target (or ``actual`` when no target was set).

        Raises:
            SizeError: a relative change would go to zero or below.
        """
        if self.kind is SizeKind.ABSOLUTE:
            return int(self.value)
        if self.kind is SizeKind.PERCENT:
            return int(Fraction(self.value) * guest_ram / 100)
        result = current + int(self.value)
        if result <= 0:
            raise SizeError(
                f"target {self.text!r} from {format_size(current)} would be "
                f"{'zero' if result == 0 else 'negative'}"
            )
        return result


def parse_target(text: str) -> TargetSpec:
    """Parse a balloon target: absolute (``1G``), percent of guest RAM (``75%``),
    or relative to the current target (``+256M`` / ``-256M``).

    Raises:
        SizeError: the text is none of these.
    """
    _blank(text, "size", _SIZE_EXAMPLES)
    stripped = text.strip()
    if stripped.startswith(("+", "-")):
        sign = -1 if stripped[0] == "-" else 1
        delta = _size_bytes(stripped[1:], text)
        return TargetSpec(SizeKind.RELATIVE, sign * delta, stripped)
    m = _PERCENT_RE.match(stripped)
    if m is not None:
        pct = Fraction(m.group("num"))
        if not 0 < pct <= 100:
            raise SizeError(f"invalid size {text!r}: a percentage must be above 0 and at most 100")
        return TargetSpec(SizeKind.PERCENT, pct, stripped)
    if stripped.endswith("%"):
        raise SizeError(_invalid(text, "size", "a percentage such as 75%"))
    return TargetSpec(SizeKind.ABSOLUTE, parse_size(stripped), stripped)


def format_size(n: int | None, *, compact: bool = False) -> str:
    """Format bytes for humans with binary units: ``1.5 GiB``, ``512 MiB``, ``0 B``.

    ``compact`` gives the short form used in tables: ``1.5G``, ``512M``. ``None`` gives ``-``.
    """
    if n is None:
        return "-"
    sign = "-" if n < 0 else ""
    n = abs(n)
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
    value = float(n)
    idx = 0
    while value >= 1024 and idx < len(units) - 1:
        value /= 1024
        idx += 1
    if idx == 0:
        text = f"{n}"
    elif value >= 100 or value == int(value):
        text = f"{value:.0f}"
    else:
        text = f"{value:.1f}".rstrip("0").rstrip(".")
    if compact:
        return f"{sign}{text}{units[idx][0] if idx else 'B'}"
    return f"{sign}{text} {units[idx]}"


def format_size_aligned(n: int | None) -> str:
    """The compact size with three significant digits (``2.00G``, ``1.75G``, ``237M``,
    ``12.0G``, ``512B``), at most five characters: a right-aligned column of them lines up
    and every value has the same precision. ``None`` gives ``-``.
    """
    if n is None:
        return "-"
    sign = "-" if n < 0 else ""
    n = abs(n)
    value, idx = float(n), 0
    while value >= 1024 and idx < 5:
        value /= 1024
        idx += 1
    if idx == 0:
        return f"{sign}{n}B"
    # Round first: 9.996 would print as 10.00 with two decimals.
    for decimals in (2, 1, 0):
        text = f"{value:.{decimals}f}"
        if decimals == 0 or len(text.split(".")[0]) + decimals <= 3:
            break
    return f"{sign}{text}{'BKMGTP'[idx]}"


def format_exact(n: int | None, *, with_bytes: bool = True) -> str:
    """A size exactly, for a value about to be sent: ``1.75 GiB (1879048192 bytes)``
    (``with_bytes=False``: ``1.75 GiB``; ``None``: ``-``).
    The human part is in the largest unit that shows it exactly with at most three
    decimals (``1800 MiB``); failing that it is rounded and marked ``~``. Below 1 KiB:
    ``512 B``."""
    if n is None:
        return "-"
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
    sign, size = ("-" if n < 0 else ""), abs(n)
    exact = f" ({n} bytes)" if with_bytes else ""
    biggest = 0
    while biggest < len(units) - 1 and size >= 1024 ** (biggest + 1):
        biggest += 1
    for idx in range(biggest, 0, -1):
        value = Fraction(size, 1024**idx)
        if (value * 1000).denominator == 1:
            text = f"{float(value):.3f}".rstrip("0").rstrip(".")
            return f"{sign}{text} {units[idx]}{exact}"
    if biggest == 0:
        return f"{n} B"
    text = f"{size / 1024**biggest:.3f}".rstrip("0").rstrip(".")
    return f"~{sign}{text} {units[biggest]}{exact}"


def parse_duration(text: str) -> float:
    """Parse ``60s``, ``2m``, ``1h``, ``250ms`` or a bare number of seconds (ASCII digits).

    Raises:
        SizeError: not a positive duration (an empty or whitespace-only text says so).
    """
    _blank(text, "duration", _DURATION_EXAMPLES)
    m = _DURATION_RE.match(text.strip().lower())
    if m is None:
        raise SizeError(_invalid(text, "duration", _DURATION_EXAMPLES))
    seconds = Fraction(m.group("num")) * _DURATION_UNITS[m.group("unit")]
    if seconds <= 0:
        raise SizeError(f"invalid duration {text!r}: must be greater than zero")
    return float(seconds)


def format_change(before: int | None, after: int) -> tuple[str, str]:
    """``before`` and ``after`` of a change as ``format_size`` shows them, or, where that
    would show two different sizes alike (``2 GiB -> 2 GiB`` for a 22 MiB step), as
    ``format_exact`` shows them (``2 GiB -> 2026 MiB``). ``None`` (unknown) gives ``?``."""
    if before is None:
        return "?", format_size(after)
    plain = format_size(before), format_size(after)
    if before != after and plain[0] == plain[1]:
        return format_exact(before, with_bytes=False), format_exact(after, with_bytes=False)
    return plain


def format_duration(seconds: float | None) -> str:
    """``3s``, ``2m05s``, ``1h02m``; ``None`` gives ``-``."""
    if seconds is None:
        return "-"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"
