"""The journal's format, reading and writing at their edges: the cases `./dev mutate` found
untested.

Oracles: docs/journal.md (the line format and its example line, "16 hex digits", "the
machine's host name", "Lines are ASCII", "not valid JSON ... skipped with a warning naming its
line number", "journal PATH: cannot write: REASON (ERRNO)", "blank lines (and NUL bytes) are
ignored", the torn-line rules) and the docstrings of ``qmp_address`` and ``JournalEntry.new``.
Every warning names what is wrong first (the key, or "not JSON"), so that is asserted too.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import resource
import socket
from pathlib import Path
from typing import Any

import pytest

from balloonctl.errors import JournalError
from balloonctl.journal import (
    Journal,
    JournalEntry,
    JournalWarning,
    Origin,
    _os_error,
    parse_journal,
    qmp_address,
    read_journal,
)
from balloonctl.units import GiB

DOCS = (Path(__file__).resolve().parent.parent / "docs" / "journal.md").read_text()


def entry(target: int = GiB, **kw: Any) -> JournalEntry:
    args: dict[str, Any] = {"vm": "vm1", "qmp": "/run/vms/vm1.qmp", "previous": 2 * GiB,
                            "target": target, "reason": "by hand", "origin": Origin.SET,
                            "now": 1_700_000_000.5, "pid": 4242, "host": "hv1"}
    args.update(kw)
    return JournalEntry.new(**args)


def good(**overrides: Any) -> dict[str, Any]:
    data = entry().to_json()
    data.update(overrides)
    return data


def only_warning(*items: dict[str, Any] | bytes, path: str | None = None) -> JournalWarning:
    """Parse a good line, then ``items``, then another good line: the one warning."""
    raw = b"".join(i if isinstance(i, bytes) else json.dumps(i).encode() + b"\n"
                   for i in (good(target=1), *items, good(target=2)))
    read = parse_journal(raw, path=path)
    assert [e.target for e in read.entries] == [1, 2]
    (warning,) = read.warnings
    assert warning.line == 2 and not warning.torn
    return warning


# --- addresses and new entries -------------------------------------------------------------


@pytest.mark.parametrize("qmp", ["vm1.qmp", "4444", "vm:sock", "sockets/vm1"])
def test_a_relative_socket_path_is_made_absolute(qmp: str) -> None:
    # a bare number or a name with a colon but no numeric port is a file name, not host:port
    assert qmp_address(qmp) == os.path.realpath(qmp) and os.path.isabs(qmp_address(qmp))


@pytest.mark.parametrize("qmp", ["localhost:4444", "10.0.0.5:4444", "[::1]:4444",
                                 "hv-1.example:1"])
def test_host_and_port_is_kept_as_given(qmp: str) -> None:
    assert qmp_address(qmp) == qmp


def test_new_ids_are_16_hex_digits_and_the_host_defaults_to_this_machine() -> None:
    made = JournalEntry.new(vm="vm1", qmp="/x.qmp", previous=None, target=GiB, reason="",
                            origin=Origin.SET)
    assert re.fullmatch(r"[0-9a-f]{16}", made.id)
    assert made.host == socket.gethostname()


def test_new_refuses_a_time_that_is_not_finite() -> None:
    for now in (math.inf, math.nan, -1.0):
        with pytest.raises(JournalError) as info:
            entry(now=now)
        assert info.value.message.startswith("'time' must be")


# --- the line -------------------------------------------------------------------------------


def test_the_documented_example_line_is_written_byte_for_byte() -> None:
    example = re.search(r"```json\n(\{.*\})\n```", DOCS)
    assert example is not None
    line = example.group(1).encode()
    (read,) = parse_journal(line + b"\n").entries
    assert read.to_line() == line + b"\n"  # compact separators, keys in documented order


def test_a_line_is_never_invalid_json() -> None:
    bad = JournalEntry(id="a", time=math.nan, vm="vm1", qmp="/x", previous=None, target=1,
                       reason="", origin=Origin.SET, pid=1)
    with pytest.raises(ValueError):
        bad.to_line()


# --- reading: each wrong shape is a warning that names what is wrong ---------------------------


@pytest.mark.parametrize(("line", "starts"), [
    (b"[1, 2]\n", "not an object but list"),
    (b"\"text\"\n", "not an object but str"),
    (good(v=0), "'v' must be a format version"),
    (good(v=-1), "'v' must be a format version"),
    (good(v=True), "'v' must be a format version"),
    (good(origin={"pid": 1}), "missing origin.'command'"),
    (good(origin={"command": 7, "pid": 1}), "origin.'command' must be str, not int"),
    (good(origin={"command": "set", "pid": 0}), "origin.pid must be positive"),
    (good(origin={"command": "set", "pid": True}), "origin.'pid' must be int, not bool"),
    (good(origin={"command": "set", "pid": 1, "host": 5}),
     "origin.host must be a string, not int"),
    (good(time=True), "'time' must be a non-negative number"),
    (good(undoes=[1]), "'undoes' must be a list of entry ids"),
    (good(id=""), "'id' and 'vm' must not be empty"),
    (good(vm=None), "'vm' must be str, not null"),
    (good(vm=True), "'vm' must be str, not bool"),
    (good(reason=None), "'reason' must be str, not null"),
    (good(target=None), "'target' must be a size in bytes"),
    (good(target="1G"), "'target' must be a size in bytes"),
    (b"XXX\n", "not JSON ("),
    (b"{\"v\": 1, \"extra\": NaN}\n", "not JSON (NaN"),
])
def test_a_wrong_line_is_skipped_with_what_is_wrong(line: dict[str, Any] | bytes,
                                                    starts: str) -> None:
    assert only_warning(line).message.startswith(starts)


def test_a_wrong_size_shows_its_type_and_value() -> None:
    assert only_warning(good(target="1G")).message.endswith("not str 1G")
    assert only_warning(good(previous=-5)).message.endswith("not int -5")


def test_a_missing_target_is_named() -> None:
    data = good()
    del data["target"]
    assert only_warning(data).message == "missing 'target'"


def test_an_unknown_key_holding_nan_is_still_not_json() -> None:
    # unknown keys are ignored, but only on a line that is JSON: NaN is not
    assert only_warning(b'{"future": NaN}\n').message.startswith("not JSON")


def test_warnings_name_the_file_and_the_line() -> None:
    warning = only_warning(b"{}\n", path="/j.jsonl")
    assert str(warning) == f"journal /j.jsonl line 2: skipped: {warning.message}"
    bare = only_warning(b"{}\n")
    assert str(bare) == f"line 2: skipped: {bare.message}"
    torn = parse_journal(json.dumps(good()).encode() + b"\n" + b'{"v": 1, "i').warnings[0]
    assert str(torn) == f"line 2: torn last line (a write cut short), skipped: {torn.message}"


# --- reading the file ------------------------------------------------------------------------


def test_a_read_keeps_its_path(tmp_path: Path) -> None:
    missing = tmp_path / "absent.jsonl"
    assert read_journal(missing).path == str(missing)
    present = tmp_path / "j.jsonl"
    present.write_bytes(entry().to_line() + b"junk\n")
    read = read_journal(present)
    assert read.path == str(present)
    assert str(read.warnings[0]).startswith(f"journal {present} line 2: ")


def test_a_journal_past_a_megabyte_reads_back_whole(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    big = entry(reason="x" * 2000)
    line = big.to_line()
    count = (1 << 20) // len(line) + 50  # past the first read of 1 MiB
    path.write_bytes(line * count)
    read = read_journal(path)
    assert read.entries == (big,) * count and read.warnings == ()  # byte for byte


def test_a_journal_under_a_regular_file_is_a_clear_read_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    path = tmp_path / "file" / "journal.jsonl"
    with pytest.raises(JournalError) as info:
        read_journal(path)
    assert str(info.value) == f"journal {path}: cannot read: Not a directory (ENOTDIR)"


def test_an_os_error_without_an_errno_shows_only_its_reason() -> None:
    assert str(_os_error("cannot write", "/j", OSError("disk on fire"))) == \
        "journal /j: cannot write: disk on fire"
    full = OSError(errno.ENOSPC, "No space left on device")
    assert str(_os_error("cannot write", "/j", full)) == \
        "journal /j: cannot write: No space left on device (ENOSPC)"


# --- writing ---------------------------------------------------------------------------------


def test_appends_are_whole_lines_with_nothing_between(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.jsonl")
    first, second, third = entry(1), entry(2), entry(3)
    journal.append(first)
    journal.append(second, third)
    assert journal.path.read_bytes() == first.to_line() + second.to_line() + third.to_line()


def test_a_torn_fragment_gets_one_newline_and_no_more(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.jsonl")
    whole, new = entry(1).to_line(), entry(2)
    journal.path.write_bytes(whole + b'{"v": 1, "i')
    journal.append(new)
    assert journal.path.read_bytes() == whole + b'{"v": 1, "i\n' + new.to_line()


def test_missing_directories_are_created_0700(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "a" / "b" / "c" / "j.jsonl")
    journal.append(entry())
    for directory in ("a", "a/b", "a/b/c"):
        assert (tmp_path / directory).stat().st_mode & 0o777 == 0o700
    assert len(journal.read().entries) == 1


def test_a_write_cut_short_by_an_rlimit_is_cut_back(tmp_path: Path) -> None:
    # in this process (tests/test_journal.py does it in a child): the soft RLIMIT_FSIZE only
    # for the append, restored at once; Python ignores SIGXFSZ, so the write fails with EFBIG
    journal = Journal(tmp_path / "j.jsonl")
    journal.append(entry(1), entry(2))
    before = journal.path.read_bytes()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (len(before) + 100, hard))  # part of a line fits
    try:
        with pytest.raises(JournalError) as info:
            journal.append(entry(3, reason="r" * 200))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert str(info.value) == f"journal {journal.path}: cannot write: File too large (EFBIG)"
    assert journal.path.read_bytes() == before


def test_check_writable_creates_the_journal_as_append_would(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "journal.jsonl"
    Journal(path).check_writable()
    assert path.read_bytes() == b"" and (path.stat().st_mode & 0o777) == 0o600
    Journal(path).check_writable()  # again: nothing changes
    assert path.read_bytes() == b""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(JournalError) as info:
        Journal(blocker / "journal.jsonl").check_writable()
    assert str(info.value) == (f"journal {blocker / 'journal.jsonl'}: cannot write: "
                               "Not a directory (ENOTDIR)")
