"""``balloonctl hint``: the cache-first hint of each VM, and turning it on or off."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any

import typer

from balloonctl.cli import completers
from balloonctl.cli.common import (
    AllOpt,
    FormatOpt,
    JsonOpt,
    each,
    exit_with,
    out,
    out_lines,
    output_format,
    report,
    run,
    settings,
)
from balloonctl.cli.output import Format, render_records
from balloonctl.errors import BalloonError, UsageError
from balloonctl.model import HintMode, HintState, VmRef

if TYPE_CHECKING:
    from balloonctl.backend import VmClient

__all__ = ["hint"]


_HINT_ACTIONS = ("on", "off", "status")


def _hint_record(name: str, h: HintState) -> dict[str, Any]:
    # the same keys as BalloonState.to_json() uses for the hint
    return {"name": name, "hint_mode": h.mode.value, "hint_enabled": h.enabled,
            "hint_detail": h.detail, "hint_released": h.released,
            "hint_method": None if h.method is None else h.method.value}


def _hint_line(name: str, h: HintState) -> str:
    if h.mode is HintMode.UNSUPPORTED:
        return f"{name}: hint unsupported ({h.detail})"
    state = "on" if h.enabled else "off"
    method = f", method {h.method.value}" if h.method is not None else ""
    return f"{name}: hint {state} ({h.mode.value} mode{method}: {h.detail})"


def hint(
    hint_args: Annotated[list[str] | None, typer.Argument(
        metavar="[VM...] [on|off|status]",
        help="VM names or globs (default: every VM), then on, off or status (the default).",
        autocompletion=completers.typer_callback("hint_args"), show_default=False,
    )] = None,
    all_vms: AllOpt = False,
    fmt: FormatOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Turn the cache-first hint on or off, or show it (device, agent or unsupported mode)."""
    fmt = output_format(fmt, as_json)
    args = list(hint_args or [])
    action = "status"
    services = settings().services()
    if args and args[-1] in _HINT_ACTIONS:
        action = args.pop()
    elif (services is None and args and (len(args) > 1 or all_vms)
          and not settings().inventory().matches(args[-1])):
        # `hint vm1 maybe`: a misspelt action, not a VM called 'maybe' (a service's VMs
        # are checked by the service)
        raise UsageError(f"expected on, off or status as the last word, got {args[-1]!r}")
    if services is not None:  # through balloonctl serve
        from balloonctl.cli.remote_cmds import hint_through_service

        if action != "status" and not args and not all_vms:
            raise UsageError(f"name the VMs to turn the hint {action} for (or --all)")
        _show(run(hint_through_service(services, args, all_vms, action)), fmt, [])
        return
    if action == "status":  # shown: every VM unless named, like `status`
        refs = settings().select(args, all_vms=all_vms)
    else:
        refs = settings().select_to_change(args, all_vms=all_vms,
                                           what=f"turn the hint {action} for")

    async def one(c: VmClient) -> HintState:
        if action == "status":
            return await c.hint_status()
        return await c.set_hint(action == "on")

    _show(run(each(refs, one)), fmt, refs)


def _show(results: Mapping[str, HintState | BalloonError], fmt: Format,
          refs: Sequence[VmRef]) -> None:
    ok = {n: h for n, h in results.items() if isinstance(h, HintState)}
    if fmt is Format.TABLE:
        out_lines(_hint_line(n, h) for n, h in ok.items())
    else:
        records = [_hint_record(n, h) for n, h in ok.items()]
        out(render_records(records, fmt, keys=list(_hint_record("", HintState()))))
    exit_with(report(results, refs))
