"""``balloonctl fake`` and ``balloonctl demo``: a simulated fleet, served until interrupted
or shown once (or in the dashboard)."""

from __future__ import annotations

import contextlib
import enum
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from balloonctl.cli import completers
from balloonctl.cli.common import (
    FormatOpt,
    JsonOpt,
    each,
    exit_with,
    out,
    output_format,
    report_states,
    run,
    settings,
    snapshot,
)
from balloonctl.cli.dashboard import open_dashboard
from balloonctl.cli.output import note, render_states
from balloonctl.errors import UsageError
from balloonctl.model import BalloonState
from balloonctl.text import escape_text
from balloonctl.units import parse_size

if TYPE_CHECKING:
    from balloonctl.backend import VmClient
    from balloonctl.fake import FakeFleet

__all__ = ["Workload", "demo", "fake"]


class Workload(enum.StrEnum):
    """The fake guest's workloads (``balloonctl.fake.WORKLOADS``), or none."""

    NONE = "none"
    IDLE = "idle"
    COMPILE = "compile"

    def fake_name(self) -> str | None:
        """The name ``balloonctl.fake`` knows it by."""
        return None if self is Workload.NONE else self.value


VmCountOpt = Annotated[int, typer.Option(
    "--vms", min=1, max=256, metavar="N", help="How many VMs.",
)]
MemOpt = Annotated[str, typer.Option(
    "--mem", metavar="SIZE", help="Guest RAM of each VM.",
    autocompletion=completers.typer_callback("mem"),
)]
WorkloadOpt = Annotated[Workload, typer.Option(
    "--workload", case_sensitive=False, help="The simulated guest workload.",
)]


def fake(
    vms: VmCountOpt = 3,
    mem: MemOpt = "2G",
    directory: Annotated[Path | None, typer.Option(
        "--dir", metavar="DIR", help="Where to put the sockets (default: a new temp dir).",
    )] = None,
    workload: WorkloadOpt = Workload.NONE,
    prefix: Annotated[str, typer.Option(
        "--prefix", metavar="PREFIX", help="VM name prefix.",
    )] = "vm",
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
    from balloonctl.fake import SERVED_STATS_INTERVAL, FakeFleet, socket_dir
    from balloonctl.fake.paths import name_problem

    ram = parse_size(mem)
    host_ram = None if host_mem is None else parse_size(host_mem)
    problem = name_problem(prefix)
    if problem is not None:  # stricter than FakeVM, which serves hostile names for tests
        raise UsageError(f"--prefix '{escape_text(prefix)}' {problem} "
                         "(VM names are socket file names in --dir)")
    overrides: dict[str, dict[str, Any]] = {}
    for name in no_driver or []:
        overrides.setdefault(name, {})["driver"] = False
    for name in no_balloon or []:
        overrides.setdefault(name, {})["balloon"] = False

    def make(where: Path) -> FakeFleet:
        with _refusals("--dir"):
            return FakeFleet(vms, where, ram=ram, workload=workload.fake_name(),
                             prefix=prefix, overrides=overrides, hint_device=hint_device,
                             agent=not no_agent, host_mem=host_ram,
                             stats_interval=SERVED_STATS_INTERVAL)

    try:
        # with --dir, the fleet is checked before the directory is created; a temp dir (or
        # a --dir this made) is removed again when the fleet stops or fails to start
        with socket_dir(directory, make) as (where, fleet):
            _serve(fleet, where)
    except OSError as exc:  # the directory could not be made
        what = "a temporary directory" if directory is None else f"--dir {directory}"
        raise UsageError(f"{what}: cannot use it: {exc.strerror or exc}") from None
    note("fake fleet stopped")


@contextlib.contextmanager
def _refusals(shorter: str) -> Iterator[None]:
    """The fake's refusals of a fleet, as usage errors; ``shorter`` is what to shorten when
    a socket path is too long.

    Raises:
        UsageError: the fleet cannot be simulated or served there.
    """
    from balloonctl.fake import SocketPathTooLong

    try:
        yield
    except SocketPathTooLong as exc:
        raise UsageError(f"{exc}: choose a shorter {shorter}") from None
    except ValueError as exc:  # what it cannot simulate (--mem 1, --no-driver vm9)
        raise UsageError(f"cannot simulate that fleet: {exc}") from None


def _serve(fleet: FakeFleet, where: Path) -> None:
    """Serve until a signal (Ctrl-C, SIGTERM, SIGHUP: the normal ways to stop, exit 0).

    Raises:
        UsageError: a socket cannot be created (another fake or QEMU serves it).
    """
    from balloonctl.fake import serve_fleet

    def ready(_: object) -> None:
        note(f"serving {len(fleet.vms)} fake VMs in {where} until Ctrl-C; "
             f"try: BALLOONCTL_DIR={where} balloonctl status")

    try:
        run(serve_fleet(fleet, out=sys.stdout, ready=ready))
    except OSError as exc:  # includes a socket another fake or QEMU serves
        raise UsageError(f"cannot serve fake VMs in {where}: {exc.strerror or exc}") from None
    except KeyboardInterrupt:  # Ctrl-C before the fleet's own handler was installed
        pass


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
    host_mem: Annotated[str | None, typer.Option(
        "--host-mem", metavar="SIZE", show_default=False,
        help="The simulated host's RAM (default: half of the guests' RAM).",
        autocompletion=completers.typer_callback("host_mem"),
    )] = None,
    hosts: Annotated[int, typer.Option(
        "--hosts", min=1, max=8, metavar="N",
        help="Simulate N hosts, each with its own balloonctl serve: the multi-host view.",
    )] = 1,
) -> None:
    """Start six simulated 2 GiB VMs running a compile workload on a simulated host smaller
    than them, with automatic ballooning on and the cache-first hint on for half of them,
    and open the dashboard."""
    import tempfile

    from balloonctl.config import scan_dir
    from balloonctl.fake import FakeFleet, run_in_thread
    from balloonctl.host import host_root_for
    from balloonctl.store import private_state

    ram = parse_size(mem)
    host_size = parse_size(host_mem) if host_mem else vms * ram // 2
    fmt = output_format(fmt, as_json)
    if hosts > 1:
        from balloonctl.cli.dashboard import open_remote_dashboard
        from balloonctl.cli.hosts_cmd import demo_hosts

        if host_mem is not None:
            raise UsageError("--host-mem is for one host; --hosts N sizes each host itself")
        with _refusals("TMPDIR"):
            shown = demo_hosts(
                hosts, vms=vms, ram=ram, workload=workload.fake_name(), once=once,
                render=lambda states: out(render_states(states, fmt)),
                open_dashboard=lambda source: open_remote_dashboard(source, stats_interval=1))
        if once:
            exit_with(report_states(shown, []))
        return
    with (tempfile.TemporaryDirectory(prefix="balloonctl-demo-") as tmp,
          private_state(Path(tmp) / "state.json")):
        with _refusals("TMPDIR"):
            fleet = FakeFleet(vms, Path(tmp), ram=ram, workload=workload.fake_name(),
                              host_mem=host_size)
        settings().journal = str(Path(tmp) / "journal.jsonl")  # never the user's journal
        with run_in_thread(fleet):
            refs = scan_dir(tmp)
            names = [r.name for r in refs]

            async def prepare() -> list[BalloonState]:
                async def enable(c: VmClient) -> None:
                    await c.enable_stats(1)
                    if names.index(c.name) % 2 == 0:
                        await c.set_hint(True)  # vm1, vm3, ...: cache first

                await each(refs, enable)
                return await snapshot(refs)

            states = run(prepare())
            if once:
                out(render_states(states, fmt))
                exit_with(report_states(states, refs))
                return
            open_dashboard(refs, hold=False, stats_interval=1, host_root=host_root_for(tmp),
                           auto_on=True, auto_interval=2.0)

