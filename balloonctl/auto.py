"""Automatic ballooning: the policy (``balloonctl.policy``) applied to a fleet every cycle.

``AutoController`` runs one cycle at a time (``cycle``) or until told to stop (``run``):

1. a snapshot of every managed VM (``Fleet.snapshot``; the previous one helps tell another
   writer's move, ``balloonctl.targets``) and a reading of the host
   (``balloonctl.host.read_host`` of ``host_root``, in a thread);
2. each VM's swap-in and major-fault rates since the previous cycle (``rates_between``);
3. ``decide`` over the VMs, a VM moved by another writer (``Owner.FOREIGN``) counting as
   not owned, so it is left alone until ``reclaim``;
4. unless ``dry_run``: every changed target sent through the VM's client, validated as
   ``balloonctl set`` validates (never below the floor, never above the maximum or guest
   RAM; a refused target is a failure of that VM, nothing is sent), concurrently;
5. unless ``dry_run``: one journal batch of what was sent, plus a ``foreign`` entry, once,
   for each VM another writer moved, once its balloon has settled (two cycles at the same
   ``actual``), written and fsynced before the cycle reports anything.

A journal that cannot be written stops the controller with a ``JournalError``: it is
checked before any target is sent, and a failure after the targets went out says which
targets stand unrecorded. Stopping (``run``'s ``stop`` event, Ctrl-C, SIGTERM) sends nothing:
targets stay where they are.

A VM nobody owns (no standing target of balloonctl's, not foreign) whose balloon stands still
is *adopted*: its ``actual`` is remembered as balloonctl's target without sending anything,
so that a later move by another writer is noticed. Stats polling is turned on (at most every
``cycle / 2`` seconds) on VMs where it is off, since the policy needs fresh guest stats.

What a cycle changes in the state file (the snapshot's notes, the targets sent, the VMs
adopted) is saved in one atomic write (``Store.batch``), before the journal is written, so a
cycle over many VMs costs one write, not one per VM; a foreign move's claim is saved at once.
A state file that cannot be written is the store's warning (the targets are sent but not
remembered), as for ``set``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from balloonctl.changes import foreign_entry, unrecorded
from balloonctl.errors import BalloonError, HostReadError, JournalError
from balloonctl.host import HostMemory, read_host
from balloonctl.journal import Journal, JournalEntry, Origin
from balloonctl.model import BalloonState, Owner, VmRef
from balloonctl.policy import (
    Action,
    Decision,
    PolicySettings,
    VmInput,
    VmRates,
    decide,
    policy_for,
    rates_between,
)
from balloonctl.units import format_change, format_size

if TYPE_CHECKING:
    from balloonctl.fleet import Fleet

__all__ = ["AppliedChange", "AutoController", "Cycle", "ForeignMove", "plan_cycle"]


@dataclass(frozen=True, slots=True)
class AppliedChange:
    """A target ``auto`` sent (and journaled): ``previous`` is balloonctl's standing target
    before, else ``actual`` then."""

    name: str
    action: Action
    previous: int | None
    target: int
    reason: str

    def line(self) -> str:
        """One line for an operator: ``vm1: 2 GiB -> 1.9 GiB (shrink): REASON``; sizes that
        would read alike are shown exactly (``2 GiB -> 2026 MiB``)."""
        before, after = format_change(self.previous, self.target)
        return f"{self.name}: {before} -> {after} ({self.action.value}): {self.reason}"


@dataclass(frozen=True, slots=True)
class ForeignMove:
    """A move by another writer, journaled once: balloonctl's target was ``previous``, the
    balloon settled at ``actual``."""

    name: str
    previous: int | None
    actual: int
    why: str

    def line(self) -> str:
        before, after = format_change(self.previous, self.actual)
        return (f"{self.name}: moved by another writer ({before} -> {after}): left alone "
                "until reclaimed")


@dataclass(slots=True)
class Cycle:
    """What one cycle saw, decided and did."""

    number: int
    started: float
    states: list[BalloonState]
    host: HostMemory | None
    decisions: list[Decision] = field(default_factory=list)
    applied: list[AppliedChange] = field(default_factory=list)
    failed: dict[str, BalloonError] = field(default_factory=dict)
    foreign: list[ForeignMove] = field(default_factory=list)
    stats_enabled: list[str] = field(default_factory=list)
    host_error: HostReadError | None = None
    dry_run: bool = False

    @property
    def planned(self) -> list[Decision]:
        """The decisions that change a target (sent where the controller applies them)."""
        return [d for d in self.decisions if d.target is not None]


def plan_cycle(states: Sequence[BalloonState], previous: Mapping[str, BalloonState],
               host: HostMemory, settings: PolicySettings, *,
               refs: Mapping[str, VmRef] | None = None) -> list[Decision]:
    """One cycle's decisions, as ``AutoController.cycle`` makes them (the experiment's
    policy run uses it too): each VM's swap-in and fault rates since its ``previous``
    snapshot (none: zero), a VM another writer moved counting as not owned, its overrides
    from ``refs`` (``policy_for``; a VM not in ``refs``: ``settings.vms``), then ``decide``.
    Pure: nothing is read or sent."""
    inputs = []
    for s in states:
        before = previous.get(s.name)
        rates = rates_between(before, s) if before is not None else VmRates()
        ref = None if refs is None else refs.get(s.name)
        inputs.append(VmInput(s, rates, owned=s.owner is not Owner.FOREIGN,
                              policy=None if ref is None else policy_for(ref, settings)))
    return decide(inputs, host, settings)


class AutoController:
    """Applies the policy to the VMs of ``fleet`` (those in ``names``; all when None) on the
    host rooted at ``host_root``, journaling into ``journal`` (required unless
    ``dry_run``). ``enabled`` narrows, at any time, the VMs whose changes are applied (the
    dashboard's switch; None: all of ``names``); the others' decisions are only planned.

    Raises (constructor):
        UsageError: ``names`` holds a VM the fleet does not know; no journal without
            ``dry_run``.
    """

    def __init__(self, fleet: Fleet, *, settings: PolicySettings, host_root: Path | str,
                 journal: Journal | None, names: Sequence[str] | None = None,
                 dry_run: bool = False, clock: Callable[[], float] = time.time) -> None:
        from balloonctl.errors import UsageError

        self.fleet = fleet
        self.settings = settings
        self.host_root = Path(host_root)
        if journal is None and not dry_run:
            raise UsageError("automatic ballooning needs a journal")
        self.journal = journal
        self.names = list(fleet.names) if names is None else list(names)
        for name in self.names:
            fleet.client(name)  # UnknownVM early
        self.dry_run = dry_run
        self.clock = clock
        self.enabled: set[str] | None = None
        self.cycles = 0
        self._previous: dict[str, BalloonState] = {}
        self._adopt_tried: dict[str, int] = {}  # name -> actual when adoption was tried
        self._journal_checked = False

    def applies_to(self, name: str) -> bool:
        """Whether a decision for ``name`` is sent (not only planned)."""
        return not self.dry_run and (self.enabled is None or name in self.enabled)

    # ---- one cycle ---------------------------------------------------------------------

    async def cycle(self) -> Cycle:
        """Snapshot, decide and (unless ``dry_run``) apply and journal; see the module
        docstring. A VM that fails is named in ``Cycle.failed``; a host that cannot be read
        decides nothing (``Cycle.host_error``).

        Raises:
            JournalError: the journal cannot be written (checked before anything is sent;
                after, the message names the targets that stand unrecorded).
        """
        self.cycles += 1
        started = self.clock()
        names = set(self.names)
        entries: list[JournalEntry] = []
        # One write of the state file for the cycle: what the snapshot notes, the targets
        # sent, the VMs adopted (a foreign claim is saved at once); saved before journaling.
        with self.fleet.store.batch():
            every = await self.fleet.snapshot()
            states = [s for s in every if s.name in names]
            try:
                host = await asyncio.to_thread(read_host, self.host_root)
            except HostReadError as exc:
                cycle = Cycle(self.cycles, started, states, None, host_error=exc,
                              dry_run=self.dry_run)
            else:
                cycle = Cycle(self.cycles, started, states, host, dry_run=self.dry_run)
                cycle.decisions = plan_cycle(states, self._previous, host, self.settings,
                                             refs=self.fleet.refs)
                if any(self.applies_to(s.name) for s in states):
                    entries = await self._apply(cycle)
                    await self._look_after(cycle)
        self._journal(cycle, entries)
        self._remember(states)
        return cycle

    def _remember(self, states: Sequence[BalloonState]) -> None:
        for s in states:
            if s.reachable:
                self._previous[s.name] = s

    def _check_journal(self) -> None:
        if not self._journal_checked:
            assert self.journal is not None
            self.journal.check_writable()
            self._journal_checked = True

    async def _apply(self, cycle: Cycle) -> list[JournalEntry]:
        """Send the planned targets and claim the settled foreign moves; their journal
        entries (``_journal`` writes them)."""
        planned = {d.name: d for d in cycle.planned if self.applies_to(d.name)}
        foreign = [s for s in self._settled_foreign(cycle.states) if self.applies_to(s.name)]
        if not planned and not foreign:
            return []
        self._check_journal()
        entries: list[JournalEntry] = []
        if planned:
            targets = {n: d.target for n, d in planned.items() if d.target is not None}
            results = await self.fleet.run_each(
                list(targets), lambda c: c.set_target(targets[c.name], record=False))
            by_name = {s.name: s for s in cycle.states}
            for name, result in results.items():
                d = planned[name]
                if isinstance(result, BalloonError):
                    cycle.failed[name] = result
                    continue
                s = by_name[name]
                previous = s.target if s.target is not None else s.actual
                cycle.applied.append(AppliedChange(name, d.action, previous, result, d.reason))
                entries.append(JournalEntry.new(
                    vm=name, qmp=s.qmp, previous=previous, target=result, reason=d.reason,
                    origin=Origin.AUTO))
        if foreign:
            entries.extend(await self._claim_foreign(cycle, foreign))
        return entries

    def _journal(self, cycle: Cycle, entries: Sequence[JournalEntry]) -> None:
        if not entries:
            return
        assert self.journal is not None
        try:
            self.journal.append(*entries)
        except JournalError as exc:
            sent = ", ".join(f"{c.name} {format_size(c.target)}" for c in cycle.applied)
            raise unrecorded(exc, f"targets set ({sent})" if sent else
                             "moves by other writers found") from None

    def _settled_foreign(self, states: Sequence[BalloonState]) -> list[BalloonState]:
        """Foreign VMs whose balloon stood still since the previous cycle."""
        out = []
        for s in states:
            before = self._previous.get(s.name)
            if (s.owner is Owner.FOREIGN and s.actual is not None and before is not None
                    and before.actual == s.actual):
                out.append(s)
        return out

    async def _claim_foreign(self, cycle: Cycle,
                             states: Sequence[BalloonState]) -> list[JournalEntry]:
        by_name = {s.name: s for s in states}
        marks = await self.fleet.run_each(list(by_name),
                                          lambda c: c.targets.claim_foreign_report())
        entries = []
        for name, mark in marks.items():
            if not isinstance(mark, dict):
                continue  # journaled already (by us or another process), or unreachable now
            s = by_name[name]
            assert s.actual is not None
            entries.append(foreign_entry(name, s.qmp, mark, s.actual))
            previous = mark.get("previous")
            cycle.foreign.append(ForeignMove(name, previous if isinstance(previous, int)
                                             else None, s.actual, str(mark.get("why", ""))))
        return entries

    async def _look_after(self, cycle: Cycle) -> None:
        """Adopt settled VMs nobody owns; turn stats polling on where it is off."""
        changed = {c.name for c in cycle.applied}
        adopt: dict[str, int] = {}
        stats: list[str] = []
        for s in cycle.states:
            if (not s.reachable or not s.has_device or s.name in changed
                    or not self.applies_to(s.name)):
                continue
            if s.polling_interval == 0:
                stats.append(s.name)
            before = self._previous.get(s.name)
            if (s.owner is None and s.actual is not None and before is not None
                    and before.actual == s.actual and self._adopt_tried.get(s.name) != s.actual):
                adopt[s.name] = s.actual
        if adopt:
            self._adopt_tried.update(adopt)
            await self.fleet.run_each(list(adopt), lambda c: c.targets.adopt(adopt[c.name]))
        if stats:
            interval = max(1, min(10, int(self.settings.cycle // 2)))
            done = await self.fleet.run_each(stats, lambda c: c.enable_stats(interval))
            cycle.stats_enabled = [n for n, r in done.items() if not isinstance(r, BalloonError)]

    # ---- taking VMs back -----------------------------------------------------------------

    async def reclaim(self, names: Collection[str]) -> dict[str, bool | BalloonError]:
        """Take VMs back from other writers (``RememberedTargets.reclaim``): from the next
        cycle the policy manages them again. True for each VM that was foreign.

        Raises:
            UnknownVM: a name the fleet does not know.
        """
        for name in names:
            self._adopt_tried.pop(name, None)

        return await self.fleet.run_each(list(names), lambda c: c.targets.reclaim())

    # ---- many cycles ---------------------------------------------------------------------

    async def run(self, on_cycle: Callable[[Cycle], None], *, cycles: int | None = None,
                  duration: float | None = None, interval: float | None = None,
                  stop: asyncio.Event | None = None) -> int:
        """Run cycles ``interval`` seconds apart, start to start (default: the settings'
        ``cycle``), calling ``on_cycle`` after each, until ``cycles`` ran, ``duration``
        seconds passed, or ``stop`` is set (nothing is sent on stopping: targets stay).
        Returns the number of cycles run.

        Raises:
            JournalError: as ``cycle``; the controller stops.
        """
        loop = asyncio.get_running_loop()
        every = self.settings.cycle if interval is None else interval
        stop = stop or asyncio.Event()
        begun = loop.time()
        ran = 0
        while not stop.is_set():
            started = loop.time()
            on_cycle(await self.cycle())
            ran += 1
            if cycles is not None and ran >= cycles:
                break
            now = loop.time()
            wait = max(0.0, every - (now - started))
            if duration is not None and now + wait - begun >= duration:
                break  # the next cycle would start past the end
            await _wait(stop, wait)
        return ran


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass
