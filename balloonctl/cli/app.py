"""The balloonctl command line: thin commands that parse, call the library and render.

Errors are raised as ``BalloonError`` (one VM) or returned per VM by ``Fleet.run_each``
(several); ``BalloonGroup.main`` turns whatever escapes into one stderr line and an exit code
(``exitcodes``). Textual, httpx, qemu.qmp and the fake are imported only inside the commands
that use them, so ``--help`` stays fast; completion never gets here (see ``fastcomplete``).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TextIO, TypeVar

import typer
from typer._click import exceptions as click_exceptions
from typer.core import TyperGroup

from balloonctl import __version__
from balloonctl.cli import completers
from balloonctl.cli.exitcodes import ExitCode, combine, exit_code_for
from balloonctl.cli.output import (
    Format,
    WarningLines,
    error,
    note,
    render_records,
    render_states,
    size,
)
from balloonctl.config import Inventory, busy_advice
from balloonctl.errors import BalloonError, SocketBusy, UsageError
from balloonctl.model import BalloonState, HintMode, HintState, VmRef
from balloonctl.units import (
    format_duration,
    format_size,
    parse_duration,
    parse_size,
    parse_target,
)

if TYPE_CHECKING:
    from balloonctl.cli.remote import Endpoint
    from balloonctl.fleet import Fleet
    from balloonctl.qmp import BalloonClient

__all__ = ["app", "run"]

T = TypeVar("T")


class BalloonGroup(TyperGroup):
    """Formats every failure as one ``balloonctl: error: ...`` line and picks the exit code
    (typer would draw a box around usage errors and print tracebacks)."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        # qemu.qmp logs failures it also raises; balloonctl reports them once, as one line
        logging.getLogger("qemu").addHandler(_QUIET)
        logging.getLogger("balloonctl").addHandler(_WARNINGS)  # e.g. an unusable state file
        try:
            rv = super().main(args=args, prog_name=prog_name or "balloonctl",
                              complete_var=complete_var, standalone_mode=False, **extra)
            code = int(rv) if isinstance(rv, int) else ExitCode.OK
        except click_exceptions.NoArgsIsHelpError as exc:  # bare `balloonctl`: the help
            print(exc.format_message())
            code = ExitCode.USAGE
        except click_exceptions.ClickException as exc:
            # typer validates choices with pydantic, whose messages start "Value error, "
            message = exc.format_message().replace("Value error, ", "", 1)
            ctx = getattr(exc, "ctx", None)
            if isinstance(exc, click_exceptions.UsageError) and ctx is not None:
                message += f" (see '{ctx.command_path} --help')"
            error(message)
            code = ExitCode.USAGE if exc.exit_code == 2 else exc.exit_code
        except typer.Abort:
            code = ExitCode.INTERRUPTED
        except BalloonError as exc:
            report_error(exc)
            code = exit_code_for(exc)
        except KeyboardInterrupt:
            code = ExitCode.INTERRUPTED
        except Exception as exc:  # a bug: still one line, the traceback only with -v
            if _STATE.verbose:
                traceback.print_exc()
            error(f"internal error: {type(exc).__name__}: {exc}")
            code = ExitCode.FAILURE
        if standalone_mode:
            sys.exit(code)
        return code


    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        return super().parse_args(ctx, _hoist_global_options(self, args))


def _options(params: Sequence[Any]) -> dict[str, Any]:
    """A command's options by every name they answer to (``--dir``, ``-v``)."""
    return {name: p for p in params if getattr(p, "param_type_name", None) == "option"
            for name in (*p.opts, *p.secondary_opts)}


def _words(option: Any, word: str) -> int:
    """How many words an option occupies: 1 for a flag or ``--opt=value``, else 2."""
    if "=" in word or getattr(option, "is_flag", False) or getattr(option, "count", False):
        return 1
    return 2


def _hoist_global_options(group: TyperGroup, args: Sequence[str]) -> list[str]:
    """``balloonctl status --dir X`` as ``balloonctl --dir X status``: a global option given
    after the command moves before it, unless the command has an option of that name itself
    (``set --timeout``, ``fake --dir``). ``--`` ends the search."""
    args = list(args)
    globals_ = {n: p for n, p in _options(group.params).items() if p.name != "version"}
    i = 0
    while i < len(args) and args[i].startswith("-") and args[i] != "--":
        found = globals_.get(args[i].split("=", 1)[0])
        i += 1 if found is None else _words(found, args[i])
    command = group.commands.get(args[i]) if i < len(args) else None
    if command is None:
        return args
    own = _options(command.params)
    head, tail = args[:i], [args[i]]
    j = i + 1
    while j < len(args):
        word = args[j]
        if word == "--":
            tail += args[j:]
            break
        name = word.split("=", 1)[0]
        if name in own:
            n = _words(own[name], word)
            tail += args[j:j + n]
        elif name in globals_ and word.startswith("-"):
            n = _words(globals_[name], word)
            head += args[j:j + n]
        else:
            n = 1
            tail.append(word)
        j += n
    return head + tail


_QUIET = logging.NullHandler()
_WARNINGS = WarningLines()

app = typer.Typer(
    cls=BalloonGroup,
    name="balloonctl",
    help="See and steer QEMU/KVM guest memory through the virtio balloon.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)


# ---- global state ------------------------------------------------------------------------


@dataclass
class Settings:
    """The global options, and what the commands build from them."""

    qmp: list[str] = field(default_factory=list)
    qga: str | None = None
    directory: str | None = None
    config: Path | None = None
    timeout: float | None = None
    verbose: bool = False
    hosts: list[str] = field(default_factory=list)
    _inventory: Inventory | None = None

    def services(self) -> list[Endpoint] | None:
        """The balloonctl serve instances to go through (None: talk QMP directly)."""
        from balloonctl.cli.remote import endpoints

        return endpoints(self.hosts, direct=bool(self.qmp or self.directory))

    def inventory(self) -> Inventory:
        if self._inventory is None:
            self._inventory = Inventory.load(
                qmp=self.qmp, qga=self.qga, directory=self.directory, config=self.config
            )
        return self._inventory

    def select(self, patterns: Sequence[str], *, all_vms: bool = False) -> list[VmRef]:
        return self.inventory().select(patterns, all_vms=all_vms)

    def _timeouts(self) -> tuple[float, float]:
        """(connect, command) timeouts: --timeout, else the config's, else the library's."""
        timeout = self.timeout
        if timeout is None:
            timeout = self.inventory().config.defaults.timeout
        if timeout is None:
            return 3.0, 10.0
        return timeout, max(timeout, 1.0)

    def trace(self, vm: str, direction: str, message: Any) -> None:
        text = json.dumps(message, separators=(",", ":"), default=str)
        print(f"balloonctl: {vm} {direction} {text}", file=sys.stderr, flush=True)

    def fleet(self, refs: Sequence[VmRef], *, hold: bool = False) -> Fleet:
        from balloonctl.fleet import Fleet
        from balloonctl.store import FileStore

        connect, command = self._timeouts()
        return Fleet(refs, store=FileStore(), hold=hold, connect_timeout=connect,
                     command_timeout=command, trace=self.trace if self.verbose else None)

    def client(self, ref: VmRef) -> BalloonClient:
        from balloonctl.qmp import BalloonClient
        from balloonctl.store import FileStore

        connect, command = self._timeouts()
        return BalloonClient.from_ref(ref, store=FileStore(), connect_timeout=connect,
                                      command_timeout=command,
                                      trace=self.trace if self.verbose else None)


_STATE = Settings()


def settings() -> Settings:
    return _STATE


def _duration(text: str | None, what: str) -> float | None:
    if text is None:
        return None
    try:
        return parse_duration(text)
    except BalloonError as exc:
        raise UsageError(f"{what}: {exc}") from None


def _version(value: bool) -> None:
    if value:
        print(f"balloonctl {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    qmp: Annotated[list[str] | None, typer.Option(
        "--qmp", metavar="[NAME=]PATH",
        help="A VM's QMP socket (repeatable); the name is the file stem unless NAME= is given.",
    )] = None,
    qga: Annotated[str | None, typer.Option(
        "--qga", metavar="PATH", help="The guest-agent socket of the single --qmp VM.",
    )] = None,
    directory: Annotated[str | None, typer.Option(
        "--dir", metavar="DIR",
        help="A directory of sockets (*.qmp, *.sock; <stem>.qga for the agent). "
             "Default: $BALLOONCTL_DIR.",
    )] = None,
    config: Annotated[Path | None, typer.Option(
        "--config", metavar="FILE",
        help="The TOML config. Default: $BALLOONCTL_CONFIG or "
             "$XDG_CONFIG_HOME/balloonctl/config.toml.",
    )] = None,
    timeout: Annotated[str | None, typer.Option(
        "--timeout", metavar="DURATION",
        help="Timeout to connect to a VM and for each QMP command (e.g. 3s).",
    )] = None,
    verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="Show the QMP and guest-agent messages on stderr.",
    )] = False,
    host: Annotated[list[str] | None, typer.Option(
        "--host", metavar="URL",
        help="Go through the balloonctl serve at URL (repeatable; token from "
             "$BALLOONCTL_TOKEN). Without it, a local service's socket is used when it exists.",
    )] = None,
    version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version and exit.",
    )] = False,
) -> None:
    """See and steer QEMU/KVM guest memory through the virtio balloon.

    VMs come from --qmp, --dir ($BALLOONCTL_DIR), the config file and Proxmox's
    /var/run/qemu-server. Name them exactly or by glob ('web-*'); most commands take --all.
    """
    global _STATE
    _STATE = Settings(
        qmp=list(qmp or []), qga=qga, directory=directory, config=config,
        timeout=_duration(timeout, "--timeout"), verbose=verbose, hosts=list(host or []),
    )


# ---- shared option types and helpers ------------------------------------------------------

VmsArg = Annotated[list[str] | None, typer.Argument(
    metavar="VM", help="VM names or globs (default: every VM).",
    autocompletion=completers.typer_callback("vms"), show_default=False,
)]
AllOpt = Annotated[bool, typer.Option("--all", "-a", help="Every VM in the inventory.")]
FormatOpt = Annotated[Format | None, typer.Option(
    "--format", "-f", case_sensitive=False, help="Output format (default: table).",
    show_default=False,
)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Shorthand for --format json.")]


def _format(fmt: Format | None, as_json: bool) -> Format:
    """The output format of --format and its --json shorthand.

    Raises:
        UsageError: both were given, and they disagree.
    """
    if as_json and fmt not in (None, Format.JSON):
        raise UsageError(f"--json and --format {fmt.value} conflict")
    return Format.JSON if as_json else fmt or Format.TABLE


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def _out(text: str) -> None:
    if not text:
        return
    try:
        print(text, flush=True)
    except BrokenPipeError:
        # the reader went away (`| head`): stop quietly, as a pipeline expects
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(int(ExitCode.OK)) from None


def _exit(code: ExitCode) -> None:
    if code is not ExitCode.OK:
        raise typer.Exit(int(code))


def _error_line(message: str, vm: str | None, kind: str, ref: VmRef | None = None) -> None:
    """One stderr line for a VM's failure; a busy socket owned by libvirt says so."""
    if vm is not None and not message.startswith(f"{vm}: "):
        message = f"{vm}: {message}"
    if kind == SocketBusy.__name__:
        if ref is None and vm is not None:
            with contextlib.suppress(BalloonError):
                ref = _STATE.inventory().get(vm)
        advice = busy_advice(ref) if ref is not None else None
        if advice:
            message = f"{message}; {advice}"
    error(message)


def report_error(exc: BalloonError, ref: VmRef | None = None) -> None:
    kind = SocketBusy.__name__ if isinstance(exc, SocketBusy) else type(exc).__name__
    _error_line(exc.message, exc.vm, kind, ref)


def _report(results: Mapping[str, object], refs: Sequence[VmRef]) -> ExitCode:
    """Print one error line per failed VM; the combined exit code."""
    by_name = {r.name: r for r in refs}
    codes: list[ExitCode] = []
    for name, result in results.items():
        if isinstance(result, BalloonError):
            report_error(result.with_vm(name), by_name.get(name))
            codes.append(exit_code_for(result))
        else:
            codes.append(ExitCode.OK)
    return combine(codes)


def _report_states(states: Sequence[BalloonState], refs: Sequence[VmRef]) -> ExitCode:
    """Unreachable VMs in snapshots are failures (one stderr line each)."""
    by_name = {r.name: r for r in refs}
    codes: list[ExitCode] = []
    for s in states:
        if s.reachable:
            codes.append(ExitCode.OK)
            continue
        kind = s.error_kind or "ConnectFailed"
        _error_line(s.error or "unreachable", s.name, kind, by_name.get(s.name))
        codes.append(exit_code_for(kind))
    return combine(codes)


async def _each(
    refs: Sequence[VmRef], fn: Callable[[BalloonClient], Awaitable[T]], *, hold: bool = False,
) -> dict[str, T | BalloonError]:
    fleet = _STATE.fleet(refs, hold=hold)
    try:
        return await fleet.run_each([r.name for r in refs], fn)
    finally:
        await fleet.close()


async def _snapshot(refs: Sequence[VmRef]) -> list[BalloonState]:
    fleet = _STATE.fleet(refs)
    try:
        return await fleet.snapshot()
    finally:
        await fleet.close()


def _is_tty() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


# ---- status --------------------------------------------------------------------------------


@app.command()
def status(
    vms: VmsArg = None,
    all_vms: AllOpt = False,
    fmt: FormatOpt = None,
    as_json: JsonOpt = False,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Refresh in place.")] = False,
    interval: Annotated[str, typer.Option(
        "--interval", "-n", metavar="DURATION", help="Refresh interval with --watch.",
    )] = "2s",
    count: Annotated[int | None, typer.Option(
        "--count", metavar="N", help="With --watch, stop after N refreshes.",
    )] = None,
) -> None:
    """A table of every selected VM's balloon: actual, RAM, target, free, cached, hint."""
    fmt = _format(fmt, as_json)
    every = _duration(interval, "--interval") or 2.0
    services = _STATE.services()
    if services is not None:
        from balloonctl.cli.remote import remote_states

        async def through_service() -> AsyncIterator[list[BalloonState]]:
            while True:
                yield await remote_states(services, vms or [], all_vms)
                await asyncio.sleep(every)
    refs = [] if services is not None else _STATE.select(vms or [], all_vms=all_vms)
    if not watch and services is not None:
        states = _run(remote_states(services, vms or [], all_vms))
        _out(render_states(states, fmt))
        _exit(_report_states(states, refs))
        return
    if not watch:
        states = _run(_snapshot(refs))
        _out(render_states(states, fmt))
        _exit(_report_states(states, refs))
        return

    async def loop() -> None:
        fleet = _STATE.fleet(refs)
        tty = _is_tty() and fmt is Format.TABLE
        n = 0
        try:
            stream = fleet.stream(every) if services is None else through_service()
            async for states in stream:
                text = render_states(states, fmt, csv_header=n == 0)
                if tty:
                    stamp = time.strftime("%H:%M:%S")
                    text = f"\x1b[H\x1b[2J{stamp}  every {format_duration(every)}\n{text}"
                elif fmt is Format.TABLE and n:
                    text = "\n" + text
                _out(text)
                n += 1
                if count is not None and n >= count:
                    return
        finally:
            await fleet.close()

    try:
        _run(loop())
    except KeyboardInterrupt:
        pass


# ---- set -----------------------------------------------------------------------------------


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


def _split_set_args(args: Sequence[str], all_vms: bool) -> tuple[list[str], str]:
    for a in args:
        if a.startswith("--"):
            raise UsageError(f"no such option: {a}")
    if all_vms:
        if len(args) != 1:
            raise UsageError("with --all, give only the SIZE")
        return [], args[0]
    if len(args) < 2:
        raise UsageError("expected VM... SIZE (e.g. balloonctl set web-1 1.5G)")
    return list(args[:-1]), args[-1]


@app.command(
    "set",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": True},
)
def set_(
    targets: Annotated[list[str], typer.Argument(
        metavar="VM... SIZE",
        help="VM names or globs, then the target: 1.5G, 2GB, 75% (of guest RAM), "
             "+256M or -256M (relative to the current target).",
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
        "--dry-run", "-n", help="Print the QMP command that would be sent; send nothing.",
    )] = False,
) -> None:
    """Set the balloon target of one or more VMs."""
    names, size_text = _split_set_args(targets, all_vms)
    spec = parse_target(size_text)
    wait_for = _duration(timeout, "--timeout") or 60.0
    services = _STATE.services()
    if services is not None:
        from balloonctl.cli.remote_cmds import set_through_service

        results = _run(set_through_service(services, names, all_vms, spec, force=force,
                                           dry_run=dry_run, wait=wait_for if wait else None))
        for r in results.values():
            if isinstance(r, str):
                _out(r)
        _exit(_report(results, []))
        return
    refs = _STATE.select(names, all_vms=all_vms)
    progress = _Progress([r.name for r in refs])

    async def one(c: BalloonClient) -> str:
        before = await c.query_actual()
        target = await c.set_target(spec, force=force, dry_run=dry_run)
        if dry_run:
            sent = json.dumps({"execute": "balloon", "arguments": {"value": target}})
            return f"{c.name}: would send {sent} ({format_size(target)})"
        if not wait:
            return f"{c.name}: target {format_size(target)} (actual {format_size(before)})"
        started = time.monotonic()
        final = await c.wait_for_target(target, timeout=wait_for,
                                        progress=progress.callback(c.name))
        took = time.monotonic() - started
        return f"{c.name}: reached {format_size(final)} (target {format_size(target)}) " \
               f"in {took:.1f}s"

    try:
        results = _run(_each(refs, one))
    finally:
        progress.done()
    for r in results.values():
        if isinstance(r, str):
            _out(r)
    _exit(_report(results, refs))


# ---- hint ----------------------------------------------------------------------------------

_HINT_ACTIONS = ("on", "off", "status")


def _hint_record(name: str, h: HintState) -> dict[str, Any]:
    # the same keys as BalloonState.to_json() uses for the hint
    return {"name": name, "hint_mode": h.mode.value, "hint_enabled": h.enabled,
            "hint_detail": h.detail, "hint_released": h.released}


def _hint_line(name: str, h: HintState) -> str:
    if h.mode is HintMode.UNSUPPORTED:
        return f"{name}: hint unsupported ({h.detail})"
    state = "on" if h.enabled else "off"
    return f"{name}: hint {state} ({h.mode.value} mode: {h.detail})"


@app.command()
def hint(
    hint_args: Annotated[list[str], typer.Argument(
        metavar="VM... [on|off|status]",
        help="VM names or globs, then on, off or status (the default).",
        autocompletion=completers.typer_callback("hint_args"), show_default=False,
    )],
    all_vms: AllOpt = False,
    fmt: FormatOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Turn the cache-first hint on or off, or show it (device, agent or unsupported mode)."""
    fmt = _format(fmt, as_json)
    args = list(hint_args)
    action = "status"
    if args and args[-1] in _HINT_ACTIONS:
        action = args.pop()
    elif (len(args) > 1 or all_vms) and not _STATE.inventory().matches(args[-1]):
        # `hint vm1 maybe`: a misspelt action, not a VM called 'maybe'
        raise UsageError(f"expected on, off or status as the last word, got {args[-1]!r}")
    if not args and not all_vms:
        raise UsageError("expected VM... [on|off|status]")
    services = _STATE.services()
    refs = [] if services is not None else _STATE.select(args, all_vms=all_vms)

    async def one(c: BalloonClient) -> HintState:
        if action == "status":
            return await c.hint_status()
        return await c.set_hint(action == "on")

    if services is not None:
        from balloonctl.cli.remote_cmds import hint_through_service

        results: Mapping[str, HintState | BalloonError] = _run(
            hint_through_service(services, args, all_vms, action))
    else:
        results = _run(_each(refs, one))
    ok = {n: h for n, h in results.items() if isinstance(h, HintState)}
    if fmt is Format.TABLE:
        _out("\n".join(_hint_line(n, h) for n, h in ok.items()))
    else:
        records = [_hint_record(n, h) for n, h in ok.items()]
        _out(render_records(records, fmt, keys=list(_hint_record("", HintState()))))
    _exit(_report(results, refs))


# ---- stats ---------------------------------------------------------------------------------


@app.command()
def stats(
    vms: VmsArg = None,
    all_vms: AllOpt = False,
    interval: Annotated[int, typer.Option(
        "--interval", "-i", min=0, metavar="SECONDS",
        help="Guest stats polling interval in seconds (0 turns polling off).",
    )] = 2,
) -> None:
    """Turn on the guest's memory statistics (the balloon's stats polling)."""
    if not vms and not all_vms:
        raise UsageError("name the VMs (or --all)")
    refs = _STATE.select(vms or [], all_vms=all_vms)

    async def one(c: BalloonClient) -> str:
        await c.enable_stats(interval)
        if interval == 0:
            return f"{c.name}: guest stats polling off"
        return f"{c.name}: guest stats every {interval}s"

    results = _run(_each(refs, one))
    _out("\n".join(r for r in results.values() if isinstance(r, str)))
    _exit(_report(results, refs))


# ---- preflight -----------------------------------------------------------------------------


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

    trace = _STATE.trace if _STATE.verbose else None
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


@app.command()
def preflight(
    vms: VmsArg = None,
    all_vms: AllOpt = False,
    fmt: FormatOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Check that ballooning will work: driver, stats, device features, guest agent, hint."""
    fmt = _format(fmt, as_json)
    refs = _STATE.select(vms or [], all_vms=all_vms)
    timeout = _STATE.timeout or 5.0

    async def gather() -> tuple[list[BalloonState], list[list[Check]]]:
        states = await _snapshot(refs)
        agents = await asyncio.gather(*(_agent_checks(r, timeout) for r in refs))
        return states, list(agents)

    states, agents = _run(gather())
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
        _out(render_records(flat, fmt, keys=["name", "check", "result", "detail"]))
    else:
        _out(render_records(records, fmt, headers=["NAME", "CHECK", "RESULT", "DETAIL"],
                            rows=rows))
    _exit(combine(codes))


# ---- watch ---------------------------------------------------------------------------------


class WatchFormat(enum.StrEnum):
    NDJSON = "ndjson"
    CSV = "csv"


def _event_record(vm: str, name: str, data: Mapping[str, Any], ts: float) -> dict[str, Any]:
    from balloonctl.fleet import CONNECTED, DISCONNECTED

    label = {CONNECTED: "CONNECTED", DISCONNECTED: "DISCONNECTED"}.get(name, name)
    record: dict[str, Any] = {"event": label, "name": vm, "timestamp": round(ts, 6)}
    if name != CONNECTED:
        record["data"] = json.loads(json.dumps(dict(data), default=str))
    return record


@app.command()
def watch(
    vms: VmsArg = None,
    all_vms: AllOpt = False,
    fmt: Annotated[WatchFormat, typer.Option(
        "--format", "-f", case_sensitive=False, help="ndjson (with events) or csv.",
    )] = WatchFormat.NDJSON,
    interval: Annotated[str, typer.Option(
        "--interval", "-n", metavar="DURATION", help="Time between snapshots.",
    )] = "2s",
    count: Annotated[int | None, typer.Option(
        "--count", metavar="N", help="Stop after N rounds of snapshots.",
    )] = None,
    events: Annotated[bool, typer.Option(
        "--events/--no-events",
        help="Hold the QMP sockets open and print BALLOON_CHANGE and other QMP events "
             "(ndjson only). --no-events polls politely, leaving the sockets free between polls.",
    )] = True,
) -> None:
    """A stream of snapshots, one line per VM, for piping (NDJSON or CSV)."""
    every = _duration(interval, "--interval") or 2.0
    refs = _STATE.select(vms or [], all_vms=all_vms)
    as_csv = fmt is WatchFormat.CSV
    hold = events and not as_csv

    async def loop() -> None:
        fleet = _STATE.fleet(refs, hold=hold)

        async def pump_events() -> None:
            async for vm, ev in fleet.events():
                _out(json.dumps(_event_record(vm, ev.name, ev.data, ev.timestamp),
                                separators=(",", ":")))

        pump = asyncio.create_task(pump_events()) if hold else None
        n = 0
        try:
            async for states in fleet.stream(every):
                _out(render_states(states, Format.CSV if as_csv else Format.NDJSON,
                                   csv_header=n == 0))
                n += 1
                if count is not None and n >= count:
                    return
        finally:
            if pump is not None:
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError, BalloonError):
                    await pump
            await fleet.close()

    try:
        _run(loop())
    except KeyboardInterrupt:
        pass


# ---- wave ----------------------------------------------------------------------------------


@app.command()
def wave(
    vm: Annotated[str, typer.Argument(
        metavar="VM", help="The VM to balloon up and down.",
        autocompletion=completers.typer_callback("vm"), show_default=False,
    )],
    minimum: Annotated[str, typer.Option(
        "--min", metavar="SIZE", help="The bottom of the wave.",
        autocompletion=completers.typer_callback("minimum"),
    )] = "500M",
    maximum: Annotated[str, typer.Option(
        "--max", metavar="SIZE", help="The top of the wave (and where it starts).",
        autocompletion=completers.typer_callback("maximum"),
    )] = "1500M",
    period: Annotated[str, typer.Option(
        "--period", "-p", metavar="DURATION", help="One full cycle, top to top.",
    )] = "60s",
    step: Annotated[str | None, typer.Option(
        "--step", metavar="DURATION", help="Time between targets (default: period/20).",
    )] = None,
    cycles: Annotated[int | None, typer.Option(
        "--cycles", "-c", min=1, metavar="N", help="Stop after N cycles (default: forever).",
    )] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Allow --min below the VM's safe floor.",
    )] = False,
    fmt: FormatOpt = None,
    as_json: JsonOpt = False,
    speed: Annotated[float, typer.Option("--speed", hidden=True, min=0.001)] = 1.0,
) -> None:
    """Balloon a VM up and down along a triangular wave (the RFC's first experiment),
    printing each step. Ctrl-C restores the original target."""
    from balloonctl.cli.wave import ScaledClock, Terminated, WaveStep, cancel_on_sigterm, run_wave
    from balloonctl.wave import check_wave

    fmt = _format(fmt, as_json)
    low, high = parse_size(minimum), parse_size(maximum)
    cycle = _duration(period, "--period") or 60.0
    every = _duration(step, "--step") or cycle / 20
    check_wave(minimum=low, maximum=high, period=cycle, step=every)
    ref = _STATE.inventory().select_one(vm, command="wave")
    steps: list[dict[str, Any]] = []

    def emit(s: WaveStep) -> None:
        record = {"name": ref.name, "t": round(s.t, 3), "target": s.target, "actual": s.actual,
                  "restore": s.restore}
        steps.append(record)
        if fmt is Format.TABLE:
            if len(steps) == 1:
                _out(f"{'T':>8}  {'TARGET':>7}  {'ACTUAL':>7}  NOTE".rstrip())
            note_ = "restored the original target" if s.restore else ""
            _out(f"{s.t:7.1f}s  {size(s.target):>7}  {size(s.actual):>7}  {note_}".rstrip())
        elif fmt is Format.NDJSON:
            _out(json.dumps(record, separators=(",", ":")))
        elif fmt is Format.CSV:
            _out(render_records([record], fmt, csv_header=len(steps) == 1))

    async def go() -> None:
        async with _STATE.client(ref) as c:
            await c.resolve_target(low, force=force)
            await c.resolve_target(high, force=force)
            original = await c.current_target() or await c.query_actual()
            await run_wave(c, original=original, minimum=low, maximum=high, period=cycle,
                           step=every, cycles=cycles, clock=ScaledClock(speed), emit=emit,
                           force=force)

    try:
        # SIGTERM ends the wave as Ctrl-C does: the original target is set again first
        _run(cancel_on_sigterm(go()))
    except Terminated:
        raise typer.Exit(int(ExitCode.TERMINATED)) from None
    finally:
        if fmt is Format.JSON:
            _out(render_records(steps, fmt))


# ---- fake, demo, dashboard ------------------------------------------------------------------


class Workload(enum.StrEnum):
    """The fake guest's workloads (``balloonctl.fake.WORKLOADS``), or none."""

    NONE = "none"
    IDLE = "idle"
    COMPILE = "compile"

    def fake_name(self) -> str | None:
        """The name ``balloonctl.fake`` knows it by."""
        return None if self is Workload.NONE else self.value


VmCountOpt = Annotated[int, typer.Option("--vms", min=1, max=256, help="How many VMs.")]
MemOpt = Annotated[str, typer.Option(
    "--mem", metavar="SIZE", help="Guest RAM of each VM.",
    autocompletion=completers.typer_callback("mem"),
)]
WorkloadOpt = Annotated[Workload, typer.Option(
    "--workload", case_sensitive=False, help="The simulated guest workload.",
)]


@app.command()
def fake(
    vms: VmCountOpt = 3,
    mem: MemOpt = "2G",
    directory: Annotated[Path | None, typer.Option(
        "--dir", metavar="DIR", help="Where to put the sockets (default: a new temp dir).",
    )] = None,
    workload: WorkloadOpt = Workload.NONE,
    prefix: Annotated[str, typer.Option("--prefix", help="VM name prefix.")] = "vm",
    hint_device: Annotated[bool, typer.Option(
        "--hint-device",
        help="Give every balloon device the reclaim-cache-first property (hint device mode).",
    )] = False,
    no_agent: Annotated[bool, typer.Option(
        "--no-agent", help="Serve no guest agent (hint unsupported unless --hint-device).",
    )] = False,
    no_driver: Annotated[list[str] | None, typer.Option(
        "--no-driver", metavar="NAME", show_default=False,
        help="This VM's guest has no balloon driver loaded (repeatable).",
    )] = None,
    no_balloon: Annotated[list[str] | None, typer.Option(
        "--no-balloon", metavar="NAME", show_default=False,
        help="This VM has no virtio-balloon device (repeatable).",
    )] = None,
    host_mem: Annotated[str | None, typer.Option(
        "--host-mem", metavar="SIZE", show_default=False,
        help="Simulate a host with this much RAM (its figures in DIR/host; default: none).",
        autocompletion=completers.typer_callback("host_mem"),
    )] = None,
) -> None:
    """Run a simulated fleet (fake QEMU + guest agent per VM) until interrupted.

    Prints one line per VM when ready: NAME qmp=PATH qga=PATH.
    """
    import tempfile

    from balloonctl.fake import run_fleet_forever

    ram = parse_size(mem)
    overrides: dict[str, dict[str, Any]] = {}
    for name in no_driver or []:
        overrides.setdefault(name, {})["driver"] = False
    for name in no_balloon or []:
        overrides.setdefault(name, {})["balloon"] = False
    where = directory or Path(tempfile.mkdtemp(prefix="balloonctl-fake-"))
    try:
        where.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--dir {where}: cannot use it: {exc.strerror or exc}") from None

    def ready(_: object) -> None:
        note(f"serving {vms} fake VMs in {where} until Ctrl-C; "
             f"try: BALLOONCTL_DIR={where} balloonctl status")

    try:
        _run(run_fleet_forever(vms, ram, where, workload.fake_name(), out=sys.stdout,
                               ready=ready, prefix=prefix, overrides=overrides,
                               hint_device=hint_device, agent=not no_agent,
                               host_mem=None if host_mem is None else parse_size(host_mem)))
    except ValueError as exc:  # the fake refuses what it cannot simulate (--mem 1)
        raise UsageError(f"cannot simulate that fleet: {exc}") from None
    except OSError as exc:  # includes a socket another fake or QEMU serves
        raise UsageError(f"cannot serve fake VMs in {where}: {exc.strerror or exc}") from None
    except KeyboardInterrupt:
        pass
    note("fake fleet stopped")


def _open_dashboard(refs: Sequence[VmRef], *, hold: bool, **opts: Any) -> None:
    _run_dashboard(_STATE.fleet(refs, hold=hold), **opts)


def _run_dashboard(source: Any, *, remote: bool = False, **opts: Any) -> None:
    try:
        from tui.app import run_dashboard
    except ImportError as exc:
        raise BalloonError(f"the dashboard is not available: {exc}") from None
    if remote:
        opts["meminfo"] = None  # each host's memory comes from its service
    run_dashboard(source, **opts)


@app.command()
def dashboard(
    vms: VmsArg = None,
    all_vms: AllOpt = False,
    hold: Annotated[bool, typer.Option(
        "--hold/--polite",
        help="Keep the QMP sockets open (live events) or reconnect for every poll.",
    )] = False,
    interval: Annotated[str, typer.Option(
        "--interval", "-n", metavar="DURATION", help="Refresh interval.",
    )] = "1s",
    step_size: Annotated[str, typer.Option(
        "--step", metavar="SIZE", help="How much one +/- key press moves a target.",
        autocompletion=completers.typer_callback("step_size"),
    )] = "128M",
) -> None:
    """Open the live dashboard on the selected VMs (alias: top); with --host, on every VM
    of those balloonctl serve instances (a row per VM, a line per host)."""
    every = _duration(interval, "--interval") or 1.0
    services = _STATE.services()
    if services is not None:
        from balloonctl.cli.hosts_cmd import multi_host

        _run_dashboard(multi_host(services), remote=True, interval=every,
                       step=parse_size(step_size))
        return
    _open_dashboard(_STATE.select(vms or [], all_vms=all_vms), hold=hold, interval=every,
                    step=parse_size(step_size))


app.command("top", help="Open the live dashboard on the selected VMs (alias of dashboard).")(
    dashboard
)


@app.command()
def demo(
    vms: VmCountOpt = 6,
    mem: MemOpt = "2G",
    workload: WorkloadOpt = Workload.COMPILE,
    once: Annotated[bool, typer.Option(
        "--once", "--no-tui",
        help="Print one status table of the simulated fleet and exit (no terminal needed).",
    )] = False,
    fmt: FormatOpt = None,
    as_json: JsonOpt = False,
    hosts: Annotated[int, typer.Option(
        "--hosts", min=1, max=8, metavar="N",
        help="Simulate N hosts, each with its own balloonctl serve: the multi-host view.",
    )] = 1,
) -> None:
    """Start six simulated 2 GiB VMs running a compile workload and open the dashboard."""
    import tempfile

    if hosts > 1:
        from balloonctl.cli.hosts_cmd import demo_hosts

        states = demo_hosts(
            hosts, vms=vms, ram=parse_size(mem), workload=workload.fake_name(), once=once,
            render=lambda states: _out(render_states(states, _format(fmt, as_json))),
            open_dashboard=lambda source: _run_dashboard(source, remote=True,
                                                         stats_interval=1))
        if once:
            _exit(_report_states(states, []))
        return

    from balloonctl.config import scan_dir
    from balloonctl.fake import FakeFleet, run_in_thread
    from balloonctl.store import private_state

    ram = parse_size(mem)
    fmt = _format(fmt, as_json)
    with (tempfile.TemporaryDirectory(prefix="balloonctl-demo-") as tmp,
          private_state(Path(tmp) / "state.json")):
        fleet = FakeFleet(vms, Path(tmp), ram=ram, workload=workload.fake_name())
        with run_in_thread(fleet):
            refs = scan_dir(tmp)

            async def prepare() -> list[BalloonState]:
                async def enable(c: BalloonClient) -> None:
                    await c.enable_stats(1)

                await _each(refs, enable)
                return await _snapshot(refs)

            states = _run(prepare())
            if once:
                _out(render_states(states, fmt))
                _exit(_report_states(states, refs))
                return
            _open_dashboard(refs, hold=False, stats_interval=1)


# ---- completion ----------------------------------------------------------------------------


class Shell(enum.StrEnum):
    BASH = "bash"
    ZSH = "zsh"
    FISH = "fish"


@app.command()
def completion(
    shell: Annotated[Shell | None, typer.Argument(
        help="bash, zsh or fish.", show_default=False,
    )] = None,
    regen: Annotated[bool, typer.Option("--regen-spec", hidden=True)] = False,
) -> None:
    """Print the shell completion script (see docs/cli.md to install it)."""
    from balloonctl.cli import scripts

    if regen:  # developers: after changing commands or options
        from balloonctl.cli import spec

        for path in spec.regenerate():
            note(f"wrote {path}")
        return
    if shell is None:
        raise UsageError("name the shell: bash, zsh or fish")
    sys.stdout.write(scripts.script(shell.value))


def _register_more() -> None:
    from balloonctl.cli import serve_cmd

    serve_cmd.register(app)


_register_more()


def run() -> None:
    """The console script's entry point."""
    app(prog_name="balloonctl")
