"""Foreign writers: the rule (``targets.foreign_change``) at its edges, and what a client
and ``status`` show once another QMP client moved a balloon."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from balloonctl.fake import FakeVM
from balloonctl.model import CONVERGED_TOLERANCE, Owner
from balloonctl.store import FileStore
from balloonctl.targets import FOREIGN_MARGIN, foreign_change
from balloonctl.units import GiB, MiB, parse_target
from tests.rawqmp import RawQMP, poll_until

T = 1536 * MiB


def test_within_the_tolerance_is_never_foreign() -> None:
    assert foreign_change(T, T + CONVERGED_TOLERANCE, reached=True) is None
    assert foreign_change(T, T - CONVERGED_TOLERANCE, reached=True) is None
    assert foreign_change(T, T - CONVERGED_TOLERANCE - 1, reached=True) is not None


def test_leaving_a_reached_target_is_foreign_unless_deflate_on_oom_explains_it() -> None:
    why = foreign_change(T, GiB, reached=True)
    assert why == "actual 1 GiB left the target 1.5 GiB it had reached"
    # deflate-on-oom gives pages back (actual rises), it never takes more
    assert foreign_change(T, 2 * GiB, reached=True, deflate_on_oom=True) is None
    assert foreign_change(T, GiB, reached=True, deflate_on_oom=True) is not None
    assert foreign_change(T, 2 * GiB, reached=True, deflate_on_oom=False) is not None


def test_moving_away_from_the_target_counts_past_the_margin() -> None:
    # on its way from 2 GiB down to 1.5 GiB, seen at 1.75 GiB, then further away
    seen = 1792 * MiB
    assert foreign_change(T, seen + FOREIGN_MARGIN, reached=False, seen=seen) is None
    assert foreign_change(T, seen + FOREIGN_MARGIN + MiB, reached=False, seen=seen) is not None
    # closer is the guest doing its job
    assert foreign_change(T, seen - 100 * MiB, reached=False, seen=seen) is None


def test_off_the_way_from_start_to_target_counts_past_the_margin() -> None:
    start = 2 * GiB
    # a stuck balloon stays on the way: never foreign
    assert foreign_change(T, 1800 * MiB, reached=False, set_from=start) is None
    assert foreign_change(T, T - FOREIGN_MARGIN, reached=False, set_from=start) is None
    why = foreign_change(T, T - FOREIGN_MARGIN - MiB, reached=False, set_from=start)
    assert why is not None and "off the way from 2 GiB to the target 1.5 GiB" in why
    # the wrong way (growing while balloonctl asked to shrink)
    assert foreign_change(T, start + FOREIGN_MARGIN + MiB, reached=False,
                          set_from=start) is not None


async def test_status_shows_a_balloon_another_client_moved(
    fake_vm: FakeVM, tmp_path: Path, client_for: Any,
) -> None:
    store = FileStore(tmp_path / "state.json")
    async with client_for(fake_vm, store=store) as client:
        await client.set_target(parse_target("1.5G"))
        await client.wait_for_target(T, timeout=5)
        assert (await client.snapshot()).owner is Owner.BALLOONCTL
    async with await RawQMP.open(fake_vm.qmp_path) as qmp:
        await qmp.execute("balloon", {"value": GiB})
    await poll_until(lambda: fake_vm.guest.actual == GiB, what="the balloon at 1 GiB")
    async with client_for(fake_vm, store=store) as client:
        state = await client.snapshot()
        assert state.owner is Owner.FOREIGN and state.target is None
        assert state.to_json()["owner"] == "foreign"
        mark = await client.targets.foreign()
        assert mark is not None and mark["previous"] == T and mark["actual"] == GiB
        # journaled once: the first claim gets it, the second nothing
        assert (await client.targets.claim_foreign_report()) is not None
        assert await client.targets.claim_foreign_report() is None
        # a target balloonctl sets makes the VM its own again
        await client.set_target(GiB)
        assert (await client.snapshot()).owner is Owner.BALLOONCTL
        assert await client.targets.foreign() is None


async def test_a_claim_in_a_batch_is_seen_by_other_processes_before_the_batch_ends(
    fake_vm: FakeVM, tmp_path: Path, client_for: Any,
) -> None:
    path = tmp_path / "state.json"
    store = FileStore(path)
    async with client_for(fake_vm, store=store) as client:
        await client.set_target(parse_target("1.5G"))
        await client.wait_for_target(T, timeout=5)
        await client.snapshot()
    async with await RawQMP.open(fake_vm.qmp_path) as qmp:
        await qmp.execute("balloon", {"value": GiB})
    await poll_until(lambda: fake_vm.guest.actual == GiB, what="the balloon at 1 GiB")
    async with client_for(fake_vm, store=store) as client:
        assert (await client.snapshot()).owner is Owner.FOREIGN  # the mark is saved
    other = FileStore(path)  # another balloonctl process's view of the same file
    with store.batch():  # as auto's cycle (a QMP socket serves one client at a time)
        async with client_for(fake_vm, store=store) as client:
            assert (await client.targets.claim_foreign_report()) is not None
        async with client_for(fake_vm, store=other) as elsewhere:
            assert await elsewhere.targets.claim_foreign_report() is None  # journaled once
    async with client_for(fake_vm, store=store) as client:
        assert await client.targets.claim_foreign_report() is None


async def test_a_target_saved_later_elsewhere_stands_over_a_batch_saved_after_it(
    fake_vm: FakeVM, tmp_path: Path, client_for: Any,
) -> None:
    path = tmp_path / "state.json"
    store = FileStore(path)
    with store.batch():  # auto's cycle sends 1.5 GiB, and goes on with other VMs
        async with client_for(fake_vm, store=store) as client:
            await client.set_target(parse_target("1.5G"))
        async with client_for(fake_vm, store=FileStore(path)) as elsewhere:
            await elsewhere.set_target(GiB)  # `balloonctl set` meanwhile: sent last
    assert FileStore(path).get(str(fake_vm.qmp_path))["target"] == GiB  # sent last
    assert fake_vm.guest.ram - fake_vm.guest.balloon_target == GiB
    async with client_for(fake_vm, store=store) as client:
        assert await client.current_target() == GiB
    with store.batch():  # one step on: a later target of the batch's own is saved
        async with client_for(fake_vm, store=store) as client:
            await client.set_target(parse_target("1.5G"))
    assert FileStore(path).get(str(fake_vm.qmp_path))["target"] == T
