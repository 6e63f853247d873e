"""A batch of state-file edits (``FileStore.batch``, docs in balloonctl/store.py): one atomic
write when the block ends, what other processes saved meanwhile kept, a claim saved at once,
and a failed or killed batch never costing what was saved before."""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import os
import resource
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import balloonctl.store as store_module
from balloonctl.errors import StateFileError
from balloonctl.store import FileStore

FORK = multiprocessing.get_context("fork")


def sockets(directory: Path, count: int) -> list[str]:
    """Files standing in for VM sockets (an entry of a path that exists is never pruned)."""
    out = []
    for i in range(count):
        (directory / f"vm{i}.qmp").touch()
        out.append(str(directory / f"vm{i}.qmp"))
    return out


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every atomic replace of a state file, by target (the store's one way to write)."""
    done: list[Path] = []
    real = store_module.replace_atomically

    def counting(target: Path, raw: bytes) -> os.stat_result:
        st = real(target, raw)
        done.append(target)
        return st

    monkeypatch.setattr(store_module, "replace_atomically", counting)
    return done


def identity(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


def _set_in_child(path: str, key: str, values: dict[str, Any]) -> None:
    FileStore(Path(path), strict=True).update(key, **values)


def set_elsewhere(path: Path, key: str, **values: Any) -> None:
    """Another balloonctl process saves ``values`` for ``key`` (a real process)."""
    child = FORK.Process(target=_set_in_child, args=(str(path), key, values))
    child.start()
    child.join(30)
    assert child.exitcode == 0


def test_a_batch_of_edits_over_many_vms_is_one_write_when_it_ends(
        tmp_path: Path, writes: list[Path]) -> None:
    path = tmp_path / "state.json"
    vms = sockets(tmp_path, 50)
    store = FileStore(path, strict=True)
    store.update(vms[0], target=1)
    before, saved = identity(path), path.read_bytes()
    writes.clear()
    with store.batch():
        for i, vm in enumerate(vms):
            assert store.edit(vm, lambda e, i=i: {**e, "target": 100 + i}) == {
                "target": 100 + i}
        store.update(vms[1], target_reached=True)  # a second edit of one entry
        assert store.get(vms[0]) == {"target": 100}  # the batch reads its own edits
        assert store.get(vms[1]) == {"target": 101, "target_reached": True}
        # nothing written yet: the file, and another process's view, are as before
        assert writes == [] and identity(path) == before and path.read_bytes() == saved
        assert FileStore(path).get(vms[0]) == {"target": 1}
    assert writes == [path]
    assert identity(path)[0] != before[0]  # replaced (a new inode), once
    data = json.loads(path.read_text())
    assert {k: v["target"] for k, v in data.items()} == {vm: 100 + i for i, vm in enumerate(vms)}
    assert data[vms[1]]["target_reached"] is True
    assert stat_mode(path) == 0o600
    with store.batch():  # one step down: a batch that changes nothing writes nothing
        store.update(vms[0], target=100)
    assert writes == [path]


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


async def test_a_batch_spans_the_tasks_its_code_starts_and_no_others(
        tmp_path: Path, writes: list[Path]) -> None:
    path = tmp_path / "state.json"
    vms = sockets(tmp_path, 20)
    store = FileStore(path, strict=True)
    outside_go, outside_done = asyncio.Event(), asyncio.Event()

    async def outside() -> None:  # e.g. serve answering `set` while auto's cycle runs
        await outside_go.wait()
        store.update(vms[0], target=7)
        outside_done.set()

    other = asyncio.create_task(outside())  # started before the batch: not in it

    async def one(vm: str, i: int) -> None:
        await asyncio.sleep(0)
        store.update(vm, target=i)

    with store.batch():
        await asyncio.gather(*(one(vm, i) for i, vm in enumerate(vms[1:], 1)))
        assert writes == []
        outside_go.set()
        await outside_done.wait()
        assert writes == [path]  # saved at once: it is no edit of the batch's
        assert set(json.loads(path.read_text())) == {vms[0]}
    await other
    assert writes == [path, path]
    assert {k: v["target"] for k, v in json.loads(path.read_text()).items()} == {
        vms[0]: 7, **{vm: i for i, vm in enumerate(vms[1:], 1)}}


async def test_a_task_that_outlives_its_batch_saves_its_edits_at_once(
        tmp_path: Path, writes: list[Path]) -> None:
    path = tmp_path / "state.json"
    (vm,) = sockets(tmp_path, 1)
    store = FileStore(path, strict=True)
    go = asyncio.Event()

    async def late() -> None:
        await go.wait()
        store.update(vm, target=5)

    with store.batch():
        task = asyncio.create_task(late())  # carries the batch's context
    assert writes == []
    go.set()
    await task
    assert writes == [path] and FileStore(path).get(vm) == {"target": 5}


def test_saving_a_batch_keeps_what_other_processes_saved_meanwhile(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    vm1, vm2 = sockets(tmp_path, 2)
    store = FileStore(path, strict=True)
    store.update(vm1, instance="run-1", hint=False)
    with store.batch():
        store.update(vm1, target=1024)
        set_elsewhere(path, vm2, target=2048)  # another entry
        set_elsewhere(path, vm1, hint=True)  # another field of the batch's entry
        assert store.get(vm1) == {"instance": "run-1", "hint": False, "target": 1024}
    # the batch's change applied again to the entry as saved then
    assert json.loads(path.read_text()) == {
        vm1: {"instance": "run-1", "hint": True, "target": 1024}, vm2: {"target": 2048}}


def test_an_immediate_edit_in_a_batch_is_saved_at_once_with_the_batch_so_far(
        tmp_path: Path, writes: list[Path]) -> None:
    path = tmp_path / "state.json"
    vm1, vm2, vm3 = sockets(tmp_path, 3)
    store = FileStore(path, strict=True)
    with store.batch():
        store.update(vm1, target=1)
        claimed = store.edit(vm2, lambda e: {**e, "foreign": {"journaled": True}},
                             immediate=True)
        assert claimed == {"foreign": {"journaled": True}}
        assert writes == [path]  # another process sees the claim now, and vm1 with it
        assert FileStore(path).get(vm2) == claimed and FileStore(path).get(vm1) == {"target": 1}
        store.update(vm3, target=3)
        assert writes == [path]
    assert writes == [path, path]
    assert set(json.loads(path.read_text())) == {vm1, vm2, vm3}


def test_a_batch_inside_a_batch_joins_it(tmp_path: Path, writes: list[Path]) -> None:
    path = tmp_path / "state.json"
    vm1, vm2 = sockets(tmp_path, 2)
    store = FileStore(path, strict=True)
    with store.batch():
        store.update(vm1, target=1)
        with store.batch():
            store.update(vm2, target=2)
        assert writes == []
    assert writes == [path] and set(json.loads(path.read_text())) == {vm1, vm2}


def test_a_batch_prunes_gone_sockets_once_but_keeps_what_it_edited(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    keep, gone, edited = sockets(tmp_path, 3)
    store = FileStore(path, strict=True)
    for vm in (keep, gone, edited):
        store.update(vm, target=1)
    os.unlink(gone)
    os.unlink(edited)
    with store.batch():
        store.update(edited, target=2)  # written now: kept even though its socket is gone
    assert json.loads(path.read_text()) == {keep: {"target": 1}, edited: {"target": 2}}


# ---- a batch that cannot be saved, a writer killed mid-batch --------------------------------


def _batch_on_a_full_disk(path: str, keys: list[str], strict: bool) -> Any:
    """Edit ``keys`` in a batch whose write fails as on a full disk (RLIMIT_FSIZE: EFBIG)."""
    warnings: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: warnings.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("balloonctl.store")
    logger.handlers, logger.propagate = [handler], False  # none writing to a file past the limit
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    size = os.path.getsize(path)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + 16, size + 16))
    store = FileStore(Path(path), strict=strict)
    try:
        with store.batch():
            for key in keys:
                store.update(key, target=4096, blob="x" * 512)
    except StateFileError as exc:
        return {"raised": str(exc), "warnings": warnings}
    return {"warnings": warnings, "seen": [store.get(key) for key in keys],
            "problem": str(store.problem)}


def _run_child(target: Any, *args: Any) -> Any:
    out = FORK.Queue()

    def run() -> None:
        try:
            out.put(target(*args))
        except BaseException as exc:
            out.put({"child raised": f"{type(exc).__name__}: {exc}"})

    child = FORK.Process(target=run)
    child.start()
    result = out.get(timeout=60)
    child.join(60)
    return result


@pytest.mark.parametrize("strict", [False, True])
def test_a_batch_that_cannot_be_written_warns_and_keeps_the_file(tmp_path: Path,
                                                                 strict: bool) -> None:
    path = tmp_path / "state.json"
    vms = sockets(tmp_path, 5)
    FileStore(path, strict=True).update(vms[0], target=1)
    saved = path.read_bytes()

    result = _run_child(_batch_on_a_full_disk, str(path), vms, strict)

    assert "child raised" not in result, result
    assert path.read_bytes() == saved  # the previous version, complete
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    if strict:
        assert result["raised"].startswith(f"state file {path}: cannot be written: ")
        assert result["warnings"] == []
        return
    # the same one warning as any edit that cannot be saved, once for the whole batch
    assert result["warnings"] == [
        f"{result['problem']}; balloonctl goes on without it, and what this run sets "
        "(targets, the hint) will not be remembered"]
    assert "cannot be written: File too large" in result["problem"]
    # this run goes on remembering what it set, in memory
    assert [e.get("target") for e in result["seen"]] == [4096] * 5


def _batch_then_hang(path: str, keys: list[str], synced: Any) -> None:
    """Edit ``keys`` in a batch, and hang once its new version is on disk, before the rename."""
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        real_fsync(fd)
        synced.set()
        threading.Event().wait()  # until killed

    store = FileStore(Path(path), strict=True)
    with store.batch():
        for key in keys:
            store.update(key, target=2)
        os.fsync = fsync


@pytest.fixture
def killed_writer() -> Iterator[list[Any]]:
    children: list[Any] = []
    yield children
    for child in children:
        if child.is_alive():
            os.kill(child.pid, signal.SIGKILL)
            child.join(30)


def test_a_writer_killed_while_saving_a_batch_leaves_the_previous_version(
        tmp_path: Path, killed_writer: list[Any]) -> None:
    path = tmp_path / "state.json"
    vms = sockets(tmp_path, 10)
    FileStore(path, strict=True).update(vms[0], target=1)
    saved = path.read_bytes()
    synced = FORK.Event()
    child = FORK.Process(target=_batch_then_hang, args=(str(path), vms, synced))
    killed_writer.append(child)
    child.start()
    assert synced.wait(timeout=30), "the batch never wrote its new version"
    os.kill(child.pid or 0, signal.SIGKILL)
    child.join(30)
    assert path.read_bytes() == saved
    assert FileStore(path).get(vms[0]) == {"target": 1}
