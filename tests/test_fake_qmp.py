"""The fake QEMU's QMP protocol, through real unix sockets, as QEMU 7.2 speaks it."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Awaitable
from typing import Any, TypeVar

import pytest
from rawqmp import RawQMP, RawQMPError, poll_until

from balloonctl.fake import FakeVM
from balloonctl.units import GiB, MiB

BALLOON = "/machine/peripheral/balloon0"
T = TypeVar("T")


async def _within(seconds: float, aw: Awaitable[T]) -> T:
    return await asyncio.wait_for(aw, seconds)


async def _eq(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


async def test_greeting_is_qemu_7_2(fake_vm: FakeVM) -> None:
    async with await RawQMP.connect(fake_vm.qmp_path) as qmp:
        raw = await asyncio.wait_for(qmp.reader.readline(), 2)
    assert raw.endswith(b"\n")
    assert json.loads(raw) == {
        "QMP": {
            "version": {
                "qemu": {"micro": 22, "minor": 2, "major": 7},
                "package": json.loads(raw)["QMP"]["version"]["package"],
            },
            "capabilities": ["oob"],
        }
    }


async def test_commands_before_negotiation_are_refused(fake_vm: FakeVM) -> None:
    async with await RawQMP.connect(fake_vm.qmp_path) as qmp:
        await qmp.greeting()
        with pytest.raises(RawQMPError) as err:
            await qmp.execute("query-balloon")
        assert err.value.error_class == "CommandNotFound"
        assert err.value.desc == "Expecting capabilities negotiation with 'qmp_capabilities'"
        await qmp.negotiate()
        assert await qmp.execute("query-balloon") == {"actual": 2 * GiB}
        with pytest.raises(RawQMPError) as err:
            await qmp.negotiate()
        assert err.value.error_class == "CommandNotFound"
        assert err.value.desc == "Capabilities negotiation is already complete, command ignored"


async def test_negotiation_accepts_oob(fake_vm: FakeVM) -> None:
    async with await RawQMP.connect(fake_vm.qmp_path) as qmp:
        await qmp.greeting()
        assert await qmp.execute("qmp_capabilities", {"enable": ["oob"]}) == {}


@pytest.mark.parametrize("msg_id", ["abc", 7, {"nested": [1, 2]}])
async def test_reply_echoes_any_id(fake_vm: FakeVM, msg_id: Any) -> None:
    async with await RawQMP.open(fake_vm.qmp_path) as qmp:
        qmp.send({"execute": "query-status", "id": msg_id})
        reply = await qmp.recv()
    assert reply == {
        "return": {"status": "running", "singlestep": False, "running": True},
        "id": msg_id,
    }


async def test_reply_without_id_has_none(fake_vm: FakeVM) -> None:
    async with await RawQMP.open(fake_vm.qmp_path) as qmp:
        qmp.send({"execute": "query-balloon"})
        assert await qmp.recv() == {"return": {"actual": 2 * GiB}}


async def test_messages_split_across_writes_and_back_to_back(fake_vm: FakeVM) -> None:
    async with await RawQMP.open(fake_vm.qmp_path) as qmp:
        data = b'{"execute": "query-balloon", "id": "a"}{"execute":"query-status","id":"b"}'
        for i in range(0, len(data), 7):
            qmp.send(data[i : i + 7])
            await qmp.writer.drain()
        first = await qmp.recv()
        second = await qmp.recv()
    assert first["id"] == "a" and first["return"] == {"actual": 2 * GiB}
    assert second["id"] == "b" and second["return"]["running"] is True


async def test_every_message_ends_with_newline(fake_vm: FakeVM) -> None:
    async with await RawQMP.connect(fake_vm.qmp_path) as qmp:
        qmp.send({"execute": "qmp_capabilities", "id": "n"})
        for _ in range(2):
            line = await asyncio.wait_for(qmp.reader.readline(), 2)
            assert line.endswith(b"\n")
            json.loads(line)


async def test_garbage_input_gets_a_parse_error(fake_vm: FakeVM) -> None:
    async with await RawQMP.open(fake_vm.qmp_path) as qmp:
        qmp.send(b"garbage ")
        reply = await qmp.recv()
        assert reply["error"]["class"] == "GenericError"
        assert reply["error"]["desc"].startswith("JSON parse error")
        # The session survives.
        assert await qmp.execute("query-balloon") == {"actual": 2 * GiB}


@pytest.mark.parametrize(
    ("msg", "desc"),
    [
        ([1, 2], "QMP input must be a JSON object"),
        ({"id": "x"}, "QMP input lacks member 'execute'"),
        ({"execute": 5}, "QMP input member 'execute' must be a string"),
        (
            {"execute": "query-balloon", "arguments": []},
            "QMP input member 'arguments' must be an object",
        ),
        ({"execute": "query-balloon", "bogus": 1}, "QMP input member 'bogus' is unexpected"),
    ],
)
async def test_malformed_commands(fake_vm: FakeVM, msg: Any, desc: str) -> None:
    async with await RawQMP.open(fake_vm.qmp_path) as qmp:
        qmp.send(json.dumps(msg).encode())
        reply = await qmp.recv()
    assert reply["error"] == {"class": "GenericError", "desc": desc}


async def test_unknown_command(fake_vm: FakeVM) -> None:
    async with await RawQMP.open(fake_vm.qmp_path) as qmp:
        with pytest.raises(RawQMPError) as err:
            await qmp.execute("no-such-command")
    assert err.value.error_class == "CommandNotFound"
    assert err.value.desc == "The command no-such-command has not been found"


async def test_query_memory_size_summary_and_status(fake_vm_factory: Any) -> None:
    vm = await fake_vm_factory(ram=3 * GiB)
    async with await RawQMP.open(vm.qmp_path) as qmp:
        assert await qmp.execute("query-memory-size-summary") == {
            "base-memory": 3 * GiB,
            "plugged-memory": 0,
        }
        assert await qmp.execute("query-status") == {
            "status": "running",
            "singlestep": False,
            "running": True,
        }
        assert await qmp.execute("query-name") == {"name": "vm1"}


# --- balloon --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "desc"),
    [
        ({"value": 0}, "Parameter 'target' expects a size"),
        ({"value": -5}, "Parameter 'target' expects a size"),
        ({"value": "1G"}, "Invalid parameter type for 'value', expected: integer"),
        ({"value": 1.5}, "Invalid parameter type for 'value', expected: integer"),
        ({"value": True}, "Invalid parameter type for 'value', expected: integer"),
        ({}, "Parameter 'value' is missing"),
        ({"value": GiB, "extra": 1}, "Parameter 'extra' is unexpected"),
    ],
)
async def test_balloon_value_errors(fake_vm: FakeVM, args: dict[str, Any], desc: str) -> None:
    async with await RawQMP.open(fake_vm.qmp_path) as qmp:
        with pytest.raises(RawQMPError) as err:
            await qmp.execute("balloon", args)
    assert (err.value.error_class, err.value.desc) == ("GenericError", desc)


async def test_balloon_moves_actual_to_target(fake_vm: FakeVM) -> None:
    async with await RawQMP.open(fake_vm.qmp_path) as qmp:
        assert await qmp.execute("balloon", {"value": 1536 * MiB}) == {}

        async def actual() -> int:
            result: int = (await qmp.execute("query-balloon"))["actual"]
            return result

        await poll_until(lambda: _eq(actual(), 1536 * MiB), what="inflation")
        await qmp.execute("balloon", {"value": 2 * GiB})
        await poll_until(lambda: _eq(actual(), 2 * GiB), what="deflation")


async def test_balloon_above_ram_is_silently_clamped(fake_vm: FakeVM) -> None:
    async with await RawQMP.open(fake_vm.qmp_path) as qmp:
        await qmp.execute("balloon", {"value": GiB})
        await poll_until(lambda: fake_vm.guest.actual == GiB)
        assert await qmp.execute("balloon", {"value": 64 * GiB}) == {}
        await poll_until(lambda: fake_vm.guest.actual == 2 * GiB)
        assert await qmp.execute("query-balloon") == {"actual": 2 * GiB}


async def test_no_balloon_device(fake_vm_factory: Any) -> None:
    vm = await fake_vm_factory(balloon=False)
    async with await RawQMP.open(vm.qmp_path) as qmp:
        for cmd, args in (("query-balloon", None), ("balloon", {"value": GiB})):
            with pytest.raises(RawQMPError) as err:
                await qmp.execute(cmd, args)
            assert err.value.error_class == "DeviceNotActive"
            assert err.value.desc == "No balloon device has been activated"
        # No device has an id, so QEMU never created /machine/peripheral.
        with pytest.raises(RawQMPError) as err:
            await qmp.execute("qom-list", {"path": "/machine/peripheral"})
        assert err.value.error_class == "DeviceNotFound"
        anon = await qmp.execute("qom-list", {"path": "/machine/peripheral-anon"})
    assert anon and not any("balloon" in p["type"] for p in anon)


async def test_balloon_change_events_are_rate_limited(fake_vm_factory: Any) -> None:
    # 256 MiB/s: a 512 MiB inflation takes about two seconds and changes actual ~100 times.
    vm = await fake_vm_factory(rate=256 * MiB)
    async with await RawQMP.open(vm.qmp_path) as qmp:
        await qmp.execute("balloon", {"value": 1536 * MiB})
        loop = asyncio.get_running_loop()
        events: list[dict[str, Any]] = []
        arrivals: list[float] = []
        while not events or events[-1]["data"]["actual"] != 1536 * MiB:
            events.append(await _within(3, qmp.next_event("BALLOON_CHANGE")))
            arrivals.append(loop.time())
    assert 2 <= len(events) <= 5
    # At most one per second; a held event carries the time of the last change it stands for.
    assert all(b - a >= 0.8 for a, b in itertools.pairwise(arrivals))
    stamps = [e["timestamp"]["seconds"] + e["timestamp"]["microseconds"] / 1e6 for e in events]
    assert stamps == sorted(stamps)
    assert all(set(e["timestamp"]) == {"seconds", "microseconds"} for e in events)
    actuals = [e["data"]["actual"] for e in events]
    assert actuals == sorted(actuals, reverse=True)


async def test_no_events_before_negotiation(fake_vm: FakeVM) -> None:
    async with await RawQMP.connect(fake_vm.qmp_path) as qmp:
        await qmp.greeting()
        fake_vm.device.set_target(GiB)  # type: ignore[union-attr]
        await poll_until(lambda: fake_vm.guest.actual == GiB)
        with pytest.raises(TimeoutError):
            await _within(0.2, qmp.recv())


# --- one client at a time -------------------------------------------------------------


async def test_second_client_waits_silently_until_the_first_leaves(fake_vm: FakeVM) -> None:
    first = await RawQMP.open(fake_vm.qmp_path)
    second = await RawQMP.connect(fake_vm.qmp_path)  # the connect itself succeeds
    try:
        with pytest.raises(TimeoutError):
            await _within(0.3, second.greeting())
        # The first client is still served meanwhile.
        assert await first.execute("query-balloon") == {"actual": 2 * GiB}
        # A command sent while waiting is answered once it is our turn.
        second.send({"execute": "qmp_capabilities", "id": "early"})
        with pytest.raises(TimeoutError):
            await _within(0.2, second.recv())
        await first.close()
        greeting = await _within(2, second.greeting())
        assert greeting["QMP"]["version"]["qemu"]["major"] == 7
        assert await _within(2, second.recv()) == {"return": {}, "id": "early"}
    finally:
        await first.close()
        await second.close()


async def test_exec_oob(fake_vm: FakeVM) -> None:
    oob = {"exec-oob": "query-balloon", "id": "o"}
    async with await RawQMP.open(fake_vm.qmp_path) as qmp:
        qmp.send(oob)
        assert (await qmp.recv())["error"]["desc"] == "QMP input member 'exec-oob' is unexpected"
    async with await RawQMP.connect(fake_vm.qmp_path) as qmp:
        await qmp.greeting()
        await qmp.execute("qmp_capabilities", {"enable": ["oob"]})
        qmp.send(oob)
        assert (await qmp.recv())["error"]["desc"] == (
            "The command query-balloon does not support OOB"
        )
        qmp.send({**oob, "execute": "query-balloon"})
        assert (await qmp.recv())["error"]["desc"] == (
            "QMP input member 'execute' clashes with 'exec-oob'"
        )
