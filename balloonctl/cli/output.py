"""Rendering for the CLI: tables, JSON, NDJSON and CSV on stdout; one-line errors on stderr.

stdout is data. stderr gets ``balloonctl: error: ...`` lines, colored only on a terminal.
Names from outside (socket file names, guest strings) reach the terminal through
``escape_text``: in tables and in every stderr line.
"""

from __future__ import annotations

import contextlib
import csv
import enum
import io
import json
import logging
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TextIO

from balloonctl.model import JSON_KEYS, BalloonState, HintMode, Owner
from balloonctl.text import escape_text
from balloonctl.units import format_duration, format_size

__all__ = [
    "Format",
    "WarningLines",
    "error",
    "note",
    "render_records",
    "render_states",
    "state_row",
    "table",
]

PROG = "balloonctl"


class Format(enum.StrEnum):
    TABLE = "table"
    JSON = "json"
    NDJSON = "ndjson"
    CSV = "csv"


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def error(message: str, *, stream: TextIO | None = None) -> None:
    """One line on stderr: ``balloonctl: error: message`` (never more than one line)."""
    stream = stream or sys.stderr
    text = escape_text(" ".join(str(message).split()))
    label = "\x1b[1;31merror\x1b[0m" if _isatty(stream) else "error"
    _say(f"{PROG}: {label}: {text}", stream)


def note(message: str, *, stream: TextIO | None = None) -> None:
    """A diagnostic line on stderr that is not an error (control characters escaped)."""
    _say(f"{PROG}: {escape_text(message)}", stream or sys.stderr)


def _say(line: str, stream: TextIO) -> None:
    """Write a diagnostic line. When its reader went away (``2>&1 | head -1``) the line is
    lost, and so are the later ones: the stream then points at /dev/null, so neither this
    write nor the interpreter's flush at exit turns the command's own exit code into 1."""
    try:
        print(line, file=stream, flush=True)
    except BrokenPipeError:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, stream.fileno())
            os.close(devnull)


class WarningLines(logging.Handler):
    """The library's warnings (logger ``balloonctl``) as ``balloonctl: warning: ...`` lines
    on whatever ``sys.stderr`` is when they happen."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = " ".join(record.getMessage().split())
        except Exception:  # a bad format string in a log call must not end the command
            self.handleError(record)
            return
        note(f"warning: {text}")


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A plain aligned text table (no box drawing, no color: it is piped as often as read)."""
    rows = [[escape_text(c) for c in r] for r in rows]
    widths = [len(h) for h in headers]
    for r in rows:
        for i, cell in enumerate(r):
            widths[i] = max(widths[i], len(cell))
    lines = ["  ".join(h.ljust(widths[i]) for i, h in enumerate(headers)).rstrip()]
    for r in rows:
        lines.append("  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip())
    return "\n".join(lines)


def _hint(state: BalloonState) -> str:
    h = state.hint
    if h.mode in (HintMode.UNKNOWN, HintMode.UNSUPPORTED):
        return h.mode.value if state.reachable else "-"
    return f"{h.mode.value}:{'on' if h.enabled else 'off'}"


STATUS_HEADERS = (
    "NAME", "STATE", "ACTUAL", "RAM", "TARGET", "FREE", "CACHED", "AVAIL",
    "SWAPIN", "SWAPOUT", "HINT", "AGE",
)


def size(n: int | None) -> str:
    return format_size(n, compact=True)


def state_row(s: BalloonState) -> list[str]:
    st = s.stats
    return [
        s.name,
        s.status.value,
        size(s.actual),
        size(s.guest_ram),
        "foreign" if s.owner is Owner.FOREIGN else size(s.target),  # another writer's target
        size(st.free_memory if st else None),
        size(st.disk_caches if st else None),
        size(st.available_memory if st else None),
        size(st.swap_in if st else None),  # bytes, as the driver reports them
        size(st.swap_out if st else None),
        _hint(s),
        format_duration(s.stats_age),
    ]


def _csv_value(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def render_records(
    records: Sequence[Mapping[str, Any]],
    fmt: Format,
    *,
    keys: Sequence[str] | None = None,
    headers: Sequence[str] | None = None,
    rows: Sequence[Sequence[str]] | None = None,
    csv_header: bool = True,
) -> str:
    """Render dict records as JSON (a list), NDJSON, CSV (columns ``keys``), or a table
    (``headers``/``rows``, the human form the caller prepared). No trailing newline."""
    if fmt is Format.JSON:
        return json.dumps(list(records), indent=2)
    if fmt is Format.NDJSON:
        return "\n".join(json.dumps(r, separators=(",", ":")) for r in records)
    if fmt is Format.CSV:
        cols = list(keys or (records[0].keys() if records else ()))
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        if csv_header:
            w.writerow(cols)
        for r in records:
            w.writerow([_csv_value(r.get(c)) for c in cols])
        return buf.getvalue().rstrip("\n")
    return table(headers or [], rows or [])


def render_states(states: Sequence[BalloonState], fmt: Format, *, csv_header: bool = True) -> str:
    """Snapshots in any format; JSON records are exactly ``BalloonState.to_json()``."""
    return render_records(
        [s.to_json() for s in states], fmt, keys=JSON_KEYS, headers=STATUS_HEADERS,
        rows=[state_row(s) for s in states], csv_header=csv_header,
    )
