"""The fake guest agent: line-delimited JSON, guest-exec against the simulated guest."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest
from rawqmp import RawQMP, RawQMPError, poll_until

from balloonctl.fake import FakeVM
from balloonctl.fake.guest import MIN_CACHE
from balloonctl.model import HintMethod
from balloonctl.reclaim import ReclaimReport, parse_reclaim_output, reclaim_argv
from balloonctl.units import MiB


async def _exec(
    ga: RawQMP, path: str, *args: str, input_data: bytes | None = None
) -> dict[str, Any]:
    req: dict[str, Any] = {"path": path, "arg": list(args), "capture-output": True}
    if input_data is not None:
        req["input-data"] = base64.b64encode(input_data).decode()
    pid = (await ga.execute("guest-exec", req))["pid"]
    assert isinstance(pid, int)

    async def status() -> dict[str, Any] | None:
        result: dict[str, Any] = await ga.execute("guest-exec-status", {"pid": pid})
        return result if result["exited"] else None

    result: dict[str, Any] = await poll_until(status, what="the process to exit")
    return result


def _out(status: dict[str, Any], key: str = "out-data") -> str:
    return base64.b64decode(status.get(key, "")).decode()


async def test_no_greeting_and_newline_terminated_replies(fake_vm: FakeVM) -> None:
    async with await RawQMP.connect(fake_vm.qga_path) as ga:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ga.recv(), 0.2)
        ga.send({"execute": "guest-sync", "arguments": {"id": 123456}})
        line = await asyncio.wait_for(ga.reader.readline(), 2)
    assert line == b'{"return": 123456}\n'


async def test_sync_ping_info(fake_vm: FakeVM) -> None:
    async with await RawQMP.connect(fake_vm.qga_path) as ga:
        assert await ga.execute("guest-sync", {"id": 42}) == 42
        assert await ga.execute("guest-ping") == {}
        info = await ga.execute("guest-info")
    assert info["version"].startswith("7.2")
    commands = {c["name"]: c["enabled"] for c in info["supported_commands"]}
    assert commands["guest-exec"] is True
    assert commands["guest-exec-status"] is True


async def test_sync_delimited_sends_a_0xff_first(fake_vm: FakeVM) -> None:
    async with await RawQMP.connect(fake_vm.qga_path) as ga:
        ga.send(b"\xff")  # clients may reset the agent's parser the same way
        ga.send({"execute": "guest-sync-delimited", "arguments": {"id": 9}})
        data = await asyncio.wait_for(ga.reader.readuntil(b"\n"), 2)
    assert data == b'\xff{"return": 9}\n'


async def test_drop_caches_really_drops_the_cache(fake_vm: FakeVM) -> None:
    fake_vm.guest.read_file(200 * MiB)
    assert fake_vm.guest.cache >= 200 * MiB
    async with await RawQMP.connect(fake_vm.qga_path) as ga:
        status = await _exec(ga, "/bin/sh", "-c", "sync; echo 1 > /proc/sys/vm/drop_caches")
    assert status["exited"] is True and status["exitcode"] == 0
    assert fake_vm.guest.cache == 0


@pytest.mark.parametrize(
    ("path", "args", "input_data"),
    [
        ("/bin/sh", ["-c", "echo 3 >/proc/sys/vm/drop_caches"], None),
        ("sh", ["-c", "sync && echo 3 | tee /proc/sys/vm/drop_caches"], None),
        ("/usr/bin/tee", ["/proc/sys/vm/drop_caches"], b"1\n"),
    ],
)
async def test_drop_caches_variants(
    fake_vm: FakeVM, path: str, args: list[str], input_data: bytes | None
) -> None:
    fake_vm.guest.read_file(100 * MiB)
    async with await RawQMP.connect(fake_vm.qga_path) as ga:
        status = await _exec(ga, path, *args, input_data=input_data)
    assert status["exitcode"] == 0
    assert fake_vm.guest.cache == 0


async def test_drop_caches_2_keeps_the_page_cache(fake_vm: FakeVM) -> None:
    cache = fake_vm.guest.cache
    async with await RawQMP.connect(fake_vm.qga_path) as ga:
        status = await _exec(ga, "/bin/sh", "-c", "echo 2 > /proc/sys/vm/drop_caches")
    assert status["exitcode"] == 0
    assert fake_vm.guest.cache == cache


async def test_cat_meminfo(fake_vm: FakeVM) -> None:
    async with await RawQMP.connect(fake_vm.qga_path) as ga:
        status = await _exec(ga, "/bin/cat", "/proc/meminfo")
    text = _out(status)
    assert status["exitcode"] == 0
    fields = dict(line.split(":", 1) for line in text.splitlines())
    assert int(fields["MemFree"].split()[0]) == fake_vm.guest.free // 1024
    assert "Cached" in fields and "MemAvailable" in fields


async def test_true_false_and_unknown_programs(fake_vm: FakeVM) -> None:
    async with await RawQMP.connect(fake_vm.qga_path) as ga:
        assert (await _exec(ga, "/bin/true"))["exitcode"] == 0
        assert (await _exec(ga, "/bin/false"))["exitcode"] == 1
        assert (await _exec(ga, "/bin/sh", "-c", "true"))["exitcode"] == 0
        missing = await _exec(ga, "/bin/sh", "-c", "frobnicate --now")
        assert missing["exitcode"] == 127
        assert "not found" in _out(missing, "err-data")
        assert (await _exec(ga, "/usr/bin/frobnicate"))["exitcode"] == 127


async def test_exec_status_forgets_reported_processes(fake_vm: FakeVM) -> None:
    async with await RawQMP.connect(fake_vm.qga_path) as ga:
        pid = (await ga.execute("guest-exec", {"path": "/bin/true"}))["pid"]
        done = await ga.execute("guest-exec-status", {"pid": pid})
        assert done == {"exited": True, "exitcode": 0}  # nothing captured
        with pytest.raises(RawQMPError) as err:
            await ga.execute("guest-exec-status", {"pid": pid})
    assert (err.value.error_class, err.value.desc) == ("GenericError", "Invalid parameter 'pid'")


async def test_running_process_reports_not_exited(fake_vm: FakeVM) -> None:
    assert fake_vm.qga is not None
    fake_vm.qga.exec_duration = 0.3
    async with await RawQMP.connect(fake_vm.qga_path) as ga:
        pid = (await ga.execute("guest-exec", {"path": "/bin/true"}))["pid"]
        assert await ga.execute("guest-exec-status", {"pid": pid}) == {"exited": False}
        status = await poll_until(lambda: _exited(ga, pid), what="the process to finish")
    assert status["exitcode"] == 0


async def _exited(ga: RawQMP, pid: int) -> dict[str, Any] | None:
    status: dict[str, Any] = await ga.execute("guest-exec-status", {"pid": pid})
    return status if status["exited"] else None


async def test_exec_blocked(fake_vm_factory: Any) -> None:
    vm = await fake_vm_factory(agent_exec=False)
    async with await RawQMP.connect(vm.qga_path) as ga:
        info = await ga.execute("guest-info")
        assert {c["name"]: c["enabled"] for c in info["supported_commands"]}["guest-exec"] is False
        with pytest.raises(RawQMPError) as err:
            await ga.execute("guest-exec", {"path": "/bin/true"})
        assert await ga.execute("guest-ping") == {}
    # What qemu-ga 7.2 answers for a command blocked with --block-rpcs.
    assert (err.value.error_class, err.value.desc) == (
        "CommandNotFound",
        "Command guest-exec has been disabled",
    )


async def test_unknown_agent_command(fake_vm: FakeVM) -> None:
    async with await RawQMP.connect(fake_vm.qga_path) as ga:
        with pytest.raises(RawQMPError) as err:
            await ga.execute("guest-fly")
    assert (err.value.error_class, err.value.desc) == (
        "CommandNotFound",
        "The command guest-fly has not been found",
    )


async def test_no_agent_socket_without_agent(fake_vm_factory: Any) -> None:
    vm = await fake_vm_factory(agent=False)
    assert not vm.qga_path.exists()
    with pytest.raises(FileNotFoundError):
        await RawQMP.connect(vm.qga_path)


async def test_agent_serves_one_client_at_a_time(fake_vm: FakeVM) -> None:
    first = await RawQMP.connect(fake_vm.qga_path)
    second = await RawQMP.connect(fake_vm.qga_path)
    try:
        assert await first.execute("guest-ping") == {}
        second.send({"execute": "guest-sync", "arguments": {"id": 5}, "id": "raw-1"})
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(second.recv(), 0.2)
        await first.close()
        assert (await asyncio.wait_for(second.recv(), 2))["return"] == 5
    finally:
        await first.close()
        await second.close()


@pytest.mark.parametrize(
    ("cmd", "args", "desc"),
    [
        ("guest-sync", {}, "Parameter 'id' is missing"),
        ("guest-sync", {"id": "x"}, "Invalid parameter type for 'id', expected: integer"),
        ("guest-exec", {}, "Parameter 'path' is missing"),
        (
            "guest-exec",
            {"path": "/bin/true", "arg": ["ok", 5]},
            "Invalid parameter type for 'arg[1]', expected: string",
        ),
        ("guest-exec", {"path": "/bin/true", "bogus": 1}, "Parameter 'bogus' is unexpected"),
        ("guest-exec-status", {"pid": True}, "Invalid parameter type for 'pid', expected: integer"),
    ],
)
async def test_agent_argument_errors(
    fake_vm: FakeVM, cmd: str, args: dict[str, Any], desc: str
) -> None:
    async with await RawQMP.connect(fake_vm.qga_path) as ga:
        with pytest.raises(RawQMPError) as err:
            await ga.execute(cmd, args)
    assert (err.value.error_class, err.value.desc) == ("GenericError", desc)


# --- balloonctl's cache-reclaim script, emulated like a Debian 12 (6.1) guest ----------


async def _reclaim(vm: FakeVM, n: int, *, mount: bool = False) -> ReclaimReport:
    async with await RawQMP.connect(vm.qga_path) as ga:
        status = await _exec(ga, "/bin/sh", *reclaim_argv(n, mount_cgroup=mount))
    assert status["exitcode"] == 0
    return parse_reclaim_output(base64.b64decode(status["out-data"]))


async def test_reclaim_script_takes_what_is_asked_from_the_cache(fake_vm: FakeVM) -> None:
    guest = fake_vm.guest
    guest.read_file(500 * MiB)
    cache, free = guest.cache, guest.free
    report = await _reclaim(fake_vm, 200 * MiB)
    # 6.1: memory.reclaim rejects swappiness=0 (EINVAL), so plain N was written.
    assert (report.method, report.why, report.result) == (
        HintMethod.RECLAIM, "no-swappiness-key", "ok")
    assert (guest.cache, guest.free) == (cache - 200 * MiB, free + 200 * MiB)
    assert (report.cache_before, report.cache_after) == (cache, cache - 200 * MiB)
    assert report.free_after - report.free_before == 200 * MiB


async def test_reclaim_script_never_swaps_to_make_up_the_rest(fake_vm: FakeVM) -> None:
    guest = fake_vm.guest
    cache = guest.cache
    report = await _reclaim(fake_vm, 1024 * MiB)  # far more than the cache
    assert report.result == "short" and guest.swap_out == 0
    assert report.released == cache - 16 * MiB  # the file pages less the script's margin


async def test_a_newer_kernel_takes_swappiness_and_answers_eagain(fake_vm: FakeVM) -> None:
    fake_vm.kernel.swappiness_key = True
    cache = fake_vm.guest.cache
    report = await _reclaim(fake_vm, 1024 * MiB)
    assert (report.why, report.result) == ("file-pages", "short")
    assert report.released == cache - MIN_CACHE and fake_vm.guest.swap_out == 0


async def test_reclaim_script_finds_the_method_without_reclaiming(fake_vm: FakeVM) -> None:
    cache = fake_vm.guest.cache
    report = await _reclaim(fake_vm, 0)
    assert report.method is HintMethod.RECLAIM and fake_vm.guest.cache == cache


async def test_reclaim_script_drops_without_memory_reclaim(fake_vm_factory: Any) -> None:
    vm: FakeVM = await fake_vm_factory(qga_memory_reclaim=False)
    vm.guest.read_file(300 * MiB)
    report = await _reclaim(vm, 64 * MiB)
    assert (report.method, report.why) == (HintMethod.DROP, "no-memory-reclaim")
    assert vm.guest.cache == 0 and report.cache_after == 0


async def test_reclaim_script_mounts_cgroup2_only_when_allowed(fake_vm_factory: Any) -> None:
    vm: FakeVM = await fake_vm_factory(qga_cgroup2=False)
    report = await _reclaim(vm, 0)
    assert (report.method, report.why, report.mounted) == (HintMethod.DROP, "no-cgroup2", False)
    assert not vm.kernel.cgroup2_mounted
    report = await _reclaim(vm, 0, mount=True)
    assert (report.method, report.mounted) == (HintMethod.RECLAIM, True)
    report = await _reclaim(vm, 0, mount=True)  # already mounted: nothing to do
    assert (report.method, report.mounted) == (HintMethod.RECLAIM, False)
