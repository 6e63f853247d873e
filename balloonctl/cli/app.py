"""The balloonctl command line: the typer app, its global options, and its commands wired in.

Each command lives in its own module (``status``, ``set``, ``hint``, ...) and only parses,
calls the library and renders; ``group.BalloonGroup`` turns whatever escapes into one stderr
line and an exit code (``exitcodes``). Textual, httpx, qemu.qmp and the fake are imported
only inside the commands that use them, so ``--help`` stays fast; completion never gets here
(see ``fastcomplete``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from balloonctl import __version__
from balloonctl.cli.common import Settings, duration, set_settings
from balloonctl.cli.group import BalloonGroup, Lazy

__all__ = ["app", "run"]

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
    libvirt: Annotated[list[str] | None, typer.Option(
        "--libvirt", metavar="URI",
        help="The running domains of a libvirt URI, e.g. qemu:///system (repeatable).",
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
        help="How long a command may spend on each VM: connecting, QMP and guest-agent "
             "commands together (e.g. 3s); set --wait waits on top.",
    )] = None,
    verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="Show the QMP and guest-agent messages on stderr.",
    )] = False,
    journal: Annotated[str | None, typer.Option(
        "--journal", metavar="PATH",
        help="The journal of target changes. Default: $BALLOONCTL_JOURNAL, the config's "
             "[journal] path, or journal.jsonl beside the state file.",
    )] = None,
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

    VMs come from --qmp, --dir ($BALLOONCTL_DIR), --libvirt, the config file and Proxmox's
    /var/run/qemu-server. Name them exactly or by glob ('web-*'); most commands take --all.
    """
    set_settings(Settings(
        qmp=list(qmp or []), libvirt=list(libvirt or []), qga=qga, directory=directory,
        config=config, timeout=duration(timeout, "--timeout"), verbose=verbose, journal=journal,
        hosts=list(host or []),
    ))


# The commands, in the order of the help (the groups last, as typer lists them). Each
# module is imported only when its command runs (or for the help and the completion spec,
# which list them all): ``status`` pays for ``status`` alone.
_SETTINGS = {"ignore_unknown_options": True, "allow_interspersed_args": True}
COMMANDS: dict[str, Lazy] = {
    "status": Lazy("balloonctl.cli.status", "status"),
    "set": Lazy("balloonctl.cli.set", "set_", context_settings=_SETTINGS),
    "hint": Lazy("balloonctl.cli.hint", "hint"),
    "stats": Lazy("balloonctl.cli.stats", "stats"),
    "preflight": Lazy("balloonctl.cli.preflight", "preflight"),
    "watch": Lazy("balloonctl.cli.watch", "watch"),
    "wave": Lazy("balloonctl.cli.wave", "wave"),
    "plan": Lazy("balloonctl.cli.automation", "plan"),
    "auto": Lazy("balloonctl.cli.automation", "auto"),
    "history": Lazy("balloonctl.cli.journalcmds", "history"),
    "undo": Lazy("balloonctl.cli.journalcmds", "undo"),
    "fake": Lazy("balloonctl.cli.fake", "fake"),
    "dashboard": Lazy("balloonctl.cli.dashboard", "dashboard"),
    "top": Lazy("balloonctl.cli.dashboard", "dashboard",
                help="Open the live dashboard on the selected VMs (alias of dashboard)."),
    "demo": Lazy("balloonctl.cli.fake", "demo"),
    "completion": Lazy("balloonctl.cli.completion", "completion"),
    "serve": Lazy("balloonctl.cli.serve_cmd", "serve"),
    "experiment": Lazy("balloonctl.cli.experiment", "experiment_app", group=True),
    "token": Lazy("balloonctl.cli.serve_cmd", "token_app", group=True),
}
BalloonGroup.lazy = COMMANDS


def run() -> None:
    """The console script's entry point."""
    app(prog_name="balloonctl")
