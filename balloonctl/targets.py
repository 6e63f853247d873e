"""What balloonctl remembers about one run of a VM between invocations: the last target it
set and the agent-mode cache-first hint (QEMU keeps neither for stock devices).

``RememberedTargets`` keeps them in a ``balloonctl.store`` entry keyed by the VM's QMP
address and tied to one run of the VM (``BalloonClient.instance_id``): an entry written for
another run, or without an instance (older balloonctl), is ignored and replaced by the next
write, so a restarted VM starts with no target and the hint at the inventory's preference.
A remembered target also stops counting (``current_target``) once the VM shows it was
changed behind balloonctl's back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Final, Protocol

from balloonctl.model import CONVERGED_TOLERANCE, validate_target
from balloonctl.store import Store
from balloonctl.units import TargetSpec, format_size

__all__ = ["RememberedTargets", "TargetsClient"]

log = logging.getLogger(__name__)

# Store keys that describe the last target; forgotten together when it goes stale.
_TARGET_KEYS: Final = ("target", "target_at", "target_reached")


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
            return {**entry, **values}

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

        A remembered target stops standing when it is above guest RAM (another VM once had
        this address), when ``actual`` reached it once and has left it since (QEMU never
        moves off a reached target by itself: another QMP client changed it), or when
        ``actual`` has not reached it ``stale_after`` seconds after it was set. A stale
        target is forgotten. ``actual``/``guest_ram`` are queried when not given.

        Raises:
            NoBalloonDevice, and what ``BalloonClient.execute`` raises.
        """
        instance = await self.client.instance_id()
        entry = self.entry(instance)
        target = entry.get("target")
        if not isinstance(target, int):
            return None
        ram = guest_ram if guest_ram is not None else await self.client.guest_ram()
        if actual is None:
            actual = await self.client.query_actual()
        if target > ram:
            return None
        set_at = entry.get("target_at")

        def same_target(e: dict[str, Any]) -> bool:
            return (e.get("instance") == instance and e.get("target") == target
                    and e.get("target_at") == set_at)

        if abs(actual - target) <= CONVERGED_TOLERANCE:
            if not entry.get("target_reached"):
                self._edit_quietly(lambda e: {**e, "target_reached": True}
                                   if same_target(e) else e)
            return target
        too_old = (not isinstance(set_at, int | float)
                   or time.time() - set_at > self.stale_after)
        if entry.get("target_reached") or too_old:
            log.info("%s: forgetting stale target %s (actual %s)", self.client.name,
                     format_size(target), format_size(actual))
            self._edit_quietly(lambda e: {k: v for k, v in e.items() if k not in _TARGET_KEYS}
                               if same_target(e) else e)
            return None
        return target

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
