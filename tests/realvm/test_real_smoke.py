"""The real guest works at all, checked with raw QMP (no balloonctl code involved).

If these fail, every other real-VM failure is about the harness, not about balloonctl.
"""

from __future__ import annotations

import pytest

from .qemu import BALLOON_QOM_PATH, MiB, QemuVM, QMPReplyError, poll_until

pytestmark = pytest.mark.realvm

STAT_NOT_REPORTED = 2**64 - 1


def test_guest_boots_and_its_balloon_driver_reports_stats(real_vm: QemuVM) -> None:
    with real_vm.qmp() as qmp:
        assert qmp.greeting["QMP"]["version"]["qemu"]["major"] >= 7
        assert qmp.command("query-balloon") == {"actual": real_vm.ram}
        summary = qmp.command("query-memory-size-summary")
        stats = qmp.command("qom-get", {"path": BALLOON_QOM_PATH, "property": "guest-stats"})
    assert summary["base-memory"] == real_vm.ram
    assert stats["last-update"] != 0
    values = stats["stats"]
    assert STAT_NOT_REPORTED not in (values["stat-total-memory"], values["stat-free-memory"])
    # The kernel keeps a few tens of MiB for itself: MemTotal is a bit under the RAM size.
    assert real_vm.ram - 128 * MiB < values["stat-total-memory"] <= real_vm.ram
    assert "guest-init: ready" in real_vm.serial_path.read_text()


def test_guest_agent_runs_commands_and_the_data_disk_is_mounted(real_vm: QemuVM) -> None:
    result = real_vm.guest_exec("sh", "-c", "grep ' /data ' /proc/mounts; ls -l /data/big.bin")
    assert "/dev/vda /data ext4 ro" in result.stdout
    assert " 209715200 " in result.stdout  # 200 MiB


def test_balloon_command_moves_actual_in_the_guest(real_vm: QemuVM) -> None:
    target = 640 * MiB
    with real_vm.qmp() as qmp:
        assert qmp.command("balloon", {"value": target}) == {}

        def converged() -> int | None:
            actual: int = qmp.command("query-balloon")["actual"]
            return actual if abs(actual - target) <= 2 * MiB else None

        actual = poll_until(converged, timeout=60, what="actual to reach 640 MiB")
    assert actual < real_vm.ram
    meminfo = real_vm.guest_exec("cat", "/proc/meminfo").stdout
    mem_total_kib = int(meminfo.split("MemTotal:")[1].split()[0])
    # The driver takes the pages out of MemTotal (no deflate-on-oom on this device).
    assert mem_total_kib * 1024 < target


def test_target_above_ram_is_silently_clamped_by_qemu(real_vm: QemuVM) -> None:
    # Why balloonctl validates targets itself: QEMU accepts this and does nothing.
    with real_vm.qmp() as qmp:
        assert qmp.command("balloon", {"value": real_vm.ram + 1024 * MiB}) == {}
        assert qmp.command("query-balloon") == {"actual": real_vm.ram}


def test_qemu_without_a_balloon_device_says_device_not_active(
    real_vm_no_balloon: QemuVM,
) -> None:
    with real_vm_no_balloon.qmp() as qmp, pytest.raises(QMPReplyError) as err:
        qmp.command("query-balloon")
    assert err.value.error_class == "DeviceNotActive"
