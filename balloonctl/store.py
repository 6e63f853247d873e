"""What balloonctl remembers between invocations, per VM: the last target it set and the
cache-first hint state (QEMU keeps neither for stock devices).

A small JSON object at ``$BALLOONCTL_STATE`` or ``$XDG_STATE_HOME/balloonctl/state.json``,
one entry per VM keyed by ``state_key(address)``: the socket's real path, so ``--dir .``,
``//run/vm.qmp`` and a symlink name the same VM (entries under the old, unresolved keys are
found and moved on the next write). ``MemoryStore`` keeps the same in memory.

Reading needs no write access and takes no lock: every write replaces the whole file
atomically (a temp file in the same directory, fsync, rename, fsync of the directory), so a
reader sees one complete version, and a full disk or a writer killed mid-write leaves the
previous version in place. Writers serialise their read-modify-write with an exclusive
``flock`` on the directory. The file is created 0600 (its directory 0700). Each write drops
the entries of unix sockets that no longer exist; an edit that changes nothing writes
nothing. The temp files of writers killed mid-write are removed at a store's first write,
and at most once a minute after.

A *batch* (``FileStore.batch()``, a ``with`` block) saves many edits in one write: what
``auto`` does in one cycle. Edits made in the block, by the code that opened it and the
asyncio tasks that code starts (a context variable), are kept in memory, and reads in the
block see them; reads of other entries see the file as the batch first read it. When the
block ends, however it ends, the batch is saved in one write: under the lock the file is
read afresh and every change is applied again, in order, to its entry there (so what other
processes saved meanwhile is kept, and a change may run twice: it must depend only on the
entry it is given). An ``immediate`` edit in a batch (a claim other processes must see at
once) is saved at once, with the batch's edits so far. Edits of other tasks, and of tasks
that outlive the block, are saved as usual. A batch opened inside a batch joins it. Until
the block ends the batch's edits are only in memory: a crash loses them, never what was
saved before.

A ``FileStore`` keeps the last version it read or wrote, keyed by the file's identity
(device, inode, size, mtime, ctime): a read of an unchanged file neither parses it nor
resolves its keys again. The identity alone is trusted only once the file is more than 3 s
older than the clock (a later write gets a later mtime then, even at FAT's 2 s resolution);
a file changed more recently is read again and compared byte for byte. A socket path that
is already real is resolved once per process (``state_key``).

A state file that cannot be used (unreadable, a directory, not UTF-8, not JSON of the right
shape, a dangling symlink, an unwritable directory, a full disk) is a ``StateFileError``
naming the file. ``FileStore`` raises it only when ``strict``; by default it logs the error
once as a warning (logger ``balloonctl.store``) and goes on in memory for the rest of its
life: reads see nothing (or what this process recorded), and the file keeps what it had. A
batch whose write fails is the same warning when its block ends, and its edits go on in
memory.

The store itself is a dumb key -> dict map. ``BalloonClient`` records with each entry the
identity of the VM *instance* (one run of QEMU) it belongs to and ignores entries of any
other instance; see ``BalloonClient`` for the rule.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Protocol

from balloonctl.errors import StateFileError
from balloonctl.statefile import (
    Version,
    locked,
    read_file,
    remove_leftovers,
    replace_atomically,
    settled,
    stamp,
    why,
    write_target,
)

__all__ = [
    "STATE_ENV",
    "Change",
    "FileStore",
    "MemoryStore",
    "Store",
    "default_state_path",
    "private_state",
    "state_key",
]

log = logging.getLogger(__name__)

STATE_ENV = "BALLOONCTL_STATE"

Change = Callable[[dict[str, Any]], dict[str, Any]]
"""``change(entry) -> new entry``: gets a copy of the entry ({} when none) and returns what to
store in its place; it runs under the store's lock (a read-modify-write no one interleaves).
In a batch it runs again, on the entry as saved then, when the batch is saved."""


class Store(Protocol):
    def get(self, key: str) -> dict[str, Any]: ...

    def update(self, key: str, **values: Any) -> None: ...

    def edit(self, key: str, change: Change, *, immediate: bool = False) -> dict[str, Any]:
        """Replace the entry with ``change(entry)`` atomically; return the new entry.
        ``immediate``: saved at once even in a batch."""
        ...

    def batch(self) -> AbstractContextManager[None]:
        """Save the edits made while the block runs in one write (see the module docstring)."""
        ...


def _is_tcp(address: str) -> bool:
    # the rule of qmp._parse_address: host:port is TCP, anything with a slash is a path
    if "/" in address or ":" not in address:
        return False
    return address.rpartition(":")[2].isdigit()


# Socket paths found to be real paths already (``realpath(p) == p``): most keys, resolved
# on every read otherwise. A path with a symlink or ``..`` in it is resolved every time, so
# re-pointing a symlink is seen at once.
_REAL_PATHS: set[str] = set()
_REAL_PATHS_MAX = 4096


def state_key(address: str) -> str:
    """The key of a VM's entry: the real path of a unix socket (``os.path.realpath``: no
    ``.``, ``..``, ``//`` or symlinks), a ``host:port`` address as given."""
    if address in _REAL_PATHS or _is_tcp(address):
        return address
    real = os.path.realpath(address)
    if real == address:
        if len(_REAL_PATHS) >= _REAL_PATHS_MAX:
            _REAL_PATHS.clear()
        _REAL_PATHS.add(address)
    return real


def _lookup(data: dict[str, dict[str, Any]], key: str) -> tuple[str, dict[str, Any]]:
    """(the entry's key in ``data``, the entry) for an address; ({key}, {}) when none.
    Finds entries written under the address as given, before keys were real paths."""
    real = state_key(key)
    for candidate in (real, key):
        if candidate in data:
            return candidate, data[candidate]
    return real, {}


class MemoryStore:
    """Per-process state; the default for library users and tests."""

    def __init__(self, data: dict[str, dict[str, Any]] | None = None) -> None:
        self._data: dict[str, dict[str, Any]] = dict(data or {})

    def get(self, key: str) -> dict[str, Any]:
        return dict(_lookup(self._data, key)[1])

    def update(self, key: str, **values: Any) -> None:
        self.edit(key, lambda entry: {**entry, **values})

    def edit(self, key: str, change: Change, *, immediate: bool = False) -> dict[str, Any]:
        old, entry = _lookup(self._data, key)
        new = dict(change(dict(entry)))
        self._data.pop(old, None)
        self._data[state_key(key)] = new
        return dict(new)

    def batch(self) -> AbstractContextManager[None]:
        """Nothing to batch in memory: every edit is already saved."""
        return contextlib.nullcontext()


def default_state_path() -> Path:
    env = os.environ.get(STATE_ENV)
    if env:
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return Path(base) / "balloonctl" / "state.json"


@contextlib.contextmanager
def private_state(path: Path) -> Iterator[None]:
    """Point ``default_state_path()`` (``$BALLOONCTL_STATE``) at ``path`` while the block
    runs: ``demo``'s simulated VMs stay out of the user's state file."""
    old = os.environ.get(STATE_ENV)
    os.environ[STATE_ENV] = str(path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(STATE_ENV, None)
        else:
            os.environ[STATE_ENV] = old


def _parse(raw: bytes, path: str) -> dict[str, dict[str, Any]]:
    """The entries of a state file's bytes.

    Raises:
        StateFileError: not UTF-8, not JSON, or not an object of objects.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StateFileError(path, f"is not UTF-8 text (byte {exc.start})") from None
    if not text.strip():
        return {}  # an empty file (an older balloonctl killed mid-write) remembers nothing
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StateFileError(path, f"is not valid JSON (line {exc.lineno} column "
                                   f"{exc.colno}: {exc.msg})") from None
    except (ValueError, RecursionError):
        raise StateFileError(path, "is not valid JSON") from None
    if not isinstance(doc, dict):
        raise StateFileError(path, f"expected a JSON object of VM entries, got "
                                   f"{type(doc).__name__}")
    data: dict[str, dict[str, Any]] = {}
    for key, entry in doc.items():
        if not isinstance(entry, dict):
            raise StateFileError(path, f"the entry for {key!r} is not a JSON object")
        # keys before real paths: //run/x.qmp and /run/x.qmp are one VM
        data.setdefault(state_key(key) if key.startswith("/") else key, entry)
    return data


def _prune(data: dict[str, dict[str, Any]], keep: set[str]) -> bool:
    """Drop the entries of unix sockets that are gone (their VM has exited), except those in
    ``keep``; whether any was dropped."""
    dropped = False
    for key in list(data):
        if key not in keep and key.startswith("/") and not os.path.exists(key):
            del data[key]
            dropped = True
    return dropped


def _apply(data: dict[str, dict[str, Any]],
           edits: list[tuple[str, Change]]) -> tuple[list[dict[str, Any]], bool]:
    """Apply ``edits`` in order to ``data`` (a copy of the file's entries), then prune the
    entries of gone sockets (not those edited): each edit's new entry, and whether ``data``
    changed."""
    results: list[dict[str, Any]] = []
    changed = False
    keep: set[str] = set()
    for key, change in edits:
        old, entry = _lookup(data, key)
        new = dict(change(dict(entry)))
        real = state_key(key)
        changed = changed or new != entry or old != real or old not in data
        data.pop(old, None)
        data[real] = new
        keep.add(real)
        results.append(dict(new))
    return results, _prune(data, keep) or changed


# How often a long-lived store looks for the temp files of writers killed mid-write.
_SWEEP_EVERY = 60.0


class _Batch:
    """The edits of one ``FileStore.batch()`` block not saved yet: in order (``edits``) and
    as they stand (``entries``, by real key), over the file as the batch first read it."""

    __slots__ = ("base", "edits", "entries", "open", "store")

    def __init__(self, store: FileStore) -> None:
        self.store = store
        self.open = True
        self.base: dict[str, dict[str, Any]] | None = None
        self.edits: list[tuple[str, Change]] = []
        self.entries: dict[str, dict[str, Any]] = {}


_BATCH: ContextVar[_Batch | None] = ContextVar("balloonctl_store_batch", default=None)


class FileStore:
    """State persisted in a JSON file shared by every balloonctl process of a user.

    ``strict`` raises ``StateFileError`` for a file that cannot be used; otherwise that error
    is logged once and the store goes on in memory (see the module docstring).
    """

    def __init__(self, path: Path | None = None, *, strict: bool = False) -> None:
        self.path = path or default_state_path()
        self.strict = strict
        self.problem: StateFileError | None = None  # why the file is no longer used
        self._memory: MemoryStore | None = None  # where a non-strict store went on
        self._version: Version | None = None  # the file as last read or written
        self._batches: list[_Batch] = []  # open, or being saved
        self._swept_at: float | None = None  # when leftover temp files were last removed

    def get(self, key: str) -> dict[str, Any]:
        """The entry for ``key`` ({} when none); in a batch, as the batch has it.

        Raises:
            StateFileError: (only when ``strict``) the file cannot be read.
        """
        if self._memory is not None:
            return self._memory.get(key)
        batch = self._open_batch()
        try:
            if batch is None:
                return dict(_lookup(self._read(), key)[1])
            real = state_key(key)
            if real in batch.entries:
                return dict(batch.entries[real])
            return dict(_lookup(self._base(batch), key)[1])
        except StateFileError as exc:
            self._give_up(exc, {})
            return {}

    def update(self, key: str, **values: Any) -> None:
        self.edit(key, lambda entry: {**entry, **values})

    def edit(self, key: str, change: Change, *, immediate: bool = False) -> dict[str, Any]:
        """Replace the entry with ``change(entry)`` in the file; return the new entry. In a
        batch, unless ``immediate``, the file is written when the batch ends.

        Raises:
            StateFileError: (only when ``strict``) the file cannot be read or written; the
                file keeps what it had.
        """
        if self._memory is not None:
            return self._memory.edit(key, change)
        batch = self._open_batch()
        if batch is None or immediate:
            pending = batch.edits if batch is not None else []
            saved = self._save([*pending, (key, change)])
            if saved is None:  # gone on in memory (with the batch's edits)
                assert self._memory is not None
                return self._memory.edit(key, change)
            if batch is not None:  # the batch's edits are in the file now
                batch.edits, batch.entries, batch.base = [], {}, None
            return saved[-1]
        try:
            base = self._base(batch)
        except StateFileError as exc:
            self._give_up(exc, {})
            assert self._memory is not None
            return self._memory.edit(key, change)
        real = state_key(key)
        entry = batch.entries[real] if real in batch.entries else _lookup(base, key)[1]
        new = dict(change(dict(entry)))
        batch.entries[real] = new
        batch.edits.append((key, change))
        return dict(new)

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Save the edits made while the block runs in one write when it ends (see the
        module docstring); inside a batch of this store, join it.

        Raises (when the block ends):
            StateFileError: (only when ``strict``) the batch cannot be saved; the file
                keeps what it had.
        """
        if self._open_batch() is not None:
            yield
            return
        batch = _Batch(self)
        self._batches.append(batch)
        token = _BATCH.set(batch)
        try:
            yield
        finally:
            _BATCH.reset(token)
            batch.open = False
            try:
                if batch.edits and self._memory is None:
                    self._save(batch.edits)
            finally:
                self._batches.remove(batch)

    def _open_batch(self) -> _Batch | None:
        batch = _BATCH.get()
        return batch if batch is not None and batch.store is self and batch.open else None

    def _base(self, batch: _Batch) -> dict[str, dict[str, Any]]:
        """The file's entries as ``batch`` first read them.

        Raises:
            StateFileError: it cannot be read or parsed.
        """
        if batch.base is None:
            batch.base = self._read()
        return batch.base

    def _save(self, edits: list[tuple[str, Change]]) -> list[dict[str, Any]] | None:
        """Apply ``edits`` to the file in one read-modify-write under the lock, writing it
        when anything changed; each edit's new entry. None when the store went on in
        memory instead (the warning; the open batches' edits are in memory).

        Raises:
            StateFileError: (only when ``strict``) the file cannot be read or written.
        """
        before: dict[str, dict[str, Any]] = {}
        try:
            target = write_target(self.path)
            with locked(target.parent, self.path):
                before = self._read()
                data = dict(before)
                results, changed = _apply(data, edits)
                if changed:
                    self._write(target, data)
                return results
        except StateFileError as exc:
            self._give_up(exc, before)
            return None

    # ---- the file ---------------------------------------------------------------------

    def _read(self) -> dict[str, dict[str, Any]]:
        """The file's entries, {} when there is none yet. Opens it read-only.

        Raises:
            StateFileError: it cannot be read or parsed.
        """
        path = str(self.path)
        known = self._version
        if known is not None and known.settled:
            with contextlib.suppress(OSError):
                if stamp(os.stat(path)) == known.stamp:
                    return known.data  # unchanged and settled: no read, no parse
        found = read_file(path)
        if found is None:
            return {}
        st, raw = found
        # the same bytes as last time: the same entries, without parsing or resolving keys
        data = known.data if known is not None and known.raw == raw else _parse(raw, path)
        self._version = Version(stamp(st), raw, data, settled(st))
        return data

    def _write(self, target: Path, data: dict[str, dict[str, Any]]) -> None:
        """Replace ``target`` with ``data`` atomically: the old version stays until the new
        one is complete on disk. Called under the lock.

        Raises:
            StateFileError: the new version cannot be written (the old one is kept).
        """
        now = time.monotonic()
        if self._swept_at is None or now - self._swept_at >= _SWEEP_EVERY:
            remove_leftovers(target)  # left by writers killed mid-write
            self._swept_at = now
        raw = json.dumps(data, sort_keys=True, separators=(",", ":")).encode("utf-8")
        try:
            st = replace_atomically(target, raw)
        except OSError as exc:
            raise StateFileError(str(self.path), f"cannot be written: {why(exc)} "
                                                 "(it keeps what it had)") from None
        # Under the lock no one else writes: this is the version just written.
        self._version = Version(stamp(st), raw, data, False)

    def _give_up(self, exc: StateFileError, data: dict[str, dict[str, Any]]) -> None:
        """Strict: raise ``exc``. Otherwise warn once and go on in memory from ``data``, with
        the edits of the open batches."""
        if self.strict:
            raise exc
        self.problem = exc
        memory = self._memory = MemoryStore(data)
        for batch in self._batches:
            for key, change in batch.edits:
                memory.edit(key, change)
            batch.edits, batch.entries = [], {}
        log.warning("%s; balloonctl goes on without it, and what this run sets (targets, "
                    "the hint) will not be remembered", exc)
