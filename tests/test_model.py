"""The snapshot model: status words, JSON keys as API, limits validation."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from balloonctl.errors import UnsafeTarget
from balloonctl.model import (
    HARD_MINIMUM,
    JSON_KEYS,
    STAT_NOT_REPORTED,
    BalloonState,
    DeviceFeatures,
    GuestStats,
    HintMethod,
    HintMode,
    HintState,
    VmStatus,
    default_floor,
    validate_target,
)
from balloonctl.replies import guest_stats
from balloonctl.units import GiB, MiB

QOM_STATS: dict[str, Any] = {
    "stats": {
        "stat-swap-in": 3, "stat-swap-out": 4, "stat-major-faults": 5,
        "stat-minor-faults": 6, "stat-free-memory": 700 * MiB, "stat-total-memory": 2 * GiB,
        "stat-available-memory": 900 * MiB, "stat-disk-caches": 300 * MiB,
        "stat-htlb-pgalloc": 0, "stat-htlb-pgfail": 0, "stat-oom-kills": 2,
    },
    "last-update": 1700000000,
}


def test_guest_stats_from_qom() -> None:
    s = guest_stats(QOM_STATS)
    assert s.free_memory == 700 * MiB and s.disk_caches == 300 * MiB and s.swap_in == 3
    assert s.extra == {"stat-oom-kills": 2}  # newer QEMU: kept, not lost
    assert s.reported and s.age(now=1700000010) == 10


def test_unreported_stats_are_none() -> None:
    raw = {"stats": dict.fromkeys(QOM_STATS["stats"], STAT_NOT_REPORTED), "last-update": 0}
    s = guest_stats(raw)
    assert s.free_memory is None and s.extra == {} and not s.reported and s.age() is None


def full_state() -> BalloonState:
    return BalloonState(
        name="vm1", qmp="/run/vm1.qmp", reachable=True, actual=1 * GiB, guest_ram=2 * GiB,
        target=1 * GiB, floor=256 * MiB, maximum=3 * GiB // 2, stats=guest_stats(QOM_STATS),
        polling_interval=2, features=DeviceFeatures(True, False, None),
        hint=HintState(HintMode.AGENT, True, "reclaims cache", 200 * MiB, HintMethod.RECLAIM),
        taken_at=1700000001.0,
    )


def test_json_keys_are_stable_and_round_trip() -> None:
    s = full_state()
    data = s.to_json()
    assert tuple(data) == JSON_KEYS
    assert data["ballooned"] == 1 * GiB and data["status"] == "ok"
    assert data["stats_age"] == 1.0 and data["hint_released"] == 200 * MiB
    assert data["hint_method"] == "reclaim"
    assert BalloonState(name="", qmp="").to_json()["hint_method"] is None
    back = BalloonState.from_json(json.loads(json.dumps(data)))
    assert back.to_json() == data


@pytest.mark.parametrize(
    ("changes", "status"),
    [
        ({}, VmStatus.OK),
        ({"reachable": False, "error_kind": "SocketBusy"}, VmStatus.BUSY),
        ({"reachable": False, "error_kind": "ConnectFailed"}, VmStatus.UNREACHABLE),
        ({"has_device": False}, VmStatus.NO_DEVICE),
        ({"stats": GuestStats()}, VmStatus.NO_DRIVER),
        ({"target": 1536 * MiB}, VmStatus.CONVERGING),
        ({"taken_at": 1700000100.0}, VmStatus.STALE),
    ],
)
def test_status_word(changes: dict[str, object], status: VmStatus) -> None:
    assert full_state().with_changes(**changes).status is status


def test_default_floor() -> None:
    assert default_floor(1 * GiB) == 256 * MiB
    assert default_floor(8 * GiB) == 8 * GiB // 10


@given(ram=st.integers(HARD_MINIMUM, 64 * GiB), target=st.integers(1, 128 * GiB),
       force=st.booleans())
def test_validate_target_never_lets_unsafe_through(ram: int, target: int, force: bool) -> None:
    try:
        ok = validate_target(target, guest_ram=ram, force=force)
    except UnsafeTarget as exc:
        assert exc.target == target
        assert target > ram or target < HARD_MINIMUM or (
            not force and target < default_floor(ram))
    else:
        assert ok == target and HARD_MINIMUM <= target <= ram
        assert force or target >= default_floor(ram)


def test_validate_target_maximum_and_minimum() -> None:
    with pytest.raises(UnsafeTarget, match="maximum"):
        validate_target(3 * GiB, guest_ram=4 * GiB, maximum=2 * GiB, vm="a")
    with pytest.raises(UnsafeTarget, match="floor 1 GiB"):
        validate_target(900 * MiB, guest_ram=4 * GiB, minimum=1 * GiB)
    assert validate_target(900 * MiB, guest_ram=4 * GiB, minimum=1 * GiB, force=True)


@pytest.mark.parametrize(("state", "word"), [
    (HintState(HintMode.AGENT, True, method=HintMethod.RECLAIM), "reclaim"),
    (HintState(HintMode.AGENT, True, method=HintMethod.DROP), "drop"),
    (HintState(HintMode.AGENT, True), None),  # agent mode, method not found yet
    (HintState(HintMode.DEVICE, True), "device"),
    (HintState(HintMode.UNSUPPORTED, False), None),
    (HintState(), None),
])
def test_how_the_hint_is_honoured_in_one_word(state: HintState, word: str | None) -> None:
    # what experiment results show per VM (HINT METHOD, hint_method)
    assert state.honoured_by == word
