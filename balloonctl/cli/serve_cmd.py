"""``balloonctl serve`` and ``balloonctl token``: the host service's commands.

``register(app)`` adds them to the typer app; the service itself is ``balloonctl.serve``.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from pathlib import Path
from typing import Annotated

import typer

from balloonctl.cli.output import note
from balloonctl.errors import BalloonError, UsageError

__all__ = ["serve", "token_app"]


class _Stop(Exception):
    """SIGTERM: leave the serving loop through its cleanup."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise _Stop


TokenFileOpt = Annotated[Path | None, typer.Option(
    "--token-file", metavar="FILE",
    help="Where the token is kept (default: serve.token beside the state file).",
)]


def serve(
    vms: Annotated[list[str] | None, typer.Argument(
        metavar="VM", help="VM names or globs (default: every VM).", show_default=False,
    )] = None,
    listen: Annotated[str | None, typer.Option(
        "--listen", metavar="HOST:PORT",
        help="Listen on TCP (loopback unless --allow-remote) instead of the unix socket; "
             "every request then needs the bearer token.",
    )] = None,
    socket_path: Annotated[Path | None, typer.Option(
        "--socket", metavar="PATH",
        help="The unix socket (default: $BALLOONCTL_SERVE_SOCKET, "
             "$XDG_RUNTIME_DIR/balloonctl/serve.sock, or /run/balloonctl/serve.sock for root).",
    )] = None,
    allow_remote: Annotated[bool, typer.Option(
        "--allow-remote", help="Allow --listen on an address other machines can reach.",
    )] = False,
    interval: Annotated[str, typer.Option(
        "--interval", "-n", metavar="DURATION", help="How often every VM is polled.",
    )] = "1s",
    journal: Annotated[Path | None, typer.Option(
        "--journal", metavar="FILE", help="The journal (default: the global --journal, "
                                          "$BALLOONCTL_JOURNAL, the config's [journal] path, "
                                          "or journal.jsonl beside the state file).",
    )] = None,
    auto: Annotated[bool | None, typer.Option(
        "--auto/--no-auto", show_default=False,
        help="Apply the policy every cycle from the start (default: the config's [policy] "
             "auto); --no-auto: no automatic ballooning at all (POST /v1/auto is refused).",
    )] = None,
    token_file: TokenFileOpt = None,
    rotate: Annotated[bool, typer.Option(
        "--rotate-token", help="Replace the token with a new one, print it and exit.",
    )] = False,
    label: Annotated[str | None, typer.Option(
        "--label", metavar="NAME", help="This host's name in streams and dashboards.",
    )] = None,
) -> None:
    """Run the host service: hold every VM's QMP socket, poll, journal, and serve the HTTP
    API and /metrics (docs/serve.md)."""
    from balloonctl.cli.common import duration, settings
    from balloonctl.serve.paths import default_socket, ensure_token, rotate_token, token_path

    tokens = token_path(token_file)
    if rotate:
        print(rotate_token(tokens), flush=True)
        note(f"new token in {tokens}; running services use it from their next request")
        return
    every = duration(interval, "--interval") or 1.0
    if every <= 0:
        raise UsageError("--interval must be above zero")
    tcp = None
    if listen is not None:
        from balloonctl.serve.runner import check_remote, parse_listen

        if socket_path is not None:
            raise UsageError("--listen and --socket conflict: one listener per service")
        tcp = parse_listen(listen)
        check_remote(tcp[0], allow_remote=allow_remote)
        ensure_token(tokens)
    elif allow_remote:
        raise UsageError("--allow-remote needs --listen HOST:PORT")
    state = settings()
    if journal is not None:
        state.journal = str(journal)
    refs = state.select(vms or [], all_vms=not vms)
    try:
        from balloonctl.serve import SERVE_REASON, HostService
        from balloonctl.serve import serve as run_service
        from balloonctl.serve.runner import Listener
    except ImportError as exc:
        raise BalloonError(str(exc)) from None
    from balloonctl.cli.journaling import journal as the_journal
    from balloonctl.cli.journaling import record_targets

    inventory = state.inventory()
    policy = inventory.config.policy
    # the CLI's recorder: every target the fleet sends is journaled as `set` does it (an
    # HTTP client's origin and reason through changes.on_behalf); checked writable first
    record_targets("set", SERVE_REASON)
    fleet = state.fleet(refs, hold=True)
    controller = None
    if auto is not False:
        from balloonctl.auto import AutoController

        controller = AutoController(fleet, settings=policy, host_root=inventory.host_root,
                                    journal=the_journal())
        controller.enabled = None if (auto or policy.auto) else set()
    service = HostService(
        fleet, refs=refs, interval=every, host_root=inventory.host_root,
        journal=the_journal(), policy=policy, auto=controller,
        label=label or socket.gethostname())

    def ready(where: Listener) -> None:
        on = "on" if service.auto_on else "off" if controller is not None else "not available"
        note(f"serving {len(refs)} VMs on {where.url} (auto {on})")
        if where.path is None:
            print(where.url, flush=True)  # scripts read the bound port from stdout

    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        asyncio.run(run_service(service, path=None if tcp else socket_path or default_socket(),
                                tcp=tcp, token_file=tokens if tcp else None,
                                allow_remote=allow_remote, ready=ready))
    except (KeyboardInterrupt, _Stop):
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    note("balloonctl serve stopped")


def token_rotate(token_file: TokenFileOpt = None) -> None:
    """Replace the token with a new one and print it (running services use it at once)."""
    from balloonctl.serve.paths import rotate_token, token_path

    path = token_path(token_file)
    print(rotate_token(path), flush=True)
    note(f"new token in {path}")


def token_show(token_file: TokenFileOpt = None) -> None:
    """Print the token (created if there is none), for BALLOONCTL_TOKEN on other machines."""
    from balloonctl.serve.paths import ensure_token, token_path

    print(ensure_token(token_path(token_file)), flush=True)
    if sys.stdout.isatty():
        note("clients send it as BALLOONCTL_TOKEN=... or read it from the same file")


token_app = typer.Typer(help="The bearer token of balloonctl serve's TCP listener.",
                        no_args_is_help=True, rich_markup_mode=None, add_completion=False)
token_app.command("rotate")(token_rotate)
token_app.command("show")(token_show)
