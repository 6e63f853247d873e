"""The state store's cache (docs in balloonctl/store.py): a read of an unchanged file neither
parses it nor resolves its keys again, yet every change by another writer is seen, even one
of the same size within the same second or one that puts the old mtime back; an edit that
changes nothing writes nothing; a re-pointed symlink is resolved afresh."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

import pytest

import balloonctl.store as store_module
from balloonctl import statefile
from balloonctl.store import FileStore, state_key

FORK = multiprocessing.get_context("fork")


def socket_file(directory: Path, name: str) -> str:
    (directory / name).touch()  # an entry of a path that exists is never pruned
    return str(directory / name)


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every parse of a state file's bytes, by path."""
    calls: list[str] = []
    real = store_module._parse

    def counting(raw: bytes, path: str) -> dict[str, dict[str, Any]]:
        calls.append(path)
        return real(raw, path)

    monkeypatch.setattr(store_module, "_parse", counting)
    return calls


def _set_in_child(path: str, key: str, target: int) -> None:
    FileStore(Path(path), strict=True).update(key, target=target)


def set_elsewhere(path: Path, key: str, target: int) -> None:
    """Another balloonctl process sets ``target`` (a real process: its own store)."""
    child = FORK.Process(target=_set_in_child, args=(str(path), key, target))
    child.start()
    child.join(30)
    assert child.exitcode == 0


def test_repeated_reads_of_an_unchanged_file_parse_it_once(tmp_path: Path,
                                                           parses: list[str]) -> None:
    path = tmp_path / "state.json"
    vm1 = socket_file(tmp_path, "vm1.qmp")
    set_elsewhere(path, vm1, 1024)
    reader = FileStore(path)
    for _ in range(50):
        assert reader.get(vm1) == {"target": 1024}
    assert parses == [str(path)]


def test_a_store_does_not_parse_what_it_just_wrote(tmp_path: Path, parses: list[str]) -> None:
    path = tmp_path / "state.json"
    vm1, vm2 = socket_file(tmp_path, "vm1.qmp"), socket_file(tmp_path, "vm2.qmp")
    store = FileStore(path)
    for n in range(1, 21):
        store.update(vm1 if n % 2 else vm2, target=n)
        assert store.get(vm1) == {"target": n if n % 2 else n - 1}
    assert parses == []  # the file never existed before this store wrote it


def test_a_change_of_the_same_size_within_the_same_second_is_seen(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    vm1 = socket_file(tmp_path, "vm1.qmp")
    reader = FileStore(path)
    for target in (1111, 2222, 3333, 4444):  # same length: the file's size never changes
        set_elsewhere(path, vm1, target)
        assert reader.get(vm1) == {"target": target}


def test_a_settled_file_rewritten_in_place_with_its_old_mtime_is_seen(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "state.json"
    vm1 = socket_file(tmp_path, "vm1.qmp")
    set_elsewhere(path, vm1, 1111)
    old = path.stat()
    past = old.st_mtime_ns - 10_000_000_000
    os.utime(path, ns=(past, past))
    # Settled at once (ctime cannot be put in the past): the reader trusts the identity.
    monkeypatch.setattr(statefile, "_SETTLED_NS", 0)
    reader = FileStore(path)
    assert reader.get(vm1) == {"target": 1111}
    seen_ctime = path.stat().st_ctime_ns
    raw = path.read_bytes().replace(b"1111", b"2222")
    deadline = time.monotonic() + 10
    while path.stat().st_ctime_ns == seen_ctime:  # until the coarse file clock has ticked
        assert time.monotonic() < deadline, "the file's ctime never moved"
        with open(path, "r+b") as fh:  # same inode, same size, mtime put back
            fh.write(raw)
        os.utime(path, ns=(past, past))
    now = path.stat()
    assert (now.st_ino, now.st_size, now.st_mtime_ns) == (old.st_ino, old.st_size, past)
    assert reader.get(vm1) == {"target": 2222}


def test_an_edit_that_changes_nothing_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    vm1 = socket_file(tmp_path, "vm1.qmp")
    store = FileStore(path)
    store.update(vm1, target=1024)
    before = path.stat()
    assert store.edit(vm1, lambda entry: entry) == {"target": 1024}
    store.update(vm1, target=1024)
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    store.update(vm1, target=2048)  # one step past: a change is written
    assert path.stat().st_ino != before.st_ino
    assert FileStore(path).get(vm1) == {"target": 2048}


def test_an_edit_that_prunes_a_gone_socket_is_written(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    vm1, gone = socket_file(tmp_path, "vm1.qmp"), socket_file(tmp_path, "gone.qmp")
    store = FileStore(path)
    store.update(vm1, target=1024)
    store.update(gone, target=512)
    os.unlink(gone)  # its VM exited
    store.update(vm1, target=1024)  # the entry is unchanged, the file is not
    assert gone not in FileStore(path)._read()


def test_a_re_pointed_symlink_names_its_new_target(tmp_path: Path) -> None:
    a, b = socket_file(tmp_path, "a.qmp"), socket_file(tmp_path, "b.qmp")
    link = tmp_path / "vm.qmp"
    link.symlink_to(a)
    assert state_key(str(link)) == a
    link.unlink()
    link.symlink_to(b)
    assert state_key(str(link)) == b
    assert state_key(a) == a and state_key(a) == a  # a real path stays itself
