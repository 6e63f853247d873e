"""scripts/build-guest: what it packs, that reruns are cheap, and how it fails."""

from __future__ import annotations

import gzip
import importlib.machinery
import importlib.util
import lzma
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

from .conftest import BUILD_SCRIPT
from .qemu import GuestImage

pytestmark = pytest.mark.realvm

MODULES = ("virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_ring", "virtio",
           "virtio_pci", "virtio_balloon", "virtio_console", "virtio_blk")


@pytest.fixture
def build_guest(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """scripts/build-guest imported as a module (it has no .py suffix)."""
    loader = importlib.machinery.SourceFileLoader("build_guest", str(BUILD_SCRIPT))
    spec = importlib.util.spec_from_loader("build_guest", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "build_guest", module)  # dataclasses look it up
    loader.exec_module(module)
    return module


def cpio(image: GuestImage, *args: str) -> str:
    # GNU cpio reads the archive our Python writer produced: a cross-check of the format.
    if shutil.which("cpio") is None:
        pytest.fail("cpio not installed: apt-get install -y cpio")
    return subprocess.run(
        ["cpio", "--quiet", *args], input=gzip.decompress(image.initrd.read_bytes()),
        capture_output=True, check=True,
    ).stdout.decode()


def test_rerun_is_a_no_op_when_up_to_date(guest_image: GuestImage) -> None:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(BUILD_SCRIPT), "--out", str(guest_image.kernel.parent)],
        capture_output=True, text=True, check=True,
    )
    assert time.monotonic() - started < 5
    assert result.stdout.count("up to date") == 3, result.stdout
    assert "built " not in result.stdout


def test_initramfs_holds_busybox_modules_agent_and_init(guest_image: GuestImage) -> None:
    listing = cpio(guest_image, "-itv")
    names = {line.split()[-1] if " -> " not in line else line.split(" -> ")[0].split()[-1]
             for line in listing.splitlines()}
    for needed in ("init", "bin/busybox", "bin/sh", "sbin/insmod", "usr/sbin/qemu-ga",
                   "lib/x86_64-linux-gnu/libgcc_s.so.1", "lib/x86_64-linux-gnu/libglib-2.0.so.0",
                   "lib64/ld-linux-x86-64.so.2", "dev/console"):
        assert needed in names, f"{needed} missing from the initramfs"
    for module in MODULES:
        assert f"lib/modules/{module}.ko" in names
    console = next(line for line in listing.splitlines() if line.endswith(" dev/console"))
    assert console.startswith("c"), console  # a character device, made without root


def test_init_loads_modules_in_dependency_order(guest_image: GuestImage) -> None:
    init = cpio(guest_image, "-i", "--to-stdout", "init")
    match = re.search(r"^for m in (.+); do$", init, re.MULTILINE)
    assert match is not None, init
    order = match.group(1).split()
    assert sorted(order) == sorted(MODULES)
    position = {name: i for i, name in enumerate(order)}
    for dependency, user in (("virtio_ring", "virtio"), ("virtio", "virtio_pci"),
                             ("virtio_pci_modern_dev", "virtio_pci"),
                             ("virtio_pci_legacy_dev", "virtio_pci"),
                             ("virtio", "virtio_balloon"), ("virtio", "virtio_blk")):
        assert position[dependency] < position[user], order


def test_a_missing_tool_names_its_debian_package(
    build_guest: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As if qemu-guest-agent were not installed.
    monkeypatch.setattr(build_guest, "QGA", tmp_path / "qemu-ga")
    assert build_guest.main(["--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("build-guest: error:")
    assert "apt-get install -y qemu-guest-agent" in err


def test_a_missing_kernel_names_its_debian_package(
    build_guest: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(build_guest, "BOOT", tmp_path)  # no vmlinuz-* here
    assert build_guest.main(["--out", str(tmp_path / "out")]) == 1
    assert "apt-get install -y linux-image-cloud-amd64" in capsys.readouterr().err


def test_newest_cloud_kernel_with_modules_wins(
    build_guest: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    boot, modules = tmp_path / "boot", tmp_path / "modules"
    for version, has_modules in (("6.1.0-9-cloud-amd64", True), ("6.1.0-10-cloud-amd64", True),
                                 ("6.1.0-11-cloud-amd64", False), ("6.1.0-12-amd64", True)):
        boot.mkdir(exist_ok=True)
        (boot / f"vmlinuz-{version}").write_bytes(b"kernel")
        if has_modules:
            (modules / version).mkdir(parents=True)
            (modules / version / "modules.dep").write_text("")
    monkeypatch.setattr(build_guest, "BOOT", boot)
    monkeypatch.setattr(build_guest, "MODULES_ROOT", modules)
    version, vmlinuz, moddir = build_guest.find_kernel()
    assert version == "6.1.0-10-cloud-amd64"  # 10 > 9 numerically; 11 has no modules
    assert vmlinuz == boot / "vmlinuz-6.1.0-10-cloud-amd64"
    assert moddir == modules / version


def test_compressed_and_built_in_modules(build_guest: ModuleType, tmp_path: Path) -> None:
    elf = b"\x7fELF fake module"
    drivers = tmp_path / "kernel" / "drivers"
    drivers.mkdir(parents=True)
    (drivers / "virtio_ring.ko.xz").write_bytes(lzma.compress(elf))
    (drivers / "virtio.ko.gz").write_bytes(gzip.compress(elf))
    (drivers / "virtio-blk.ko").write_bytes(elf)
    d = "kernel/drivers"
    (tmp_path / "modules.dep").write_text(
        f"{d}/virtio-blk.ko: {d}/virtio.ko.gz {d}/virtio_ring.ko.xz\n"
        f"{d}/virtio.ko.gz: {d}/virtio_ring.ko.xz\n"
        f"{d}/virtio_ring.ko.xz:\n"
    )
    (tmp_path / "modules.builtin").write_text(f"{d}/virtio_balloon.ko\n")
    order, builtin = build_guest.module_load_order(tmp_path, ["virtio_blk", "virtio_balloon"])
    assert [p.name for p in order] == ["virtio_ring.ko.xz", "virtio.ko.gz", "virtio-blk.ko"]
    assert builtin == ["virtio_balloon"]
    assert all(build_guest.read_module(p) == elf for p in order)
    with pytest.raises(build_guest.BuildError, match="virtio_nope"):
        build_guest.module_load_order(tmp_path, ["virtio_nope"])


def test_zstd_modules_need_the_zstd_tool(build_guest: ModuleType, tmp_path: Path) -> None:
    elf = b"\x7fELF fake module"
    raw = tmp_path / "virtio.ko"
    raw.write_bytes(elf)
    if shutil.which("zstd") is None:
        (tmp_path / "virtio.ko.zst").write_bytes(b"(not really zstd)")
        with pytest.raises(build_guest.BuildError, match="apt-get install -y zstd"):
            build_guest.read_module(tmp_path / "virtio.ko.zst")
        return
    subprocess.run(["zstd", "-q", str(raw)], check=True)
    assert build_guest.read_module(tmp_path / "virtio.ko.zst") == elf
