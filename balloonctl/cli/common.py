"""What every command shares: the global settings, the common option types, output and the
one place that turns per-VM results into stderr lines and an exit code.

Commands only parse, call the library and render (see ``app`` for how they are wired).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from balloonctl.cli import completers
from balloonctl.cli.exitcodes import ExitCode, combine, exit_code_for
from balloonctl.cli.output import Format, error
from balloonctl.config import Inventory, busy_advice
from balloonctl.errors import BalloonError, SocketBusy, UsageError
from balloonctl.model import BalloonState, TargetChange, VmRef
from balloonctl.text import escape_text
from balloonctl.units import parse_duration

if TYPE_CHECKING:
    from balloonctl.backend import VmClient
    from balloonctl.cli.remote import Endpoint
    from balloonctl.fleet import Fleet

__all__ = [
    "AllOpt",
    "FormatOpt",
    "JsonOpt",
    "Settings",
    "StdoutClosed",
    "VmsArg",
    "duration",
    "each",
    "error_line",
    "exit_with",
    "is_tty",
    "out",
    "out_lines",
    "output_format",
    "report",
    "report_error",
    "report_states",
    "run",
    "set_settings",
    "settings",
    "silence_stdout",
    "snapshot",
    "watching_stdout",
]

T = TypeVar("T")


@dataclass
class Settings:
    """The global options, and what the commands build from them."""

    qmp: list[str] = field(default_factory=list)
    libvirt: list[str] = field(default_factory=list)
    qga: str | None = None
    directory: str | None = None
    config: Path | None = None
    timeout: float | None = None
    verbose: bool = False
    journal: str | None = None  # --journal
    recorder: Callable[[TargetChange], None] | None = None  # journals targets sent (set...)
    hosts: list[str] = field(default_factory=list)  # --host URL: balloonctl serve instances
    _inventory: Inventory | None = None

    def services(self) -> list[Endpoint] | None:
        """The balloonctl serve instances to go through (None: talk QMP directly).

        Raises:
            UsageError: a bad ``--host`` URL, ``$BALLOONCTL_TOKEN``, config or configured
                token (the config's ``[hosts]`` gives a ``--host`` its token).
        """
        from balloonctl.cli.remote import endpoints
        from balloonctl.settings import load_config

        return endpoints(self.hosts, direct=bool(self.qmp or self.directory),
                         config=lambda: load_config(self.config))

    def inventory(self) -> Inventory:
        if self._inventory is None:
            self._inventory = Inventory.load(
                qmp=self.qmp, qga=self.qga, directory=self.directory, config=self.config,
                libvirt=self.libvirt,
            )
        return self._inventory

    def single(self) -> VmRef | None:
        """The VM of the one ``--qmp`` given, when exactly one was: commands act on it
        without its name being repeated (``balloonctl --qmp /run/vm.qmp set 512M``)."""
        if len(self.qmp) != 1:
            return None
        given = [r for r in self.inventory().refs if r.source == "cli"]
        return given[0] if len(given) == 1 else None

    def select(self, patterns: Sequence[str], *, all_vms: bool = False) -> list[VmRef]:
        """The VMs named (names or globs); none named: every VM (what a command that shows
        VMs wants).

        Raises:
            UnknownVM: see ``Inventory.select``.
        """
        return self.inventory().select(patterns, all_vms=all_vms)

    def select_to_change(self, patterns: Sequence[str], *, all_vms: bool,
                         what: str) -> list[VmRef]:
        """The VMs a command that changes them acts on: those named, every VM with
        ``--all``, else the one ``--qmp`` VM; never every VM by default.

        Raises:
            UsageError: no VM named, no ``--all``, not exactly one ``--qmp`` (``what`` says
                what the command would do).
            UnknownVM: see ``Inventory.select``.
        """
        if patterns or all_vms:
            return self.select(patterns, all_vms=all_vms)
        one = self.single()
        if one is None:
            raise UsageError(f"name the VMs to {what} (or --all)")
        return [one]

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
        budget = self.timeout if self.timeout is not None else (
            self.inventory().config.defaults.timeout)
        return Fleet(refs, store=FileStore(), hold=hold, connect_timeout=connect,
                     command_timeout=command, trace=self.trace if self.verbose else None,
                     recorder=self.recorder, budget=budget)

    def client(self, ref: VmRef) -> VmClient:
        from balloonctl.backend import client_for
        from balloonctl.store import FileStore

        connect, command = self._timeouts()
        return client_for(ref, store=FileStore(), connect_timeout=connect,
                          command_timeout=command, trace=self.trace if self.verbose else None,
                          recorder=self.recorder)


_STATE = Settings()


def settings() -> Settings:
    """The global options of this invocation (set by the ``app`` callback)."""
    return _STATE


def set_settings(new: Settings) -> None:
    global _STATE
    _STATE = new


def duration(text: str | None, what: str) -> float | None:
    """``text`` as seconds, ``None`` for ``None``.

    Raises:
        UsageError: not a duration; the message starts with ``what`` (the option).
    """
    if text is None:
        return None
    try:
        return parse_duration(text)
    except BalloonError as exc:
        raise UsageError(f"{what}: {exc}") from None


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


def output_format(fmt: Format | None, as_json: bool) -> Format:
    """The output format of --format and its --json shorthand.

    Raises:
        UsageError: both were given, and they disagree.
    """
    if as_json and fmt not in (None, Format.JSON):
        raise UsageError(f"--json and --format {fmt.value} conflict")
    return Format.JSON if as_json else fmt or Format.TABLE


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


class StdoutClosed(Exception):
    """The reader of stdout went away (``| head -1``): the command stops, and exits 0 as a
    pipeline expects (``group.BalloonGroup``)."""


def silence_stdout() -> None:
    """Point stdout at /dev/null, so nothing later (a final step, the interpreter's flush at
    exit) fails on the closed pipe."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def out(text: str) -> None:
    """Print ``text`` (a line or several) on stdout, flushed.

    Raises:
        StdoutClosed: the reader went away; stdout now goes to /dev/null.
    """
    if not text:
        return
    try:
        print(text, flush=True)
    except BrokenPipeError:
        silence_stdout()
        raise StdoutClosed("stdout closed") from None


def out_lines(lines: Iterable[str]) -> None:
    """Print human lines that carry names or text from outside (VM names, socket paths,
    reasons), each with its control characters escaped, so a name cannot drive the
    terminal. Raises: StdoutClosed (as ``out``)."""
    out("\n".join(escape_text(line) for line in lines))


def _stdout_pipe() -> int | None:
    """stdout's descriptor when it is a pipe (whose reader can go away), else None."""
    try:
        fd = sys.stdout.fileno()
        return fd if stat.S_ISFIFO(os.fstat(fd).st_mode) else None
    except (OSError, ValueError, AttributeError):
        return None


async def watching_stdout(work: Awaitable[T]) -> T:
    """Await ``work``, a long-running command; when stdout is a pipe whose reader goes away
    meanwhile (``| head -1``), cancel it at once (its ``finally`` blocks run: sockets close,
    ``wave`` restores) instead of at the next write, then raise ``StdoutClosed``.

    Raises:
        StdoutClosed: the reader went away.
    """
    fd = _stdout_pipe()
    task = asyncio.current_task()
    if fd is None or task is None:
        return await work
    loop = asyncio.get_running_loop()
    closed: list[bool] = []

    def on_closed() -> None:
        # epoll reports EPOLLERR on a pipe's write end once no reader is left
        loop.remove_reader(fd)
        closed.append(True)
        task.cancel()

    loop.add_reader(fd, on_closed)
    try:
        return await work
    except asyncio.CancelledError:
        if not closed:
            raise
        task.uncancel()
        silence_stdout()
        raise StdoutClosed("stdout closed") from None
    finally:
        if not closed:
            loop.remove_reader(fd)


def exit_with(code: ExitCode) -> None:
    if code is not ExitCode.OK:
        raise typer.Exit(int(code))


def error_line(message: str, vm: str | None, kind: str, ref: VmRef | None = None) -> None:
    """One stderr line for a VM's failure; a busy socket owned by libvirt says so."""
    if vm is not None and not message.startswith(f"{vm}: "):
        message = f"{vm}: {message}"
    if kind == SocketBusy.__name__:
        if ref is None and vm is not None:
            with contextlib.suppress(BalloonError):
                ref = settings().inventory().get(vm)
        advice = busy_advice(ref) if ref is not None else None
        if advice:
            message = f"{message}; {advice}"
    error(message)


def report_error(exc: BalloonError, ref: VmRef | None = None) -> None:
    kind = SocketBusy.__name__ if isinstance(exc, SocketBusy) else type(exc).__name__
    path = getattr(exc, "path", None)  # a JournalError names its file
    message = f"journal {path}: {exc.message}" if kind == "JournalError" and path else \
        exc.message
    error_line(message, exc.vm, kind, ref)


def report(results: Mapping[str, object], refs: Sequence[VmRef]) -> ExitCode:
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


def report_states(states: Sequence[BalloonState], refs: Sequence[VmRef]) -> ExitCode:
    """Unreachable VMs and VMs in the error state are failures (one stderr line each)."""
    by_name = {r.name: r for r in refs}
    codes: list[ExitCode] = []
    for s in states:
        if not s.failed:
            codes.append(ExitCode.OK)
            continue
        kind = s.error_kind or "ConnectFailed"
        error_line(s.error or "unreachable", s.name, kind, by_name.get(s.name))
        codes.append(exit_code_for(kind))
    return combine(codes)


async def each(
    refs: Sequence[VmRef], fn: Callable[[VmClient], Awaitable[T]], *, hold: bool = False,
) -> dict[str, T | BalloonError]:
    fleet = settings().fleet(refs, hold=hold)
    try:
        return await fleet.run_each([r.name for r in refs], fn)
    finally:
        await fleet.close()


async def snapshot(refs: Sequence[VmRef]) -> list[BalloonState]:
    fleet = settings().fleet(refs)
    try:
        return await fleet.snapshot()
    finally:
        await fleet.close()


def is_tty() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False

