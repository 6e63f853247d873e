"""The virtio-balloon device as QEMU 7.2 keeps it: target, guest stats and their timer.

``BalloonDevice.tick`` is called from the fleet's shared timer; it is cheap when nothing
moves (a few comparisons, no allocation).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Final

from balloonctl.fake.faults import Faults
from balloonctl.fake.guest import GuestSim
from balloonctl.units import MiB

__all__ = ["NOT_REPORTED_STATS", "BalloonDevice"]

_U64_MINUS_ONE: Final = 2**64 - 1
STAT_NAMES: Final = (
    "stat-swap-in",
    "stat-swap-out",
    "stat-major-faults",
    "stat-minor-faults",
    "stat-free-memory",
    "stat-total-memory",
    "stat-available-memory",
    "stat-disk-caches",
    "stat-htlb-pgalloc",
    "stat-htlb-pgfail",
)
# What QEMU reports before the guest driver sent anything: every stat u64 -1.
NOT_REPORTED_STATS: Final = dict.fromkeys(STAT_NAMES, _U64_MINUS_ONE)

# QEMU checks the polling interval against UINT32_MAX.
_MAX_INTERVAL: Final = 2**32 - 1


class BalloonDevice:
    """One virtio-balloon-pci device and the guest driver behind it."""

    def __init__(
        self,
        guest: GuestSim,
        faults: Faults,
        *,
        device_id: str | None = "balloon0",
        hint_device: bool = False,
        deflate_on_oom: bool = False,
        free_page_reporting: bool = False,
        free_page_hint: bool = False,
        page_poison: bool = True,
        driver: bool = True,
        driver_delay: float = 0.0,
        rate: int = 512 * MiB,
        on_actual_change: Callable[[int, float], None] | None = None,
    ) -> None:
        self.guest = guest
        self.faults = faults
        self.device_id = device_id
        self.hint_device = hint_device
        self.deflate_on_oom = deflate_on_oom
        self.free_page_reporting = free_page_reporting
        self.free_page_hint = free_page_hint
        self.page_poison = page_poison
        self.driver = driver
        self.driver_delay = driver_delay
        self.rate = rate
        self.on_actual_change = on_actual_change
        self.driver_loaded = False
        self.polling_interval = 0
        self.last_update = 0
        # For tests that must see time pass in the guest, not just on the clock: timer
        # ticks so far, and expirations of the stats polling timer (counted even when the
        # guest does not answer, with the stale_stats fault).
        self.ticks = 0
        self.stats_polls = 0
        self._stats: dict[str, int] = NOT_REPORTED_STATS
        self._driver_at = float("inf")
        self._next_poll = float("inf")
        self._credit = 0.0
        self._last_tick: float | None = None

    # --- lifecycle ---------------------------------------------------------------------

    def start(self, now: float) -> None:
        """The VM booted at ``now`` (monotonic): the driver loads ``driver_delay`` later."""
        self._last_tick = now
        if self.driver:
            self._driver_at = now + self.driver_delay
            if self.driver_delay <= 0:
                self.load_driver(now, time.time())

    def load_driver(self, now: float, wall: float) -> None:
        """modprobe virtio_balloon: the driver pushes one stats sample at once."""
        if self.driver_loaded:
            return
        self.driver_loaded = True
        self._driver_at = float("inf")
        self._refresh_stats(wall)

    # --- QMP/QOM facing ----------------------------------------------------------------

    def guest_stats(self) -> dict[str, Any]:
        """``qom-get guest-stats``."""
        return {"last-update": self.last_update, "stats": self._stats}

    def set_target(self, value: int) -> None:
        """``balloon value`` (already checked positive): QEMU clamps it to guest RAM."""
        self.guest.set_target(min(value, self.guest.ram))

    def set_polling_interval(self, value: int, now: float) -> None:
        """``qom-set guest-stats-polling-interval``; the caller checked the type.

        Raises:
            ValueError: negative or too big, with QEMU's message.
        """
        if value < 0:
            raise ValueError("timer value must be greater than zero")
        if value > _MAX_INTERVAL:
            raise ValueError("timer value is too big")
        if value == self.polling_interval:
            return
        previous = self.polling_interval
        self.polling_interval = value
        if value == 0:
            self._next_poll = float("inf")
        elif previous == 0:
            # QEMU arms the new timer to fire at once.
            self._next_poll = now
        else:
            self._next_poll = now + value

    # --- the timer ---------------------------------------------------------------------

    def tick(self, now: float, wall: float) -> None:
        self.ticks += 1
        last = self._last_tick
        self._last_tick = now
        if last is None:
            return
        if not self.driver_loaded:
            if now >= self._driver_at:
                self.load_driver(now, wall)
            else:
                return
        guest = self.guest
        if guest.balloon != guest.balloon_target and not self.faults.stuck:
            self._credit = min(self._credit + self.rate * (now - last), self.rate * 0.5 + MiB)
            if self._credit >= MiB:
                steps = int(self._credit // MiB)
                moved = guest.step_balloon(steps * MiB)
                self._credit -= steps * MiB
                if moved and self.on_actual_change is not None:
                    self.on_actual_change(guest.actual, wall)
        else:
            self._credit = 0.0
        if now >= self._next_poll:
            self._next_poll = now + self.polling_interval
            self.stats_polls += 1
            if not self.faults.stale_stats:
                self._refresh_stats(wall)

    def _refresh_stats(self, wall: float) -> None:
        self._stats = self.guest.stats()
        self.last_update = int(wall)
