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

__all__ = ["register"]


class _Stop(Exception):
    """SIGTERM: leave the serving loop through its cleanup."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise _Stop


def register(app: typer.Typer) -> None:
    """Add ``serve`` and ``token`` to ``app``."""
    app.command("serve")(serve)
    token_app = typer.Typer(help="The bearer token of balloonctl serve's TCP listener.",
                            no_args_is_help=True, rich_markup_mode=None)
    token_app.command("rotate")(token_rotate)
    token_app.command("show")(token_show)
    app.add_typer(token_app, name="token")


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
        "--journal", metavar="FILE", help="The journal (default: $BALLOONCTL_JOURNAL or "
                                          "journal.jsonl beside the state file).",
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
    refs = state.select(vms or [], all_vms=not vms)
    try:
        from balloonctl.journal import Journal, journal_path
        from balloonctl.serve import HostService
        from balloonctl.serve import serve as run_service
        from balloonctl.serve.runner import Listener
    except ImportError as exc:
        raise BalloonError(str(exc)) from None
    inventory = state.inventory()
    service = HostService(
        state.fleet(refs, hold=True), refs=refs, interval=every,
        host_root=inventory.host_root, journal=Journal(journal_path(journal)),
        policy=inventory.config.policy, label=label or socket.gethostname())

    def ready(where: Listener) -> None:
        note(f"serving {len(refs)} VMs on {where.url}")
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
