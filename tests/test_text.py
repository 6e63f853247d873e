"""Names from outside (socket file names, guest strings) never reach the terminal raw."""

from __future__ import annotations

import io
import json
import logging
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from balloonctl.cli.app import app
from balloonctl.cli.output import WarningLines, error, note, table
from balloonctl.fake import FakeVM, run_in_thread
from balloonctl.text import escape_text
from balloonctl.units import GiB


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("vm\x1b[31mred", "vm\\x1b[31mred"),  # ESC: colours, cursor moves, titles
        ("two\nlines", "two\\nlines"),
        ("cr\rover", "cr\\rover"),
        ("tab\there", "tab\\there"),
        ("del\x7f", "del\\x7f"),
        ("c1\x9bcsi", "c1\\x9bcsi"),  # the 8-bit CSI some terminals honour
        ("gnp.exe\u202e", "gnp.exe\\u202e"),  # right-to-left override
        ("\u2066iso\u2069", "\\u2066iso\\u2069"),  # left-to-right isolate .. pop
        ("zw\u200bsp", "zw\\u200bsp"),  # zero-width space (Cf)
        ("line\u2028sep", "line\\u2028sep"),
        ("web-1 (prod) é 日本", "web-1 (prod) é 日本"),  # printable text is left alone
        ("", ""),
    ],
)
def test_escape_text(raw: str, shown: str) -> None:
    assert escape_text(raw) == shown


@given(st.text())
def test_escaped_text_is_printable_and_keeps_what_was(text: str) -> None:
    out = escape_text(text)
    # what stays is printable, or a space of another width (NO-BREAK SPACE, IDEOGRAPHIC SPACE)
    assert all(ch.isprintable() or unicodedata.category(ch) == "Zs" for ch in out)
    assert "\x1b" not in out and "\n" not in out and "\u202e" not in out
    if text.isprintable():
        assert out == text


HOSTILE = "evil\x1b[2J\u202e\nx"


def test_tables_and_stderr_lines_escape_names() -> None:
    out = table(["NAME"], [[HOSTILE]])
    assert out.splitlines() == ["NAME", "evil\\x1b[2J\\u202e\\nx"]
    buf = io.StringIO()
    error(f"{HOSTILE}: cannot connect", stream=buf)
    note(f"{HOSTILE}: remembered", stream=buf)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2 and all(line.isprintable() for line in lines)
    assert lines[1] == "balloonctl: evil\\x1b[2J\\u202e\\nx: remembered"


def test_library_warnings_are_one_escaped_line(capsys: pytest.CaptureFixture[str]) -> None:
    log = logging.getLogger("test_text.warnings")  # not under balloonctl: no app handler
    handler = WarningLines()
    log.addHandler(handler)
    try:
        log.warning("%s: cache-first drop failed", HOSTILE)
        log.info("not shown")
    finally:
        log.removeHandler(handler)
    err = capsys.readouterr().err
    assert err == "balloonctl: warning: evil\\x1b[2J\\u202e x: cache-first drop failed\n"


def test_status_shows_a_hostile_socket_name_escaped(fake_dir: Path, tmp_path: Path) -> None:
    name = "vm\x1b[31m\u202e1"
    with run_in_thread(FakeVM(name, fake_dir, tick=0.01, rate=4 * GiB)):
        env = {"BALLOONCTL_DIR": str(fake_dir), "BALLOONCTL_CONFIG": str(tmp_path / "no"),
               "BALLOONCTL_WELLKNOWN": ""}
        r = CliRunner().invoke(app, ["status"], env=env, prog_name="balloonctl")
        assert r.exit_code == 0, r.stderr
        row = r.stdout.splitlines()[1]
        assert row.startswith("vm\\x1b[31m\\u202e1 ") and row.isprintable()
        # JSON is data: the name is exact (JSON escapes it itself)
        r = CliRunner().invoke(app, ["status", "--json"], env=env, prog_name="balloonctl")
        assert json.loads(r.stdout)[0]["name"] == name and "\x1b" not in r.stdout
        r = CliRunner().invoke(app, ["status", "nope"], env=env, prog_name="balloonctl")
        assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "\x1b" not in r.stderr
