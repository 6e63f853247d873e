"""``balloonctl preflight``: will ballooning work on each VM? One check per line."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from balloonctl.cli.common import (
    AllOpt,
    FormatOpt,
    JsonOpt,
    VmsArg,
    exit_with,
    out,
    output_format,
    run,
    settings,
    snapshot,
)
from balloonctl.cli.exitcodes import ExitCode, combine, exit_code_for
from balloonctl.cli.output import Format, error, render_records
from balloonctl.errors import BalloonError
from balloonctl.model import BalloonState, HintMode, VmRef
from balloonctl.units import format_duration, format_size

__all__ = ["preflight"]


@dataclass(frozen=True, slots=True)
class Check:
    check: str
    result: str  # ok, warn, fail, info
    detail: str

    def record(self) -> dict[str, str]:
        return {"check": self.check, "result": self.result, "detail": self.detail}


def _yesno(v: bool | None) -> str:
    return "unknown" if v is None else ("on" if v else "off")


async def _agent_checks(ref: VmRef, limit: float) -> list[Check]:
    if ref.qga is None:
        return [Check("guest agent", "warn", "no guest-agent socket known (--qga or <vm>.qga)"),
                Check("guest-exec", "info", "not checked: no guest agent")]
    from balloonctl.errors import AgentExecBlocked
    from balloonctl.qga import QgaClient

    trace = settings().trace if settings().verbose else None
    try:
        async with QgaClient(ref.qga, timeout=limit, trace=trace, vm=ref.name) as ga:
            await ga.ping()
            reach = Check("guest agent", "ok", f"answers at {ref.qga}")
            try:
                await ga.require_exec()
            except AgentExecBlocked as exc:
                return [reach, Check("guest-exec", "warn", exc.message)]
            return [reach, Check("guest-exec", "ok", "allowed")]
    except BalloonError as exc:
        return [Check("guest agent", "warn", exc.message),
                Check("guest-exec", "info", "not checked: agent unreachable")]


def _preflight_checks(s: BalloonState, agent: list[Check]) -> tuple[list[Check], ExitCode]:
    if not s.reachable:
        kind = s.error_kind or "ConnectFailed"
        return [Check("qmp socket", "fail", s.error or "unreachable")], exit_code_for(kind)
    checks = [Check("qmp socket", "ok", s.qmp)]
    if not s.has_device:
        checks.append(Check("balloon device", "fail", s.error or "no virtio-balloon device"))
        return checks + agent, ExitCode.QMP_ERROR
    checks.append(Check("balloon device", "ok", f"guest RAM {format_size(s.guest_ram)}"))
    code = ExitCode.OK
    if s.driver_ready:
        checks.append(Check("driver loaded", "ok", "the guest has reported stats"))
    else:
        checks.append(Check("driver loaded", "fail",
                            "no stats ever reported: is virtio_balloon loaded in the guest?"))
        code = ExitCode.QMP_ERROR
    if not s.polling_interval:
        checks.append(Check("stats flowing", "warn",
                            "stats polling is off (balloonctl stats VM --interval 2)"))
    elif s.stale:
        checks.append(Check("stats flowing", "warn",
                            f"last report {format_duration(s.stats_age)} ago"))
    else:
        checks.append(Check("stats flowing", "ok",
                            f"last report {format_duration(s.stats_age)} ago"))
    checks.append(Check("polling interval", "info",
                        f"{s.polling_interval}s" if s.polling_interval else "off"))
    f = s.features
    checks.append(Check("deflate-on-oom", "info", _yesno(f.deflate_on_oom)))
    checks.append(Check("free-page-reporting", "info", _yesno(f.free_page_reporting)))
    checks.append(Check("free-page-hint", "info", _yesno(f.free_page_hint)))
    checks.extend(agent)
    mode = s.hint.mode
    checks.append(Check("hint mode", "ok" if mode in (HintMode.DEVICE, HintMode.AGENT)
                        else "warn", f"{mode.value}: {s.hint.detail}".rstrip(": ")))
    return checks, code


def preflight(
    vms: VmsArg = None,
    all_vms: AllOpt = False,
    fmt: FormatOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Check that ballooning will work: driver, stats, device features, guest agent, hint."""
    fmt = output_format(fmt, as_json)
    refs = settings().select(vms or [], all_vms=all_vms)
    timeout = settings().timeout or 5.0

    async def gather() -> tuple[list[BalloonState], list[list[Check]]]:
        states = await snapshot(refs)
        agents = await asyncio.gather(*(_agent_checks(r, timeout) for r in refs))
        return states, list(agents)

    states, agents = run(gather())
    records: list[dict[str, Any]] = []
    rows: list[list[str]] = []
    codes: list[ExitCode] = []
    for s, agent in zip(states, agents, strict=True):
        checks, code = _preflight_checks(s, agent)
        codes.append(code)
        records.append({"name": s.name, "ok": code is ExitCode.OK,
                        "checks": [c.record() for c in checks]})
        rows.extend([s.name, c.check, c.result, c.detail] for c in checks)
        if code is not ExitCode.OK:
            failed = next(c for c in checks if c.result == "fail")
            error(f"{s.name}: {failed.check}: {failed.detail}")
    if fmt is Format.CSV:
        flat = [{"name": r[0], "check": r[1], "result": r[2], "detail": r[3]} for r in rows]
        out(render_records(flat, fmt, keys=["name", "check", "result", "detail"]))
    else:
        out(render_records(records, fmt, headers=["NAME", "CHECK", "RESULT", "DETAIL"],
                            rows=rows))
    exit_with(combine(codes))

