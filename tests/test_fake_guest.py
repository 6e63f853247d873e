"""The simulated guest memory: reclaim order, deflation, limits, invariants, workloads."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import event, example, given, settings
from hypothesis import strategies as st
from rawqmp import RawQMP, poll_until

from balloonctl.fake import FakeVM, GuestSim
from balloonctl.fake.guest import MIN_CACHE, PAGE
from balloonctl.units import GiB, MiB


def _inflate_fully(guest: GuestSim, actual: int, budget: int = 16 * MiB) -> None:
    guest.set_target(actual)
    while guest.step_balloon(budget):
        guest.check()


def test_initial_guest_adds_up() -> None:
    guest = GuestSim(2 * GiB)
    guest.check()
    assert guest.actual == 2 * GiB
    assert guest.free > guest.cache > 0 and guest.anon > 0


def test_without_hint_free_memory_goes_first() -> None:
    guest = GuestSim(2 * GiB, anon=200 * MiB, cache=100 * MiB)
    guest.read_file(500 * MiB)  # cache 600 MiB, free ~1.2 GiB
    free, cache = guest.free, guest.cache
    _inflate_fully(guest, 2 * GiB - 512 * MiB)
    assert guest.balloon == 512 * MiB
    assert guest.cache == cache  # plenty of free memory: the cache is untouched
    assert guest.free == free - 512 * MiB


def test_with_hint_clean_cache_goes_first() -> None:
    guest = GuestSim(2 * GiB, anon=200 * MiB, cache=100 * MiB, hint=True)
    guest.read_file(500 * MiB)
    free, cache = guest.free, guest.cache
    _inflate_fully(guest, 2 * GiB - 512 * MiB)
    assert guest.cache == cache - 512 * MiB
    assert guest.free == free  # free memory left alone while cache remains


def test_with_hint_free_goes_once_cache_is_down_to_its_hot_minimum() -> None:
    guest = GuestSim(2 * GiB, anon=200 * MiB, cache=100 * MiB, hint=True)
    free = guest.free
    _inflate_fully(guest, 2 * GiB - 300 * MiB)
    assert guest.cache == MIN_CACHE  # the RFC reclaims cache above a small minimum
    assert guest.free == free - (300 * MiB - (100 * MiB - MIN_CACHE))


@pytest.mark.parametrize("above", [0, PAGE])
def test_with_hint_cache_at_or_one_page_above_the_minimum(above: int) -> None:
    guest = GuestSim(2 * GiB, anon=200 * MiB, cache=MIN_CACHE + above, hint=True)
    free = guest.free
    _inflate_fully(guest, 2 * GiB - 64 * MiB)
    assert guest.cache == MIN_CACHE
    assert guest.free == free - (64 * MiB - above)


def test_memory_reclaim_takes_cache_first_and_frees_it() -> None:
    guest = GuestSim(2 * GiB, anon=200 * MiB, cache=100 * MiB)
    guest.read_file(500 * MiB)
    free, cache = guest.free, guest.cache
    assert guest.reclaim(256 * MiB, swap=True) == 256 * MiB
    assert (guest.free, guest.cache, guest.swap_out) == (free + 256 * MiB, cache - 256 * MiB, 0)
    guest.check()


@pytest.mark.parametrize("swap", [False, True])
def test_memory_reclaim_asked_for_more_than_the_cache(swap: bool) -> None:
    guest = GuestSim(2 * GiB, anon=200 * MiB, cache=100 * MiB, swap_total=512 * MiB)
    got = guest.reclaim(150 * MiB, swap=swap)
    assert guest.cache == MIN_CACHE
    # Without swapping, less than asked (the kernel's EAGAIN); with it, anon makes it up.
    assert got == (150 * MiB if swap else 100 * MiB - MIN_CACHE)
    assert guest.swap_out == (150 * MiB - (100 * MiB - MIN_CACHE) if swap else 0)
    guest.check()


def test_without_hint_cache_is_reclaimed_near_the_low_watermark() -> None:
    guest = GuestSim(2 * GiB, anon=200 * MiB, cache=400 * MiB, swap_total=0)
    above_low = guest.free - guest.low_watermark
    _inflate_fully(guest, guest.actual - above_low - 100 * MiB)
    assert guest.free == guest.low_watermark
    assert guest.cache == 300 * MiB
    assert guest.swap_out == 0


def test_then_anonymous_memory_is_swapped() -> None:
    guest = GuestSim(2 * GiB, anon=600 * MiB, cache=100 * MiB, swap_total=256 * MiB)
    _inflate_fully(guest, 256 * MiB)
    assert guest.cache == 0
    assert guest.swap_out == 256 * MiB
    assert guest.swap_used == 256 * MiB
    assert guest.anon == 600 * MiB - 256 * MiB


def test_balloon_stops_where_memory_runs_out() -> None:
    guest = GuestSim(2 * GiB, anon=1 * GiB, cache=100 * MiB, swap_total=0)
    _inflate_fully(guest, 128 * MiB)
    # Stuck: anonymous memory and the kernel's reserve cannot be ballooned.
    assert guest.balloon < guest.balloon_target
    floor = guest.anon + guest.kernel_reserve + guest.min_watermark
    assert guest.actual == pytest.approx(floor, abs=4096)
    assert guest.step_balloon(16 * MiB) == 0
    # Once the workload lets go of memory, the balloon moves on.
    guest.release_anon(200 * MiB)
    assert guest.step_balloon(16 * MiB) > 0


def test_deflation_returns_free_memory() -> None:
    guest = GuestSim(2 * GiB)
    _inflate_fully(guest, GiB)
    free, cache = guest.free, guest.cache
    _inflate_fully(guest, 2 * GiB)
    assert guest.balloon == 0
    assert guest.free == free + GiB
    assert guest.cache == cache


def test_balloon_moves_in_whole_pages_toward_an_odd_target() -> None:
    guest = GuestSim(2 * GiB)
    _inflate_fully(guest, GiB + 12345)
    assert guest.balloon % 4096 == 0
    assert 0 <= guest.actual - (GiB + 12345) < 4096


def test_drop_caches_releases_the_page_cache() -> None:
    guest = GuestSim(2 * GiB)
    guest.read_file(200 * MiB)
    cache = guest.cache
    assert guest.drop_caches() == cache
    assert guest.cache == 0
    guest.check()


def test_cache_stops_growing_at_the_low_watermark() -> None:
    guest = GuestSim(GiB)
    guest.read_file(4 * GiB)
    assert guest.free == guest.low_watermark
    guest.check()


def test_alloc_under_pressure_reclaims_then_swaps() -> None:
    guest = GuestSim(GiB, anon=100 * MiB, cache=100 * MiB, swap_total=512 * MiB)
    guest.alloc(guest.free - guest.low_watermark + 100 * MiB + 50 * MiB)
    assert guest.cache == 0
    assert guest.swap_out == 50 * MiB
    guest.check()


def test_deflate_on_oom_gives_balloon_pages_back() -> None:
    guest = GuestSim(GiB, anon=100 * MiB, cache=0, swap_total=0, deflate_on_oom=True)
    _inflate_fully(guest, 512 * MiB)
    ballooned = guest.balloon
    got = guest.alloc(600 * MiB)
    assert got == 600 * MiB
    assert guest.balloon < ballooned
    guest.check()


def test_meminfo_is_plausible() -> None:
    guest = GuestSim(2 * GiB)
    rows = dict(line.split(":", 1) for line in guest.meminfo().splitlines())
    assert int(rows["MemFree"].split()[0]) * 1024 == guest.free // 1024 * 1024
    assert int(rows["Cached"].split()[0]) * 1024 == guest.cache // 1024 * 1024
    assert rows["MemTotal"].strip().endswith("kB")


def test_unknown_workload_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown workload"):
        GuestSim(GiB, workload="bitcoin")


def _run(seed: int, steps: int) -> tuple[int, ...]:
    guest = GuestSim(2 * GiB, workload="compile", seed=seed)
    trace = []
    for _ in range(steps):
        guest.workload_step()
        guest.check()
        trace.append(guest.cache)
        trace.append(guest.anon)
    return tuple(trace)


def test_compile_workload_is_deterministic_and_churns() -> None:
    a = _run(7, 300)
    assert a == _run(7, 300)
    assert a != _run(8, 300)
    caches, anons = a[0::2], a[1::2]
    assert caches[-1] > caches[0]  # reading sources fills the page cache
    assert len(set(anons)) > 50  # compiler jobs come and go


def test_compile_workload_under_a_big_balloon_swaps() -> None:
    guest = GuestSim(GiB, workload="compile", seed=1)
    _inflate_fully(guest, 400 * MiB)
    for _ in range(500):
        guest.workload_step()
        guest.step_balloon(8 * MiB)
        guest.check()
    assert guest.swap_out > 0


# --- invariants under any sequence of operations --------------------------------------

_ops = st.lists(
    st.one_of(
        st.tuples(st.just("read"), st.integers(0, 3 * GiB)),
        st.tuples(st.just("alloc"), st.integers(0, 3 * GiB)),
        st.tuples(st.just("release"), st.integers(0, 3 * GiB)),
        st.tuples(st.just("drop"), st.just(0)),
        st.tuples(st.just("reclaim"), st.integers(0, 3 * GiB)),
        st.tuples(st.just("reclaim-swap"), st.integers(0, 3 * GiB)),
        st.tuples(st.just("target"), st.integers(0, 4 * GiB)),
        st.tuples(st.just("step"), st.integers(1, 64).map(lambda n: n * MiB)),
        st.tuples(st.just("hint"), st.integers(0, 1)),
        st.tuples(st.just("work"), st.integers(1, 20)),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(
    ram=st.integers(64, 8192).map(lambda n: n * MiB),
    swap=st.integers(0, 2048).map(lambda n: n * MiB),
    deflate_on_oom=st.booleans(),
    ops=_ops,
)
def test_memory_always_adds_up(
    ram: int, swap: int, deflate_on_oom: bool, ops: list[tuple[str, int]]
) -> None:
    guest = GuestSim(
        ram, swap_total=swap, deflate_on_oom=deflate_on_oom, workload="compile", seed=ram
    )
    guest.check()
    for op, n in ops:
        before_balloon = guest.balloon
        if op == "read":
            guest.read_file(n)
        elif op == "alloc":
            got = guest.alloc(n)
            assert 0 <= got <= n
        elif op == "release":
            guest.release_anon(n)
        elif op == "drop":
            assert guest.drop_caches() >= 0
            assert guest.cache == 0
        elif op.startswith("reclaim"):
            free, cache = guest.free, guest.cache
            got = guest.reclaim(n, swap=op == "reclaim-swap")
            assert 0 <= got <= n and guest.free == free + got
            assert guest.cache >= min(cache, MIN_CACHE)
        elif op == "target":
            guest.set_target(n)
        elif op == "step":
            moved = guest.step_balloon(n)
            assert 0 <= moved <= n
            assert abs(guest.balloon - before_balloon) == moved
        elif op == "hint":
            guest.hint = bool(n)
        else:
            for _ in range(n):
                guest.workload_step()
        guest.check()
        stats = guest.stats()
        assert all(v >= 0 for v in stats.values())
        assert stats["stat-free-memory"] + stats["stat-disk-caches"] <= ram


@settings(max_examples=100, deadline=None)
@given(
    hint=st.booleans(),
    cache=st.integers(0, 800).map(lambda n: n * MiB),
    size=st.integers(1, 1500).map(lambda n: n * MiB),
)
@example(hint=True, cache=800 * MiB, size=100 * MiB)  # every branch below runs for certain
@example(hint=True, cache=100 * MiB, size=1000 * MiB)
@example(hint=False, cache=800 * MiB, size=100 * MiB)
@example(hint=False, cache=800 * MiB, size=1400 * MiB)
def test_reclaim_order_holds_for_any_inflation(hint: bool, cache: int, size: int) -> None:
    guest = GuestSim(2 * GiB, anon=200 * MiB, cache=cache, hint=hint, swap_total=0)
    free0, cache0 = guest.free, guest.cache
    _inflate_fully(guest, 2 * GiB - size)
    # The reclaim order, whichever way the example falls: with the hint, free memory is
    # touched only once the cache is down to its small minimum; without it, the cache only
    # once free memory is down to the watermark.
    if hint:
        event("hint: cache left" if guest.cache > MIN_CACHE else "hint: cache used up")
        assert guest.cache <= MIN_CACHE or guest.free == free0
    else:
        event("no hint: free left" if guest.free > guest.low_watermark else
              "no hint: down to the watermark")
        assert guest.free <= guest.low_watermark or guest.cache == cache0


# --- the same through the running fake --------------------------------------------------


@pytest.mark.parametrize("hint", [False, True])
async def test_inflating_a_running_vm_follows_the_hint(fake_vm_factory: Any, hint: bool) -> None:
    vm: FakeVM = await fake_vm_factory(hint_device=True)
    vm.guest.read_file(600 * MiB)
    free, cache = vm.guest.free, vm.guest.cache
    async with await RawQMP.open(vm.qmp_path) as qmp:
        await qmp.execute(
            "qom-set",
            {
                "path": "/machine/peripheral/balloon0",
                "property": "reclaim-cache-first",
                "value": hint,
            },
        )
        await qmp.execute("balloon", {"value": 2 * GiB - 400 * MiB})
        await poll_until(lambda: vm.guest.actual == 2 * GiB - 400 * MiB)
    if hint:
        assert (vm.guest.free, vm.guest.cache) == (free, cache - 400 * MiB)
    else:
        assert (vm.guest.free, vm.guest.cache) == (free - 400 * MiB, cache)
