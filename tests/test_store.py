"""The state store: what balloonctl remembers between CLI invocations."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from balloonctl.store import FileStore, MemoryStore, default_state_path


def test_file_store_persists_across_instances(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    FileStore(path).update("/run/vm1.qmp", target=1024, hint_enabled=True)
    assert FileStore(path).get("/run/vm1.qmp") == {"target": 1024, "hint_enabled": True}
    assert FileStore(path).get("/run/other.qmp") == {}


def test_file_store_recovers_from_a_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text("{not json")
    store = FileStore(path)
    assert store.get("x") == {}
    store.update("x", target=5)
    assert FileStore(path).get("x") == {"target": 5}


def _writer(path: str, key: str, n: int) -> None:
    store = FileStore(Path(path))
    for i in range(n):
        store.update(key, count=i + 1)


def test_concurrent_writers_do_not_lose_each_others_keys(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    procs = [
        multiprocessing.get_context("fork").Process(target=_writer, args=(str(path), f"vm{i}", 30))
        for i in range(3)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    store = FileStore(path)
    assert [store.get(f"vm{i}").get("count") for i in range(3)] == [30, 30, 30]


@pytest.mark.parametrize("kind", ["file", "memory"])
def test_edit_replaces_the_entry_with_what_the_change_returns(tmp_path: Path, kind: str) -> None:
    store = FileStore(tmp_path / "state.json") if kind == "file" else MemoryStore()
    store.update("vm", instance="run-1", target=5, hint=True)

    def new_run(entry: dict[str, object]) -> dict[str, object]:
        assert entry == {"instance": "run-1", "target": 5, "hint": True}
        return {"instance": "run-2", "target": 7}

    assert store.edit("vm", new_run) == {"instance": "run-2", "target": 7}
    assert store.get("vm") == {"instance": "run-2", "target": 7}
    assert store.edit("other", lambda e: {**e, "n": 1}) == {"n": 1}


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
