"""What balloonctl remembers between invocations, per VM: the last target it set and the
cache-first hint state (QEMU keeps neither for stock devices).

A small JSON file at ``$BALLOONCTL_STATE`` or ``$XDG_STATE_HOME/balloonctl/state.json``,
keyed by the VM's QMP address, updated under an exclusive ``flock`` so concurrent CLI
invocations do not lose each other's writes. ``MemoryStore`` keeps the same in memory.

The store itself is a dumb key -> dict map. ``BalloonClient`` records with each entry the
identity of the VM *instance* (one run of QEMU) it belongs to and ignores entries of any
other instance; see ``BalloonClient`` for the rule.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

__all__ = ["Change", "FileStore", "MemoryStore", "Store", "default_state_path"]


Change = Callable[[dict[str, Any]], dict[str, Any]]
"""``change(entry) -> new entry``: gets a copy of the entry ({} when none) and returns what to
store in its place; it runs under the store's lock (a read-modify-write no one interleaves)."""


class Store(Protocol):
    def get(self, key: str) -> dict[str, Any]: ...

    def update(self, key: str, **values: Any) -> None: ...

    def edit(self, key: str, change: Change) -> dict[str, Any]:
        """Replace the entry with ``change(entry)`` atomically; return the new entry."""
        ...


class MemoryStore:
    """Per-process state; the default for library users and tests."""

    def __init__(self) -> None:
        self._data: dict[str, dict[str, Any]] = {}

    def get(self, key: str) -> dict[str, Any]:
        return dict(self._data.get(key, {}))

    def update(self, key: str, **values: Any) -> None:
        self._data.setdefault(key, {}).update(values)

    def edit(self, key: str, change: Change) -> dict[str, Any]:
        new = dict(change(self.get(key)))
        self._data[key] = new
        return dict(new)


def default_state_path() -> Path:
    env = os.environ.get("BALLOONCTL_STATE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return Path(base) / "balloonctl" / "state.json"


class FileStore:
    """State persisted in a JSON file shared by every balloonctl process of a user."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or default_state_path()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, dict[str, Any]]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+", encoding="utf-8") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            fh.seek(0)
            text = fh.read()
            try:
                data = json.loads(text) if text.strip() else {}
            except json.JSONDecodeError:
                data = {}  # a corrupt file is state we can afford to lose
            if not isinstance(data, dict):
                data = {}
            before = json.dumps(data, sort_keys=True)
            yield data
            after = json.dumps(data, sort_keys=True)
            if after != before:
                fh.seek(0)
                fh.truncate()
                fh.write(after)
                fh.flush()

    def get(self, key: str) -> dict[str, Any]:
        with self._locked() as data:
            value = data.get(key, {})
            return dict(value) if isinstance(value, dict) else {}

    def update(self, key: str, **values: Any) -> None:
        with self._locked() as data:
            entry = data.setdefault(key, {})
            if not isinstance(entry, dict):
                entry = data[key] = {}
            entry.update(values)

    def edit(self, key: str, change: Change) -> dict[str, Any]:
        with self._locked() as data:
            entry = data.get(key, {})
            new = dict(change(dict(entry) if isinstance(entry, dict) else {}))
            data[key] = new
            return dict(new)
