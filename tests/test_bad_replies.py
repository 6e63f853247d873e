"""Malformed replies from a hostile hypervisor or guest, through real sockets (the fake).

For every QMP command and every guest-agent command balloonctl sends, a table of replies of
the wrong shape: the VM that sent one shows what went wrong (QMP: the ``error`` state, never
``no-driver``; qga: an unusable hint or a failed reclaim, with the inflation still sent), and
a healthy VM in the same fleet is shown as usual.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from balloonctl.errors import BadAgentReply, BadReply
from balloonctl.fake import FakeVM
from balloonctl.fake.faults import BAD_REPLIES, Faults
from balloonctl.fleet import CONNECTED, Fleet
from balloonctl.model import HintMode, VmRef, VmStatus
from balloonctl.qga import QgaClient
from balloonctl.store import MemoryStore
from balloonctl.units import GiB, MiB, parse_target


def ref(vm: FakeVM, *, hint: bool | None = None) -> VmRef:
    return VmRef(name=vm.name, qmp=str(vm.qmp_path), qga=str(vm.qga_path), hint=hint)


async def pair(factory: Any) -> tuple[FakeVM, FakeVM]:
    return await factory("vm1"), await factory("vm2")


def fleet_of(*vms: FakeVM, hint: bool | None = None, **kw: Any) -> Fleet:
    kw.setdefault("connect_timeout", 0.5)
    kw.setdefault("command_timeout", 1.0)
    return Fleet([ref(vm, hint=hint) for vm in vms], store=MemoryStore(), **kw)


# (fault key, the malformed ``return`` value, what the error must say)
QMP_READS: list[tuple[str, Any, str]] = [
    ("query-balloon", {"actual": "1G"}, "query-balloon: 'actual' is not an integer"),
    ("query-balloon", {"actual": -5}, "'actual' is -5, not at least 1"),
    ("query-balloon", {"actual": 0}, "'actual' is 0, not at least 1"),
    ("query-balloon", [{"actual": GiB}], "query-balloon: the reply is not an object"),
    ("query-balloon", {}, "query-balloon: no 'actual'"),
    ("query-memory-size-summary", {"base-memory": 0}, "'base-memory' is 0, not at least 1"),
    ("query-memory-size-summary", {"base-memory": -GiB}, "'base-memory' is -1073741824"),
    ("query-memory-size-summary", [], "the reply is not an object"),
    ("qom-list", [{"type": "child<virtio-balloon-pci>"}], "qom-list: no 'name'"),
    ("qom-list", {"balloon0": "child<virtio-balloon-pci>"}, "qom-list: the reply is not a list"),
    ("qom-list", [{"name": 7, "type": "bool"}], "entry 0 'name' is not a string"),
    ("qom-get:guest-stats", {"stats": {"stat-free-memory": "lots"}, "last-update": 1},
     "qom-get guest-stats: 'stat-free-memory' is not an integer"),
    ("qom-get:guest-stats", {"stats": [], "last-update": 1}, "'stats' is not an object"),
    ("qom-get:guest-stats", {"stats": {}, "last-update": -3}, "'last-update' is -3"),
    ("qom-get:guest-stats", "stats", "qom-get guest-stats: the reply is not an object"),
    ("qom-get:guest-stats-polling-interval", "2",
     "qom-get guest-stats-polling-interval: the interval is not an integer"),
    ("qom-get:guest-stats-polling-interval", -1, "the interval is -1, not at least 0"),
    ("qom-get:deflate-on-oom", "yes", "qom-get deflate-on-oom: the value is not a boolean"),
    ("qom-get:free-page-reporting", 1, "qom-get free-page-reporting: the value is not a bool"),
    ("qom-get:free-page-hint", None, "qom-get free-page-hint: the value is not a boolean"),
    ("query-cpus-fast", {"cpu-index": 0}, "query-cpus-fast: the reply is not a list"),
    ("query-cpus-fast", [{"cpu-index": 0, "thread-id": "t1"}],
     "entry 0 'thread-id' is not an integer"),
    ("query-cpus-fast", [["cpu0"]], "entry 0 is not an object"),
]


@pytest.mark.parametrize(("key", "value", "says"), QMP_READS,
                         ids=[f"{k}-{i}" for i, (k, _, _) in enumerate(QMP_READS)])
async def test_a_bad_qmp_reply_is_that_vms_error_state(
    fake_vm_factory: Any, key: str, value: Any, says: str,
) -> None:
    bad, good = await pair(fake_vm_factory)
    bad.faults.bad_reply[key] = value
    async with fleet_of(bad, good) as fleet:
        states = {s.name: s for s in await fleet.snapshot()}
    broken, healthy = states["vm1"], states["vm2"]
    assert broken.status is VmStatus.ERROR, broken
    assert broken.error_kind == "BadReply" and broken.reachable
    assert says in (broken.error or "")
    assert broken.to_json()["status"] == "error"
    assert healthy.status is VmStatus.OK and healthy.actual == 2 * GiB
    assert healthy.error is None and healthy.stats is not None


async def test_the_canned_bad_replies_cover_every_command_sent(fake_vm_factory: Any) -> None:
    """Every command balloonctl sends over a read, a set and a hint toggle has an entry in
    ``BAD_REPLIES`` (``--fault bad-reply:KEY``), so the fake can be told to break each."""
    vm = await fake_vm_factory("vm1", hint_device=True)
    seen: set[str] = set()

    def trace(name: str, direction: str, msg: Any) -> None:
        if direction == "->" and "execute" in msg:
            cmd, prop = msg["execute"], msg.get("arguments", {}).get("property")
            seen.add(f"{cmd}:{prop}" if cmd == "qom-get" else cmd)

    async with fleet_of(vm, trace=trace) as fleet:
        await fleet.snapshot()
        await fleet.set_target("vm1", parse_target("1G"))
        await fleet.set_hint("vm1", True)
        await fleet.enable_stats("vm1", 2)
    async with QgaClient(str(vm.qga_path), timeout=1.0, trace=trace) as qga:
        await qga.ping()
        await qga.require_exec()
        await qga.drop_caches()
    seen.discard("qmp_capabilities")  # sent by qemu.qmp; see test_bad_capabilities_reply
    assert seen <= set(BAD_REPLIES), sorted(seen - set(BAD_REPLIES))
    assert {"query-balloon", "qom-list", "qom-get:guest-stats", "guest-exec-status",
            "guest-info", "balloon", "qom-set"} <= seen


async def test_every_canned_bad_reply_is_refused(fake_vm_factory: Any) -> None:
    """``Faults.add('bad-reply:KEY')`` (what ``python -m balloonctl.fake --fault`` uses)
    switches on exactly that table entry."""
    faults = Faults()
    for key in BAD_REPLIES:
        faults.add(f"bad-reply:{key}")
    assert faults.bad_reply == dict(BAD_REPLIES)
    with pytest.raises(ValueError, match="bad-reply:query-balloon"):
        faults.add("bad-reply:no-such-command")


async def test_bad_capabilities_reply(fake_vm_factory: Any) -> None:
    bad, good = await pair(fake_vm_factory)
    bad.faults.raw_reply["qmp_capabilities"] = {"error": None}
    async with fleet_of(bad, good) as fleet:
        broken, healthy = await fleet.snapshot()
    assert broken.status is VmStatus.ERROR and broken.error_kind == "BadReply"
    assert "qmp_capabilities" in (broken.error or "")
    assert healthy.status is VmStatus.OK


# Commands sent by a set, a hint toggle or a polling change: the error reaches the caller.
QMP_WRITES: list[tuple[str, Any, str, str]] = [
    ("balloon", "done", "set", "QEMU sent a bad reply to balloon: the reply is not an object"),
    ("balloon", [], "set", "balloon: the reply is not an object"),
    ("qom-set", [], "stats", "qom-set: the reply is not an object"),
    ("qom-get:reclaim-cache-first", [True], "hint",
     "qom-get reclaim-cache-first: the value is not a boolean"),
]


@pytest.mark.parametrize(("key", "value", "action", "says"), QMP_WRITES,
                         ids=[f"{k}-{i}" for i, (k, _, _, _) in enumerate(QMP_WRITES)])
async def test_a_bad_reply_to_a_change_is_that_vms_error(
    fake_vm_factory: Any, key: str, value: Any, action: str, says: str,
) -> None:
    bad = await fake_vm_factory("vm1", hint_device=True)
    good = await fake_vm_factory("vm2", hint_device=True)
    bad.faults.bad_reply[key] = value

    async def act(client: Any) -> Any:
        if action == "set":
            return await client.set_target(parse_target("1G"))
        if action == "hint":
            return await client.set_hint(True)
        return await client.enable_stats(3)

    async with fleet_of(bad, good) as fleet:
        results = await fleet.run_each(None, act)
    error = results["vm1"]
    assert isinstance(error, BadReply) and says in str(error)
    assert str(error).startswith("vm1: ")
    assert error.sent["execute"] == key.split(":")[0]
    assert not isinstance(results["vm2"], Exception)


async def test_control_characters_in_a_bad_reply_are_escaped(fake_vm_factory: Any) -> None:
    bad, _ = await pair(fake_vm_factory)
    bad.faults.bad_reply["query-balloon"] = {"actual": "\x1b[2J\x1b]0;pwned\x07"}
    async with fleet_of(bad) as fleet:
        (state,) = await fleet.snapshot()
    assert state.error is not None and state.error.isprintable()
    assert "\x1b" not in state.error and "\\u001b[2J" in state.error


async def test_a_huge_bad_reply_is_cut_in_the_message(fake_vm_factory: Any) -> None:
    bad, _ = await pair(fake_vm_factory)
    bad.faults.bad_reply["query-balloon"] = {"actual": "x" * 100_000}
    async with fleet_of(bad) as fleet:
        (state,) = await fleet.snapshot()
    assert state.status is VmStatus.ERROR and len(state.error or "") < 400


# ---- events ----------------------------------------------------------------------------

BAD_EVENTS: list[tuple[Any, str]] = [
    ({"event": "BALLOON_CHANGE", "data": {"actual": "1G"},
      "timestamp": {"seconds": 1, "microseconds": 0}}, "'actual' is not an integer"),
    ({"event": "BALLOON_CHANGE", "data": [],
      "timestamp": {"seconds": 1, "microseconds": 0}}, "'data' is not an object"),
    ({"event": "BALLOON_CHANGE", "data": {"actual": GiB}, "timestamp": 5},
     "'timestamp' is not an object"),
    ({"event": "BALLOON_CHANGE", "data": {"actual": -1},
      "timestamp": {"seconds": 1, "microseconds": 0}}, "'actual' is -1"),
]


@pytest.mark.parametrize(("message", "says"), BAD_EVENTS)
async def test_a_malformed_event_ends_that_vms_stream_with_an_error_record(
    fake_vm_factory: Any, message: Any, says: str,
) -> None:
    bad, good = await pair(fake_vm_factory)
    bad.faults.bad_event["BALLOON_CHANGE"] = message
    async with fleet_of(bad, good, hold=True) as fleet:
        seen: list[tuple[str, str, Any]] = []

        async def collect() -> None:
            connected = 0
            async for vm, event in fleet.events():
                seen.append((vm, event.name, event.data))
                if event.name == CONNECTED:
                    connected += 1
                    if connected == 2:
                        # both held: move both balloons; vm1's event comes back malformed
                        await fleet.set_target("vm1", parse_target("1G"))
                        await fleet.set_target("vm2", parse_target("1G"))
                if event.name == "BALLOON_CHANGE" and vm == "vm2":
                    if any(name == "BALLOONCTL_ERROR" for _, name, _ in seen):
                        return
                if event.name == "BALLOONCTL_ERROR":
                    if any(n == "BALLOON_CHANGE" and v == "vm2" for v, n, _ in seen):
                        return

        await asyncio.wait_for(collect(), 10.0)
        errors = [(vm, data) for vm, name, data in seen if name == "BALLOONCTL_ERROR"]
        assert [vm for vm, _ in errors] == ["vm1"]
        assert errors[0][1]["error_kind"] == "BadReply" and says in errors[0][1]["error"]
        assert not [1 for vm, name, _ in seen if vm == "vm1" and name == "BALLOON_CHANGE"]
        state = errors[0][1]["state"]
        assert state.status is VmStatus.ERROR and says in (state.error or "")
        healthy = [d for vm, n, d in seen if vm == "vm2" and n == "BALLOON_CHANGE"]
        assert healthy and healthy[-1]["actual"] <= 2 * GiB


# ---- the guest agent -------------------------------------------------------------------

# Replies that make the hint's probe (guest-sync, guest-info) fail: the hint is unusable
# and says why; the VM itself is fine.
QGA_PROBE: list[tuple[str, str, Any, str]] = [
    ("bad_reply", "guest-info", {"version": "7", "supported_commands": {"guest-exec": True}},
     "guest-info: 'supported_commands' is not a list"),
    ("bad_reply", "guest-info", {"version": "7", "supported_commands": [{"enabled": True}]},
     "guest-info: no 'name'"),
    ("bad_reply", "guest-info", [], "guest-info: the reply is not an object"),
    ("raw_reply", "guest-info", {"error": None}, "guest-info: 'error' is not an object"),
    ("raw_reply", "guest-info", ["return", {}], "guest-info: the reply is not an object"),
    ("raw_reply", "guest-info", {"error": {"class": 7, "desc": "x"}}, "'class' is not a string"),
    ("raw_reply", "guest-info", {"nothing": 1}, "guest-info: no 'return'"),
    ("bad_reply", "guest-sync", "not the id", "guest-sync id"),
    ("bad_reply", "guest-ping", [], "guest-ping: the reply is not an object"),
]


@pytest.mark.parametrize(("kind", "cmd", "value", "says"), QGA_PROBE,
                         ids=[f"{c}-{i}" for i, (_, c, _, _) in enumerate(QGA_PROBE)])
async def test_a_bad_agent_reply_makes_the_hint_unusable(
    fake_vm_factory: Any, kind: str, cmd: str, value: Any, says: str,
) -> None:
    bad, good = await pair(fake_vm_factory)
    getattr(bad.faults, kind)[cmd] = value
    if cmd == "guest-ping":  # only asked when guest-info is missing
        bad.faults.errors["guest-info"] = ("CommandNotFound", "guest-info has not been found")
    async with fleet_of(bad, good, hint=True) as fleet:
        broken, healthy = await fleet.snapshot()
    assert broken.status is VmStatus.OK and broken.actual == 2 * GiB  # the VM is fine
    assert broken.hint.mode is HintMode.UNSUPPORTED and not broken.hint.enabled
    assert says in broken.hint.detail and "nonsense" in broken.hint.detail
    assert healthy.hint.mode is HintMode.AGENT and healthy.hint.enabled


# Replies that break the reclaim itself (guest-exec, guest-exec-status): the inflation the
# operator asked for is still sent, and the failed reclaim is recorded.
QGA_EXEC: list[tuple[str, str, Any, str]] = [
    ("bad_reply", "guest-exec", [], "guest-exec: the reply is not an object"),
    ("bad_reply", "guest-exec", {"pid": "1000"}, "guest-exec: 'pid' is not an integer"),
    ("bad_reply", "guest-exec", {"pid": -4}, "'pid' is -4"),
    ("bad_reply", "guest-exec-status", [], "guest-exec-status: the reply is not an object"),
    ("bad_reply", "guest-exec-status", {"exited": True, "exitcode": 0, "out-data": "!!"},
     "'out-data' is not valid base64"),
    ("bad_reply", "guest-exec-status", {"exited": True, "exitcode": 1, "err-data": "a"},
     "'err-data' is not valid base64"),
    ("bad_reply", "guest-exec-status", {"exited": "yes"}, "'exited' is not a boolean"),
    ("bad_reply", "guest-exec-status", {"exited": True, "exitcode": "0"},
     "'exitcode' is not an integer"),
    ("raw_reply", "guest-exec-status", {"error": None}, "'error' is not an object"),
]


@pytest.mark.parametrize(("kind", "cmd", "value", "says"), QGA_EXEC,
                         ids=[f"{c}-{i}" for i, (_, c, _, _) in enumerate(QGA_EXEC)])
async def test_a_bad_agent_reply_during_reclaim_still_inflates(
    fake_vm_factory: Any, kind: str, cmd: str, value: Any, says: str,
) -> None:
    bad, good = await pair(fake_vm_factory)
    for vm in (bad, good):
        vm.guest.read_file(300 * MiB)
    getattr(bad.faults, kind)[cmd] = value
    async with fleet_of(bad, good, hint=True, command_timeout=2.0) as fleet:
        for name in ("vm1", "vm2"):
            await fleet.enable_stats(name, 1)
        results = await fleet.run_each(None, lambda c: c.set_target(parse_target("1G")))
        assert results == {"vm1": GiB, "vm2": GiB}  # both inflations were sent
        states = {s.name: s for s in await fleet.snapshot()}
    assert states["vm1"].target == GiB and states["vm1"].status in (
        VmStatus.OK, VmStatus.CONVERGING)
    detail = states["vm1"].hint.detail
    # main's cachefirst says "reclaim" unless the method is known to be drop_caches
    assert "last reclaim failed" in detail and says in detail, detail
    assert states["vm2"].hint.mode is HintMode.AGENT
    assert "failed" not in states["vm2"].hint.detail
    assert "last reclaim released" in states["vm2"].hint.detail


async def test_a_bad_agent_reply_keeps_what_was_sent_and_received(fake_vm: FakeVM) -> None:
    fake_vm.faults.bad_reply["guest-exec"] = {"pid": "1000"}
    async with QgaClient(str(fake_vm.qga_path), timeout=1.0, vm="vm1") as qga:
        with pytest.raises(BadAgentReply) as err:
            await qga.exec("/bin/true")
        assert err.value.sent["execute"] == "guest-exec"
        assert err.value.received == {"pid": "1000"}
        fake_vm.faults.clear()
        assert (await qga.exec("/bin/true")).exitcode == 0  # the session recovers
