"""``balloonctl fake`` and ``balloonctl demo``: a simulated fleet, served until interrupted
or shown once (or in the dashboard)."""

from __future__ import annotations

import enum
import sys
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
    snapshot,
)
from balloonctl.cli.dashboard import open_dashboard
from balloonctl.cli.output import note, render_states
from balloonctl.errors import UsageError
from balloonctl.model import BalloonState
from balloonctl.units import parse_size

if TYPE_CHECKING:
    from balloonctl.qmp import BalloonClient

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
        run(run_fleet_forever(vms, ram, where, workload.fake_name(), out=sys.stdout,
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
) -> None:
    """Start six simulated 2 GiB VMs running a compile workload and open the dashboard."""
    import tempfile

    from balloonctl.config import scan_dir
    from balloonctl.fake import FakeFleet, run_in_thread
    from balloonctl.store import private_state

    ram = parse_size(mem)
    fmt = output_format(fmt, as_json)
    with (tempfile.TemporaryDirectory(prefix="balloonctl-demo-") as tmp,
          private_state(Path(tmp) / "state.json")):
        fleet = FakeFleet(vms, Path(tmp), ram=ram, workload=workload.fake_name())
        with run_in_thread(fleet):
            refs = scan_dir(tmp)

            async def prepare() -> list[BalloonState]:
                async def enable(c: BalloonClient) -> None:
                    await c.enable_stats(1)

                await each(refs, enable)
                return await snapshot(refs)

            states = run(prepare())
            if once:
                out(render_states(states, fmt))
                exit_with(report_states(states, refs))
                return
            open_dashboard(refs, hold=False, stats_interval=1)

