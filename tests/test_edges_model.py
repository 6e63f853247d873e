"""Every limit of the model at its edge and one step past it.

Oracles come from the documentation, not from the code: docs/cli.md (``--force`` never below
128 MiB; the default floor max(256 MiB, 10 % of guest RAM); a configured ``min``/``max``;
the status words) and docs/CONTRACTS.md. These are also the fast tests ``./dev mutate`` runs.
"""

from __future__ import annotations

import json

import pytest

from balloonctl.errors import SizeError, UnsafeTarget
from balloonctl.model import (
    HARD_MINIMUM,
    JSON_KEYS,
    STAT_NOT_REPORTED,
    BalloonState,
    DeviceFeatures,
    GuestStats,
    HintMode,
    HintState,
    VmStatus,
    default_floor,
    validate_target,
)
from balloonctl.units import (
    GiB,
    KiB,
    MiB,
    PiB,
    TiB,
    format_duration,
    format_size,
    parse_duration,
    parse_size,
    parse_target,
)

PAGE = 4 * KiB
NOW = 1_800_000_000.0


# --- floors and ceilings (docs/cli.md: set --force; exit code 5) ------------------------------


def test_the_hard_minimum_is_128_mib() -> None:
    assert HARD_MINIMUM == 128 * MiB


@pytest.mark.parametrize(
    ("ram", "floor"),
    [
        (1 * GiB, 256 * MiB),  # 10 % is 102.4 MiB: 256 MiB wins
        (2560 * MiB, 256 * MiB),  # 10 % is exactly 256 MiB
        (2570 * MiB, 257 * MiB),  # 10 % is just above 256 MiB
        (5000 * MiB, 500 * MiB),  # 10 % wins
        (64 * GiB, 64 * GiB // 10),
    ],
)
def test_the_default_floor_is_the_larger_of_256_mib_and_a_tenth_of_ram(
    ram: int, floor: int
) -> None:
    assert default_floor(ram) == floor


@pytest.mark.parametrize("ram", [2 * GiB, 5000 * MiB, 16 * GiB])
def test_a_target_at_the_default_floor_is_accepted_and_one_mib_below_is_refused(
    ram: int,
) -> None:
    floor = max(256 * MiB, ram // 10)
    assert validate_target(floor, guest_ram=ram) == floor
    with pytest.raises(UnsafeTarget, match="below the safe floor") as info:
        validate_target(floor - MiB, guest_ram=ram, vm="vm1")
    assert "--force" in str(info.value)
    assert (info.value.vm, info.value.target) == ("vm1", floor - MiB)
    # one byte below is below too
    with pytest.raises(UnsafeTarget):
        validate_target(floor - 1, guest_ram=ram)
    # --force goes below the floor
    assert validate_target(floor - MiB, guest_ram=ram, force=True) == floor - MiB


def test_force_reaches_the_hard_minimum_but_never_below_it() -> None:
    ram = 4 * GiB
    assert validate_target(128 * MiB, guest_ram=ram, force=True) == 128 * MiB
    for below in (128 * MiB - 1, 127 * MiB, 1):
        with pytest.raises(UnsafeTarget, match=r"hard minimum.*even with --force"):
            validate_target(below, guest_ram=ram, force=True)


def test_the_hard_minimum_holds_even_for_a_configured_min_below_it() -> None:
    with pytest.raises(UnsafeTarget, match="hard minimum"):
        validate_target(100 * MiB, guest_ram=GiB, minimum=64 * MiB)
    assert validate_target(128 * MiB, guest_ram=GiB, minimum=64 * MiB) == 128 * MiB


def test_a_configured_min_below_a_tenth_of_ram_is_honoured_not_raised() -> None:
    ram = 8 * GiB  # the default floor would be 819.2 MiB
    minimum = 300 * MiB
    assert validate_target(minimum, guest_ram=ram, minimum=minimum) == minimum
    with pytest.raises(UnsafeTarget, match="below the safe floor 300 MiB"):
        validate_target(minimum - MiB, guest_ram=ram, minimum=minimum)


def test_a_configured_min_above_the_default_floor_raises_the_floor() -> None:
    ram = 2 * GiB
    assert validate_target(GiB, guest_ram=ram, minimum=GiB) == GiB
    with pytest.raises(UnsafeTarget, match="safe floor 1 GiB"):
        validate_target(GiB - MiB, guest_ram=ram, minimum=GiB)
    assert validate_target(GiB - MiB, guest_ram=ram, minimum=GiB, force=True) == GiB - MiB


def test_guest_ram_is_the_ceiling() -> None:
    ram = 2 * GiB
    assert validate_target(ram, guest_ram=ram) == ram
    with pytest.raises(UnsafeTarget, match=r"above guest RAM \(2 GiB\)"):
        validate_target(ram + 1, guest_ram=ram)
    with pytest.raises(UnsafeTarget, match="above guest RAM"):
        validate_target(ram + MiB, guest_ram=ram, force=True)  # --force is about floors


def test_a_configured_max_is_the_ceiling_when_below_guest_ram() -> None:
    ram, maximum = 4 * GiB, 3 * GiB
    assert validate_target(maximum, guest_ram=ram, maximum=maximum) == maximum
    with pytest.raises(UnsafeTarget, match=r"above the VM's maximum \(3 GiB\)"):
        validate_target(maximum + MiB, guest_ram=ram, maximum=maximum)
    with pytest.raises(UnsafeTarget, match="above the VM's maximum"):
        validate_target(maximum + 1, guest_ram=ram, maximum=maximum, force=True)


def test_a_configured_max_above_guest_ram_leaves_guest_ram_the_ceiling() -> None:
    ram = 2 * GiB
    assert validate_target(ram, guest_ram=ram, maximum=8 * GiB) == ram
    with pytest.raises(UnsafeTarget, match="above guest RAM"):
        validate_target(ram + MiB, guest_ram=ram, maximum=8 * GiB)


# --- status words (docs/cli.md: status is one of ok, converging, stale, ...) -----------------


def healthy(**changes: object) -> BalloonState:
    """A reachable VM whose guest reported 1 s before the snapshot, polling every 2 s."""
    state = BalloonState(
        name="vm1", qmp="/run/vm1.qmp", reachable=True, actual=2 * GiB, guest_ram=4 * GiB,
        target=2 * GiB, floor=256 * MiB, stats=GuestStats(last_update=int(NOW) - 1,
                                                          free_memory=GiB),
        polling_interval=2, taken_at=NOW,
    )
    return state.with_changes(**changes)


def test_a_healthy_vm_is_ok() -> None:
    assert healthy().status is VmStatus.OK


@pytest.mark.parametrize("off", [0, MiB, 2 * MiB])
@pytest.mark.parametrize("sign", [1, -1])
def test_actual_within_2_mib_of_the_target_has_converged(off: int, sign: int) -> None:
    state = healthy(actual=2 * GiB + sign * off)
    assert not state.converging
    assert state.status is VmStatus.OK


@pytest.mark.parametrize("sign", [1, -1])
def test_actual_a_page_more_than_2_mib_off_is_converging(sign: int) -> None:
    state = healthy(actual=2 * GiB + sign * (2 * MiB + PAGE))
    assert state.converging
    assert state.status is VmStatus.CONVERGING
    assert state.to_json()["status"] == "converging"


def test_without_a_known_target_nothing_is_converging() -> None:
    assert not healthy(target=None, actual=GiB).converging
    assert not healthy(actual=None).converging


@pytest.mark.parametrize("interval", [1, 2, 10])
def test_stale_after_three_intervals_and_two_seconds(interval: int) -> None:
    # The guest's last-update is whole seconds: three missed reports plus 2 s of slack.
    last = int(NOW) - 100
    limit = 3 * interval + 2
    stats = GuestStats(last_update=last)
    at_edge = healthy(stats=stats, polling_interval=interval, taken_at=last + limit)
    assert at_edge.stats_age == limit
    assert not at_edge.stale and at_edge.status is VmStatus.OK
    past = at_edge.with_changes(taken_at=last + limit + 0.01)
    assert past.stale and past.status is VmStatus.STALE
    assert past.to_json()["status"] == "stale"


def test_never_stale_when_polling_is_off_or_nothing_was_reported() -> None:
    old = GuestStats(last_update=int(NOW) - 3600)
    assert not healthy(stats=old, polling_interval=0).stale
    assert not healthy(stats=old, polling_interval=None).stale
    assert not healthy(stats=GuestStats(), polling_interval=2).stale


def test_converging_wins_over_stale() -> None:
    state = healthy(actual=GiB, stats=GuestStats(last_update=int(NOW) - 3600))
    assert state.stale and state.status is VmStatus.CONVERGING


@pytest.mark.parametrize(
    ("changes", "status"),
    [
        ({"reachable": False, "error_kind": "SocketBusy"}, VmStatus.BUSY),
        ({"reachable": False, "error_kind": "ConnectFailed"}, VmStatus.UNREACHABLE),
        ({"reachable": False, "error_kind": None}, VmStatus.UNREACHABLE),
        ({"has_device": False}, VmStatus.NO_DEVICE),
        ({"has_device": False, "stats": None}, VmStatus.NO_DEVICE),
        ({"stats": GuestStats()}, VmStatus.NO_DRIVER),
        ({"stats": None}, VmStatus.NO_DRIVER),
        ({"stats": GuestStats(), "actual": GiB}, VmStatus.NO_DRIVER),
    ],
)
def test_status_words(changes: dict[str, object], status: VmStatus) -> None:
    assert healthy(**changes).status is status


def test_status_words_are_the_documented_ones() -> None:
    assert [s.value for s in VmStatus] == [
        "ok", "converging", "stale", "no-driver", "no-device", "busy", "unreachable"]


# --- derived values and the JSON keys (docs/cli.md: its keys are API) -------------------------


def test_ballooned_is_guest_ram_minus_actual_never_negative() -> None:
    assert healthy().ballooned == 2 * GiB
    assert healthy(actual=4 * GiB).ballooned == 0
    assert healthy(actual=5 * GiB).ballooned == 0
    assert healthy(actual=None).ballooned is None
    assert healthy(guest_ram=None).ballooned is None


def test_stats_age_counts_from_the_snapshot_and_never_goes_negative() -> None:
    assert healthy().stats_age == 1.0
    assert healthy(taken_at=NOW - 10).stats_age == 0.0
    assert healthy(stats=GuestStats()).stats_age is None
    assert healthy(stats=None).stats_age is None
    assert GuestStats(last_update=100).age(now=103.5) == 3.5
    assert GuestStats().age(now=103.5) is None


def test_driver_ready_needs_a_report() -> None:
    assert healthy().driver_ready
    assert not healthy(stats=GuestStats()).driver_ready
    assert not healthy(stats=None).driver_ready


DOCUMENTED_KEYS = (
    "name qmp status reachable error error_kind actual guest_ram ballooned target floor maximum "
    "free_memory disk_caches available_memory total_memory swap_in swap_out major_faults "
    "minor_faults last_update stats_age driver_ready polling_interval deflate_on_oom "
    "free_page_reporting free_page_hint hint_mode hint_enabled hint_detail hint_released "
    "hint_method taken_at"
).split()


def test_json_keys_are_exactly_the_documented_ones_in_order() -> None:
    assert list(JSON_KEYS) == DOCUMENTED_KEYS
    assert list(healthy().to_json()) == DOCUMENTED_KEYS


def test_to_json_values() -> None:
    stats = GuestStats(last_update=int(NOW) - 3, swap_in=1, swap_out=2, major_faults=3,
                       minor_faults=4, free_memory=5, total_memory=6, available_memory=7,
                       disk_caches=8)
    state = healthy(stats=stats, maximum=3 * GiB, error=None,
                    features=DeviceFeatures(True, False, None),
                    hint=HintState(HintMode.AGENT, True, "why", 9), taken_at=NOW + 0.12345)
    data = state.to_json()
    assert data == {
        "name": "vm1", "qmp": "/run/vm1.qmp", "status": "ok", "reachable": True,
        "error": None, "error_kind": None, "actual": 2 * GiB, "guest_ram": 4 * GiB,
        "ballooned": 2 * GiB, "target": 2 * GiB, "floor": 256 * MiB, "maximum": 3 * GiB,
        "free_memory": 5, "disk_caches": 8, "available_memory": 7, "total_memory": 6,
        "swap_in": 1, "swap_out": 2, "major_faults": 3, "minor_faults": 4,
        "last_update": int(NOW) - 3, "stats_age": 3.1, "driver_ready": True,
        "polling_interval": 2, "deflate_on_oom": True, "free_page_reporting": False,
        "free_page_hint": None, "hint_mode": "agent", "hint_enabled": True,
        "hint_detail": "why", "hint_released": 9, "hint_method": None,
        "taken_at": round(NOW + 0.12345, 3),
    }
    json.dumps(data)  # plain JSON types only
    back = BalloonState.from_json(data)
    assert back.to_json() == data


def test_from_json_of_an_unreachable_and_a_deviceless_vm() -> None:
    down = BalloonState(name="vm2", qmp="q", error="refused", error_kind="ConnectFailed",
                        taken_at=NOW)
    data = down.to_json()
    assert data["last_update"] is None and data["stats_age"] is None
    back = BalloonState.from_json(data)
    assert back.stats is None and back.status is VmStatus.UNREACHABLE
    assert back.to_json() == data
    nodev = healthy(has_device=False, stats=None)
    again = BalloonState.from_json(nodev.to_json())
    assert again.status is VmStatus.NO_DEVICE and not again.has_device
    assert BalloonState.from_json(healthy().to_json()).has_device


def test_from_json_defaults() -> None:
    state = BalloonState.from_json({"name": "x", "qmp": "q"})
    assert state.hint.mode is HintMode.UNKNOWN and state.hint.detail == ""
    assert not state.reachable and not state.hint.enabled
    assert state.features == DeviceFeatures()


def test_guest_stats_from_qom() -> None:
    value = {"last-update": 1234, "stats": {
        "stat-swap-in": 1, "stat-swap-out": 2, "stat-major-faults": 3, "stat-minor-faults": 4,
        "stat-free-memory": 5, "stat-total-memory": 6, "stat-available-memory": 7,
        "stat-disk-caches": 8, "stat-htlb-pgalloc": 9, "stat-htlb-pgfail": 10,
        "stat-new-thing": 11, "stat-unreported-new": STAT_NOT_REPORTED,
    }}
    s = GuestStats.from_qom(value)
    assert (s.last_update, s.swap_in, s.swap_out, s.major_faults, s.minor_faults,
            s.free_memory, s.total_memory, s.available_memory, s.disk_caches,
            s.htlb_pgalloc, s.htlb_pgfail) == (1234, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10)
    assert s.extra == {"stat-new-thing": 11}
    assert s.reported


@pytest.mark.parametrize("raw", [STAT_NOT_REPORTED, -1, "5", None, 1.5])
def test_a_stat_not_reported_or_malformed_is_none(raw: object) -> None:
    s = GuestStats.from_qom({"last-update": 1, "stats": {"stat-free-memory": raw,
                                                         "stat-odd": raw}})
    assert s.free_memory is None and s.extra == {}


def test_stats_zero_and_the_largest_real_value_are_kept() -> None:
    s = GuestStats.from_qom({"stats": {"stat-free-memory": 0,
                                       "stat-total-memory": STAT_NOT_REPORTED - 1}})
    assert s.free_memory == 0 and s.total_memory == STAT_NOT_REPORTED - 1


@pytest.mark.parametrize("value", [{}, {"stats": None}, {"last-update": "soon"}])
def test_guest_stats_never_reported(value: dict[str, object]) -> None:
    s = GuestStats.from_qom(value)
    assert s.last_update == 0 and not s.reported and s.free_memory is None


# --- sizes and durations at their edges (docs/cli.md: Sizes, Durations) -----------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1073741824", GiB), ("512M", 512 * MiB), ("512MiB", 512 * MiB), ("512m", 512 * MiB),
        ("2GB", 2 * 1000**3), ("1K", KiB), ("1KB", 1000), ("1MB", 1000**2), ("1T", TiB),
        ("1TB", 1000**4), ("1P", PiB), ("1PB", 1000**5), ("1PiB", PiB), ("1TiB", TiB),
        ("1KiB", KiB), ("1GiB", GiB), ("1B", 1), ("1", 1), ("1.5G", 3 * GiB // 2),
        ("0.3K", 307), (".5K", 512), (" 2 G ", 2 * GiB), ("1.0", 1),
    ],
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_the_largest_size_is_int64_max() -> None:
    assert parse_size(str(2**63 - 1)) == 2**63 - 1
    with pytest.raises(SizeError, match="too large"):
        parse_size(str(2**63))


@pytest.mark.parametrize("text", ["0", "0M", "0.0001K", "-1M", "1X", "1 GiBs", "M", "", "1e3",
                                  "1..5G", "1.5"])
def test_not_sizes(text: str) -> None:
    what = "empty" if text == "" else "invalid"  # the empty string is said as such
    with pytest.raises(SizeError, match=f"{what} size {text!r}"):
        parse_size(text)


def test_size_errors_say_why() -> None:
    with pytest.raises(SizeError, match="unknown unit 'X'"):
        parse_size("1X")
    with pytest.raises(SizeError, match="greater than zero"):
        parse_size("0")
    with pytest.raises(SizeError, match=r"e\.g\. 1073741824, 512M"):
        parse_size("lots")


@pytest.mark.parametrize("pct", ["100%", "0.5%", "100.0%"])
def test_percent_at_its_edges(pct: str) -> None:
    spec = parse_target(pct)
    assert spec.resolve(guest_ram=1000 * MiB, current=0) == int(
        float(pct[:-1]) * 1000 * MiB / 100)


@pytest.mark.parametrize("pct", ["100.01%", "0%", "0.0%", "101%"])
def test_percent_past_its_edges(pct: str) -> None:
    with pytest.raises(SizeError, match="above 0 and at most 100"):
        parse_target(pct)


def test_relative_targets_at_zero() -> None:
    assert parse_target("-1023M").resolve(guest_ram=2 * GiB, current=GiB) == MiB
    assert parse_target("+1").resolve(guest_ram=2 * GiB, current=GiB) == GiB + 1
    with pytest.raises(SizeError, match="would be zero"):
        parse_target("-1G").resolve(guest_ram=2 * GiB, current=GiB)
    with pytest.raises(SizeError, match="would be negative"):
        parse_target("-1025M").resolve(guest_ram=2 * GiB, current=GiB)
    assert parse_target(" -256M ").text == "-256M"


@pytest.mark.parametrize(
    ("n", "long", "short"),
    [
        (0, "0 B", "0B"), (1023, "1023 B", "1023B"), (1024, "1 KiB", "1K"),
        (1536, "1.5 KiB", "1.5K"), (MiB, "1 MiB", "1M"), (GiB + GiB // 4, "1.2 GiB", "1.2G"),
        (100 * GiB, "100 GiB", "100G"), (1023 * GiB, "1023 GiB", "1023G"),
        (150 * MiB + 1, "150 MiB", "150M"), (99 * MiB + MiB // 2, "99.5 MiB", "99.5M"),
        (TiB, "1 TiB", "1T"), (PiB, "1 PiB", "1P"), (2048 * PiB, "2048 PiB", "2048P"),
        (-512 * MiB, "-512 MiB", "-512M"), (2 * GiB - 1, "2 GiB", "2G"),
    ],
)
def test_format_size(n: int, long: str, short: str) -> None:
    assert format_size(n) == long
    assert format_size(n, compact=True) == short


def test_format_size_of_nothing() -> None:
    assert format_size(None) == "-"
    assert format_size(None, compact=True) == "-"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (59.4, "59s"), (59.6, "1m00s"), (60, "1m00s"), (125, "2m05s"),
     (3599, "59m59s"), (3600, "1h00m"), (3720, "1h02m"), (90000, "25h00m"), (None, "-")],
)
def test_format_duration(seconds: float | None, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(("text", "seconds"), [("1ms", 0.001), ("0.5", 0.5), ("1m", 60),
                                               ("1.5h", 5400), ("2 s", 2), ("10MS", 0.01)])
def test_durations_at_small_and_large_units(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["0ms", "0.0", "1d", "1 min", "-2s"])
def test_not_durations(text: str) -> None:
    with pytest.raises(SizeError, match=f"invalid duration {text!r}"):
        parse_duration(text)


# --- what the messages say (one line an operator reads; ./dev mutate found them unchecked) ----


def test_refusals_name_the_vm_the_target_and_the_limit() -> None:
    cases = [
        (dict(target=3 * GiB, guest_ram=2 * GiB), "target 3 GiB is above guest RAM (2 GiB)"),
        (dict(target=100 * MiB, guest_ram=2 * GiB, force=True),
         "target 100 MiB is below the hard minimum 128 MiB, even with --force"),
        (dict(target=200 * MiB, guest_ram=2 * GiB),
         "target 200 MiB is below the safe floor 256 MiB (use --force to go lower)"),
    ]
    for kwargs, message in cases:
        with pytest.raises(UnsafeTarget) as info:
            validate_target(vm="web-1", **kwargs)  # type: ignore[arg-type]
        assert str(info.value) == f"web-1: {message}"
        assert info.value.vm == "web-1" and info.value.target == kwargs["target"]


def test_guest_stats_age_defaults_to_now() -> None:
    import time

    age = GuestStats(last_update=int(time.time()) - 5).age()
    assert age is not None and 4.0 <= age <= 7.0


def test_every_device_feature_survives_json() -> None:
    for features in (DeviceFeatures(True, True, True), DeviceFeatures(False, False, False),
                     DeviceFeatures(None, True, False)):
        back = BalloonState.from_json(healthy(features=features).to_json())
        assert back.features == features


def test_size_error_messages() -> None:
    with pytest.raises(SizeError) as info:
        parse_size("lots")
    assert str(info.value) == ("invalid size 'lots': expected a positive number with an "
                               "optional unit (e.g. 1073741824, 512M, 512MiB, 1.5G, 2GB)")
    with pytest.raises(SizeError) as info:
        parse_size("1X")
    assert str(info.value) == ("invalid size '1X': unknown unit 'X' "
                               "(use B, K, M, G, T, P, KiB..PiB or KB..PB)")
    with pytest.raises(SizeError) as info:
        parse_target("5%%")
    assert str(info.value) == "invalid size '5%%': expected a percentage such as 75%"
    with pytest.raises(SizeError) as info:
        parse_target("-1G").resolve(guest_ram=2 * GiB, current=GiB)
    assert str(info.value) == "target '-1G' from 1 GiB would be zero"


def test_a_relative_target_may_leave_one_byte() -> None:
    assert parse_target(f"-{GiB - 1}").resolve(guest_ram=2 * GiB, current=GiB) == 1


@pytest.mark.parametrize("text", ["75%", "1G", "+256M", "-1K", "100%"])
def test_a_spec_keeps_what_was_typed(text: str) -> None:
    assert parse_target(f" {text} ").text == text


def test_sizes_of_a_hundred_units_or_more_have_no_decimals() -> None:
    assert format_size(100 * MiB + MiB // 4) == "100 MiB"
    assert format_size(999 * MiB + MiB // 2, compact=True) == "1000M"
    assert format_size(99 * MiB + MiB // 4) == "99.2 MiB"
