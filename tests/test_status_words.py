"""Status words from what the guest's stats say: stale when frozen, pressure when the guest
swaps or faults heavily; the JSON's schema, time and last_update; watch's event lines."""

from __future__ import annotations

import json
from typing import Any

import pytest
from rawqmp import poll_until

from balloonctl.fake import FakeVM
from balloonctl.fleet import CONNECTED, ERROR, Fleet, event_record
from balloonctl.model import (
    JSON_KEYS,
    PRESSURE_MAJOR_FAULTS,
    PRESSURE_SWAP,
    SCHEMA,
    BalloonState,
    GuestStats,
    VmRef,
    VmStatus,
    derive,
)
from balloonctl.qmp import BalloonEvent
from balloonctl.store import MemoryStore
from balloonctl.units import GiB, MiB, parse_target

T0 = 1_700_000_000


def state(*, at: float = T0 + 1, last: int = T0, interval: int | None = 2,
          **stats: Any) -> BalloonState:
    return BalloonState(name="vm1", qmp="/run/vm1.qmp", reachable=True, actual=GiB,
                        guest_ram=2 * GiB, polling_interval=interval, taken_at=at,
                        stats=GuestStats(last_update=last, free_memory=GiB, **stats))


@pytest.mark.parametrize(("changes", "status"), [
    ({}, VmStatus.OK),
    ({"interval": 0}, VmStatus.STALE),  # polling off: the stats never change again
    ({"at": T0 + 8.0}, VmStatus.OK),  # 3 intervals + 2 s is the limit...
    ({"at": T0 + 8.5}, VmStatus.STALE),  # ...and one step past it
])
def test_frozen_stats_are_stale(changes: dict[str, Any], status: VmStatus) -> None:
    assert state(**changes).status is status


@pytest.mark.parametrize(("moved_at", "at", "status"), [
    (T0 + 1.0, T0 + 5.0, VmStatus.OK),  # moved after the report; 4 s = interval + 2: waiting
    (T0 + 1.0, T0 + 5.5, VmStatus.STALE),  # past that, no report since the move: frozen
    (T0 - 1.0, T0 + 5.5, VmStatus.OK),  # the report came after the move
])
def test_stats_older_than_the_balloons_last_move_are_stale(
    moved_at: float, at: float, status: VmStatus,
) -> None:
    assert state(at=at).with_changes(moved_at=moved_at).status is status


def test_pressure_from_two_samples() -> None:
    first = state(swap_in=0, swap_out=0, major_faults=0)
    swapping = state(at=T0 + 3, last=T0 + 2, swap_in=PRESSURE_SWAP, swap_out=PRESSURE_SWAP,
                     major_faults=0)
    got = derive(first, swapping)
    assert got.swap_rate == PRESSURE_SWAP and got.status is VmStatus.PRESSURE
    calm = state(at=T0 + 3, last=T0 + 2, swap_in=PRESSURE_SWAP - 2, swap_out=0,
                 major_faults=2 * PRESSURE_MAJOR_FAULTS - 2)
    below = derive(first, calm)
    assert below.status is VmStatus.OK  # just under both thresholds (per second over 2 s)
    assert below.major_fault_rate == PRESSURE_MAJOR_FAULTS - 1
    faulting = calm.with_changes(stats=GuestStats(
        last_update=T0 + 2, swap_in=0, swap_out=0, major_faults=2 * PRESSURE_MAJOR_FAULTS))
    assert derive(first, faulting).status is VmStatus.PRESSURE
    # the same sample read again keeps the rates; a rebooted guest (counters reset) has none
    assert derive(got, swapping.with_changes(taken_at=T0 + 4)).swap_rate == PRESSURE_SWAP
    reset = state(at=T0 + 5, last=T0 + 4, swap_in=0, swap_out=0, major_faults=0)
    assert derive(got, reset).swap_rate is None


def test_two_different_samples_stamped_with_the_same_second_are_a_second_apart() -> None:
    # QEMU's last-update is whole seconds: the driver's first push and a polling timer armed
    # at once can both carry T0. The second sample is new (it swapped): its rate is at least
    # what it swapped per second, not unknown.
    first = state(swap_in=0, swap_out=0, major_faults=0)
    again = state(at=T0 + 0.9, swap_in=PRESSURE_SWAP, swap_out=0, major_faults=0)
    got = derive(first, again)
    assert got.swap_rate == PRESSURE_SWAP and got.status is VmStatus.PRESSURE
    just_under = state(at=T0 + 0.9, swap_in=PRESSURE_SWAP - 1, swap_out=0, major_faults=0)
    assert derive(first, just_under).status is VmStatus.OK


def test_a_single_snapshot_has_no_rates_and_no_pressure() -> None:
    s = state(swap_in=10 * GiB, swap_out=10 * GiB, major_faults=10**9)
    assert s.swap_rate is None and s.status is VmStatus.OK


def test_json_has_schema_time_and_null_last_update() -> None:
    data = state().to_json()
    assert data["schema"] == SCHEMA == 1 and data["time"] == T0 + 1
    assert "taken_at" not in data and tuple(data) == JSON_KEYS
    never = state().with_changes(stats=GuestStats()).to_json()
    assert never["last_update"] is None and never["status"] == "no-driver"
    assert BalloonState.from_json(json.loads(json.dumps(data))).to_json() == data
    older = {k: v for k, v in data.items() if k != "time"} | {"taken_at": 5.0}
    assert BalloonState.from_json(older).taken_at == 5.0


def test_event_lines_share_the_snapshots_time_field() -> None:
    change = event_record("vm1", BalloonEvent("BALLOON_CHANGE", {"actual": GiB}, T0 + 0.5))
    assert change == {"schema": SCHEMA, "time": T0 + 0.5, "name": "vm1",
                      "event": "BALLOON_CHANGE", "data": {"actual": GiB}}
    connected = event_record("vm1", BalloonEvent(CONNECTED, {"state": state()}, T0))
    assert connected == {"schema": SCHEMA, "time": T0, "name": "vm1", "event": "CONNECTED"}
    error = event_record("vm1", BalloonEvent(ERROR, {"error": "x", "error_kind": "BadReply",
                                                     "state": state()}, T0))
    assert error["event"] == "ERROR" and error["data"] == {"error": "x",
                                                             "error_kind": "BadReply"}
    assert set(change) & set(state().to_json()) == {"schema", "time", "name"}


async def test_a_fleet_sees_a_swapping_guest_as_pressure(fake_vm_factory: Any) -> None:
    vm: FakeVM = await fake_vm_factory("vm1", stats_interval=1)
    calm: FakeVM = await fake_vm_factory("vm2", stats_interval=1)
    async with Fleet([VmRef(name=v.name, qmp=str(v.qmp_path)) for v in (vm, calm)],
                     store=MemoryStore()) as fleet:
        # A rate needs two reported samples: start from the guest's first report (a fresh
        # fake VM may not have sent one yet when the fleet first reads it).
        async def reported() -> BalloonState | None:
            (state, _) = await fleet.snapshot()
            return state if state.stats is not None and state.stats.reported else None

        first = await poll_until(reported, within=5.0, interval=0.05,
                                 what="the guest's first stats report")
        assert first.stats is not None and first.stats.swap_in is not None
        swapped = first.stats.swap_in + 64 * MiB
        vm.guest.swap_in += 64 * MiB  # the guest pages in 64 MiB before its next report

        # The first sample that carries the swap-in (a sample the guest sent while the first
        # snapshot was still reading vm2 does not: waiting for "any newer sample" raced).
        async def next_sample() -> dict[str, BalloonState] | None:
            got = {s.name: s for s in await fleet.snapshot()}
            stats = got["vm1"].stats
            return got if stats and (stats.swap_in or 0) >= swapped else None

        states = await poll_until(next_sample, within=5.0, interval=0.05,
                                  what="the guest's sample with the swap-in")
    assert states["vm1"].status is VmStatus.PRESSURE, states["vm1"]
    assert states["vm2"].status is VmStatus.OK


async def test_polling_off_is_stale_in_the_fleet(fake_vm_factory: Any) -> None:
    vm: FakeVM = await fake_vm_factory("vm1", stats_interval=0)
    async with Fleet([VmRef(name="vm1", qmp=str(vm.qmp_path))], store=MemoryStore()) as fleet:
        (s,) = await fleet.snapshot()
        assert s.status is VmStatus.STALE and s.to_json()["status"] == "stale"
        await fleet.enable_stats("vm1", 1)
        await fleet.set_target("vm1", parse_target("1G"))
        (after,) = await fleet.snapshot()
    assert after.moved_at is not None  # the store's target_at: when balloonctl set it
