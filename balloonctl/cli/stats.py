"""``balloonctl stats``: the guest's memory statistics (like ``virsh dommemstat``), and the
interval at which the guest reports them."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any

import typer

from balloonctl.cli.common import (
    AllOpt,
    FormatOpt,
    JsonOpt,
    VmsArg,
    duration,
    each,
    error_line,
    exit_with,
    out,
    out_lines,
    output_format,
    report,
    report_states,
    run,
    settings,
    snapshot,
)
from balloonctl.cli.exitcodes import ExitCode, combine, exit_code_for
from balloonctl.cli.output import Format, note, render_records, size
from balloonctl.errors import UsageError
from balloonctl.units import format_duration

if TYPE_CHECKING:
    from balloonctl.backend import VmClient
    from balloonctl.model import BalloonState, VmRef

__all__ = ["STATS_KEYS", "polling_seconds", "stats"]

# A VM's memory statistics: these keys of its status snapshot (``BalloonState.to_json``).
STATS_KEYS = [
    "name", "actual", "guest_ram", "free_memory", "disk_caches", "available_memory",
    "total_memory", "swap_in", "swap_out", "major_faults", "minor_faults", "last_update",
    "stats_age", "polling_interval",
]
_ZERO = re.compile(r"0+(\.0*)?\s*(ms|s|m|h)?")
_COUNTS = ("major_faults", "minor_faults", "last_update", "polling_interval")
# QEMU refuses a guest-stats-polling-interval above UINT32_MAX ("timer value is too big").
MAX_POLLING_SECONDS = 2**32 - 1


def polling_seconds(text: str) -> int:
    """``--interval`` as whole seconds for QEMU's ``guest-stats-polling-interval``: a
    duration (``2s``, ``1m``, plain seconds), ``0`` or ``off`` for off. A fraction of a second
    rounds up (the guest reports in whole seconds) with a note.

    Raises:
        UsageError: not a duration, negative, or above QEMU's limit (2^32-1 s).
    """
    if text.strip().lower() == "off" or _ZERO.fullmatch(text.strip()):
        return 0  # (durations themselves must be positive)
    seconds = duration(text, "--interval") or 0.0
    whole = math.ceil(seconds)
    if whole > MAX_POLLING_SECONDS:
        raise UsageError(f"--interval: {text.strip()!r} is too long: QEMU takes at most "
                         f"{MAX_POLLING_SECONDS}s ({format_duration(MAX_POLLING_SECONDS)})")
    if whole != seconds:
        note(f"--interval {text}: the guest reports in whole seconds; polling every {whole}s")
    return whole


def _stats_record(s: BalloonState) -> dict[str, Any]:
    snap = s.to_json()
    return {k: snap[k] for k in STATS_KEYS}


def _value(key: str, v: Any) -> str:
    if v is None:
        return "-"
    if key == "stats_age":
        return format_duration(v)
    if key == "polling_interval":
        return f"{v}s" if v else "off"
    if key in _COUNTS:
        return str(v)
    return size(v)


def _show(refs: Sequence[VmRef], fmt: Format) -> None:
    states = run(snapshot(refs))
    records = [_stats_record(s) for s in states if s.reachable and s.has_device]
    if fmt is Format.TABLE:
        rows = [[r["name"], k, _value(k, r[k])] for r in records for k in STATS_KEYS[1:]]
        out(render_records(records, fmt, headers=["NAME", "STAT", "VALUE"], rows=rows))
    else:
        out(render_records(records, fmt, keys=STATS_KEYS))
    codes: list[ExitCode] = []
    for s in states:
        if not s.reachable:
            codes.append(report_states([s], refs))
        elif not s.has_device:  # no statistics to show: a failure, as in `set`
            kind = s.error_kind or "NoBalloonDevice"
            error_line(s.error or "no virtio-balloon device", s.name, kind)
            codes.append(exit_code_for(kind))
        else:
            codes.append(ExitCode.OK)
    exit_with(combine(codes))


def stats(
    vms: VmsArg = None,
    all_vms: AllOpt = False,
    interval: Annotated[str | None, typer.Option(
        "--interval", "-n", metavar="DURATION",
        help="Set how often the guest reports its stats (2s, 1m; 0 or off turns polling off) "
             "instead of showing them.",
        show_default=False,
    )] = None,
    fmt: FormatOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show the guest's memory statistics, or set how often it reports them (--interval)."""
    fmt = output_format(fmt, as_json)
    if interval is None:
        _show(settings().select(vms or [], all_vms=all_vms), fmt)
        return
    seconds = polling_seconds(interval)
    refs = settings().select_to_change(vms or [], all_vms=all_vms,
                                       what="change the stats polling of")

    async def one(c: VmClient) -> int:
        await c.enable_stats(seconds)
        return seconds

    results = run(each(refs, one))
    done = {n: r for n, r in results.items() if isinstance(r, int)}
    if fmt is Format.TABLE:
        out_lines(f"{n}: guest stats every {r}s" if r else f"{n}: guest stats polling off"
                  for n, r in done.items())
    else:
        out(render_records([{"name": n, "polling_interval": r} for n, r in done.items()], fmt,
                           keys=["name", "polling_interval"]))
    exit_with(report(results, refs))
