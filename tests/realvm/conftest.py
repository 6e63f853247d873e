"""Session fixtures for the real-VM tests: the guest image and the shared VMs.

The fixtures are synchronous (subprocess + paths) because pytest-asyncio gives every test
its own event loop: tests create their own balloonctl clients. One guest boots per session
and every test leaves it as it found it (balloon back at full RAM, stats polling off).

Without qemu-system-x86_64 or a guest kernel the tests skip, unless
BALLOONCTL_REQUIRE_REALVM=1 (CI), which turns a missing prerequisite into a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .qemu import BALLOON_QOM_PATH, GuestImage, QemuVM, poll_until

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build-guest"
# MemTotal is RAM minus what the kernel reserves for itself (about 52 MiB of 1 GiB here).
FULL_RAM_SLACK = 128 * 1024 * 1024


def _require() -> bool:
    return os.environ.get("BALLOONCTL_REQUIRE_REALVM", "").strip() not in ("", "0")


def _missing_prerequisite() -> str | None:
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 not installed (apt-get install -y qemu-system-x86)"
    if not any(Path("/boot").glob("vmlinuz-*")):
        return "no guest kernel in /boot (apt-get install -y linux-image-cloud-amd64)"
    return None


def _check_prerequisites() -> None:
    """Skip (fail, with BALLOONCTL_REQUIRE_REALVM=1) when QEMU or a kernel is missing."""
    reason = _missing_prerequisite()
    if reason is None:
        return
    if _require():
        pytest.fail(f"real-VM prerequisite missing and BALLOONCTL_REQUIRE_REALVM is set: {reason}")
    print(f"\nskipping real-VM tests: {reason}", file=sys.stderr)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def qemu_installed() -> None:
    """For tests that start their own QEMU: skip (or fail under CI) without it."""
    _check_prerequisites()


@pytest.fixture(scope="session")
def guest_image(qemu_installed: None) -> GuestImage:
    """The guest built by scripts/build-guest (once per session; fast when up to date)."""
    out = Path(os.environ.get("BALLOONCTL_GUEST_DIR", REPO_ROOT / ".guest"))
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(BUILD_SCRIPT), "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    if result.returncode != 0:
        pytest.fail(f"scripts/build-guest failed: {result.stderr.strip() or result.stdout}")
    print(f"\nbuild-guest: {time.monotonic() - started:.1f} s", file=sys.stderr)
    return GuestImage.from_dir(out)


def _restore(vm: QemuVM) -> None:
    """Put the shared VM back as the tests found it: balloon at full RAM, stats polling
    off, and the last guest-stats sample showing full RAM (with polling off, QEMU keeps
    serving the last sample, which may date from an inflated balloon)."""
    stats_path = {"path": BALLOON_QOM_PATH, "property": "guest-stats"}
    polling = {"path": BALLOON_QOM_PATH, "property": "guest-stats-polling-interval"}
    with vm.qmp() as qmp:
        actual = qmp.command("query-balloon")["actual"]
        interval = qmp.command("qom-get", polling)
        total = qmp.command("qom-get", stats_path)["stats"]["stat-total-memory"]
        if actual == vm.ram and interval == 0 and total > vm.ram - FULL_RAM_SLACK:
            return
        qmp.command("balloon", {"value": vm.ram})
        qmp.command("qom-set", {**polling, "value": 1})
        since = int(time.time())

        def back_to_full() -> bool:
            stats = qmp.command("qom-get", stats_path)
            return bool(
                qmp.command("query-balloon")["actual"] == vm.ram
                and stats["last-update"] > since
                and stats["stats"]["stat-total-memory"] > vm.ram - FULL_RAM_SLACK
            )

        poll_until(back_to_full, timeout=30, what="the shared VM to return to full RAM")
        qmp.command("qom-set", {**polling, "value": 0})


@pytest.fixture(scope="session")
def real_vm(guest_image: GuestImage) -> Iterator[QemuVM]:
    """One real guest (1 GiB, balloon0, guest agent, /data disk) shared by the session.

    Tests must leave it as they found it; ``_restore_shared_vm`` enforces that after each.
    """
    vm = QemuVM(guest_image, name="realvm")
    try:
        vm.start()
        boot = vm.wait_ready()
        print(f"\nreal_vm: {vm.accel} guest ready in {boot:.1f} s", file=sys.stderr)
        yield vm
    finally:
        vm.stop()


@pytest.fixture(autouse=True)
def _restore_shared_vm(request: pytest.FixtureRequest) -> Iterator[None]:
    """After every test that used ``real_vm``: balloon back at full RAM, polling off.

    A test that fails half-way must not poison the next one.
    """
    yield
    if "real_vm" not in request.fixturenames:
        return
    vm: QemuVM = request.getfixturevalue("real_vm")
    if vm.proc is None or vm.proc.poll() is not None:
        raise vm.failure("the shared VM died during the test")
    _restore(vm)


@pytest.fixture(scope="session")
def real_vm_no_balloon(qemu_installed: None) -> Iterator[QemuVM]:
    """QEMU without a balloon device, paused (-S) with no guest: QMP is all it offers."""
    vm = QemuVM(None, name="noballoon", balloon=False, paused=True, memory=256)
    try:
        vm.start()
        yield vm
    finally:
        vm.stop()
