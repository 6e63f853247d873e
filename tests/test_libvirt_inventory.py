"""Discovery of libvirt domains and Proxmox VMs, the backend factory, and a missing binding.

The daemon itself is exercised in tests/reallibvirt; here the domain lister is a plain
function handed to ``Inventory.load`` (its one seam), and everything else is real.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from balloonctl.backend import client_for
from balloonctl.cli.exitcodes import ExitCode, exit_code_for
from balloonctl.config import Inventory, load_config, scan_proxmox
from balloonctl.errors import ManagedByLibvirt, UsageError
from balloonctl.libvirt import LibvirtClient
from balloonctl.model import VmRef
from balloonctl.qmp import BalloonClient


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"BALLOONCTL_CONFIG": str(tmp_path / "absent.toml"), "BALLOONCTL_WELLKNOWN": ""}


def lister(domains: dict[str, list[str]], asked: list[str]) -> Callable[[str], list[str]]:
    def list_domains(uri: str) -> list[str]:
        asked.append(uri)
        return domains[uri]
    return list_domains


def test_libvirt_uris_list_running_domains_as_libvirt_refs(env: dict[str, str]) -> None:
    asked: list[str] = []
    inv = Inventory.load(
        libvirt=["qemu:///system", "qemu:///session", "qemu:///system"], env=env,
        list_domains=lister({"qemu:///system": ["web1", "db"], "qemu:///session": ["mine"]},
                            asked))
    assert asked == ["qemu:///system", "qemu:///session"]  # each URI once
    assert inv.names == ["web1", "db", "mine"]
    web1 = inv.get("web1")
    assert (web1.backend, web1.uri, web1.source) == ("libvirt", "qemu:///system", "libvirt")
    assert web1.qmp == "qemu:///system#web1"
    assert inv.get("mine").uri == "qemu:///session"


def test_no_uri_asks_no_daemon(env: dict[str, str]) -> None:
    asked: list[str] = []
    Inventory.load(env=env, list_domains=lister({}, asked))
    assert asked == []


@pytest.mark.parametrize(("value", "uris"), [
    ("true", ["qemu:///system"]),
    ("false", []),
    ('"qemu+ssh://host/system"', ["qemu+ssh://host/system"]),
    ('["qemu:///system", "qemu:///session"]', ["qemu:///system", "qemu:///session"]),
])
def test_the_config_key(tmp_path: Path, env: dict[str, str], value: str,
                        uris: list[str]) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'libvirt = {value}\n\n[vm.web1]\nmin = "512M"\n')
    asked: list[str] = []
    inv = Inventory.load(config=cfg, env=env,
                         list_domains=lister({u: ["web1"] for u in uris}, asked))
    assert asked == uris
    if uris:  # the [vm.NAME] limits apply to a libvirt domain of that name too
        assert inv.get("web1").minimum == 512 * 1024 * 1024


@pytest.mark.parametrize("value", ["1", '""', "[1]", '["qemu:///system", ""]', "{}"])
def test_a_bad_config_key(tmp_path: Path, value: str) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"libvirt = {value}\n")
    with pytest.raises(UsageError, match=r"config .*: libvirt: expected true, a URI or a list"):
        load_config(cfg)


def test_proxmox_vms_are_named_from_their_config(tmp_path: Path) -> None:
    run = tmp_path / "run"
    conf = tmp_path / "pve"
    run.mkdir()
    conf.mkdir()
    for vmid in ("100", "101", "102", "103", "104"):
        (run / f"{vmid}.qmp").touch()
    (run / "101.qga").touch()
    (conf / "100.conf").write_text("boot: order=scsi0\nname: web1\nmemory: 2048\n")
    (conf / "101.conf").write_text("memory: 4096\nname: db\n\n[snap1]\nname: old-db\n")
    (conf / "102.conf").write_text("memory: 512\n")  # no name: the vmid
    (conf / "103.conf").write_text("name: twin\n")
    (conf / "104.conf").write_text("name: twin\n")  # not unique: both keep their vmid
    refs = scan_proxmox([run], [conf])
    assert [(r.name, Path(r.qmp).name) for r in refs] == [
        ("web1", "100.qmp"), ("db", "101.qmp"), ("102", "102.qmp"), ("103", "103.qmp"),
        ("104", "104.qmp")]
    assert refs[1].qga == str(run / "101.qga") and refs[1].source == "proxmox"


def test_proxmox_without_a_readable_config_keeps_the_vmid(tmp_path: Path) -> None:
    (tmp_path / "105.qmp").touch()
    assert [r.name for r in scan_proxmox([tmp_path], [tmp_path / "absent"])] == ["105"]


def test_client_for_picks_the_backend() -> None:
    qmp = client_for(VmRef("a", "/run/vms/a.qmp"))
    assert isinstance(qmp, BalloonClient)
    lv = client_for(VmRef("web1", "qemu:///session#web1", backend="libvirt",
                          uri="qemu:///session", minimum=300 << 20))
    assert isinstance(lv, LibvirtClient)
    assert (lv.uri, lv.domain, lv.address, lv.minimum) == (
        "qemu:///session", "web1", "qemu:///session#web1", 300 << 20)


def test_a_socket_libvirt_holds_points_at_libvirt() -> None:
    ref = VmRef("web1", "/var/lib/libvirt/qemu/domain-3-web1/monitor.sock")
    with pytest.raises(ManagedByLibvirt) as err:
        client_for(ref)
    assert str(err.value).startswith("web1: /var/lib/libvirt/qemu/domain-3-web1/monitor.sock "
                                     "is libvirt's monitor socket for domain 'web1'")
    assert "balloonctl --libvirt qemu:///system" in str(err.value)
    assert exit_code_for(err.value) is ExitCode.UNREACHABLE


def test_status_of_a_libvirt_socket_says_so_at_once(tmp_path: Path) -> None:
    """Pointed at libvirt's socket, status answers without waiting for a greeting."""
    sock = "/var/lib/libvirt/qemu/domain-9-nosuch/monitor.sock"
    env = {**os.environ, "BALLOONCTL_WELLKNOWN": "",
           "BALLOONCTL_CONFIG": str(tmp_path / "absent.toml"),
           "XDG_STATE_HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "balloonctl", "--qmp", sock, "status"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == ExitCode.UNREACHABLE
    assert "libvirt's monitor socket for domain 'nosuch'" in done.stderr
    assert "--libvirt qemu:///system" in done.stderr


def test_without_the_binding_a_polite_line(tmp_path: Path) -> None:
    """libvirt-python not importable: one line naming the extra, exit 2, no traceback."""
    probe = ("import sys; sys.modules['libvirt'] = None; sys.modules['libvirt_qemu'] = None\n"
             "from balloonctl.__main__ import main\n"
             "sys.argv = ['balloonctl', '--libvirt', 'qemu:///system', 'status']\nmain()\n")
    env = {**os.environ, "BALLOONCTL_WELLKNOWN": "",
           "BALLOONCTL_CONFIG": str(tmp_path / "absent.toml")}
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == ExitCode.USAGE
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("balloonctl: error: the libvirt backend "
                                                   "needs the libvirt-python binding")
    assert "pip install 'balloonctl[libvirt]'" in lines[0]


def test_the_package_imports_neither_the_binding_nor_qemu() -> None:
    """Listing domains (shell completion) stays light; the binding loads on first use."""
    probe = ("import sys, balloonctl.libvirt as lv, balloonctl.config\n"
             "print(sorted(m for m in ('libvirt', 'libvirt_qemu', 'qemu') if m in sys.modules))\n"
             "lv.LibvirtClient\n"
             "print('qemu' in sys.modules, 'libvirt' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.splitlines() == ["[]", "True False"]


def test_a_domain_name_on_two_uris_hides_neither(env: dict[str, str]) -> None:
    """Two URIs each running a domain called web1: both are listed, the second qualified by
    its URI's host and path, and each client reaches its own URI's domain."""
    inv = Inventory.load(
        libvirt=["qemu:///system", "qemu+ssh://root@hv2/system", "qemu:///session"], env=env,
        list_domains=lister({"qemu:///system": ["web1"],
                             "qemu+ssh://root@hv2/system": ["web1", "db"],
                             "qemu:///session": ["web1"]}, []))
    assert inv.names == ["web1", "web1@hv2-system", "db", "web1@session"]
    for name, uri in [("web1", "qemu:///system"), ("web1@hv2-system", "qemu+ssh://root@hv2/system"),
                      ("web1@session", "qemu:///session")]:
        client = LibvirtClient.from_ref(inv.get(name))
        assert (client.name, client.domain, client.uri) == (name, "web1", uri)
    assert LibvirtClient.from_ref(inv.get("db")).domain == "db"
