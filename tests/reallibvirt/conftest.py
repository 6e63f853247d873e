"""Session fixtures for the real-libvirt tests: a real libvirtd and a TCG domain booting the
test guest (scripts/build-guest) under it.

The domain is transient (``virDomainCreateXML``), named after this process, and destroyed at
the end; every test leaves it as it found it (balloon at full RAM, stats period 2 s). The
fixtures are synchronous and talk to libvirt-python directly, independently of balloonctl,
so the tests can check balloonctl against what libvirt itself says.

Without libvirtd (started by scripts/start-libvirtd when run as root), libvirt-python,
QEMU or a guest kernel the tests skip with the reason printed, unless
BALLOONCTL_REQUIRE_REALVM=1 (CI), which turns a missing prerequisite into a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from realvm.qemu import GUEST_CMDLINE, QGA_PORT_NAME, GuestImage, poll_until

REPO_ROOT = Path(__file__).resolve().parents[2]
URI = "qemu:///system"
MiB = 1024 * 1024
RAM_MIB = 1024
BOOT_TIMEOUT = float(os.environ.get("BALLOONCTL_BOOT_TIMEOUT", "90"))


def _require() -> bool:
    return os.environ.get("BALLOONCTL_REQUIRE_REALVM", "").strip() not in ("", "0")


def _skip_or_fail(reason: str) -> None:
    if _require():
        pytest.fail(f"real-libvirt prerequisite missing and BALLOONCTL_REQUIRE_REALVM is set: "
                    f"{reason}")
    print(f"\nskipping real-libvirt tests: {reason}", file=sys.stderr)
    pytest.skip(reason)


def _daemon_answers() -> bool:
    virsh = shutil.which("virsh")
    if virsh is None:
        return False
    done = subprocess.run([virsh, "-q", "-c", URI, "list"], capture_output=True, timeout=30)
    return done.returncode == 0


def _missing_prerequisite() -> str | None:
    try:
        import libvirt  # noqa: F401
    except ImportError:
        return "libvirt-python not installed (pip install -e '.[libvirt]')"
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 not installed (apt-get install -y qemu-system-x86)"
    if not any(Path("/boot").glob("vmlinuz-*")):
        return "no guest kernel in /boot (apt-get install -y linux-image-cloud-amd64)"
    if shutil.which("virsh") is None or not Path("/usr/sbin/libvirtd").exists():
        return ("libvirt not installed (apt-get install -y libvirt-daemon "
                "libvirt-daemon-driver-qemu libvirt-clients)")
    if not _daemon_answers() and os.geteuid() == 0:
        subprocess.run([str(REPO_ROOT / "scripts" / "start-libvirtd")], capture_output=True,
                       timeout=60)
    if not _daemon_answers():
        return f"libvirtd does not answer at {URI} (run scripts/start-libvirtd as root)"
    return None


@pytest.fixture(scope="session")
def libvirt_ready() -> None:
    reason = _missing_prerequisite()
    if reason is not None:
        _skip_or_fail(reason)


@pytest.fixture(scope="session")
def lv_guest_image(libvirt_ready: None) -> GuestImage:
    out = Path(os.environ.get("BALLOONCTL_GUEST_DIR", REPO_ROOT / ".guest"))
    done = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "build-guest"),
                           "--out", str(out)], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        pytest.fail(f"scripts/build-guest failed: {done.stderr.strip() or done.stdout}")
    return GuestImage.from_dir(out)


def domain_xml(name: str, image: GuestImage, workdir: Path) -> str:
    # TCG: KVM does not work on every host this runs on (see tests/realvm/qemu.py).
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>{RAM_MIB}</memory>
  <currentMemory unit='MiB'>{RAM_MIB}</currentMemory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{image.kernel}</kernel><initrd>{image.initrd}</initrd>
    <cmdline>{GUEST_CMDLINE}</cmdline></os>
  <cpu mode='custom' match='exact'><model fallback='allow'>qemu64</model></cpu>
  <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>
  <devices>
    <emulator>{shutil.which("qemu-system-x86_64")}</emulator>
    <disk type='file' device='disk'><driver name='qemu' type='raw'/>
      <source file='{image.data}'/><target dev='vda' bus='virtio'/><readonly/></disk>
    <serial type='file'><source path='{workdir}/serial.log'/></serial>
    <channel type='unix'><target type='virtio' name='{QGA_PORT_NAME}'/></channel>
    <memballoon model='virtio'><stats period='2'/></memballoon>
  </devices>
</domain>"""


class Domain:
    """A transient test domain and raw libvirt calls on it (no balloonctl involved)."""

    def __init__(self, name: str, image: GuestImage) -> None:
        import libvirt

        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # raised, not printed
        self.libvirt = libvirt
        self.name = name
        self.workdir = Path(tempfile.mkdtemp(prefix=f"balloonctl-{name}-"))
        self.conn = libvirt.open(URI)
        self.dom = self.conn.createXML(domain_xml(name, image, self.workdir), 0)
        self.ram = RAM_MIB * MiB

    def stats(self) -> dict[str, int]:
        return dict(self.dom.memoryStats())

    def actual(self) -> int:
        return int(self.stats()["actual"]) * 1024

    def qga(self, cmd: str, args: dict[str, Any] | None = None, timeout: int = 10) -> Any:
        import libvirt_qemu

        msg: dict[str, Any] = {"execute": cmd, **({"arguments": args} if args else {})}
        return json.loads(libvirt_qemu.qemuAgentCommand(self.dom, json.dumps(msg), timeout,
                                                        0))["return"]

    def guest_exec(self, argv: list[str], timeout: float = 60) -> int:
        pid = self.qga("guest-exec", {"path": argv[0], "arg": argv[1:],
                                      "capture-output": True})["pid"]

        def exited() -> dict[str, Any] | None:
            status: dict[str, Any] = self.qga("guest-exec-status", {"pid": pid})
            return status if status.get("exited") else None

        return int(poll_until(exited, timeout=timeout, interval=0.1,
                              what=f"guest {argv}").get("exitcode", -1))

    def wait_ready(self) -> float:
        started = time.monotonic()

        def ready() -> bool:
            if not self.stats().get("last_update"):
                return False
            try:
                return self.qga("guest-ping", timeout=2) == {}
            except self.libvirt.libvirtError:
                return False

        poll_until(ready, timeout=BOOT_TIMEOUT, interval=0.3,
                   what=f"domain {self.name}'s balloon driver and guest agent")
        return time.monotonic() - started

    def set_actual(self, size: int) -> None:
        self.dom.setMemoryFlags(size // 1024, self.libvirt.VIR_DOMAIN_AFFECT_LIVE)
        poll_until(lambda: abs(self.actual() - size) <= 2 * MiB, timeout=60,
                   what=f"{self.name} back at {size // MiB} MiB")

    def live_current_memory(self) -> int:
        import xml.etree.ElementTree as ET

        elem = ET.fromstring(self.dom.XMLDesc(0)).find("currentMemory")
        assert elem is not None and elem.get("unit") == "KiB"
        return int(elem.text or "0") * 1024

    def destroy(self) -> None:
        try:
            self.dom.destroy()
        except self.libvirt.libvirtError:
            pass  # already gone
        self.conn.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_domain(image: GuestImage, suffix: str) -> Domain:
    dom = Domain(f"balloonctl-{suffix}-{os.getpid()}", image)
    try:
        boot = dom.wait_ready()
    except BaseException:
        dom.destroy()
        raise
    print(f"\n{dom.name}: TCG guest under libvirtd ready in {boot:.1f} s", file=sys.stderr)
    return dom


@pytest.fixture(scope="session")
def lv_domain(lv_guest_image: GuestImage) -> Iterator[Domain]:
    dom = start_domain(lv_guest_image, "lv")
    try:
        yield dom
    finally:
        dom.destroy()


@pytest.fixture(autouse=True)
def _restore_domain(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test that used the shared domain: full RAM, stats period 2 s."""
    yield
    if "lv_domain" not in request.fixturenames:
        return
    dom: Domain = request.getfixturevalue("lv_domain")
    if not dom.dom.isActive():
        pytest.fail("the shared libvirt domain stopped during the test")
    dom.dom.setMemoryStatsPeriod(2, dom.libvirt.VIR_DOMAIN_AFFECT_LIVE)
    if dom.actual() != dom.ram:
        dom.set_actual(dom.ram)
