"""QgaClient against the fake guest agent socket."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from balloonctl.errors import AgentError, AgentExecBlocked
from balloonctl.fake import FakeVM
from balloonctl.qga import QgaClient
from balloonctl.units import MiB


def agent_for(vm: FakeVM, *, timeout: float = 1.0) -> QgaClient:
    return QgaClient(str(vm.qga_path), timeout=timeout, vm="vm1")


async def test_ping_info_and_exec(fake_vm: FakeVM) -> None:
    seen: list[tuple[str, str, object]] = []
    async with QgaClient(str(fake_vm.qga_path), timeout=1.0,
                          trace=lambda *m: seen.append(m)) as agent:
        await agent.ping()
        info = await agent.info()
        assert any(c["name"] == "guest-exec" and c["enabled"]
                   for c in info["supported_commands"])
        await agent.require_exec()
        result = await agent.exec("/bin/echo", ["hello", "guest"])
        assert (result.exitcode, result.stdout, result.stderr) == (0, b"hello guest\n", b"")
        failed = await agent.exec("/bin/sh", ["-c", "false"])
        assert failed.exitcode == 1
        missing = await agent.exec("/usr/bin/nope")
        assert missing.exitcode == 127 and b"not found" in missing.stderr
    assert seen[0][1] == "->" and seen[0][2]["execute"] == "guest-sync"  # type: ignore[index]


async def test_drop_caches_frees_the_guest_page_cache(fake_vm: FakeVM) -> None:
    fake_vm.guest.read_file(300 * MiB)
    assert fake_vm.guest.cache >= 300 * MiB
    async with agent_for(fake_vm) as agent:
        result = await agent.drop_caches()
    assert result.exitcode == 0
    assert fake_vm.guest.cache == 0


async def test_sync_discards_stale_replies(fake_vm: FakeVM) -> None:
    async with agent_for(fake_vm) as agent:
        # An abandoned command leaves its reply in the channel, as after a killed client.
        agent._send({"execute": "guest-info"})
        agent._send({"execute": "guest-sync", "arguments": {"id": 12345}})
        await agent.sync()
        assert await agent.execute("guest-ping") == {}


async def test_guest_agent_errors_are_agent_errors(fake_vm: FakeVM) -> None:
    fake_vm.faults.errors["guest-exec"] = (
        "GenericError",
        "Guest agent command failed, error was 'Failed to execute child process \"x\"'",
    )
    async with agent_for(fake_vm) as agent:
        with pytest.raises(AgentError) as err:
            await agent.exec("x")
        assert not isinstance(err.value, AgentExecBlocked)
        assert "Guest agent command failed, error was 'Failed to execute child process" in str(
            err.value)
        assert str(err.value).startswith("vm1: ")
        await agent.ping()  # the session is still in step


async def test_blocked_guest_exec(fake_vm_factory: Any) -> None:
    vm: FakeVM = await fake_vm_factory(agent_exec=False)
    async with agent_for(vm) as agent:
        with pytest.raises(AgentExecBlocked, match="guest-exec"):
            await agent.require_exec()
        with pytest.raises(AgentExecBlocked, match="allow-rpcs"):
            await agent.drop_caches()


async def test_missing_agent_socket(fake_dir: Path) -> None:
    with pytest.raises(AgentError, match="no such socket"):
        await QgaClient(str(fake_dir / "none.qga"), timeout=1.0).connect()


async def test_silent_agent_times_out(fake_vm: FakeVM) -> None:
    fake_vm.faults.delay["guest-sync"] = 20.0  # far beyond any slack the bound allows
    started = time.monotonic()
    with pytest.raises(AgentError, match=r"did not answer guest-sync within 0\.2s"):
        await agent_for(fake_vm, timeout=0.2).connect()
    assert time.monotonic() - started < 10


async def test_process_that_never_exits_times_out(fake_vm: FakeVM) -> None:
    assert fake_vm.qga is not None
    fake_vm.qga.exec_duration = 30.0
    async with agent_for(fake_vm) as agent:
        with pytest.raises(AgentError, match=r"did not exit within 0\.2s"):
            await agent.exec("/bin/true", timeout=0.2)


async def test_dropped_connection_then_reconnect(fake_vm: FakeVM) -> None:
    async with agent_for(fake_vm) as agent:
        fake_vm.faults.drop_on.add("guest-ping")
        with pytest.raises(AgentError, match="closed the connection during guest-ping"):
            await agent.ping()
        fake_vm.faults.drop_on.clear()
        await agent.ping()  # reconnects and resyncs


async def test_garbage_reply(fake_vm: FakeVM) -> None:
    async with agent_for(fake_vm) as agent:
        fake_vm.faults.garbage_on.add("guest-info")
        with pytest.raises(AgentError, match="bad reply to guest-info"):
            await agent.info()
        fake_vm.faults.garbage_on.clear()
        assert await agent.info()
