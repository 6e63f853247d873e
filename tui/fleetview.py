"""What the dashboard knows about the fleet, independent of how it is drawn.

``FleetView`` folds successive ``BalloonState`` snapshots into rows (adding swap rates and
history), and owns the selection, sort order and filter. It has no Textual imports, so its
rules are tested without running an app.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from balloonctl.model import BalloonState, VmStatus, split_host_name
from balloonctl.policy import Decision
from balloonctl.units import format_exact
from tui.history import VmHistory

__all__ = [
    "SORT_KEYS",
    "STUCK_AFTER",
    "FleetView",
    "HostTotals",
    "StateChange",
    "Totals",
    "VmRow",
    "guest_free_cached",
    "hint_text",
    "reason",
    "state_text",
]

# A converging VM whose ``actual`` has not moved for this long is stuck (the CLI's
# ``set --wait`` gives up after the same stall).
STUCK_AFTER = 5.0
_DOWN = (VmStatus.BUSY, VmStatus.UNREACHABLE, VmStatus.ERROR)  # failed: with a reason


@dataclass(frozen=True, slots=True)
class VmRow:
    """One VM as a dashboard row: its latest state and rates derived from the one before."""

    state: BalloonState
    # Bytes per second between the guest's last two stats reports (not between polls:
    # the guest reports every polling interval, whatever the poll rate).
    swap_in_rate: float | None = None
    swap_out_rate: float | None = None
    # The guest's last stats report predates the last change of ``actual`` (or claims more
    # free and cached memory than the guest now has): its numbers are not current.
    stats_outdated: bool = False
    plan: Decision | None = None  # automatic ballooning's latest decision for the VM
    auto: bool = False  # automatic ballooning applies its decisions to the VM

    @property
    def name(self) -> str:
        return self.state.name

    @property
    def host(self) -> str | None:
        """The host of a row of a dashboard over several hosts (``HOST/VM``), else None."""
        return split_host_name(self.state.name)[0]

    @property
    def vm_name(self) -> str:
        """The VM's own name, without its host."""
        return split_host_name(self.state.name)[1]


def guest_free_cached(state: BalloonState) -> tuple[int, int]:
    """The guest's free memory and page cache, never more than it has (``actual``): a
    report older than the last inflation can claim more. (0, 0) without a report."""
    stats, actual = state.stats, state.actual
    if stats is None or not stats.reported or actual is None:
        return 0, 0
    if state.guest_ram is not None:
        actual = min(actual, state.guest_ram)
    free = min(stats.free_memory or 0, actual)
    return free, min(stats.disk_caches or 0, actual - free)


def _outdated(state: BalloonState, actual_changed_at: float | None) -> bool:
    stats, actual = state.stats, state.actual
    if stats is None or not stats.reported or actual is None:
        return False
    if actual_changed_at is not None and stats.last_update < int(actual_changed_at):
        return True
    return (stats.free_memory or 0) + (stats.disk_caches or 0) > actual


def reason(state: BalloonState) -> str:
    """The error of an unreadable VM without the ``vm:`` prefix errors carry."""
    text = state.error or ""
    prefix = f"{state.name}: "
    return text[len(prefix):] if text.startswith(prefix) else text


def _size(value: int | None) -> str:
    return format_exact(value, with_bytes=False)


def state_text(row: VmRow) -> str:
    """The state cell's words: the status, the reason of an unreachable, busy or error VM, or a
    note that the guest's numbers are outdated."""
    status = row.state.status
    if status in _DOWN and row.state.error:
        return f"{status.value}: {reason(row.state)}"
    if row.stats_outdated:
        return f"{status.value}, stats outdated"
    return status.value


def hint_text(state: BalloonState) -> str:
    """The hint cell's words: ``on (agent)``, ``off (device)``, or the mode when the hint
    cannot be used (``unsupported``, ``unknown``). Off reads as off first: the mode in
    brackets only says how it would be applied."""
    hint = state.hint
    if hint.mode.value in ("unknown", "unsupported"):
        return hint.mode.value
    return f"{'on' if hint.enabled else 'off'} ({hint.mode.value})"


@dataclass(frozen=True, slots=True)
class StateChange:
    """A VM's state changed in a way the event log records."""

    name: str
    text: str
    bad: bool  # busy, unreachable, stuck; False for recovered, converged


def _rate(new: int | None, old: int | None, seconds: float) -> float | None:
    if new is None or old is None or seconds <= 0 or new < old:
        return None
    return (new - old) / seconds


def _stat(name: str) -> Callable[[VmRow], Any]:
    def key(row: VmRow) -> Any:
        stats = row.state.stats
        return None if stats is None else getattr(stats, name)

    return key


def _swap_key(row: VmRow) -> float | None:
    if row.swap_in_rate is None and row.swap_out_rate is None:
        return None
    return (row.swap_in_rate or 0.0) + (row.swap_out_rate or 0.0)


_STATUS_ORDER = {status: i for i, status in enumerate(reversed(list(VmStatus)))}

# Sort keys in the order of the columns (the sort key cycles through them in this order).
SORT_KEYS: dict[str, Callable[[VmRow], Any]] = {
    "host": lambda row: None if row.host is None else (row.host, row.vm_name),
    "name": lambda row: (row.vm_name, row.host or ""),
    "state": lambda row: _STATUS_ORDER[row.state.status],
    "actual": lambda row: row.state.actual,
    "free": _stat("free_memory"),
    "cached": _stat("disk_caches"),
    "avail": _stat("available_memory"),
    "target": lambda row: row.state.target,
    "ram": lambda row: row.state.guest_ram,
    "swap": _swap_key,
    "age": lambda row: row.state.stats_age,
}


@dataclass(slots=True)
class _Pending:
    """A target sent (or about to be) whose result has not been seen in a snapshot yet."""

    target: int
    outstanding: int = 0  # actions sent for the VM whose result has not arrived
    settled_round: int = 0  # the last poll round started before the last result arrived


@dataclass(frozen=True, slots=True)
class Totals:
    """Fleet totals for the header; sums over the VMs that reported the value."""

    vms: int
    reachable: int
    guest_ram: int
    ballooned: int
    free: int
    cached: int


@dataclass(frozen=True, slots=True)
class HostTotals:
    """One host's line: its VMs, how many answer, and sums over those that answer (guest
    RAM, actual, and free and cached as the fleet's ``Totals`` count them)."""

    host: str
    vms: int
    reachable: int
    guest_ram: int
    actual: int
    free: int
    cached: int


def _totals(states: Sequence[BalloonState]) -> tuple[int, int, int, int, int]:
    """(reachable, guest RAM, actual, free, cached) over the reachable ``states``."""
    up = [s for s in states if s.reachable]
    guest = [guest_free_cached(s) for s in up]
    return (len(up), sum(s.guest_ram or 0 for s in up), sum(s.actual or 0 for s in up),
            sum(free for free, _ in guest), sum(cached for _, cached in guest))


class FleetView:
    """The fleet as rows: latest state per VM, history, selection, sort and filter."""

    def __init__(
        self, names: Iterable[str] = (), *, history: int = 300, stuck_after: float = STUCK_AFTER
    ) -> None:
        self.history_len = history
        self.stuck_after = stuck_after
        self.rows: dict[str, VmRow] = {}
        self.history: dict[str, VmHistory] = {}
        self.selected: set[str] = set()
        self.sort_key = "name"
        self.reverse = False
        self.filter_text = ""
        self._order: dict[str, int] = {}
        self._pending: dict[str, _Pending] = {}
        # When each VM's ``actual`` was last seen to change (at the latest: between the two
        # snapshots' ``taken_at``; the earlier one is kept, the guest's clock is in seconds).
        self._actual_changed_at: dict[str, float] = {}
        # The poll round each VM's last history sample came from: one sample per round.
        self._sampled_round: dict[str, int] = {}
        # A converging VM's actual and since when it has not moved; the VMs reported stuck.
        self._still: dict[str, tuple[int | None, float]] = {}
        self._stuck: set[str] = set()
        for name in names:
            self._known(name)

    def _known(self, name: str) -> VmHistory:
        hist = self.history.get(name)
        if hist is None:
            hist = self.history[name] = VmHistory(self.history_len)
            self._order[name] = len(self._order)
        return hist

    # -- data -------------------------------------------------------------------------------
    def apply(
        self, states: Iterable[BalloonState], *, poll_round: int | None = None
    ) -> list[StateChange]:
        """Fold one snapshot of (some or all) VMs into the rows; returns the state changes
        the event log records (busy, unreachable, recovered, converged, stuck).

        ``poll_round`` numbers the poll that produced it; a poll that started before a
        target's result arrived may carry the old target, so the pending one is kept until
        a later round (None: keep it while its action is out). Each VM gets one history
        sample per poll round: states from elsewhere (events, ``poll_round`` None) add none.
        """
        changes: list[StateChange] = []
        for state in states:
            state = self._with_pending(state, poll_round)
            old = self.rows.get(state.name)
            in_rate = out_rate = None
            new_stats = state.stats
            old_stats = None if old is None else old.state.stats
            if old is not None and new_stats is not None and old_stats is not None:
                if new_stats.last_update == old_stats.last_update:
                    # No new report since the last poll: the rate has not changed either.
                    in_rate, out_rate = old.swap_in_rate, old.swap_out_rate
                elif new_stats.reported and old_stats.reported:
                    seconds = new_stats.last_update - old_stats.last_update
                    in_rate = _rate(new_stats.swap_in, old_stats.swap_in, seconds)
                    out_rate = _rate(new_stats.swap_out, old_stats.swap_out, seconds)
            if (
                old is not None and None not in (old.state.actual, state.actual)
                and old.state.actual != state.actual
            ):
                self._actual_changed_at[state.name] = old.state.taken_at
            changed_at = self._actual_changed_at.get(state.name)
            self.rows[state.name] = VmRow(
                state, in_rate, out_rate, _outdated(state, changed_at),
                None if old is None else old.plan, old is not None and old.auto,
            )
            history = self._known(state.name)
            if poll_round is not None and self._sampled_round.get(state.name, 0) < poll_round:
                self._sampled_round[state.name] = poll_round
                history.record(state)
            changes.extend(self._changes(None if old is None else old.state, state))
        return changes

    def _changes(self, old: BalloonState | None, new: BalloonState) -> list[StateChange]:
        name, status = new.name, new.status
        was = None if old is None else old.status
        changes: list[StateChange] = []
        if status in _DOWN and status != was:
            changes.append(StateChange(name, f"{status.value}: {reason(new)}", True))
        elif was in _DOWN and status not in _DOWN:
            changes.append(StateChange(name, f"recovered: {status.value}", False))
        elif was is VmStatus.CONVERGING and status is not VmStatus.CONVERGING:
            changes.append(StateChange(
                name, f"converged: actual {_size(new.actual)}", False))
        if status is not VmStatus.CONVERGING:
            self._still.pop(name, None)
            self._stuck.discard(name)
            return changes
        still = self._still.get(name)
        if still is None or still[0] != new.actual:
            self._still[name] = (new.actual, new.taken_at)
            self._stuck.discard(name)
        elif new.taken_at - still[1] >= self.stuck_after and name not in self._stuck:
            self._stuck.add(name)
            changes.append(StateChange(
                name, f"stuck at {_size(new.actual)}, target {_size(new.target)}: "
                f"no movement for {new.taken_at - still[1]:.0f}s", True))
        return changes

    def _with_pending(self, state: BalloonState, poll_round: int | None) -> BalloonState:
        pending = self._pending.get(state.name)
        if pending is None:
            return state
        if pending.outstanding or poll_round is None or poll_round <= pending.settled_round:
            return state.with_changes(target=pending.target)
        del self._pending[state.name]  # this poll started after the result: trust it
        return state

    def target_sent(self, name: str, target: int) -> None:
        """A target is being sent: show it now, so a quick next step starts from it, and
        keep it over polls until the action's result is in."""
        pending = self._pending.setdefault(name, _Pending(target))
        pending.target = target
        pending.outstanding += 1
        self.patch(name, target=target)

    def target_done(self, name: str, poll_round: int) -> None:
        """One target action on ``name`` finished; ``poll_round`` is the newest poll round
        started so far (its snapshot may predate the result)."""
        pending = self._pending.get(name)
        if pending is not None:
            pending.outstanding = max(0, pending.outstanding - 1)
            pending.settled_round = poll_round

    def patch(self, name: str, **changes: Any) -> None:
        """Change fields of a VM's latest state (e.g. ``actual`` from BALLOON_CHANGE) without
        adding a history sample."""
        row = self.rows.get(name)
        if row is not None:
            self.rows[name] = dataclasses.replace(row, state=row.state.with_changes(**changes))

    def set_plan(self, decisions: Iterable[Decision], auto: Callable[[str], bool]) -> None:
        """Show automatic ballooning's decisions; ``auto(name)``: whether it applies them."""
        for d in decisions:
            row = self.rows.get(d.name)
            if row is not None:
                self.rows[d.name] = dataclasses.replace(row, plan=d, auto=auto(d.name))

    def show_plans(self, plans: Mapping[str, tuple[Decision, bool]]) -> None:
        """Every row's plan from ``plans`` (decision, whether it is applied); a row not in
        it has none (its host's plan is not known now)."""
        for name, row in self.rows.items():
            plan, auto = plans.get(name, (None, False))
            if row.plan != plan or row.auto != auto:
                self.rows[name] = dataclasses.replace(row, plan=plan, auto=auto)

    def note(self, name: str, text: str) -> None:
        """Remember an event or an action result for the VM's detail pane."""
        if name in self.history:
            self.history[name].events.append(text)

    def state(self, name: str) -> BalloonState | None:
        row = self.rows.get(name)
        return None if row is None else row.state

    # -- presentation rules -----------------------------------------------------------------
    def matches(self, row: VmRow) -> bool:
        """The filter matches what the name, state and hint cells show."""
        needle = self.filter_text.strip().lower()
        if not needle:
            return True
        haystack = (row.name, state_text(row), hint_text(row.state))
        return any(needle in text.lower() for text in haystack)

    def visible(self) -> list[VmRow]:
        """The rows to show: filtered, then sorted (ties in inventory order)."""
        rows = [row for row in self.rows.values() if self.matches(row)]
        rows.sort(key=lambda row: self._order.get(row.name, 0))
        key = SORT_KEYS[self.sort_key]
        known = [row for row in rows if key(row) is not None]
        known.sort(key=key, reverse=self.reverse)
        return known + [row for row in rows if key(row) is None]  # unknown values last

    def sort_by(self, key: str) -> None:
        """Sort by ``key``; sorting by the current key again reverses the order."""
        if key not in SORT_KEYS:
            raise ValueError(f"no sort key {key!r}")
        if key == self.sort_key:
            self.reverse = not self.reverse
        else:
            self.sort_key, self.reverse = key, False

    def hint_wanted(self, names: Sequence[str]) -> bool:
        """What a hint toggle on ``names`` sets every one of them to: on when any of them
        is off, else off (a mixed selection ends in one state). VMs whose hint mode is
        unknown or unsupported do not vote, unless no VM has a usable hint."""
        states = self.states_of(names)
        usable = [s for s in states if s.hint.mode.value in ("agent", "device")] or states
        return not all(s.hint.enabled for s in usable)

    @property
    def multi_host(self) -> bool:
        """Rows of several hosts (``HOST/VM``): the host column and sort key apply."""
        return any(row.host is not None for row in self.rows.values())

    def cycle_sort(self) -> str:
        keys = [k for k in SORT_KEYS if k != "host" or self.multi_host]
        current = self.sort_key if self.sort_key in keys else keys[-1]
        self.sort_key = keys[(keys.index(current) + 1) % len(keys)]
        return self.sort_key

    def toggle_selected(self, name: str) -> None:
        self.selected.symmetric_difference_update({name})

    def targets(self, cursor: str | None) -> list[str]:
        """The VMs an action applies to: the selection if any, else the row under the cursor."""
        if self.selected:
            return [name for name in self._order if name in self.selected]
        return [] if cursor is None else [cursor]

    def states_of(self, names: Sequence[str]) -> list[BalloonState]:
        return [row.state for name in names if (row := self.rows.get(name)) is not None]

    def totals(self) -> Totals:
        states = [row.state for row in self.rows.values()]
        reachable, guest_ram, _, free, cached = _totals(states)
        return Totals(
            vms=len(self._order),
            reachable=reachable,
            guest_ram=guest_ram,
            ballooned=sum(s.ballooned or 0 for s in states if s.reachable),
            free=free,
            cached=cached,
        )

    def host_totals(self, hosts: Sequence[str]) -> list[HostTotals]:
        """Each of ``hosts``' totals over its rows (``HOST/VM``), in the order given."""
        by_host: dict[str, list[BalloonState]] = {h: [] for h in hosts}
        for row in self.rows.values():
            if row.host in by_host:
                by_host[row.host].append(row.state)
        return [HostTotals(h, len(states), *_totals(states)) for h, states in by_host.items()]
