"""The journal file: its lines, reading past damage, and writing that survives crashes,
concurrent writers, a full disk and a read-only directory."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from balloonctl.errors import BalloonError, JournalError
from balloonctl.journal import (
    Journal,
    JournalEntry,
    Origin,
    journal_path,
    parse_journal,
    read_journal,
)
from balloonctl.units import GiB, MiB

QMP = "/nonexistent/vm1.qmp"


def change(target: int, previous: int | None = 2 * GiB, *, vm: str = "vm1",
           origin: str = "set", reason: str = "by hand", now: float = 1_700_000_000.5,
           **kw: Any) -> JournalEntry:
    return JournalEntry.new(vm=vm, qmp=QMP, previous=previous, target=target, reason=reason,
                            origin=origin, now=now, pid=kw.pop("pid", 4242),
                            host=kw.pop("host", "hv1"), **kw)


def good_line(**overrides: Any) -> dict[str, Any]:
    data = change(GiB).to_json()
    data.update(overrides)
    return data


# --- the line format --------------------------------------------------------------------


def test_a_line_has_the_documented_keys() -> None:
    entry = change(GiB, 2 * GiB, reason="make room")
    line = entry.to_line()
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    data = json.loads(line)
    assert data == {
        "v": 1, "id": entry.id, "time": 1_700_000_000.5, "vm": "vm1", "qmp": QMP,
        "previous": 2 * GiB, "target": GiB, "reason": "make room",
        "origin": {"command": "set", "pid": 4242, "host": "hv1"},
    }


def test_control_characters_stay_escaped_inside_the_line() -> None:
    line = change(GiB, reason="evil\nname\x1b[2J\u202e").to_line()
    assert line.count(b"\n") == 1 and b"\x1b" not in line
    assert parse_journal(line).entries[0].reason == "evil\nname\x1b[2J\u202e"


def test_each_entry_gets_its_own_id() -> None:
    assert len({change(GiB).id for _ in range(50)}) == 50


def test_new_refuses_what_the_reader_would_refuse() -> None:
    with pytest.raises(JournalError, match="'target' must be a size"):
        change(-1)
    with pytest.raises(JournalError, match="'vm' must not be empty"):
        change(GiB, vm="")


def test_new_records_the_socket_realpath(tmp_path: Path) -> None:
    real = tmp_path / "real.qmp"
    real.touch()
    (tmp_path / "link.qmp").symlink_to(real)
    entry = JournalEntry.new(vm="vm1", qmp=str(tmp_path / "link.qmp"), previous=None,
                             target=GiB, reason="", origin=Origin.SET)
    assert entry.qmp == str(real)
    assert entry.pid == os.getpid()
    tcp = JournalEntry.new(vm="vm2", qmp="localhost:4444", previous=None, target=GiB,
                           reason="", origin=Origin.AUTO)
    assert tcp.qmp == "localhost:4444"


texts = st.text(st.characters(codec="utf-8"), max_size=30)
sizes = st.integers(min_value=0, max_value=2**63)


@given(
    time_=st.floats(min_value=0, max_value=4e9, allow_nan=False),
    vm=texts.filter(bool), qmp=texts, previous=st.none() | sizes, target=sizes,
    reason=texts, origin=st.sampled_from(list(Origin)),
    pid=st.integers(min_value=1, max_value=2**22), host=st.none() | texts,
    undoes=st.lists(st.text(min_size=1, max_size=16), max_size=3),
)
def test_round_trip(time_: float, vm: str, qmp: str, previous: int | None, target: int,
                    reason: str, origin: Origin, pid: int, host: str | None,
                    undoes: list[str]) -> None:
    entry = JournalEntry(id="abc", time=time_, vm=vm, qmp=qmp, previous=previous,
                         target=target, reason=reason, origin=origin, pid=pid, host=host,
                         undoes=tuple(undoes))
    read = parse_journal(entry.to_line() * 2)
    assert read.warnings == ()
    assert read.entries == (entry, entry)


# --- reading past damage ------------------------------------------------------------------


def lines(*items: dict[str, Any] | bytes) -> bytes:
    return b"".join(i if isinstance(i, bytes) else json.dumps(i).encode() + b"\n"
                    for i in items)


BAD_SHAPES = [
    pytest.param({"target": "1G"}, "'target' must be a size", id="string-size"),
    pytest.param({"target": 1.5e9}, "'target' must be a size", id="float-size"),
    pytest.param({"previous": -1}, "'previous' must be a size", id="negative-previous"),
    pytest.param({"target": True}, "'target' must be a size", id="bool-size"),
    pytest.param({"time": "yesterday"}, "'time' must be", id="string-time"),
    pytest.param({"time": -1}, "'time' must be", id="negative-time"),
    pytest.param({"origin": {"command": "set"}}, "missing origin.'pid'", id="no-pid"),
    pytest.param({"origin": {"command": "ssh", "pid": 1}}, "unknown origin.command",
                 id="unknown-origin"),
    pytest.param({"origin": "set"}, "'origin' must be dict", id="origin-not-object"),
    pytest.param({"vm": 3}, "'vm' must be str", id="vm-not-string"),
    pytest.param({"undoes": "abc"}, "'undoes' must be a list", id="undoes-string"),
    pytest.param({"v": 2}, "format v2 is newer", id="newer-format"),
]


@pytest.mark.parametrize(("override", "message"), BAD_SHAPES)
def test_a_wrong_shaped_line_is_an_error_of_that_line(override: dict[str, Any],
                                                      message: str) -> None:
    read = parse_journal(lines(good_line(target=1), good_line(**override),
                               good_line(target=3)), path="/j")
    assert [e.target for e in read.entries] == [1, 3]
    (warning,) = read.warnings
    assert (warning.line, warning.torn) == (2, False)
    assert message in warning.message
    assert str(warning).startswith("journal /j line 2: skipped: ")


@pytest.mark.parametrize("key", ["v", "id", "time", "vm", "qmp", "previous", "target",
                                 "reason", "origin"])
def test_every_key_but_host_and_undoes_is_required(key: str) -> None:
    data = good_line()
    del data[key]
    read = parse_journal(lines(data, good_line()))
    assert len(read.entries) == 1 and read.warnings[0].line == 1


def test_optional_keys_may_be_absent_and_unknown_keys_are_ignored() -> None:
    data = good_line(extra={"future": 1})
    del data["origin"]["host"]
    (entry,) = parse_journal(lines(data)).entries
    assert entry.host is None and entry.undoes == ()


@pytest.mark.parametrize("junk", [b"{not json}", b"[1, 2]", b"\xff\xfe", b"NaN", b"null"])
def test_a_corrupt_line_in_the_middle_is_skipped_with_its_number(junk: bytes) -> None:
    read = parse_journal(lines(good_line(target=1), b"\n", junk + b"\n", good_line(target=2)))
    assert [e.target for e in read.entries] == [1, 2]
    assert [(w.line, w.torn) for w in read.warnings] == [(3, False)]


def test_a_torn_last_line_is_reported_once_and_skipped() -> None:
    whole = lines(good_line(target=1), good_line(target=2))
    torn = json.dumps(good_line(target=3)).encode()[:-7]  # cut short, no newline
    read = parse_journal(whole + torn)
    assert [e.target for e in read.entries] == [1, 2]
    assert [(w.line, w.torn) for w in read.warnings] == [(3, True)]
    assert "torn last line" in str(read.warnings[0])


def test_a_complete_last_line_without_its_newline_is_kept() -> None:
    data = lines(good_line(target=1), good_line(target=2))[:-1]
    read = parse_journal(data)
    assert [e.target for e in read.entries] == [1, 2] and read.warnings == ()


def test_nul_padding_left_by_a_crash_is_not_a_line() -> None:
    read = parse_journal(lines(good_line(target=1)) + b"\x00" * 300)
    assert len(read.entries) == 1 and read.warnings == ()


def test_a_missing_journal_is_empty(tmp_path: Path) -> None:
    read = read_journal(tmp_path / "none.jsonl")
    assert read.entries == () and read.warnings == ()


def test_an_unreadable_journal_is_a_journal_error(tmp_path: Path) -> None:
    with pytest.raises(JournalError) as caught:
        read_journal(tmp_path)  # a directory
    assert isinstance(caught.value, BalloonError)
    assert str(caught.value).startswith(f"journal {tmp_path}: cannot read: ")


# --- writing ------------------------------------------------------------------------------


def test_appended_entries_read_back_in_order(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.jsonl")
    first = change(GiB)
    batch = [change(512 * MiB, GiB, vm="vm2"), change(MiB, None, vm="vm3")]
    journal.append(first)
    journal.append(*batch)
    journal.append()  # nothing: no write, no error
    read = journal.read()
    assert read.entries == (first, *batch) and read.warnings == ()


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def test_created_file_is_0600_and_created_directories_0700(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "journal.jsonl"
    with umask(0o277):  # would give 0400 files and 0500 directories
        Journal(path).append(change(GiB))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "a" / "b").stat().st_mode) == 0o700


def test_an_existing_directory_keeps_its_mode(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    Journal(shared / "j.jsonl").append(change(GiB))
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755


def test_appending_after_a_torn_line_keeps_the_new_line_whole(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    journal = Journal(path)
    journal.append(change(1))
    with open(path, "ab") as fh:
        fh.write(change(2).to_line()[:40])  # what a crashed writer left
    assert [w.torn for w in journal.read().warnings] == [True]
    journal.append(change(3))
    read = journal.read()
    assert [e.target for e in read.entries] == [1, 3]
    # the fragment stays in the file (nothing is ever cut out), now an ordinary bad line
    assert [(w.line, w.torn) for w in read.warnings] == [(2, False)]


def test_a_directory_where_the_file_belongs(tmp_path: Path) -> None:
    (tmp_path / "j.jsonl").mkdir()
    with pytest.raises(JournalError) as caught:
        Journal(tmp_path / "j.jsonl").append(change(GiB))
    assert str(caught.value) == f"journal {tmp_path / 'j.jsonl'}: cannot write: " \
                                "Is a directory (EISDIR)"


def test_a_file_where_the_directory_belongs(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("")
    with pytest.raises(JournalError, match=r"cannot write: Not a directory \(ENOTDIR\)"):
        Journal(tmp_path / "state" / "j.jsonl").append(change(GiB))


def test_a_fifo_is_not_a_journal(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "j.jsonl")
    with pytest.raises(JournalError, match="cannot write: not a regular file"):
        Journal(tmp_path / "j.jsonl").append(change(GiB))


# --- the path -----------------------------------------------------------------------------


def test_path_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BALLOONCTL_JOURNAL", str(tmp_path / "env.jsonl"))
    assert journal_path(tmp_path / "arg.jsonl", configured="/c") == tmp_path / "arg.jsonl"
    assert journal_path(configured="/c.jsonl") == tmp_path / "env.jsonl"
    monkeypatch.delenv("BALLOONCTL_JOURNAL")
    assert journal_path(configured="/c.jsonl") == Path("/c.jsonl")
    monkeypatch.setenv("BALLOONCTL_STATE", str(tmp_path / "st" / "state.json"))
    assert journal_path() == tmp_path / "st" / "journal.jsonl"
    monkeypatch.delenv("BALLOONCTL_STATE")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert journal_path() == tmp_path / "xdg" / "balloonctl" / "journal.jsonl"
    assert Journal().path == tmp_path / "xdg" / "balloonctl" / "journal.jsonl"


def test_tests_never_journal_to_the_users_file(tmp_path_factory: pytest.TempPathFactory) -> None:
    # the autouse fixture in conftest.py; a balloonctl started by a test inherits it
    assert journal_path().is_relative_to(tmp_path_factory.getbasetemp())
    assert Journal().path == journal_path()


# --- real processes: crashes and concurrent writers ----------------------------------------

APPENDER = textwrap.dedent("""
    import os, sys
    from balloonctl.journal import Journal, JournalEntry
    path, name, count, pad = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    journal = Journal(path)
    sys.stdin.readline()  # wait for the start signal
    for i in range(count):
        e = JournalEntry.new(vm=name, qmp="/nonexistent/" + name, previous=i, target=i + 1,
                             reason=f"{i:06d} " + "x" * (pad * (i % 3)), origin="auto")
        journal.append(e)
        print(e.id, flush=True)
""")


def start_appender(path: Path, name: str, count: int, pad: int = 0) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", APPENDER, str(path), name, str(count),
                             str(pad)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)


def test_concurrent_appenders_never_interleave(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    # every third line of each writer is 5 KiB, past any PIPE_BUF-sized atomicity
    procs = {f"p{n}": start_appender(path, f"p{n}", 200, pad=2500) for n in range(4)}
    for proc in procs.values():
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    while any(proc.poll() is None for proc in procs.values()):
        # a reader meanwhile never sees half a line: it shares the writers' lock
        assert read_journal(path).warnings == ()
    reported: dict[str, list[str]] = {}
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        reported[name] = out.split()
    read = read_journal(path)
    assert read.warnings == ()
    assert len(read.entries) == 800
    for name, ids in reported.items():
        mine = [e for e in read.entries if e.vm == name]
        assert [e.id for e in mine] == ids  # each writer's lines, whole and in its order
        assert [e.previous for e in mine] == list(range(200))
        assert len({e.pid for e in mine}) == 1


def test_a_writer_killed_between_writes_loses_nothing_it_reported(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    proc = start_appender(path, "vm1", 100_000)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()
    reported = [proc.stdout.readline().strip() for _ in range(25)]
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    proc.stdout.close()
    proc.stdin.close()
    read = read_journal(path)
    ids = [e.id for e in read.entries]
    assert ids[:25] == reported  # everything append() returned for is there, in order
    assert read.warnings == ()  # and the kill left no half line
    Journal(path).append(change(GiB))
    assert len(read_journal(path).entries) == len(ids) + 1


TORN_WRITER = textwrap.dedent("""
    import os, sys
    from balloonctl.journal import Journal, JournalEntry
    path = sys.argv[1]
    journal = Journal(path)
    for i in range(3):
        journal.append(JournalEntry.new(vm="vm1", qmp="/q", previous=i, target=i + 1,
                                        reason="ok", origin="set"))
    line = JournalEntry.new(vm="vm1", qmp="/q", previous=3, target=4, reason="cut",
                            origin="set").to_line()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    os.write(fd, line[: len(line) // 2])  # a writer that dies half way through its line
    print("half", flush=True)
    sys.stdin.readline()  # killed here
""")


def test_a_writer_killed_mid_line_leaves_one_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", TORN_WRITER, str(path)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdin is not None
    assert proc.stdout.readline().strip() == "half"
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=10) == -signal.SIGKILL
    proc.stdout.close()
    proc.stdin.close()
    read = read_journal(path)
    assert [e.target for e in read.entries] == [1, 2, 3]
    assert [(w.line, w.torn) for w in read.warnings] == [(4, True)]
    Journal(path).append(change(5))
    assert [e.target for e in read_journal(path).entries] == [1, 2, 3, 5]


# --- a full disk and a read-only directory -----------------------------------------------

FSIZE_WRITER = textwrap.dedent("""
    import os, resource, sys
    from balloonctl.errors import JournalError
    from balloonctl.journal import Journal, JournalEntry
    path = sys.argv[1]
    limit = os.path.getsize(path) + 100  # room for part of a line, not all of it
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    try:
        Journal(path).append(JournalEntry.new(vm="vm1", qmp="/q", previous=1, target=2,
                                              reason="r" * 200, origin="auto"))
    except JournalError as exc:
        print(exc)
        sys.exit(3)
""")


def test_a_file_size_limit_is_a_journal_error_and_leaves_no_half_line(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    Journal(path).append(change(1), change(2))
    before = path.read_bytes()
    proc = subprocess.run([sys.executable, "-c", FSIZE_WRITER, str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout.strip() == f"journal {path}: cannot write: File too large (EFBIG)"
    assert path.read_bytes() == before  # the part that fit was cut back


@contextlib.contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A small tmpfs of its own (needs root and mount rights)."""
    where.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                           str(where)], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def test_a_full_disk_is_a_journal_error_and_keeps_every_written_line(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "mnt", "16k") as mnt:
        journal = Journal(mnt / "j.jsonl")
        written = 0
        with pytest.raises(JournalError) as caught:
            for i in range(1000):
                journal.append(change(i + 1, i, reason="x" * 1000))
                written += 1
        assert str(caught.value) == (f"journal {mnt / 'j.jsonl'}: cannot write: "
                                     "No space left on device (ENOSPC)")
        assert 0 < written < 1000
        read = journal.read()
        assert read.warnings == ()
        assert [e.target for e in read.entries] == list(range(1, written + 1))


def test_a_read_only_directory_is_a_journal_error_and_reads_still_work(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "mnt", "64k") as mnt:
        journal = Journal(mnt / "j.jsonl")
        journal.append(change(GiB))
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        with pytest.raises(JournalError, match=r"cannot write: Read-only file system"):
            journal.append(change(2 * GiB))
        with pytest.raises(JournalError, match=r"cannot write: Read-only file system"):
            Journal(mnt / "new" / "j.jsonl").append(change(2 * GiB))
        assert [e.target for e in journal.read().entries] == [GiB]


def test_permission_denied_is_a_journal_error(tmp_path: Path) -> None:
    # as root, permission bits do not stop writes: drop to nobody in a child
    base = Path(tempfile.mkdtemp(prefix="bj-", dir="/tmp"))
    base.chmod(0o755)  # nobody may look in, not write
    locked = base / "locked"
    locked.mkdir(mode=0o755)
    program = textwrap.dedent(f"""
        import os, sys
        from balloonctl.errors import JournalError
        from balloonctl.journal import Journal, JournalEntry
        if os.geteuid() == 0:  # after the imports: the interpreter may live in /root
            os.setgid(65534); os.setuid(65534)
        try:
            Journal({str(locked / "j.jsonl")!r}).append(JournalEntry.new(
                vm="vm1", qmp="/q", previous=1, target=2, reason="", origin="set"))
        except JournalError as exc:
            print(exc); sys.exit(3)
    """)
    if os.geteuid() != 0:
        locked.chmod(0o555)
    proc = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          timeout=60, cwd="/")
    shutil.rmtree(base)
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout.strip() == (f"journal {locked / 'j.jsonl'}: cannot write: "
                                   "Permission denied (EACCES)")


def test_a_reader_waits_for_a_writer_holding_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    Journal(path).append(change(1))
    line = change(2).to_line()
    results: list[Any] = []
    with open(path, "ab", buffering=0) as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # a writer half way through its batch
        fh.write(line[:30])
        reader = threading.Thread(target=lambda: results.append(read_journal(path)))
        reader.start()
        reader.join(timeout=0.5)
        assert reader.is_alive()  # blocked on the lock, not reading half a line
        fh.write(line[30:])
        fcntl.flock(fh, fcntl.LOCK_UN)
    reader.join(timeout=10)
    (read,) = results
    assert [e.target for e in read.entries] == [1, 2] and read.warnings == ()
