"""The cache-first hint (``balloonctl.cachefirst``) over the fake QEMU and its guest agent:
the cases `./dev mutate` found untested.

Oracles: the module docstring (device / agent / unsupported; ``reclaim`` or ``drop``), the
docstrings of ``CacheFirst``'s methods and of ``HINT_BUDGET`` and ``QGA_RECHECK``,
docs/CONTRACTS.md ("balloonctl.targets and balloonctl.cachefirst": N = 0 only finds the
method; the outcome's store keys) and docs/cli.md (``hint``: "then what the last reclaim
released"; 5 s, at most half the command timeout). The words of ``hint status`` are what a
user reads, so they are checked whole.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

import balloonctl.fake.agent_server as agent_server
from balloonctl.deadline import Deadline
from balloonctl.errors import AgentExecBlocked, HintUnsupported
from balloonctl.fake import FakeVM
from balloonctl.model import HintMethod, HintMode
from balloonctl.qga import QgaClient
from balloonctl.qmp import BalloonClient
from balloonctl.store import MemoryStore
from balloonctl.units import GiB, MiB

RECLAIM_WORDS = "the guest agent reclaims as much clean page cache as each inflation needs"
DROP_WORDS = "the guest agent drops the whole clean page cache before each inflation"
UNKNOWN_WORDS = "the guest agent reclaims clean page cache before each inflation"
# explain() of the fake guest's default (no swappiness key) and of a guest without
# memory.reclaim (balloonctl/reclaim.py)
NO_SWAPPINESS = ("memory.reclaim (the kernel rejects swappiness=0: with swap, anonymous "
                 "pages may go too)")
NO_MEMORY_RECLAIM = "memory.reclaim missing (kernel < 5.19, or no memory controller in cgroup2)"
MOUNTED = "; balloonctl mounted cgroup2 at /sys/fs/cgroup (hint_mount_cgroup)"


class Recording(BalloonClient):
    """A BalloonClient that notes the reply timeout of every guest-agent client it makes
    (the seam ``CacheFirst`` goes through), and the guest-agent commands sent."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.qga_timeouts: list[float] = []
        self.qga_sent: list[str] = []

        def trace(peer: str, direction: str, msg: Any) -> None:
            if direction == "->" and peer.endswith("/qga"):
                self.qga_sent.append(str(msg.get("execute")))

        super().__init__(*args, trace=trace, **kwargs)

    def qga_client(self, *, timeout: float) -> QgaClient:
        self.qga_timeouts.append(timeout)
        return super().qga_client(timeout=timeout)


@pytest.fixture
async def recording() -> AsyncIterator[Callable[..., Recording]]:
    clients: list[Recording] = []

    def make(vm: FakeVM, **kwargs: Any) -> Recording:
        kwargs.setdefault("connect_timeout", 1.0)
        kwargs.setdefault("command_timeout", 2.0)
        client = Recording(str(vm.qmp_path), name=vm.name, qga=str(vm.qga_path), **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


def script_says(monkeypatch: pytest.MonkeyPatch, code: int, out: bytes, err: bytes) -> None:
    """The guest's shell answers the reclaim script with ``(code, out, err)``."""
    monkeypatch.setattr(agent_server, "_reclaim_script", lambda *a: (code, out, err))


def report(result: str, *, method: str = "drop", why: str = "no-memory-reclaim",
           released_kib: int = 0) -> bytes:
    fields = {"balloonctl-reclaim": "1", "before_free": "100000", "before_buffers": "0",
              "before_cached": str(400000), "after_free": str(100000 + released_kib),
              "after_buffers": "0", "after_cached": str(400000 - released_kib),
              "method": method, "why": why, "mounted": "0", "result": result}
    return "".join(f"{k}={v}\n" for k, v in fields.items()).encode()


# ---- how long the guest agent may take -------------------------------------------------


async def test_a_probe_waits_at_most_two_seconds_or_the_connect_timeout(
    fake_vm: FakeVM, recording: Callable[..., Recording],
) -> None:
    async with recording(fake_vm, connect_timeout=10.0, command_timeout=10.0) as client:
        assert (await client.hint_status()).method is HintMethod.RECLAIM
    # the guest-exec probe, then the method's probe (one guest-exec with N = 0)
    assert client.qga_timeouts == [2.0, 2.0]
    assert client.qga_sent.count("guest-exec") == 1
    for connect, command, expected in ((1.5, 10.0, 1.5), (10.0, 1.0, 1.0)):
        async with recording(fake_vm, connect_timeout=connect,
                             command_timeout=command) as client:
            await client.hint_status()
        assert client.qga_timeouts == [expected, expected]


async def test_the_reclaim_before_an_inflation_waits_at_most_five_seconds_per_reply(
    fake_vm: FakeVM, recording: Callable[..., Recording],
) -> None:
    for command_timeout, expected in ((10.0, 5.0), (3.0, 3.0)):
        async with recording(fake_vm, connect_timeout=10.0,
                             command_timeout=command_timeout) as client:
            await client.set_hint(True)
            client.qga_timeouts.clear()
            await client.set_target(GiB + 512 * MiB)
            assert client.qga_timeouts == [expected]
            await client.set_target(2 * GiB)  # back for the next round (deflating: no reclaim)
            assert client.qga_timeouts == [expected]


async def test_the_overall_limit_bounds_the_guest_agent_too(
    fake_vm: FakeVM, recording: Callable[..., Recording],
) -> None:
    client = recording(fake_vm, connect_timeout=10.0, command_timeout=10.0)
    await client.connect()
    client.session.deadline = Deadline(0.75, clock=lambda: 0.0)  # 0.75 s left, always
    await client.hint_status()
    assert client.qga_timeouts == [0.75, 0.75]
    client.session.deadline = Deadline(30.0, clock=lambda: 0.0)  # more than the probe's own
    client.qga_timeouts.clear()
    await client.cache_first.probe(fresh=True)
    assert client.qga_timeouts[0] == 2.0


def test_the_budget_is_five_seconds_at_most_half_the_command_timeout() -> None:
    assert BalloonClient("/nowhere.qmp", command_timeout=30.0).cache_first.budget() == 5.0
    assert BalloonClient("/nowhere.qmp", command_timeout=10.0).cache_first.budget() == 5.0
    assert BalloonClient("/nowhere.qmp", command_timeout=3.0).cache_first.budget() == 1.5


# ---- the method, found once and described --------------------------------------------------


async def test_finding_the_method_reclaims_nothing(
    fake_vm: FakeVM, recording: Callable[..., Recording],
) -> None:
    fake_vm.guest.read_file(300 * MiB)
    cache, free = fake_vm.guest.cache, fake_vm.guest.free
    state = await recording(fake_vm).hint_status()
    assert state.mode is HintMode.AGENT and state.method is HintMethod.RECLAIM
    assert state.detail == f"{RECLAIM_WORDS} ({NO_SWAPPINESS})"
    assert (fake_vm.guest.cache, fake_vm.guest.free) == (cache, free)


async def test_the_first_status_describes_the_method_it_just_found(
    fake_vm_factory: Any, recording: Callable[..., Recording],
) -> None:
    vm: FakeVM = await fake_vm_factory(qga_memory_reclaim=False)
    client = recording(vm)
    state = await client.hint_status()
    assert state.method is HintMethod.DROP
    assert state.detail == f"{DROP_WORDS} ({NO_MEMORY_RECLAIM})"
    # and it is kept: the next status asks the guest nothing new
    sent = len(client.qga_sent)
    assert (await client.hint_status()).detail == state.detail
    assert "guest-exec" not in client.qga_sent[sent:]


async def test_a_method_that_cannot_be_found_says_why(
    fake_vm: FakeVM, recording: Callable[..., Recording], monkeypatch: pytest.MonkeyPatch,
) -> None:
    script_says(monkeypatch, 3, b"", b"  sh: boom  \n")
    async with recording(fake_vm) as client:
        state = await client.hint_status()
    assert state.mode is HintMode.AGENT and state.method is None
    assert state.detail == (f"{UNKNOWN_WORDS} (reclaim method not known: vm1: the guest's "
                            "cache-reclaim script exited 3: sh: boom)")
    script_says(monkeypatch, 3, b"", b"")
    async with recording(fake_vm) as client:
        state = await client.hint_status()
    assert state.detail.endswith("(reclaim method not known: vm1: the guest's cache-reclaim "
                                 "script exited 3)")


async def test_the_scripts_complaint_is_cut_at_200_characters_and_never_crashes(
    fake_vm: FakeVM, recording: Callable[..., Recording], monkeypatch: pytest.MonkeyPatch,
) -> None:
    script_says(monkeypatch, 1, b"", b"x" * 300)
    async with recording(fake_vm) as client:
        detail = (await client.hint_status()).detail
    assert detail.endswith(f"exited 1: {'x' * 200})")
    script_says(monkeypatch, 1, b"", b"bad \xff byte")  # a guest can send anything
    async with recording(fake_vm) as client:
        detail = (await client.hint_status()).detail
    assert detail.endswith("exited 1: bad \ufffd byte)")


async def test_a_report_of_the_wrong_shape_names_the_vm(
    fake_vm: FakeVM, recording: Callable[..., Recording], monkeypatch: pytest.MonkeyPatch,
) -> None:
    script_says(monkeypatch, 0, b"balloonctl-reclaim=1\nmethod=zap\n", b"")
    detail = (await recording(fake_vm).hint_status()).detail
    assert "(reclaim method not known: vm1: the guest's cache-reclaim script printed " \
           "something unexpected" in detail


async def test_a_stored_method_of_another_shape_is_not_trusted(
    fake_vm: FakeVM, recording: Callable[..., Recording],
) -> None:
    client = recording(fake_vm)
    await client.targets.remember(hint_method="zap", hint_why="file-pages",
                                  hint_probe_mount=False)
    state = await client.hint_status()
    assert state.method is None and state.detail == UNKNOWN_WORDS


async def test_a_stored_method_without_its_why_says_nothing_in_parentheses(
    fake_vm: FakeVM, recording: Callable[..., Recording],
) -> None:
    client = recording(fake_vm)
    await client.targets.remember(hint_method="reclaim", hint_probe_mount=False)
    state = await client.hint_status()
    assert state.method is HintMethod.RECLAIM and state.detail == RECLAIM_WORDS
    assert "guest-exec" not in client.qga_sent  # the stored method was used


async def test_the_method_is_found_again_only_when_mounting_is_allowed_differently(
    fake_vm_factory: Any, recording: Callable[..., Recording],
) -> None:
    vm: FakeVM = await fake_vm_factory(qga_cgroup2=False)
    store = MemoryStore()
    client = recording(vm, store=store, hint_mount_cgroup=True)
    assert (await client.hint_status()).method is HintMethod.DROP  # hint off: no mount
    on = await client.set_hint(True)
    assert vm.kernel.cgroup2_mounted and on.method is HintMethod.RECLAIM
    assert on.detail == f"{RECLAIM_WORDS} ({NO_SWAPPINESS}){MOUNTED}"
    # the hint goes off: found again without mounting (it is mounted now), and it is still
    # balloonctl's mount that the detail names, straight from the probe and from the store
    await client.targets.remember(hint=False)
    sent = len(client.qga_sent)
    state, refusal = await client.cache_first.probe()
    assert refusal is None and client.qga_sent[sent:].count("guest-exec") == 1
    assert state.detail == f"{RECLAIM_WORDS} ({NO_SWAPPINESS}){MOUNTED}"
    assert (await client.hint_status()).detail == state.detail
    assert (await client.targets.remembered())["hint_probe_mount"] is False


async def test_a_probe_that_cannot_be_recorded_still_answers(
    fake_vm: FakeVM, recording: Callable[..., Recording], caplog: pytest.LogCaptureFixture,
) -> None:
    class ReadOnly(MemoryStore):
        def edit(self, key: str, change: Any) -> dict[str, Any]:
            raise OSError(30, "Read-only file system")

    with caplog.at_level(logging.WARNING, logger="balloonctl.cachefirst"):
        state = await recording(fake_vm, store=ReadOnly()).hint_status()
    assert state.method is HintMethod.RECLAIM
    assert caplog.messages == [
        "vm1: cannot record the cache-first outcome: [Errno 30] Read-only file system"]


# ---- the outcome of each inflation's reclaim ------------------------------------------------


async def test_each_outcome_is_recorded_and_described(
    fake_vm: FakeVM, recording: Callable[..., Recording], monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = recording(fake_vm)
    await client.set_hint(True)
    # a drop the guest refused
    script_says(monkeypatch, 0, report("failed"), b"")
    before = time.time()
    await client.set_target(GiB + 512 * MiB)
    entry = await client.targets.remembered()
    assert before <= entry["hint_at"] <= time.time()
    assert entry["hint_error"] == "drop_caches refused the write"
    assert entry["hint_result"] == "failed" and entry["hint_method"] == "drop"
    state = await client.hint_status()
    assert state.detail == (f"{DROP_WORDS} ({NO_MEMORY_RECLAIM}); last drop failed: "
                            "drop_caches refused the write")
    # then one that released less than asked: the error is gone
    script_says(monkeypatch, 0, report("short", method="reclaim", why="no-swappiness-key",
                                       released_kib=100 * 1024), b"")
    await client.set_target(GiB)
    entry = await client.targets.remembered()
    assert entry["hint_error"] is None and entry["hint_released"] == 100 * MiB
    state = await client.hint_status()
    assert state.released == 100 * MiB
    assert state.detail == (f"{RECLAIM_WORDS} ({NO_SWAPPINESS}); last reclaim released "
                            "100 MiB (less than asked: no more clean page cache to reclaim)")
    # and one that released all it was asked
    script_says(monkeypatch, 0, report("ok", released_kib=200 * 1024), b"")
    await client.set_target(512 * MiB)
    state = await client.hint_status()
    assert state.detail == f"{DROP_WORDS} ({NO_MEMORY_RECLAIM}); last drop released 200 MiB"


async def test_a_reclaim_the_guest_does_not_finish_in_the_budget(
    fake_vm: FakeVM, recording: Callable[..., Recording],
) -> None:
    client = recording(fake_vm, command_timeout=2.0)
    await client.set_hint(True)
    assert fake_vm.qga is not None
    fake_vm.qga.exec_duration = 30.0
    await client.set_target(GiB + 512 * MiB)
    assert fake_vm.guest.balloon_target == 512 * MiB
    entry = await client.targets.remembered()
    assert entry["hint_error"] == ("vm1: the guest agent did not finish reclaiming page cache "
                                   "within 1s; the inflation went ahead")
    assert entry["hint_released"] is None
    fake_vm.qga.exec_duration = 0.0
    state = await client.hint_status()
    assert state.detail.endswith("; last reclaim failed: " + entry["hint_error"])


# ---- the mode ----------------------------------------------------------------------------------


async def test_device_mode_names_the_property(
    fake_vm_factory: Any, recording: Callable[..., Recording],
) -> None:
    vm: FakeVM = await fake_vm_factory(hint_device=True)
    async with recording(vm) as client:
        state = await client.hint_status()
    assert state.mode is HintMode.DEVICE and state.enabled is False
    assert state.detail == "balloon device property reclaim-cache-first"


async def test_unsupported_is_off_and_says_why_for_each_refusal(
    fake_vm_factory: Any, recording: Callable[..., Recording],
) -> None:
    unsupported = ("stock QEMU has no reclaim-cache-first property; give balloonctl the VM's "
                   "guest-agent socket (--qga / qga = ... in config) with guest-exec allowed")
    vm: FakeVM = await fake_vm_factory()
    async with BalloonClient(str(vm.qmp_path), name="vm1", connect_timeout=1.0) as client:
        state = await client.hint_status()  # no guest agent at all
        assert (state.mode, state.enabled, state.detail) == (HintMode.UNSUPPORTED, False,
                                                              unsupported)
        with pytest.raises(HintUnsupported) as info:
            await client.set_hint(True)
        assert info.value.vm == "vm1"
    assert vm.qga is not None
    vm.qga.exec_enabled = False
    async with recording(vm) as client:
        state = await client.hint_status()
    assert state.enabled is False and state.detail.startswith("guest-exec is blocked (vm1: ")
    assert state.detail.endswith(f"); {unsupported}")
    vm.qga.exec_enabled = True
    vm.faults.bad_reply["guest-info"] = {"version": 7}
    async with recording(vm) as client:
        state = await client.hint_status()
    assert state.enabled is False
    assert state.detail.startswith("the guest agent answered nonsense (vm1: ")
    del vm.faults.bad_reply["guest-info"]
    async with recording(vm) as client:
        await client.set_hint(True)  # on in balloonctl's state ...
        assert client.qga is not None
        vm.faults.drop_on.add("guest-info")  # ... and then the agent goes away
        state, refusal = await client.cache_first.probe(fresh=True)
    assert refusal is not None and state.enabled is False
    assert state.detail.startswith("the hint is on in balloonctl's state but not honoured: "
                                   "the guest agent is unreachable (vm1: ")


async def test_the_guest_agents_answer_is_reused_for_thirty_seconds(
    fake_vm: FakeVM, recording: Callable[..., Recording],
) -> None:
    async with recording(fake_vm) as client:
        await client.hint_status()
        assert client.qga_sent.count("guest-info") == 1
        await client.hint_status()
        await client.cache_first.probe()
        assert client.qga_sent.count("guest-info") == 1  # the answer is reused
        assert client.run.qga_checked is not None
        client.run.qga_checked -= 29.0
        await client.hint_status()
        assert client.qga_sent.count("guest-info") == 1
        client.run.qga_checked -= 1.5  # 30.5 s old
        await client.hint_status()
        assert client.qga_sent.count("guest-info") == 2
        await client.cache_first.probe(fresh=True)
        assert client.qga_sent.count("guest-info") == 3


async def test_turning_the_hint_on_asks_the_guest_agent_afresh(
    fake_vm: FakeVM, recording: Callable[..., Recording],
) -> None:
    async with recording(fake_vm) as client:
        assert (await client.hint_status()).mode is HintMode.AGENT
        assert fake_vm.qga is not None
        fake_vm.qga.exec_enabled = False  # within QGA_RECHECK of the last answer
        with pytest.raises(AgentExecBlocked):
            await client.set_hint(True)


async def test_an_unreachable_guest_agent_is_asked_again_each_time(
    fake_vm: FakeVM, fake_dir: Any,
) -> None:
    client = BalloonClient(str(fake_vm.qmp_path), name="vm1", qga=str(fake_dir / "gone.qga"),
                           connect_timeout=1.0)
    async with client:
        for _ in range(2):
            state = await client.hint_status()
            assert state.mode is HintMode.UNSUPPORTED and "unreachable" in state.detail
            assert client.run.qga_checked is None


async def test_turning_off_what_cannot_be_honoured_is_recorded_as_off(
    fake_vm: FakeVM, recording: Callable[..., Recording],
) -> None:
    async with recording(fake_vm) as client:
        await client.set_hint(True)
        assert fake_vm.qga is not None
        fake_vm.qga.exec_enabled = False
        state = await client.set_hint(False)
        assert state.mode is HintMode.UNSUPPORTED
        assert (await client.targets.remembered())["hint"] is False


async def test_a_stored_release_of_another_shape_is_not_shown(
    fake_vm: FakeVM, recording: Callable[..., Recording],
) -> None:
    async with recording(fake_vm) as client:
        await client.targets.remember(hint_released="lots")
        assert (await client.hint_status()).released is None
        await client.targets.remember(hint_released=5 * MiB)
        assert (await client.hint_status()).released == 5 * MiB


async def test_the_methods_probe_waits_for_the_script_within_its_budget(
    fake_vm: FakeVM, recording: Callable[..., Recording],
) -> None:
    assert fake_vm.qga is not None
    fake_vm.qga.exec_duration = 30.0  # the script never ends in time
    # the budget (half the command timeout) is the shorter, then the probe's reply timeout
    for connect, command, limit in ((10.0, 2.0, "1s"), (0.8, 10.0, "0.8s")):
        async with recording(fake_vm, connect_timeout=connect,
                             command_timeout=command) as client:
            state = await client.hint_status()
        assert state.method is None
        assert state.detail.endswith(f"did not exit within {limit})"), state.detail


class WithoutSession:
    """A ``HintClient`` with no QMP session (as ``LibvirtClient``): a BalloonClient's
    protocol members only."""

    def __init__(self, inner: BalloonClient) -> None:
        self.inner = inner
        self.name, self.qga, self.run = inner.name, inner.qga, inner.run
        self.connect_timeout, self.command_timeout = inner.connect_timeout, inner.command_timeout
        self.hint_mount_cgroup = inner.hint_mount_cgroup
        self.qga_client = inner.qga_client
        self.device_properties, self.device_path = inner.device_properties, inner.device_path
        self.query = inner.query


async def test_a_client_without_a_qmp_session_has_no_overall_limit(
    fake_vm: FakeVM, recording: Callable[..., Recording],
) -> None:
    from balloonctl.cachefirst import CacheFirst

    async with recording(fake_vm, connect_timeout=10.0, command_timeout=10.0) as client:
        hint = CacheFirst(WithoutSession(client), client.targets, vm="vm1")
        state = await hint.status()
    assert state.mode is HintMode.AGENT and state.method is HintMethod.RECLAIM
    assert client.qga_timeouts == [2.0, 2.0]
