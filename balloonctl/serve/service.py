"""``HostService``: what ``balloonctl serve`` does between HTTP requests.

It owns one ``DataSource`` (a hold-mode ``Fleet`` in production: one QMP connection per VM,
events on, reconnect with backoff), polls it every ``interval`` seconds into ``latest``,
reads the host's memory, counts foreign writers (``BalloonState.owner``), runs ``auto``
(``balloonctl.auto.AutoController``) when one is wired, and serves the journal. Target
changes are journaled where the CLI's are: by the fleet's recorder
(``balloonctl.changes.JournalRecorder``; ``on_behalf`` names the HTTP client's origin), by
the auto controller (origin ``auto``, ``foreign``), and by ``undo``. HTTP handlers
(``serve.api``) and the metrics collector (``serve.metrics``) only read what it keeps and
call its methods: listing VMs never touches a QMP socket.

No web framework here: the service is tested and benchmarked without one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

from balloonctl.auto import Cycle, plan_cycle
from balloonctl.changes import on_behalf
from balloonctl.errors import BalloonError, UnknownVM, UsageError
from balloonctl.fleet import CONNECTED, DataSource, Fleet
from balloonctl.history import history, plan_undo
from balloonctl.host import HostMemory, read_host
from balloonctl.http.wire import auto_plan_json, cycle_events, event_to_json
from balloonctl.journal import Journal, JournalEntry, Origin
from balloonctl.model import BalloonState, HintState, Owner, VmRef
from balloonctl.policy import Decision, PolicySettings
from balloonctl.qmp import BalloonEvent
from balloonctl.serve.fanout import Fanout
from balloonctl.serve.parts import AutoControl, Conflict, ServeHealth, Unavailable
from balloonctl.units import SizeKind, TargetSpec, format_size

__all__ = ["SERVE_REASON", "AutoControl", "Conflict", "HostService", "ServeHealth",
           "Unavailable"]

log = logging.getLogger(__name__)

SERVE_REASON = "set through balloonctl serve"  # the journal's reason of an HTTP client's set


class HostService:
    """The VMs of one host, served. Use ``async with`` (or ``start``/``stop``).

    ``refs`` gives each VM's inventory entry (for the policy's per-VM settings); ``host_root``
    is where the host's memory is read (None: not shown); ``journal`` is where history and
    undo read and undo writes (the source's recorder journals the targets it sets; None: no
    history); ``auto`` the controller (None: auto is not available here).
    """

    def __init__(self, source: DataSource, *, refs: Sequence[VmRef] = (),
                 interval: float = 1.0, host_root: Path | None = None,
                 journal: Journal | None = None, policy: PolicySettings | None = None,
                 auto: AutoControl | None = None, label: str = "localhost",
                 clock: Callable[[], float] = time.time) -> None:
        self.source = source
        self.refs = {r.name: r for r in refs}
        self.interval = interval
        self.host_root = host_root
        self.journal = journal
        self.policy = policy if policy is not None else PolicySettings()
        self.auto = auto
        self.label = label
        self.clock = clock
        self.latest: dict[str, BalloonState] = {}
        self.previous: dict[str, BalloonState] = {}
        self.host: HostMemory | None = None
        self.host_error: str | None = None
        self.health = ServeHealth()
        self.last_cycle: Cycle | None = None  # auto's
        self.auto_stopped: str | None = None  # why auto switched itself off
        self._listing: bytes | None = None  # /v1/vms as sent, until a state changes
        self._changes: dict[str, int] = {}  # VM -> changes made through the service
        self._fanout = Fanout(self.health)  # the stream's readers
        self._tasks: list[asyncio.Task[None]] = []
        self.loop: asyncio.AbstractEventLoop | None = None  # the loop the service runs on
        self._polled = asyncio.Event()
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()  # one poll at a time

    # -- life -----------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return bool(self._tasks)

    async def start(self) -> None:
        """Start polling, the event pump and the auto loop (idempotent)."""
        if self._tasks:
            return
        self.loop = asyncio.get_running_loop()
        self._tasks = [asyncio.create_task(self._poll_loop(), name="serve:poll"),
                       asyncio.create_task(self._event_loop(), name="serve:events"),
                       asyncio.create_task(self._auto_loop(), name="serve:auto")]

    async def stop(self) -> None:
        """Stop the loops, end every stream and close the source (never raises)."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._fanout.end()
        with contextlib.suppress(BalloonError):
            await self.source.close()

    async def __aenter__(self) -> HostService:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- polling --------------------------------------------------------------------------
    async def _poll_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await self.poll_once()
            except Exception as exc:  # a bug must not stop the service; count and go on
                log.exception("poll failed")
                self.health.error("poll", type(exc).__name__)
            self._wake.clear()
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, self.interval - (loop.time() - started))):
                    await self._wake.wait()

    async def poll_once(self) -> list[BalloonState]:
        """Read every VM (and the host) once; returns the states. Never raises
        ``BalloonError``: unreachable VMs are states with an error."""
        async with self._lock:
            started = time.perf_counter()
            changes = dict(self._changes)
            states = await self.source.snapshot()
            for state in states:
                # a VM changed through the service while this poll ran may have been read
                # before the change: keep the newer state, the next poll reads it again
                if self._changes.get(state.name, 0) == changes.get(state.name, 0):
                    self._observe(state)
            self._read_host()
            self.health.polls += 1
            self.health.observe_poll(time.perf_counter() - started)
            self._polled.set()
        vms = [s.to_json() for s in states]
        self._listing = json.dumps(vms).encode()
        self._publish({"type": "snapshot", "host": self.label, "time": self.clock(),
                       "vms": vms})
        return states

    def _observe(self, state: BalloonState) -> None:
        """Keep ``state`` as the VM's latest; count failures, and VMs another writer moved
        (``Owner.FOREIGN``, ``balloonctl.targets``' rule)."""
        name = state.name
        self._listing = None
        old = self.latest.get(name)
        if old is not None and old.stats is not None and old.stats.reported:
            self.previous[name] = old
        self.latest[name] = state
        if not state.reachable:
            self.health.error("poll", state.error_kind or "Unreachable")
            return
        if state.owner is Owner.FOREIGN and (old is None or old.owner is not Owner.FOREIGN):
            self.health.foreign_writes[name] = self.health.foreign_writes.get(name, 0) + 1

    def _read_host(self) -> None:
        if self.host_root is None:
            return
        try:
            self.host, self.host_error = read_host(self.host_root), None
        except BalloonError as exc:
            self.host_error = exc.message
            self.health.error("host", type(exc).__name__)

    def poke(self) -> None:
        """Poll again now (after a change), not at the next interval."""
        self._wake.set()

    # -- events and streams ---------------------------------------------------------------
    async def _event_loop(self) -> None:
        async for name, event in self.source.events():
            if event.name == CONNECTED:
                # poll now rather than keep the state the event carries: it comes from the
                # events connection, which may have read it before a change made meanwhile
                self.poke()
            self._publish({"type": "event", "host": self.label, **event_to_json(name, event)})

    def _publish(self, item: dict[str, Any]) -> None:
        self._fanout.publish(item)

    async def stream(self, *, snapshots: bool = True, events: bool = True,
                     auto: bool = True) -> AsyncIterator[dict[str, Any]]:
        """Items as they happen: ``{"type": "snapshot", "vms": [...]}`` after every poll (the
        current one first), ``{"type": "event", "vm", "event", "data"}`` for every event
        (auto's changes among them), and ``{"type": "auto", ...}`` after every auto cycle
        and switch (the last one first). Ends when the service stops."""
        async def first() -> list[dict[str, Any]]:
            items = [{"type": "snapshot", "host": self.label, "time": self.clock(),
                      "vms": [s.to_json() for s in await self.snapshot()]}] if snapshots else []
            if auto and self.last_cycle is not None:
                items.append(self._auto_item())
            return items

        wanted = {"snapshot": snapshots, "event": events, "auto": auto}
        async with contextlib.aclosing(self._fanout.follow(first, wanted)) as items:
            async for item in items:
                yield item

    # -- DataSource -----------------------------------------------------------------------
    @property
    def names(self) -> Sequence[str]:
        return self.source.names

    def _known(self, name: str) -> str:
        if name not in self.source.names:
            known = ", ".join(self.source.names) or "none"
            raise UnknownVM(f"no VM named {name!r} (known: {known})", vm=None)
        return name

    async def snapshot(self) -> list[BalloonState]:
        """The latest state of every VM, in inventory order, without touching a socket (the
        first call waits for the first poll; without a running poller it polls now)."""
        if not self._tasks:
            return await self.poll_once()
        await self._polled.wait()
        return [self.latest[n] for n in self.source.names if n in self.latest]

    @property
    def cached_listing(self) -> bytes | None:
        """The last ``listing()`` while the service runs and no state changed since."""
        return self._listing if self._tasks else None

    async def listing(self) -> bytes:
        """``snapshot()`` as the JSON array ``GET /v1/vms`` sends, encoded once per poll."""
        if self._listing is None or not self._tasks:
            states = await self.snapshot()
            if self._listing is None:
                self._listing = json.dumps([s.to_json() for s in states]).encode()
        return self._listing

    async def state(self, name: str) -> BalloonState:
        """Raises: UnknownVM."""
        self._known(name)
        states = {s.name: s for s in await self.snapshot()}
        return states[name]

    async def set_target(self, name: str, spec: TargetSpec | int, *, force: bool = False,
                         reason: str = SERVE_REASON, origin: Origin = Origin.SET) -> int:
        """Set one VM's target; the source's recorder journals it with ``origin`` and
        ``reason``.

        Raises:
            UnknownVM, UnsafeTarget and what ``DataSource.set_target`` raises; JournalError
            when the change was made but could not be journaled.
        """
        self._known(name)
        if isinstance(spec, int):
            spec = TargetSpec(SizeKind.ABSOLUTE, spec, str(spec))
        with on_behalf(origin, reason):
            return await self._apply(name, spec, force)

    async def _apply(self, name: str, spec: TargetSpec, force: bool, *,
                     record: bool = True) -> int:
        if self._tasks:
            await self._polled.wait()  # the state before the change is known
        before = self.latest.get(name)
        if isinstance(self.source, Fleet):
            target = await self.source.set_target(name, spec, force=force, record=record)
        else:
            target = await self.source.set_target(name, spec, force=force)
        self._changes[name] = self._changes.get(name, 0) + 1
        if before is not None:
            self.latest[name] = before.with_changes(target=target, owner=Owner.BALLOONCTL)
            self._listing = None
        self.poke()
        return target

    async def set_hint(self, name: str, on: bool) -> HintState:
        """Raises: UnknownVM, HintUnsupported and what ``DataSource.set_hint`` raises."""
        self._known(name)
        hint = await self.source.set_hint(name, on)
        self.poke()
        return hint

    async def enable_stats(self, name: str, interval: int) -> None:
        """Raises: UnknownVM, UsageError (a negative interval) and what
        ``DataSource.enable_stats`` raises."""
        self._known(name)
        if interval < 0:
            raise UsageError("'interval' must be 0 (off) or more seconds")
        await self.source.enable_stats(name, interval)
        self.poke()

    async def events(self) -> AsyncIterator[tuple[str, BalloonEvent]]:
        """The source's events (through the fan-out while the service runs)."""
        if not self._tasks:
            async for pair in self.source.events():
                yield pair
            return
        async for item in self.stream(snapshots=False, auto=False):
            yield item["vm"], BalloonEvent(item["event"], item["data"], item["timestamp"])

    async def close(self) -> None:
        await self.stop()

    # -- the journal ----------------------------------------------------------------------
    async def _journal(self, *entries: JournalEntry) -> None:
        assert self.journal is not None
        try:
            await asyncio.to_thread(self.journal.append, *entries)
        except BalloonError as exc:
            self.health.error("journal", type(exc).__name__)
            raise

    async def history(self, vm: str | None = None, limit: int | None = None) -> list[JournalEntry]:
        """Journal entries, oldest first (the last ``limit``).

        Raises:
            Unavailable: the service keeps no journal; JournalError: it cannot be read.
        """
        if self.journal is None:
            raise Unavailable("this service keeps no journal")
        read = await asyncio.to_thread(self.journal.read)
        entries = history(read.entries, vm)
        return entries if limit is None else entries[-limit:] if limit else []

    async def undo(self, vm: str, steps: int = 1, *, dry_run: bool = False,
                   force: bool = False) -> dict[str, Any]:
        """Take back the last ``steps`` journaled changes of ``vm`` (``plan_undo``).

        Raises:
            UnknownVM, UsageError (steps below 1), Unavailable (no journal), Conflict
            (nothing to undo, or the VM's target is no longer the journal's), and what
            ``set_target`` raises.
        """
        self._known(vm)
        entries = await self.history()
        step = plan_undo(entries, vm, steps)[0]
        if step.target is None or not step.undoes:
            raise Conflict(step.note or "nothing to undo", vm=vm)
        now = self.latest.get(vm)
        if now is not None and now.owner is Owner.FOREIGN:
            raise Conflict("another writer moved the balloon since the journal's last change; "
                           "set a target to take the VM back", vm=vm)
        current = None if now is None else now.target
        if current is not None and step.current is not None and current != step.current:
            raise Conflict(f"the target is {format_size(current)}, not "
                           f"{format_size(step.current)} as the journal says; use set", vm=vm)
        body: dict[str, Any] = {"name": vm, "target": step.target, "undoes":
                                [e.id for e in step.undoes], "note": step.note,
                                "dry_run": dry_run}
        if dry_run:
            return body
        entry = step.entry()
        target = step.target
        await self._apply(vm, TargetSpec(SizeKind.ABSOLUTE, target, str(target)), force,
                          record=False)  # the undo entry says what it took back
        if self.journal is not None:
            await self._journal(entry)
        return body

    # -- the policy -----------------------------------------------------------------------
    def read_host_now(self) -> HostMemory:
        """The host's memory, read now.

        Raises:
            Unavailable: no host root configured; HostReadError: the files are unreadable.
        """
        if self.host_root is None:
            raise Unavailable("this service does not read the host's memory")
        self.host, self.host_error = read_host(self.host_root), None
        return self.host

    async def plan(self) -> list[Decision]:
        """What the policy would do now (nothing is sent): ``auto.plan_cycle`` over the
        latest states, as ``balloonctl plan`` and auto decide.

        Raises:
            Unavailable, HostReadError: as ``read_host_now``.
        """
        states = await self.snapshot()
        host = self.read_host_now()
        return plan_cycle(states, self.previous, host, self.policy, refs=self.refs)

    # -- auto -----------------------------------------------------------------------------
    def _auto(self) -> AutoControl:
        if self.auto is None:
            raise Unavailable("auto is not available here: start balloonctl serve with --auto "
                              "(or [policy] auto = true) to have it")
        return self.auto

    @property
    def auto_on(self) -> bool:
        """Whether auto applies its decisions (to any VM)."""
        return self.auto is not None and (self.auto.enabled is None or bool(self.auto.enabled))

    def auto_status(self) -> dict[str, Any]:
        """Raises: Unavailable: no controller is wired."""
        self._auto()
        cycle = self.last_cycle
        return {"enabled": self.auto_on, "cycle": self.policy.cycle,
                "cycles": self.health.auto_cycles, "stopped": self.auto_stopped,
                "decisions": [] if cycle is None else [d.to_json() for d in cycle.decisions],
                "applied": [] if cycle is None else [
                    {"name": c.name, "action": c.action.value, "previous": c.previous,
                     "target": c.target, "reason": c.reason} for c in cycle.applied],
                "failed": {} if cycle is None else
                {name: exc.message for name, exc in cycle.failed.items()}}

    def set_auto(self, on: bool) -> dict[str, Any]:
        """Switch auto on (for every VM) or off.

        Raises: Unavailable: no controller is wired."""
        self._auto().enabled = None if on else set()
        if on:
            self.auto_stopped = None
        self.poke()
        if self.last_cycle is not None:
            self._publish(self._auto_item())  # the plan's "enabled" changed
        return self.auto_status()

    def _auto_item(self) -> dict[str, Any]:
        """The stream's line for the last cycle (``http.wire.auto_plan_json``)."""
        cycle = self.last_cycle
        assert cycle is not None
        return auto_plan_json(self.label, self.clock(), cycle.number, self.auto_on,
                              cycle.decisions)

    def _publish_cycle(self, cycle: Cycle) -> None:
        """Stream what one cycle did (its changes, foreign moves and failures as events),
        then its plan."""
        now = self.clock()
        for name, event in cycle_events(cycle, now):
            self._publish({"type": "event", "host": self.label, **event_to_json(name, event)})
        self._publish(self._auto_item())

    async def _auto_loop(self) -> None:
        while True:
            await asyncio.sleep(self.policy.cycle)
            auto = self.auto
            if auto is None or not self.auto_on:
                continue
            try:
                async with self._lock:  # not alongside a poll: one reader of each socket
                    cycle = await auto.cycle()
            except BalloonError as exc:  # a JournalError: never run unrecorded
                auto.enabled = set()
                path = getattr(exc, "path", None)  # a JournalError names its file
                self.auto_stopped = f"journal {path}: {exc.message}" if path else exc.message
                self.health.error("auto", type(exc).__name__)
                log.error("auto stopped: %s", exc.message)
                continue
            self.last_cycle = cycle
            self.health.observe_cycle(cycle)
            self._publish_cycle(cycle)
            if cycle.applied:
                self.poke()

    async def reclaim(self, name: str) -> bool:
        """Take a VM back from another writer: auto manages it again from its next cycle
        (``AutoControl.reclaim``). False when it was not marked as moved by another writer.
        Journals nothing, as ``auto --reclaim``.

        Raises:
            UnknownVM, Unavailable (no controller is wired), and what reading the VM's run
            raises (ConnectFailed, QMPTimeout, StateFileError...).
        """
        self._known(name)
        auto = self._auto()
        async with self._lock:  # not alongside a poll or a cycle: one reader of each socket
            result = (await auto.reclaim([name]))[name]
        if isinstance(result, BalloonError):
            raise result.with_vm(name)
        now = self.latest.get(name)
        if result and now is not None and now.owner is Owner.FOREIGN:
            self.latest[name] = now.with_changes(owner=None)  # no mark, no target of ours
            self._listing = None
        self.poke()
        return result

    def foreign(self, name: str) -> bool:
        """True while another writer's move of the VM's balloon stands (``Owner.FOREIGN``)."""
        state = self.latest.get(name)
        return state is not None and state.owner is Owner.FOREIGN
