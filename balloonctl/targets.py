"""What balloonctl remembers about one run of a VM between invocations: the last target it
set and the agent-mode cache-first hint (QEMU keeps neither for stock devices).

``RememberedTargets`` keeps them in a ``balloonctl.store`` entry keyed by the VM's QMP
address and tied to one run of the VM (``BalloonClient.instance_id``): an entry written for
another run, or without an instance (older balloonctl), is ignored and replaced by the next
write, so a restarted VM starts with no target and the hint at the inventory's preference.
A remembered target also stops counting (``current_target``) once the VM shows it was
changed behind balloonctl's back: then the run is marked *foreign* (``foreign_change`` is
the rule) until balloonctl sets a target again or is told to take the VM back (``reclaim``).

Foreign writers. QEMU has no query for the balloon's target, only for ``actual``, and a
guest only ever moves ``actual`` from where it was toward its target. So with a remembered
target T (set when ``actual`` was A), an observation of ``actual`` more than
``CONVERGED_TOLERANCE`` from T shows that someone else sent a ``balloon`` command when

1. ``actual`` had reached T before (QEMU never moves off a reached target by itself), or
2. ``actual`` moved away from T, by more than ``FOREIGN_MARGIN``, since an observation made
   after T was set, or
3. ``actual`` lies outside the way from A to T by more than ``FOREIGN_MARGIN`` (it went
   past T, or the wrong way);

unless deflate-on-oom explains it (the device has it and ``actual`` is above T: the guest's
OOM notifier took pages back), in which case T is only forgotten. ``FOREIGN_MARGIN`` covers
the guest still moving toward an older target for a moment after T was sent. A balloon
stuck short of T (the guest cannot free more) stays between A and T, never counts as
foreign, and is forgotten after ``stale_after``; a foreign target between A and T looks the
same and is treated the same. A guest that unloads its balloon driver deflates to guest RAM:
that reads as foreign too (balloonctl did not ask for it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Final, Protocol

from balloonctl.model import CONVERGED_TOLERANCE, Owner, validate_target
from balloonctl.store import Store
from balloonctl.units import MiB, TargetSpec, format_size

__all__ = ["FOREIGN_MARGIN", "RememberedTargets", "TargetsClient", "foreign_change"]

log = logging.getLogger(__name__)

# Store keys that describe the last target; forgotten together when it goes stale.
_TARGET_KEYS: Final = ("target", "target_at", "target_reached", "target_from")
# How far past its course ``actual`` must go before it counts as another writer's doing
# (rules 2 and 3): the guest may go on toward an older target for a moment.
FOREIGN_MARGIN: Final = 64 * MiB


def foreign_change(target: int, actual: int, *, reached: bool, set_from: int | None = None,
                   seen: int | None = None, deflate_on_oom: bool | None = None) -> str | None:
    """Why ``actual`` shows that another writer moved the balloon off ``target`` (the rule
    in the module docstring), or None. ``reached``: ``actual`` was seen at ``target`` since
    it was set; ``set_from``: ``actual`` when it was set; ``seen``: ``actual`` at an
    earlier observation made after it was set. Pure."""
    off = abs(actual - target)
    if off <= CONVERGED_TOLERANCE or (deflate_on_oom and actual > target):
        return None
    shown = f"actual {format_size(actual)}"
    if reached:
        return f"{shown} left the target {format_size(target)} it had reached"
    if seen is not None and off - abs(seen - target) > FOREIGN_MARGIN:
        return (f"{shown} moved away from the target {format_size(target)} "
                f"(from {format_size(seen)})")
    if set_from is not None:
        low, high = sorted((set_from, target))
        if actual < low - FOREIGN_MARGIN or actual > high + FOREIGN_MARGIN:
            return (f"{shown} is off the way from {format_size(set_from)} to the target "
                    f"{format_size(target)}")
    return None


class KnowsRun(Protocol):
    def known_instance_id(self) -> str | None: ...


class TargetsClient(Protocol):
    """What ``RememberedTargets`` needs of a VM's client (``BalloonClient`` and
    ``LibvirtClient`` fit): the store key (``address``), the run's identity (``instance_id``;
    ``run.known_instance_id`` without I/O) and the balloon's figures."""

    @property
    def name(self) -> str: ...

    @property
    def address(self) -> str: ...

    @property
    def vm(self) -> str | None: ...

    @property
    def run(self) -> KnowsRun: ...

    async def instance_id(self) -> str | None: ...

    async def guest_ram(self) -> int: ...

    async def query_actual(self) -> int: ...


class RememberedTargets:
    """The store entry of the run of the VM that ``client`` reaches.

    ``hint`` is the inventory's hint preference for a run with no hint of its own (off when
    None); ``stale_after`` is how long an unreached target keeps counting, in seconds
    (``BalloonClient``'s ``target_stale_after``, default ``TARGET_STALE_AFTER``).
    """

    def __init__(self, client: TargetsClient, store: Store, *, hint: bool | None,
                 stale_after: float) -> None:
        self.client = client
        self.store = store
        self.hint_preference = hint
        self.stale_after = stale_after

    def entry(self, instance: str | None) -> dict[str, Any]:
        """The store entry of this VM instance; {} if the entry belongs to another run."""
        if instance is None:
            return {}
        entry = self.store.get(self.client.address)
        return entry if entry.get("instance") == instance else {}

    async def remembered(self) -> dict[str, Any]:
        """The entry of the run the client reaches (reads ``instance_id``).

        Raises:
            what ``BalloonClient.execute`` raises.
        """
        return self.entry(await self.client.instance_id())

    async def remember(self, **values: Any) -> None:
        """Record ``values`` for this VM instance, dropping what another run left.

        Raises:
            OSError: the store cannot be written; and what ``BalloonClient.execute`` raises.
        """
        instance = await self.client.instance_id()

        def change(entry: dict[str, Any]) -> dict[str, Any]:
            if instance is None or entry.get("instance") != instance:
                entry = {"instance": instance}
            at, new = entry.get("target_at"), values
            if isinstance(at, int | float) and at > values.get("target_at", at):
                # a target set later (by another process, saved while this one waited in a
                # batch) stands: never replace it with an older one
                new = {k: v for k, v in values.items() if k not in _TARGET_KEYS}
            elif "target" in values:  # balloonctl sets the target: the VM is its own again
                entry.pop("foreign", None)
            return {**entry, **new}

        self.store.edit(self.client.address, change)

    def hint_on(self, entry: dict[str, Any]) -> bool:
        """The agent-mode hint: as set on this instance, else the inventory's preference."""
        return bool(entry.get("hint", self.hint_preference is True))

    def last_target(self) -> int | None:
        """The last target balloonctl set on this VM instance (from the store), if any.

        Does no I/O, so it knows the instance only after a call on this connection has
        read it (``resolve_target``, ``set_target``, ``current_target``, ``snapshot``, the
        hint calls), and returns None before. It does not apply the staleness rule;
        ``current_target`` does (and forgets a stale target; this returns None after).
        """
        value = self.entry(self.client.run.known_instance_id()).get("target")
        return value if isinstance(value, int) else None

    async def current_target(self, *, actual: int | None = None,
                             guest_ram: int | None = None) -> int | None:
        """The target balloonctl set on this VM instance, if it still stands; else None.
        ``observe`` without an earlier observation; see it.

        Raises:
            NoBalloonDevice, and what ``BalloonClient.execute`` raises.
        """
        return (await self.observe(actual=actual, guest_ram=guest_ram))[0]

    async def observe(self, *, actual: int | None = None, guest_ram: int | None = None,
                      seen: tuple[int, float] | None = None,
                      deflate_on_oom: bool | None = None) -> tuple[int | None, Owner | None]:
        """The target balloonctl set on this VM instance if it still stands (else None),
        and who owns the balloon: ``Owner.BALLOONCTL`` (that target stands),
        ``Owner.FOREIGN`` (another writer moved it; see the module docstring) or None
        (nobody balloonctl knows of).

        A remembered target stops standing when it is above guest RAM (another VM once had
        this address), when ``actual`` shows another writer (``foreign_change``: the run is
        marked foreign), when deflate-on-oom took pages back, or when ``actual`` has not
        reached it ``stale_after`` seconds after it was set (forgotten). ``seen`` is an
        earlier observation, ``(actual, when)``; ``actual``/``guest_ram`` are queried when
        not given.

        Raises:
            NoBalloonDevice, and what ``BalloonClient.execute`` raises.
        """
        instance = await self.client.instance_id()
        entry = self.entry(instance)
        if entry.get("foreign"):
            return None, Owner.FOREIGN
        target = entry.get("target")
        if not isinstance(target, int):
            return None, None
        ram = guest_ram if guest_ram is not None else await self.client.guest_ram()
        if actual is None:
            actual = await self.client.query_actual()
        if target > ram:
            return None, None
        set_at = entry.get("target_at")

        def same_target(e: dict[str, Any]) -> bool:
            return (e.get("instance") == instance and e.get("target") == target
                    and e.get("target_at") == set_at)

        if abs(actual - target) <= CONVERGED_TOLERANCE:
            if not entry.get("target_reached"):
                self._edit_quietly(lambda e: {**e, "target_reached": True}
                                   if same_target(e) else e)
            return target, Owner.BALLOONCTL
        when = set_at if isinstance(set_at, int | float) else None
        earlier = seen[0] if seen is not None and when is not None and seen[1] >= when else None
        set_from = entry.get("target_from")
        why = foreign_change(target, actual, reached=bool(entry.get("target_reached")),
                             set_from=set_from if isinstance(set_from, int) else None,
                             seen=earlier, deflate_on_oom=deflate_on_oom)
        if why is not None:
            log.info("%s: moved by another writer: %s", self.client.name, why)
            mark = {"at": time.time(), "previous": target, "actual": actual, "why": why,
                    "journaled": False}
            self._edit_quietly(lambda e: {**{k: v for k, v in e.items() if k not in _TARGET_KEYS},
                                          "foreign": mark} if same_target(e) else e)
            return None, Owner.FOREIGN
        too_old = when is None or time.time() - when > self.stale_after
        if entry.get("target_reached") or too_old:
            log.info("%s: forgetting stale target %s (actual %s)", self.client.name,
                     format_size(target), format_size(actual))
            self._edit_quietly(lambda e: {k: v for k, v in e.items() if k not in _TARGET_KEYS}
                               if same_target(e) else e)
            return None, None
        return target, Owner.BALLOONCTL

    # ---- foreign writers --------------------------------------------------------------

    async def foreign(self) -> dict[str, Any] | None:
        """The foreign mark of this run (``at``, ``previous``, ``actual``, ``why``,
        ``journaled``), or None.

        Raises:
            what ``BalloonClient.execute`` raises.
        """
        mark = (await self.remembered()).get("foreign")
        return dict(mark) if isinstance(mark, dict) else None

    async def claim_foreign_report(self) -> dict[str, Any] | None:
        """The foreign mark, if it has not been journaled yet; marks it journaled in the
        same atomic edit, so of several balloonctl processes only one journals it.

        Raises:
            OSError: the store cannot be written; and what ``BalloonClient.execute`` raises.
        """
        instance = await self.client.instance_id()
        claimed: list[dict[str, Any]] = []

        def claim(e: dict[str, Any]) -> dict[str, Any]:
            mark = e.get("foreign")
            if e.get("instance") != instance or not isinstance(mark, dict) or mark.get(
                    "journaled"):
                return e
            claimed.append(dict(mark))
            return {**e, "foreign": {**mark, "journaled": True}}

        # at once, even in a batch: another process must see the claim before it journals
        self.store.edit(self.client.address, claim, immediate=True)
        return claimed[-1] if claimed else None

    async def reclaim(self) -> bool:
        """Take the VM back from another writer: forget the foreign mark (balloonctl's
        next target makes it its own again). False when there was none.

        Raises:
            OSError: the store cannot be written; and what ``BalloonClient.execute`` raises.
        """
        instance = await self.client.instance_id()
        found: list[bool] = []

        def drop(e: dict[str, Any]) -> dict[str, Any]:
            if e.get("instance") != instance or "foreign" not in e:
                return e
            found.append(True)
            return {k: v for k, v in e.items() if k != "foreign"}

        self.store.edit(self.client.address, drop)
        return bool(found)

    async def adopt(self, actual: int) -> bool:
        """Record ``actual`` as balloonctl's (reached) target of a VM nobody owns, without
        sending anything, so that a later move by another writer is noticed. False when
        the run already has a target or a foreign mark.

        Raises:
            OSError: the store cannot be written; and what ``BalloonClient.execute`` raises.
        """
        instance = await self.client.instance_id()
        adopted: list[bool] = []

        def take(e: dict[str, Any]) -> dict[str, Any]:
            if instance is None:
                return e
            if e.get("instance") != instance:
                e = {"instance": instance}
            if "target" in e or "foreign" in e:
                return e
            adopted.append(True)
            return {**e, "target": actual, "target_at": time.time(), "target_reached": True,
                    "target_from": actual}

        self.store.edit(self.client.address, take)
        return bool(adopted)

    async def resolve(self, spec: TargetSpec | int, *, minimum: int | None,
                      maximum: int | None, force: bool = False, granule: int = 1) -> int:
        """``spec`` resolved against guest RAM and the current target, rounded up to a
        multiple of ``granule`` bytes (what the VM's interface can set), and validated.

        Relative targets count from the last target balloonctl set on this VM instance
        while it stands (``current_target``), else from ``actual``. ``force`` allows going
        below the floor (``minimum``, else ``default_floor``), never below ``HARD_MINIMUM``.

        Raises:
            SizeError: a relative target would be zero or negative.
            UnsafeTarget: above guest RAM or ``maximum``, below the floor (or hard minimum).
            NoBalloonDevice, and what the client's calls raise.
        """
        ram = await self.client.guest_ram()
        if isinstance(spec, int):
            target = spec
        else:
            actual = await self.client.query_actual()
            current = await self.current_target(actual=actual, guest_ram=ram)
            target = spec.resolve(guest_ram=ram, current=actual if current is None else current)
        target = -(-target // granule) * granule
        return validate_target(target, guest_ram=ram, minimum=minimum, maximum=maximum,
                               force=force, vm=self.client.vm)

    def _edit_quietly(self, change: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        # Bookkeeping done while reading: a store that cannot be written (read-only state
        # directory) must not fail a snapshot; the same conclusion is drawn next time.
        try:
            self.store.edit(self.client.address, change)
        except OSError as exc:
            log.warning("%s: cannot update balloonctl's state: %s", self.client.name, exc)
