"""Host memory as the kernel reports it in ``/proc/meminfo`` (pure parsing, no Textual)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["DEFAULT_MEMINFO", "HostMemory", "parse_meminfo", "read_meminfo"]

DEFAULT_MEMINFO = Path("/proc/meminfo")


@dataclass(frozen=True, slots=True)
class HostMemory:
    """The host's memory in bytes; ``None`` when the kernel did not report a field."""

    total: int | None
    free: int | None
    available: int | None


def parse_meminfo(text: str) -> HostMemory:
    """Parse ``/proc/meminfo`` text; values there are KiB despite the ``kB`` suffix."""
    fields: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, rest = line.partition(":")
        if not sep:
            continue
        parts = rest.split()
        if not parts or not parts[0].isdigit():
            continue
        scale = 1024 if len(parts) > 1 and parts[1].lower() == "kb" else 1
        fields[key.strip()] = int(parts[0]) * scale
    return HostMemory(
        total=fields.get("MemTotal"),
        free=fields.get("MemFree"),
        available=fields.get("MemAvailable"),
    )


def read_meminfo(path: Path = DEFAULT_MEMINFO) -> HostMemory:
    """Read and parse a meminfo file.

    Raises:
        OSError: the file cannot be read.
    """
    return parse_meminfo(path.read_text(encoding="ascii", errors="replace"))
