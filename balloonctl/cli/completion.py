"""``balloonctl completion``: the shell completion scripts (and, for developers, their
regeneration)."""

from __future__ import annotations

import enum
import sys
from typing import Annotated

import typer

from balloonctl.cli.output import note
from balloonctl.errors import UsageError

__all__ = ["Shell", "completion"]


class Shell(enum.StrEnum):
    BASH = "bash"
    ZSH = "zsh"
    FISH = "fish"


def completion(
    ctx: typer.Context,
    shell: Annotated[Shell | None, typer.Argument(
        help="bash, zsh or fish.", show_default=False,
    )] = None,
    regen: Annotated[bool, typer.Option("--regen-spec", hidden=True)] = False,
) -> None:
    """Print the shell completion script (see docs/cli.md to install it)."""
    from balloonctl.cli import scripts

    if regen:  # developers: after changing commands or options
        from balloonctl.cli import spec

        for path in spec.regenerate(ctx.find_root().command):
            note(f"wrote {path}")
        return
    if shell is None:
        raise UsageError("name the shell: bash, zsh or fish")
    sys.stdout.write(scripts.script(shell.value))

