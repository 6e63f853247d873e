"""Dynamic completion values: VM names, sizes, hint actions.

Used by both completion paths: the typer app's ``autocompletion`` callbacks and the fast
path in ``fastcomplete`` (which must not import typer). Only the standard library, the core
and ``config`` (cheap discovery, no socket connects) are imported here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

__all__ = [
    "HINT_ACTIONS",
    "KIND_BY_PARAM",
    "SIZE_SUGGESTIONS",
    "TARGET_SUGGESTIONS",
    "complete_kind",
    "typer_callback",
    "vm_names",
]

# Which completer serves a parameter, by the parameter's name in the typer app. The
# generated spec records the kind, so both completion paths agree. "size" is an absolute
# size (``units.parse_size``); only set's target also takes 75% and +256M (``parse_target``).
KIND_BY_PARAM: dict[str, str] = {
    "vms": "vm",
    "vm": "vm",
    "reclaim": "vm",  # auto --reclaim VM
    "targets": "vm_then_size",  # set VM... SIZE
    "hint_args": "vm_then_hint",  # hint VM... on|off|status
    "minimum": "size",
    "maximum": "size",
    "mem": "size",
    "host_mem": "size",
    "step_size": "size",
}

SIZE_SUGGESTIONS: tuple[tuple[str, str], ...] = (
    ("512M", "512 MiB"),
    ("1G", "1 GiB"),
    ("1.5G", "1.5 GiB"),
    ("2G", "2 GiB"),
    ("4G", "4 GiB"),
)

TARGET_SUGGESTIONS: tuple[tuple[str, str], ...] = (
    *SIZE_SUGGESTIONS,
    ("50%", "half of guest RAM"),
    ("75%", "three quarters of guest RAM"),
    ("100%", "all of guest RAM (deflate)"),
    ("+256M", "256 MiB more than the current target"),
    ("-256M", "256 MiB less than the current target"),
)

HINT_ACTIONS: tuple[tuple[str, str], ...] = (
    ("on", "reclaim clean page cache before inflating"),
    ("off", "inflate without the cache-first hint"),
    ("status", "show the hint mode and state"),
)


def vm_names(env: dict[str, str] | None = None) -> list[str]:
    """VM names from every inventory source, without connecting to any socket. Global
    options on the command line are honoured through the env the caller passes
    (``BALLOONCTL_DIR``, ``BALLOONCTL_CONFIG``); a broken config yields what else is known."""
    from balloonctl.config import Inventory
    from balloonctl.errors import BalloonError

    try:
        return Inventory.load(env=os.environ if env is None else env).names
    except BalloonError:
        return []


def _sizes(incomplete: str, *, target: bool = False) -> list[tuple[str, str]]:
    """Size suggestions; ``target`` adds the percent and relative forms only set takes."""
    choices = TARGET_SUGGESTIONS if target else SIZE_SUGGESTIONS
    return [(v, h) for v, h in choices if v.startswith(incomplete)]


def complete_kind(
    kind: str,
    incomplete: str,
    positionals: Sequence[str] = (),
    *,
    names: Callable[[], list[str]] = vm_names,
) -> list[tuple[str, str]]:
    """Candidates ``(value, help)`` for a parameter of the given kind, filtered by prefix.

    ``positionals`` are the command's positional words already typed; the typer path does
    not know them and passes none.
    """
    if kind == "size":
        return _sizes(incomplete)
    if kind == "hint":
        return [(v, h) for v, h in HINT_ACTIONS if v.startswith(incomplete)]
    if kind not in ("vm", "vm_then_size", "vm_then_hint"):
        return []
    out = [(n, "VM") for n in names() if n.startswith(incomplete) and n not in positionals]
    if kind == "vm_then_size" and (positionals or incomplete[:1] in tuple("0123456789+-.")):
        out += _sizes(incomplete, target=True)
    if kind == "vm_then_hint" and positionals:
        out += [(v, h) for v, h in HINT_ACTIONS if v.startswith(incomplete)]
    return out


def typer_callback(param: str) -> Callable[[str], list[tuple[str, str]]]:
    """The ``autocompletion=`` callback for a typer parameter (the slow path)."""
    kind = KIND_BY_PARAM[param]

    def complete(incomplete: str) -> list[tuple[str, str]]:
        return complete_kind(kind, incomplete)

    complete.__name__ = f"complete_{param}"
    return complete
