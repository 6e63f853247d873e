"""``balloonctl set``: send balloon targets, optionally waiting until they are reached."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, TextIO

import typer

from balloonctl.cli import completers
from balloonctl.cli.common import (
    AllOpt,
    FormatOpt,
    JsonOpt,
    duration,
    each,
    exit_with,
    out,
    out_lines,
    output_format,
    report,
    run,
    settings,
)
from balloonctl.cli.exitcodes import ExitCode
from balloonctl.cli.output import Format, error, note, render_records, size
from balloonctl.errors import DriverNotReady, UsageError
from balloonctl.units import format_size, parse_target

if TYPE_CHECKING:
    from balloonctl.backend import VmClient

__all__ = ["set_"]


class _Progress:
    """One progress line on stderr for every VM being waited for (terminals only)."""

    def __init__(self, names: Sequence[str], stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.state: dict[str, tuple[int, int, int]] = {}  # name -> (start, actual, target)
        self.names = list(names)
        self.drawn = False

    def callback(self, name: str) -> Callable[[int, int], None]:
        def update(actual: int, target: int) -> None:
            start = self.state.get(name, (actual, actual, target))[0]
            self.state[name] = (start, actual, target)
            self.draw()

        return update

    def draw(self) -> None:
        if not self.enabled:
            return
        parts = []
        for name in self.names:
            if name not in self.state:
                continue
            start, actual, target = self.state[name]
            span = abs(target - start)
            done = 1.0 if span == 0 else min(1.0, abs(actual - start) / span)
            bar = "#" * int(done * 20)
            parts.append(f"{name} [{bar:<20}] {size(actual)}->{size(target)}")
        self.stream.write("\r\x1b[K" + "  ".join(parts))
        self.stream.flush()
        self.drawn = True

    def done(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = False


def _split_set_args(args: Sequence[str], all_vms: bool) -> tuple[list[str], str]:
    for a in args:
        if a.startswith("--"):
            raise UsageError(f"no such option: {a}")
    if all_vms:
        if len(args) != 1:
            raise UsageError("with --all, give only the SIZE")
        return [], args[0]
    if len(args) == 1 and settings().single() is not None:
        return [], args[0]  # `balloonctl --qmp /run/vm.qmp set 512M`
    if len(args) < 2:
        raise UsageError("expected VM... SIZE (e.g. balloonctl set web-1 1.5G)")
    return list(args[:-1]), args[-1]


@dataclass(frozen=True, slots=True)
class SetResult:
    """What ``set`` did to one VM; ``record()`` is its JSON (``target``/``actual`` as in
    ``status``)."""

    name: str
    target: int
    actual: int | None  # after the wait with --wait, else when sent; None: unknown
    sent: bool  # False with --dry-run
    seconds: float | None  # how long --wait waited
    line: str  # the table form

    def record(self) -> dict[str, Any]:
        return {"name": self.name, "target": self.target, "actual": self.actual,
                "sent": self.sent, "seconds": self.seconds}


RECORD_KEYS = ["name", "target", "actual", "sent", "seconds"]


def _stopped(exc: BaseException, sent: dict[str, int], progress: _Progress) -> None:
    """Ctrl-C or SIGTERM (usually during --wait): say what was sent and stands, then exit
    130 or 143. Raises: typer.Exit."""
    how = "SIGTERM" if isinstance(exc, Exception) else "Ctrl-C"
    for name, target in sent.items():
        actual = progress.state.get(name, (0, None, 0))[1]
        now = f" (actual {format_size(actual)})" if actual is not None else ""
        error(f"{name}: stopped waiting ({how}): target {format_size(target)} was sent and "
              f"stands{now}")
    if not sent:
        error(f"stopped ({how}) before any target was sent")
    code = ExitCode.TERMINATED if how == "SIGTERM" else ExitCode.INTERRUPTED
    raise typer.Exit(int(code))


def set_(
    targets: Annotated[list[str], typer.Argument(
        metavar="[VM...] SIZE",
        help="VM names or globs, then the target: 1.5G, 2GB, 75% (of guest RAM), "
             "+256M or -256M (relative to the current target). The VM may be left out when "
             "one --qmp names it.",
        autocompletion=completers.typer_callback("targets"), show_default=False,
    )],
    all_vms: AllOpt = False,
    wait: Annotated[bool, typer.Option(
        "--wait", "-W", help="Wait until actual reaches the target (progress on stderr).",
    )] = False,
    timeout: Annotated[str, typer.Option(
        "--timeout", "-t", metavar="DURATION", help="How long --wait waits.",
    )] = "60s",
    force: Annotated[bool, typer.Option(
        "--force", help="Allow a target below the VM's safe floor (never below 128 MiB).",
    )] = False,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print the QMP command that would be sent; send nothing.",
    )] = False,
    fmt: FormatOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Set the balloon target of one or more VMs."""
    fmt = output_format(fmt, as_json)
    names, size_text = _split_set_args(targets, all_vms)
    spec = parse_target(size_text)
    wait_for = duration(timeout, "--timeout") or 60.0
    services = settings().services()
    if services is not None:  # the service sets, validates and journals
        from balloonctl.cli.remote_cmds import set_through_service

        if not names and not all_vms:
            raise UsageError("name the VMs to set (or --all)")
        results = run(set_through_service(services, names, all_vms, spec, force=force,
                                          dry_run=dry_run, wait=wait_for if wait else None))
        _show(results, fmt)
        exit_with(report(results, []))
        return
    refs = settings().select_to_change(names, all_vms=all_vms, what="set")
    progress = _Progress([r.name for r in refs])
    standing: dict[str, int] = {}  # what was sent so far, for an interrupted --wait
    if not dry_run:
        from balloonctl.cli.journaling import record_targets

        record_targets("set", f"set to {size_text}")

    async def one(c: VmClient) -> SetResult:
        before = await c.query_actual()  # first: a VM without a balloon device fails here
        if not dry_run and not (await c.stats()).reported:
            # QEMU takes the target, but without the driver the balloon never moves
            absent = ("the guest has no balloon driver loaded (virtio_balloon: no stats ever "
                      "reported)")
            if wait:
                raise DriverNotReady(f"{absent}: nothing sent, actual stays at "
                                     f"{format_size(before)}", vm=c.name)
            note(f"warning: {c.name}: {absent}: actual will not move until it loads")
        target = await c.set_target(spec, force=force, dry_run=dry_run)
        if not dry_run:
            standing[c.name] = target
            if wait:  # actual as sent, so a stop before the first poll still names it
                progress.callback(c.name)(before, target)
        if dry_run:
            sent = json.dumps({"execute": "balloon", "arguments": {"value": target}})
            return SetResult(c.name, target, before, False, None,
                             f"{c.name}: would send {sent} ({format_size(target)})")
        if not wait:
            return SetResult(c.name, target, before, True, None,
                             f"{c.name}: target {format_size(target)} "
                             f"(actual {format_size(before)})")
        started = time.monotonic()
        final = await c.wait_for_target(target, timeout=wait_for,
                                        progress=progress.callback(c.name))
        took = time.monotonic() - started
        return SetResult(c.name, target, final, True, round(took, 3),
                         f"{c.name}: reached {format_size(final)} (target "
                         f"{format_size(target)}) in {took:.1f}s")

    from balloonctl.cli.wave import Terminated, cancel_on_sigterm

    try:
        results = run(cancel_on_sigterm(each(refs, one)))
    except (KeyboardInterrupt, Terminated) as exc:
        progress.done()
        _stopped(exc, standing, progress)
    finally:
        progress.done()
    _show(results, fmt)
    exit_with(report(results, refs))


def _show(results: Mapping[str, object], fmt: Format) -> None:
    done = [r for r in results.values() if isinstance(r, SetResult)]
    if fmt is Format.TABLE:
        out_lines(r.line for r in done)
    else:
        out(render_records([r.record() for r in done], fmt, keys=RECORD_KEYS))
