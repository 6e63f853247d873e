"""Shell completion without typer: answers ``_BALLOONCTL_COMPLETE`` requests from the
generated static table (``_spec.py``) plus VM names (cheap inventory discovery, no socket
connects) and size suggestions.

typer 0.29 imports pydantic on every call (~165 ms per key press); this path imports only
the standard library and balloonctl's core. It speaks the protocol of typer's completion
classes (requests ``complete_bash``/``complete_zsh``/``complete_fish``, the ``COMP_WORDS``/
``COMP_CWORD`` and ``_TYPER_COMPLETE_ARGS`` variables, and the same output formats), so the
scripts of either side work with the other. ``source_<shell>`` prints the script.

It resolves words the way click does: group options only before the command, an option
that takes a value consumes the next word, ``--`` ends options, and candidates for an
option name are offered only when the incomplete word starts with ``-``.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Candidate", "candidates", "complete"]

COMPLETE_VAR = "_BALLOONCTL_COMPLETE"

Candidate = tuple[str, str]  # (value, help)


def _split(text: str) -> list[str]:
    """Split a command line like a POSIX shell, keeping an unterminated last word."""
    lex = shlex.shlex(text, posix=True)
    lex.whitespace_split = True
    lex.commenters = ""
    out: list[str] = []
    try:
        for token in lex:
            out.append(token)
    except ValueError:
        out.append(lex.token)  # an open quote: the rest is the last word
    return out


@dataclass
class _Parsed:
    command: str | None = None
    positionals: list[str] = field(default_factory=list)
    used: set[str] = field(default_factory=set)  # first name of each option given
    pending: dict[str, Any] | None = None  # option waiting for its value
    after_dashdash: bool = False
    globals: dict[str, list[str]] = field(default_factory=dict)  # --dir, --qmp, ...


def _lookup(options: Sequence[Mapping[str, Any]], name: str) -> Mapping[str, Any] | None:
    for opt in options:
        if name in opt["names"] or name in opt["secondary"]:
            return opt
    return None


def _parse(spec: Mapping[str, Any], args: Sequence[str]) -> _Parsed | None:
    p = _Parsed()
    options: Sequence[Mapping[str, Any]] = spec["options"]
    for word in args:
        if p.pending is not None:
            if word == "=":
                continue  # bash splits --opt=value at the '=' (COMP_WORDBREAKS)
            if p.command is None:
                p.globals.setdefault(p.pending["names"][-1], []).append(word)
            p.pending = None
            continue
        if word == "--" and not p.after_dashdash and p.command is not None:
            p.after_dashdash = True
            continue
        if word.startswith("-") and len(word) > 1 and not p.after_dashdash:
            name, eq, value = word.partition("=")
            opt = _lookup(options, name if name.startswith("--") else word[:2])
            if opt is None:
                cmd = spec["commands"].get(p.command) if p.command else None
                if cmd is not None and cmd["unknown_options_are_args"]:
                    p.positionals.append(word)  # e.g. set vm1 -256M
                continue
            p.used.add(opt["names"][0])
            if opt["value"]:
                if eq or (not name.startswith("--") and len(word) > 2):
                    if p.command is None:
                        p.globals.setdefault(opt["names"][-1], []).append(
                            value if eq else word[2:])
                else:
                    p.pending = dict(opt)
            continue
        if p.command is None:
            if word not in spec["commands"]:
                return None  # not a command we know: nothing sensible to offer
            p.command = word
            options = spec["commands"][word]["options"]
            continue
        p.positionals.append(word)
    return p


def _vm_names(p: _Parsed) -> list[str]:
    from pathlib import Path

    from balloonctl.config import Inventory
    from balloonctl.errors import BalloonError

    g = p.globals
    config = g.get("--config", [None])[-1]
    try:
        return Inventory.load(
            qmp=g.get("--qmp", []), directory=g.get("--dir", [None])[-1],
            config=Path(config) if config else None, libvirt=g.get("--libvirt", []),
        ).names
    except BalloonError:
        return []


def _values(kind: str | None, choices: Sequence[str], incomplete: str, p: _Parsed
            ) -> list[Candidate]:
    if kind == "choices":
        return [(c, "") for c in choices if c.startswith(incomplete)]
    if kind is None or kind == "path":
        return []  # the shell falls back to file names
    from balloonctl.cli.completers import complete_kind

    return complete_kind(kind, incomplete, p.positionals, names=lambda: _vm_names(p))


def candidates(spec: Mapping[str, Any], args: Sequence[str], incomplete: str
               ) -> list[Candidate]:
    """Completion candidates for ``incomplete`` after the words ``args`` (without the
    program name)."""
    p = _parse(spec, args)
    if p is None:
        return []
    if p.pending is not None:
        return _values(p.pending["kind"], p.pending["choices"], incomplete, p)
    cmd = spec["commands"].get(p.command) if p.command else None
    options = cmd["options"] if cmd is not None else spec["options"]
    negative_size = cmd is not None and cmd["unknown_options_are_args"] and bool(
        re.match(r"-[\d.]", incomplete))
    if incomplete.startswith("-") and not p.after_dashdash and not negative_size:
        out: list[Candidate] = []
        for opt in options:
            if opt["names"][0] in p.used and not opt["multiple"]:
                continue
            for name in [*opt["names"], *opt["secondary"]]:
                if name.startswith(incomplete):
                    out.append((name, opt["help"]))
        return out
    if cmd is None:
        return [(name, c["help"]) for name, c in spec["commands"].items()
                if name.startswith(incomplete)]
    arguments = cmd["arguments"]
    index = len(p.positionals)
    for arg in arguments:
        nargs = arg["nargs"]
        if nargs == -1 or index < nargs:
            return _values(arg["kind"], arg["choices"], incomplete, p)
        index -= nargs
    return []


def _zsh_escape(s: str) -> str:
    return (s.replace('"', '""').replace("'", "''").replace("$", "\\$")
            .replace("`", "\\`").replace(":", r"\\:"))


def _args_from_line(line: str) -> tuple[list[str], str]:
    words = _split(line)[1:]
    if words and not line.endswith(" "):
        return words[:-1], words[-1]
    return words, ""


def complete(env: Mapping[str, str] | None = None) -> int:
    """Answer one completion request from the environment; returns the exit status."""
    env = os.environ if env is None else env
    instruction, _, shell = env.get(COMPLETE_VAR, "").partition("_")
    if instruction == "source":
        from balloonctl.cli.scripts import script

        try:
            sys.stdout.write(script(shell))
        except KeyError:
            print(f"balloonctl: error: no completion for shell {shell!r}", file=sys.stderr)
            return 1
        return 0
    if instruction != "complete" or shell not in ("bash", "zsh", "fish"):
        print(f"balloonctl: error: unknown completion request {env.get(COMPLETE_VAR)!r}",
              file=sys.stderr)
        return 1
    from balloonctl.cli._spec import SPEC

    if shell == "bash":
        words = _split(env.get("COMP_WORDS", ""))
        try:
            cword = int(env.get("COMP_CWORD", ""))
        except ValueError:
            cword = len(words)
        args = words[1:cword]
        incomplete = words[cword] if cword < len(words) else ""
        found = candidates(SPEC, args, incomplete)
        out = "\n".join(v for v, _ in found)
    elif shell == "zsh":
        args, incomplete = _args_from_line(env.get("_TYPER_COMPLETE_ARGS", ""))
        found = candidates(SPEC, args, incomplete)
        if found:
            items = "\n".join(
                f'"{_zsh_escape(v)}":"{_zsh_escape(h)}"' if h else f'"{_zsh_escape(v)}"'
                for v, h in found
            )
            out = f"_arguments '*: :(({items}))'"
        else:
            out = "_files"
    else:
        args, incomplete = _args_from_line(env.get("_TYPER_COMPLETE_ARGS", ""))
        found = candidates(SPEC, args, incomplete)
        action = env.get("_TYPER_COMPLETE_FISH_ACTION", "")
        if action == "is-args":
            return 0 if found else 1
        out = "\n".join(f"{v}\t{' '.join(h.split())}" if h else v for v, h in found)
    if out:
        sys.stdout.write(out + "\n")
    return 0
