"""Every option of every command (the completion spec lists them all, generated from the
live typer app) is passed by at least one test: a new option lands with its test."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from balloonctl.cli._spec import SPEC

TESTS = Path(__file__).resolve().parent


def options(node: dict[str, Any], path: str = "balloonctl") -> Iterator[tuple[str, list[str]]]:
    for option in node.get("options", []):
        names = [*option["names"], *option.get("secondary", [])]
        if names != ["-h", "--help"]:
            yield path, names
    for name, sub in node.get("commands", {}).items():
        yield from options(sub, f"{path} {name}")


def test_every_option_is_passed_by_some_test() -> None:
    text = "\n".join(p.read_text() for p in TESTS.rglob("*.py")
                     if p.name != Path(__file__).name)
    found = list(options(SPEC))
    assert len(found) > 50  # the walk sees the commands' options, not only the globals
    missing = [f"{path} {'/'.join(names)}" for path, names in found
               if not any(re.search(rf"[\"' ]{re.escape(n)}([\"'= ]|$)", text, re.M)
                          for n in names)]
    assert missing == []
