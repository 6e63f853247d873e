"""The balloon device's QOM side: discovery, properties, guest stats, the driver, polling."""

from __future__ import annotations

import time
from typing import Any

import pytest
from rawqmp import RawQMP, RawQMPError, poll_until

from balloonctl.fake import FakeVM
from balloonctl.model import STAT_NOT_REPORTED
from balloonctl.replies import guest_stats
from balloonctl.units import GiB, MiB

BALLOON = "/machine/peripheral/balloon0"
STATS = {"path": BALLOON, "property": "guest-stats"}


async def _stats(qmp: RawQMP, path: str = BALLOON) -> dict[str, Any]:
    result: dict[str, Any] = await qmp.execute("qom-get", {"path": path, "property": "guest-stats"})
    return result


async def test_device_with_id_is_under_peripheral(fake_vm: FakeVM) -> None:
    async with await RawQMP.open(fake_vm.qmp_path) as qmp:
        children = await qmp.execute("qom-list", {"path": "/machine/peripheral"})
    assert {"name": "balloon0", "type": "child<virtio-balloon-pci>"} in children


async def test_device_without_id_is_an_anonymous_device(fake_vm_factory: Any) -> None:
    vm = await fake_vm_factory(device_id=None)
    async with await RawQMP.open(vm.qmp_path) as qmp:
        children = await qmp.execute("qom-list", {"path": "/machine/peripheral-anon"})
        balloons = [c for c in children if c["type"] == "child<virtio-balloon-pci>"]
        assert len(balloons) == 1
        name = balloons[0]["name"]
        assert name.startswith("device[") and name.endswith("]")
        path = f"/machine/peripheral-anon/{name}"
        stats = await _stats(qmp, path)
        assert stats["last-update"] > 0
        assert await qmp.execute("qom-get", {"path": path, "property": "type"}) == (
            "virtio-balloon-pci"
        )


async def test_device_property_listing(fake_vm: FakeVM) -> None:
    async with await RawQMP.open(fake_vm.qmp_path) as qmp:
        props = {p["name"]: p["type"] for p in await qmp.execute("qom-list", {"path": BALLOON})}
    assert props["guest-stats"] == "guest-statistics"
    assert props["guest-stats-polling-interval"] == "int"
    for name in ("deflate-on-oom", "free-page-hint", "free-page-reporting", "page-poison"):
        assert props[name] == "bool"
    assert props["virtio-backend"] == "child<virtio-balloon-device>"
    assert "reclaim-cache-first" not in props


async def test_hint_device_lists_reclaim_cache_first(fake_vm_factory: Any) -> None:
    vm = await fake_vm_factory(hint_device=True)
    async with await RawQMP.open(vm.qmp_path) as qmp:
        props = {p["name"]: p["type"] for p in await qmp.execute("qom-list", {"path": BALLOON})}
    assert props["reclaim-cache-first"] == "bool"


async def test_fixed_properties_reflect_the_command_line(fake_vm_factory: Any) -> None:
    vm = await fake_vm_factory(deflate_on_oom=True, free_page_reporting=True)
    async with await RawQMP.open(vm.qmp_path) as qmp:
        got = {
            name: await qmp.execute("qom-get", {"path": BALLOON, "property": name})
            for name in ("deflate-on-oom", "free-page-hint", "free-page-reporting", "page-poison")
        }
    assert got == {
        "deflate-on-oom": True,
        "free-page-hint": False,
        "free-page-reporting": True,
        "page-poison": True,
    }


async def test_setting_a_fixed_property_fails(fake_vm: FakeVM) -> None:
    async with await RawQMP.open(fake_vm.qmp_path) as qmp:
        with pytest.raises(RawQMPError) as err:
            await qmp.execute(
                "qom-set", {"path": BALLOON, "property": "deflate-on-oom", "value": True}
            )
    assert err.value.error_class == "GenericError"
    assert err.value.desc == (
        "Attempt to set property 'deflate-on-oom' on anonymous device "
        "(type 'virtio-balloon-device') after it was realized"
    )


async def test_bad_qom_path(fake_vm: FakeVM) -> None:
    async with await RawQMP.open(fake_vm.qmp_path) as qmp:
        for cmd, args in (
            ("qom-get", {"path": "/machine/peripheral/nope", "property": "guest-stats"}),
            ("qom-list", {"path": "/machine/peripheral/nope"}),
            ("qom-set", {"path": "/machine/peripheral/nope", "property": "x", "value": 1}),
        ):
            with pytest.raises(RawQMPError) as err:
                await qmp.execute(cmd, args)
            assert err.value.error_class == "DeviceNotFound"
            assert err.value.desc == "Device '/machine/peripheral/nope' not found"


async def test_partial_path_resolves_like_qemu(fake_vm: FakeVM) -> None:
    async with await RawQMP.open(fake_vm.qmp_path) as qmp:
        assert (await _stats(qmp, "balloon0"))["last-update"] > 0


async def test_unknown_property(fake_vm: FakeVM) -> None:
    async with await RawQMP.open(fake_vm.qmp_path) as qmp:
        with pytest.raises(RawQMPError) as err:
            await qmp.execute("qom-get", {"path": BALLOON, "property": "nope"})
    assert err.value.desc == "Property 'virtio-balloon-pci.nope' not found"


async def test_stock_qemu_has_no_cache_first_hint(fake_vm: FakeVM) -> None:
    async with await RawQMP.open(fake_vm.qmp_path) as qmp:
        for cmd, args in (
            ("qom-set", {"path": BALLOON, "property": "reclaim-cache-first", "value": True}),
            ("qom-get", {"path": BALLOON, "property": "reclaim-cache-first"}),
        ):
            with pytest.raises(RawQMPError) as err:
                await qmp.execute(cmd, args)
            assert (err.value.error_class, err.value.desc) == (
                "GenericError",
                "Property 'virtio-balloon-pci.reclaim-cache-first' not found",
            )


async def test_hint_device_property_sets_the_guest_hint(fake_vm_factory: Any) -> None:
    vm = await fake_vm_factory(hint_device=True)
    hint = {"path": BALLOON, "property": "reclaim-cache-first"}
    async with await RawQMP.open(vm.qmp_path) as qmp:
        assert await qmp.execute("qom-get", hint) is False
        assert await qmp.execute("qom-set", {**hint, "value": True}) == {}
        assert vm.guest.hint is True
        assert await qmp.execute("qom-get", hint) is True
        with pytest.raises(RawQMPError) as err:
            await qmp.execute("qom-set", {**hint, "value": "yes"})
        assert err.value.desc == (
            "Invalid parameter type for 'reclaim-cache-first', expected: boolean"
        )


async def test_qom_get_argument_errors(fake_vm: FakeVM) -> None:
    async with await RawQMP.open(fake_vm.qmp_path) as qmp:
        with pytest.raises(RawQMPError) as err:
            await qmp.execute("qom-get", {"path": BALLOON})
        assert err.value.desc == "Parameter 'property' is missing"
        with pytest.raises(RawQMPError) as err:
            await qmp.execute("qom-list", {})
        assert err.value.desc == "Parameter 'path' is missing"


# --- guest stats and the driver ----------------------------------------------------------


async def test_stats_once_driver_loaded_are_real_values(fake_vm: FakeVM) -> None:
    before = int(time.time())
    async with await RawQMP.open(fake_vm.qmp_path) as qmp:
        value = await _stats(qmp)
    stats = guest_stats(value)
    assert set(value["stats"]) >= {
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
    }
    assert stats.reported
    # Host wall-clock whole seconds.
    assert isinstance(value["last-update"], int)
    assert before - 1 <= value["last-update"] <= time.time()
    assert stats.free_memory == fake_vm.guest.free
    assert stats.disk_caches == fake_vm.guest.cache
    assert stats.total_memory is not None and stats.total_memory < 2 * GiB


async def test_stats_unreported_until_driver_loads(fake_vm_factory: Any) -> None:
    vm = await fake_vm_factory(driver_delay=0.5, stats_interval=0)
    async with await RawQMP.open(vm.qmp_path) as qmp:
        early = await _stats(qmp)
        assert early["last-update"] == 0
        assert set(early["stats"].values()) == {STAT_NOT_REPORTED}
        # The target is accepted, but nothing moves without the driver.
        await qmp.execute("balloon", {"value": GiB})
        assert await qmp.execute("query-balloon") == {"actual": 2 * GiB}
        # Polling stays off: the driver still pushes one sample when it loads.
        assert (
            await qmp.execute(
                "qom-get", {"path": BALLOON, "property": "guest-stats-polling-interval"}
            )
            == 0
        )
        loaded = await poll_until(
            lambda: _reported(qmp), within=5, what="the driver's first sample"
        )
        assert STAT_NOT_REPORTED not in loaded["stats"].values()
        await poll_until(lambda: vm.guest.actual == GiB, what="the balloon to move")


async def _reported(qmp: RawQMP) -> dict[str, Any] | None:
    stats = await _stats(qmp)
    return stats if stats["last-update"] else None


async def test_no_driver_never_reports(fake_vm_factory: Any) -> None:
    vm = await fake_vm_factory(driver=False)
    async with await RawQMP.open(vm.qmp_path) as qmp:
        await qmp.execute(
            "qom-set", {"path": BALLOON, "property": "guest-stats-polling-interval", "value": 1}
        )
        await qmp.execute("balloon", {"value": GiB})
        for _ in range(5):
            stats = await _stats(qmp)
            assert stats["last-update"] == 0
            assert await qmp.execute("query-balloon") == {"actual": 2 * GiB}
        # modprobe later: it all starts.
        vm.load_driver()
        await poll_until(lambda: _reported(qmp), what="stats after modprobe")
        await poll_until(lambda: vm.guest.actual == GiB)


async def test_stats_frozen_while_polling_is_off(fake_vm: FakeVM) -> None:
    async with await RawQMP.open(fake_vm.qmp_path) as qmp:
        first = await _stats(qmp)
        fake_vm.guest.read_file(100 * MiB)
        again = await _stats(qmp)
    assert again == first  # QEMU only has what the guest last sent


async def test_polling_interval_refreshes_stats(fake_vm_factory: Any) -> None:
    fake_vm: FakeVM = await fake_vm_factory(stats_interval=0)  # QEMU's default: off
    interval = {"path": BALLOON, "property": "guest-stats-polling-interval"}
    async with await RawQMP.open(fake_vm.qmp_path) as qmp:
        assert await qmp.execute("qom-get", interval) == 0
        first = await _stats(qmp)
        fake_vm.guest.read_file(100 * MiB)
        assert await qmp.execute("qom-set", {**interval, "value": 1}) == {}
        assert await qmp.execute("qom-get", interval) == 1
        # Enabling polls at once: the new cache size shows up without waiting a period.
        await poll_until(
            lambda: _cache_is(qmp, first["stats"]["stat-disk-caches"] + 100 * MiB),
            within=2,
            what="a refreshed sample",
        )
        start = (await _stats(qmp))["last-update"]
        await poll_until(
            lambda: _last_update_after(qmp, start), within=4, what="the next periodic sample"
        )


async def _cache_is(qmp: RawQMP, expected: int) -> bool:
    return bool((await _stats(qmp))["stats"]["stat-disk-caches"] == expected)


async def _last_update_after(qmp: RawQMP, start: int) -> bool:
    return bool((await _stats(qmp))["last-update"] > start)


@pytest.mark.parametrize(
    ("value", "desc"),
    [
        (-1, "timer value must be greater than zero"),
        (2**32, "timer value is too big"),
        ("5", "Invalid parameter type for 'guest-stats-polling-interval', expected: integer"),
    ],
)
async def test_polling_interval_errors(fake_vm: FakeVM, value: Any, desc: str) -> None:
    async with await RawQMP.open(fake_vm.qmp_path) as qmp:
        with pytest.raises(RawQMPError) as err:
            await qmp.execute(
                "qom-set",
                {"path": BALLOON, "property": "guest-stats-polling-interval", "value": value},
            )
    assert (err.value.error_class, err.value.desc) == ("GenericError", desc)


async def test_stats_on_the_virtio_backend_too(fake_vm: FakeVM) -> None:
    async with await RawQMP.open(fake_vm.qmp_path) as qmp:
        assert (
            await qmp.execute("qom-get", {"path": BALLOON, "property": "virtio-backend"})
            == f"{BALLOON}/virtio-backend"
        )
        backend = await _stats(qmp, f"{BALLOON}/virtio-backend")
        assert backend == await _stats(qmp)


async def test_total_memory_drops_with_the_balloon(fake_vm: FakeVM) -> None:
    await _inflate_and_sample(fake_vm)
    stats = fake_vm.guest.stats()
    assert stats["stat-total-memory"] == 2 * GiB - fake_vm.guest.kernel_reserve - GiB


async def test_total_memory_stays_with_deflate_on_oom(fake_vm_factory: Any) -> None:
    vm = await fake_vm_factory(deflate_on_oom=True)
    await _inflate_and_sample(vm)
    assert vm.guest.stats()["stat-total-memory"] == 2 * GiB - vm.guest.kernel_reserve


async def _inflate_and_sample(vm: FakeVM) -> None:
    async with await RawQMP.open(vm.qmp_path) as qmp:
        await qmp.execute("balloon", {"value": GiB})
        await poll_until(lambda: vm.guest.actual == GiB)


async def test_guest_stats_are_read_only(fake_vm: FakeVM) -> None:
    async with await RawQMP.open(fake_vm.qmp_path) as qmp:
        with pytest.raises(RawQMPError) as err:
            await qmp.execute("qom-set", {**STATS, "value": {}})
    assert err.value.desc == "Insufficient permission to perform this operation"


async def test_child_property_is_its_canonical_path(fake_vm: FakeVM) -> None:
    async with await RawQMP.open(fake_vm.qmp_path) as qmp:
        assert (
            await qmp.execute("qom-get", {"path": "balloon0", "property": "virtio-backend"})
            == f"{BALLOON}/virtio-backend"
        )
