"""The state store: what balloonctl remembers between CLI invocations, and how it survives
bad files, read-only directories, full disks and writers killed mid-write."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import resource
import shutil
import signal
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from balloonctl.errors import StateFileError
from balloonctl.store import FileStore, MemoryStore, default_state_path, state_key

FORK = multiprocessing.get_context("fork")


def sockets(directory: Path, *names: str) -> list[str]:
    """Files standing in for VM sockets (an entry of a path that exists is never pruned)."""
    out = []
    for name in names:
        (directory / name).touch()
        out.append(str(directory / name))
    return out


def store_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "balloonctl.store" and r.levelno == logging.WARNING]


# ---- remembering ----------------------------------------------------------------------------


def test_file_store_persists_across_instances(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    vm1, other = sockets(tmp_path, "vm1.qmp", "other.qmp")
    FileStore(path).update(vm1, target=1024, hint_enabled=True)
    assert FileStore(path).get(vm1) == {"target": 1024, "hint_enabled": True}
    assert FileStore(path).get(other) == {}


def _writer(path: str, key: str, n: int) -> None:
    store = FileStore(Path(path), strict=True)
    for i in range(n):
        store.update(key, count=i + 1)


def test_concurrent_writers_do_not_lose_each_others_keys(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    keys = sockets(tmp_path, "vm0.qmp", "vm1.qmp", "vm2.qmp")
    procs = [FORK.Process(target=_writer, args=(str(path), key, 30)) for key in keys]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    store = FileStore(path)
    assert [store.get(key).get("count") for key in keys] == [30, 30, 30]


@pytest.mark.parametrize("kind", ["file", "memory"])
def test_edit_replaces_the_entry_with_what_the_change_returns(tmp_path: Path, kind: str) -> None:
    store = FileStore(tmp_path / "state.json") if kind == "file" else MemoryStore()
    vm, other = sockets(tmp_path, "vm.qmp", "other.qmp")
    store.update(vm, instance="run-1", target=5, hint=True)

    def new_run(entry: dict[str, object]) -> dict[str, object]:
        assert entry == {"instance": "run-1", "target": 5, "hint": True}
        return {"instance": "run-2", "target": 7}

    assert store.edit(vm, new_run) == {"instance": "run-2", "target": 7}
    assert store.get(vm) == {"instance": "run-2", "target": 7}
    assert store.edit(other, lambda e: {**e, "n": 1}) == {"n": 1}


def test_memory_store_returns_copies() -> None:
    store = MemoryStore()
    store.update("a", target=1)
    got = store.get("a")
    got["target"] = 99
    assert store.get("a") == {"target": 1}


def test_default_path_honours_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BALLOONCTL_STATE", str(tmp_path / "s.json"))
    assert default_state_path() == tmp_path / "s.json"
    monkeypatch.delenv("BALLOONCTL_STATE")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert default_state_path() == tmp_path / "balloonctl" / "state.json"


def test_tests_never_use_the_real_state_file(private_state_file: Path) -> None:
    real = Path(os.path.expanduser("~")) / ".local" / "state" / "balloonctl" / "state.json"
    assert default_state_path() == private_state_file != real


# ---- one VM, one key --------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["file", "memory"])
def test_dot_double_slash_and_symlink_name_the_same_vm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    store = FileStore(tmp_path / "state.json") if kind == "file" else MemoryStore()
    (vm,) = sockets(tmp_path, "vm.qmp")
    (tmp_path / "link.qmp").symlink_to(vm)
    monkeypatch.chdir(tmp_path)
    store.update("./vm.qmp", target=1)
    for spelling in (vm, "vm.qmp", "/" + vm, str(tmp_path / "link.qmp"),
                     str(tmp_path / "sub" / ".." / "vm.qmp")):
        assert store.get(spelling) == {"target": 1}, spelling
    store.update("/" + vm, target=2)
    assert store.get("vm.qmp") == {"target": 2}
    if isinstance(store, FileStore):
        assert list(json.loads(store.path.read_text())) == [vm]


def test_tcp_addresses_are_kept_as_given() -> None:
    assert state_key("localhost:4444") == "localhost:4444"
    assert state_key("[::1]:4444") == "[::1]:4444"


def test_entries_under_old_keys_are_found_and_moved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """State written before keys were real paths: the address as the user gave it."""
    (vm,) = sockets(tmp_path, "vm.qmp")
    (tmp_path / "link.qmp").symlink_to(vm)
    link = str(tmp_path / "link.qmp")
    path = tmp_path / "state.json"
    path.write_text(json.dumps({link: {"target": 1}, "/" + vm + "x": {"target": 9}}))
    monkeypatch.chdir(tmp_path)
    store = FileStore(path)
    assert store.get(vm) == {"target": 1}  # the symlink's entry, by the socket's real path
    store.update("vm.qmp", target=3)
    assert json.loads(path.read_text()) == {vm: {"target": 3}}  # moved; vm.qmpx is gone


def test_a_write_prunes_entries_of_sockets_that_are_gone(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    vm1, vm2, vm3 = sockets(tmp_path, "vm1.qmp", "vm2.qmp", "vm3.qmp")
    store = FileStore(path)
    for key in (vm1, vm2, vm3, "host:4444"):
        store.update(key, target=1)
    os.unlink(vm2)
    os.unlink(vm3)
    assert store.get(vm2) == {"target": 1}  # reading prunes nothing
    store.update(vm3, target=2)  # the entry written is kept even when its socket is gone
    assert set(json.loads(path.read_text())) == {vm1, vm3, "host:4444"}


# ---- state files that cannot be used ---------------------------------------------------

BAD_FILES: dict[str, tuple[Callable[[Path], None], str]] = {
    "directory": (lambda p: p.mkdir(), "is a directory"),
    "non-utf8": (lambda p: p.write_bytes(b'{"/x": {"target": 1}}\xff'), "not UTF-8"),
    "invalid-json": (lambda p: p.write_text('{"/x": '), "not valid JSON"),
    "not-an-object": (lambda p: p.write_text("[1, 2]"), "expected a JSON object"),
    "entry-not-an-object": (lambda p: p.write_text('{"/x": 5}'), "is not a JSON object"),
    "dangling-symlink": (lambda p: p.symlink_to(p.parent / "gone" / "state.json"),
                         "which does not exist"),
    "fifo": (lambda p: os.mkfifo(p), "not a regular file"),
    "parent-is-a-file": (lambda p: None, "not a directory"),
}


def _fingerprint(path: Path) -> Any:
    """What is at ``path``, to show a store left it alone."""
    if path.is_symlink():
        return ("symlink", os.readlink(path))
    if path.is_dir():
        return ("dir", sorted(os.listdir(path)))
    if stat.S_ISFIFO(os.stat(path).st_mode):
        return ("fifo",)
    return ("file", path.read_bytes())


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_an_unusable_state_file_is_one_warning_and_state_goes_on_in_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    make, problem = BAD_FILES[kind]
    path = tmp_path / "state.json"
    if kind == "parent-is-a-file":
        (tmp_path / "notadir").write_text("x")
        path = tmp_path / "notadir" / "state.json"
    make(path)
    seen = _fingerprint(path if kind != "parent-is-a-file" else path.parent)
    (vm,) = sockets(tmp_path, "vm.qmp")
    store = FileStore(path)
    with caplog.at_level(logging.WARNING):
        assert store.get(vm) == {}
        assert store.edit(vm, lambda e: {**e, "target": 5}) == {"target": 5}
        assert store.get(vm) == {"target": 5}  # this run still sees what it set
    (warning,) = store_warnings(caplog)
    assert warning.startswith(f"state file {path}: ") and problem in warning
    assert "\n" not in warning
    assert _fingerprint(path if kind != "parent-is-a-file" else path.parent) == seen
    assert isinstance(store.problem, StateFileError) and store.problem.path == str(path)


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_a_strict_store_raises_one_line_naming_the_file(tmp_path: Path, kind: str) -> None:
    make, problem = BAD_FILES[kind]
    path = tmp_path / "state.json"
    if kind == "parent-is-a-file":
        (tmp_path / "notadir").write_text("x")
        path = tmp_path / "notadir" / "state.json"
    make(path)
    (vm,) = sockets(tmp_path, "vm.qmp")
    for call in (lambda: FileStore(path, strict=True).get(vm),
                 lambda: FileStore(path, strict=True).update(vm, target=1)):
        with pytest.raises(StateFileError) as info:
            call()
        assert str(info.value).startswith(f"state file {path}: ")
        assert problem in str(info.value) and info.value.path == str(path)


def test_the_exit_code_of_an_unusable_state_file_is_documented_not_a_bug() -> None:
    from balloonctl.cli.exitcodes import ExitCode, exit_code_for

    code = exit_code_for(StateFileError("/x", "is a directory, not a file"))
    assert code is ExitCode.STATE_FILE and code not in (ExitCode.OK, ExitCode.FAILURE)
    assert exit_code_for("StateFileError") is ExitCode.STATE_FILE


# ---- without root: read-only directories, unreadable files -----------------------------


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory an unprivileged child can enter (pytest's tmp_path is 0700 root's)."""
    path = Path(tempfile.mkdtemp(prefix="bs-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _child(work: Callable[[], Any], out: Any, unprivileged: bool) -> None:
    """Run ``work`` in this (forked) child; ``unprivileged``: without root's power to
    ignore permissions."""
    if unprivileged and os.geteuid() == 0:
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
    try:
        out.put(("ok", work()))
    except BaseException as exc:
        out.put(("raised", f"{type(exc).__name__}: {exc}"))


def in_child(work: Callable[[], Any], *, unprivileged: bool = True) -> tuple[str, Any]:
    """("ok", what ``work`` returned) or ("raised", "Type: message"), from a child."""
    out = FORK.Queue()
    proc = FORK.Process(target=_child, args=(work, out, unprivileged))
    proc.start()
    result = out.get(timeout=60)
    proc.join(timeout=60)
    return result  # type: ignore[no-any-return]


def test_a_read_only_directory_is_read_and_never_written(shared_dir: Path) -> None:
    path = shared_dir / "state.json"
    (vm,) = sockets(shared_dir, "vm.qmp")
    FileStore(path, strict=True).update(vm, target=1)
    before = path.read_bytes()
    path.chmod(0o644)
    shared_dir.chmod(0o555)

    def work() -> Any:
        store = FileStore(path)
        seen = store.get(vm)
        after = store.edit(vm, lambda e: {**e, "target": 2})
        try:
            FileStore(path, strict=True).update(vm, target=3)
        except StateFileError as exc:
            return seen, after, store.get(vm), str(store.problem), str(exc)
        return "strict store wrote into a read-only directory"

    status, value = in_child(work)
    assert status == "ok", value
    seen, after, remembered, problem, strict = value
    assert seen == {"target": 1}  # read without write access
    assert after == remembered == {"target": 2}
    assert problem.startswith(f"state file {path}: ") and "Permission denied" in problem
    assert strict.startswith(f"state file {path}: ")
    assert path.read_bytes() == before


def test_an_unreadable_state_file_is_a_warning_naming_it(shared_dir: Path) -> None:
    path = shared_dir / "state.json"
    path.write_text("{}")
    path.chmod(0o000)
    (vm,) = sockets(shared_dir, "vm.qmp")

    def work() -> Any:
        store = FileStore(path)
        return store.get(vm), str(store.problem)

    status, value = in_child(work)
    assert status == "ok", value
    entry, problem = value
    assert entry == {}
    assert problem == f"state file {path}: cannot be read: Permission denied"


# ---- writes are atomic -------------------------------------------------------------------


def test_a_new_state_file_is_0600_in_a_0700_directory(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "balloonctl" / "state.json"
    (vm,) = sockets(tmp_path, "vm.qmp")
    old_umask = os.umask(0o022)
    try:
        FileStore(path).update(vm, target=1)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert os.listdir(path.parent) == ["state.json"]  # no temp file left behind


def test_a_symlinked_state_file_is_written_where_it_points(tmp_path: Path) -> None:
    real = tmp_path / "elsewhere.json"
    real.write_text("{}")
    link = tmp_path / "state.json"
    link.symlink_to(real)
    (vm,) = sockets(tmp_path, "vm.qmp")
    FileStore(link).update(vm, target=1)
    assert link.is_symlink() and json.loads(real.read_text()) == {vm: {"target": 1}}


def _fill_the_disk(path: str, key: str, limit: int, strict: bool) -> Any:
    # RLIMIT_FSIZE makes write() fail with EFBIG, as a full disk fails it with ENOSPC
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return FileStore(Path(path), strict=strict).edit(key, lambda e: {**e, "blob": "x" * 8192})


@pytest.mark.parametrize("strict", [True, False])
def test_a_failed_write_keeps_what_was_saved_before(tmp_path: Path, strict: bool) -> None:
    path = tmp_path / "state.json"
    vm, vm2 = sockets(tmp_path, "vm.qmp", "vm2.qmp")
    FileStore(path, strict=True).update(vm, target=1)
    FileStore(path, strict=True).update(vm2, target=2)
    before = path.read_bytes()

    status, value = in_child(lambda: _fill_the_disk(str(path), vm, 1024, strict),
                             unprivileged=False)

    if strict:
        assert status == "raised"
        assert value.startswith(f"StateFileError: state file {path}: cannot be written: ")
        assert "File too large" in value
    else:  # the caller gets its entry (this run goes on) and only a warning is logged
        assert status == "ok" and value["target"] == 1 and len(value["blob"]) == 8192
    assert path.read_bytes() == before
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def _write_then_hang(path: str, key: str, synced: Any) -> None:
    """Write a new version, and hang right after it is on disk but before the rename."""
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        real_fsync(fd)
        synced.set()
        threading.Event().wait()  # until killed

    os.fsync = fsync
    FileStore(Path(path), strict=True).update(key, target=2, blob="y" * 100_000)


def test_a_writer_killed_mid_write_leaves_the_previous_version(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    (vm,) = sockets(tmp_path, "vm.qmp")
    FileStore(path, strict=True).update(vm, target=1)
    before = path.read_bytes()
    synced = FORK.Event()
    child = FORK.Process(target=_write_then_hang, args=(str(path), vm, synced))
    child.start()
    try:
        assert synced.wait(timeout=30), "the writer never wrote its new version to disk"
    finally:
        os.kill(child.pid or 0, signal.SIGKILL)
        child.join(timeout=30)
    assert child.exitcode == -signal.SIGKILL
    assert path.read_bytes() == before
    assert [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]  # killed mid-write
    FileStore(path, strict=True).update(vm, target=3)  # the next writer is not blocked
    assert FileStore(path).get(vm) == {"target": 3}
    assert sorted(os.listdir(tmp_path)) == ["state.json", "vm.qmp"]  # the leftover is gone


def _write_forever(path: str, key: str, count: Any) -> None:
    store = FileStore(Path(path), strict=True)
    while True:
        store.update(key, n=count.value, blob="z" * 200_000)
        with count.get_lock():
            count.value += 1


def test_a_writer_killed_at_any_moment_never_loses_saved_state(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    keep, busy = sockets(tmp_path, "keep.qmp", "busy.qmp")
    FileStore(path, strict=True).update(keep, target=1)
    for rounds in (3, 7, 11):
        count = FORK.Value("i", 0)
        child = FORK.Process(target=_write_forever, args=(str(path), busy, count))
        child.start()
        deadline = time.monotonic() + 30
        while count.value < rounds and child.is_alive() and time.monotonic() < deadline:
            child.join(timeout=0.01)  # a bounded wait for progress, not a fixed pause
        os.kill(child.pid or 0, signal.SIGKILL)
        child.join(timeout=30)
        assert count.value >= rounds, "the writer made no progress"
        data = json.loads(path.read_text())  # always one complete version
        assert data[keep] == {"target": 1}
        assert data[busy]["n"] >= rounds - 1
