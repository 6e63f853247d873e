"""The VM inventory: every source, how they merge, selection by name and glob."""

from __future__ import annotations

from pathlib import Path

import pytest

from balloonctl import config
from balloonctl.config import Inventory, busy_advice, is_libvirt_socket, load_config, scan_dir
from balloonctl.errors import UnknownVM, UsageError
from balloonctl.model import VmRef
from balloonctl.units import GiB, MiB


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"BALLOONCTL_CONFIG": str(tmp_path / "absent.toml"), "BALLOONCTL_WELLKNOWN": ""}


def touch(d: Path, *names: str) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for n in names:
        (d / n).touch()
    return d


def test_directory_of_sockets(tmp_path: Path) -> None:
    d = touch(tmp_path / "run", "web-1.qmp", "web-1.qga", "web-2.sock", "db.qmp", "x.txt",
              ".qmp")
    refs = scan_dir(d)
    assert [r.name for r in refs] == ["db", "web-1", "web-2"]
    web1 = refs[1]
    assert web1.qmp == str(d / "web-1.qmp") and web1.qga == str(d / "web-1.qga")
    assert refs[0].qga is None and refs[0].source == "dir"
    assert scan_dir(tmp_path / "missing") == []


def test_dir_from_option_env_or_config(tmp_path: Path, env: dict[str, str]) -> None:
    a = touch(tmp_path / "a", "one.qmp")
    b = touch(tmp_path / "b", "two.qmp")
    assert Inventory.load(directory=str(a), env=env).names == ["one"]
    assert Inventory.load(env={**env, "BALLOONCTL_DIR": str(b)}).names == ["two"]
    # the option beats the environment
    assert Inventory.load(directory=str(a), env={**env, "BALLOONCTL_DIR": str(b)}).names == [
        "one"]
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[defaults]\ndir = "{b}"\n')
    assert Inventory.load(config=cfg, env=env).names == ["two"]


def test_qmp_options(tmp_path: Path, env: dict[str, str]) -> None:
    inv = Inventory.load(qmp=["/run/a/web.qmp", "db=/run/b/monitor.sock", "10.0.0.5:4444"],
                         env=env)
    assert inv.names == ["web", "db", "10.0.0.5:4444"]
    assert inv.get("db").qmp == "/run/b/monitor.sock" and inv.get("db").source == "cli"
    one = Inventory.load(qmp=["/run/a/web.qmp"], qga="/run/a/web.agent", env=env)
    assert one.get("web").qga == "/run/a/web.agent"
    with pytest.raises(UsageError, match="--qga needs exactly one --qmp"):
        Inventory.load(qmp=["/a.qmp", "/b.qmp"], qga="/a.qga", env=env)


def test_libvirt_monitor_is_named_after_the_domain(env: dict[str, str]) -> None:
    inv = Inventory.load(qmp=["/var/lib/libvirt/qemu/domain-3-web1/monitor.sock"], env=env)
    assert inv.names == ["web1"]
    ref = inv.get("web1")
    assert is_libvirt_socket(ref.qmp)
    advice = busy_advice(ref)
    assert advice is not None and "virsh qemu-monitor-command web1" in advice
    assert not is_libvirt_socket("/run/vms/web1.qmp")
    assert not is_libvirt_socket("/run/libvirtish/x.qmp")
    assert is_libvirt_socket("/run/libvirt/qemu/x.monitor")
    assert busy_advice(VmRef("a", "/run/vms/a.qmp")) is None


def test_proxmox_sockets(tmp_path: Path, env: dict[str, str]) -> None:
    root = touch(tmp_path / "qemu-server", "101.qmp", "101.qga", "102.qmp", "101.pid",
                 "102.vnc")
    refs = config.scan_proxmox([root])
    assert [(r.name, r.source) for r in refs] == [("101", "proxmox"), ("102", "proxmox")]
    assert refs[0].qga == str(root / "101.qga")
    inv = Inventory.load(env={**env, "BALLOONCTL_WELLKNOWN": str(root)})
    assert inv.names == ["101", "102"]
    assert config.wellknown_roots({}) == list(config.PROXMOX_ROOTS)
    assert config.wellknown_roots({"BALLOONCTL_WELLKNOWN": ""}) == []


def test_config_file(tmp_path: Path, env: dict[str, str]) -> None:
    d = touch(tmp_path / "run", "web-1.qmp", "web-2.qmp")
    cfg = tmp_path / "config.toml"
    cfg.write_text(f"""
[defaults]
min = "512M"
shares = 500
timeout = "5s"

[vm.db]
qmp = "{tmp_path}/db.qmp"
qga = "{tmp_path}/db.qga"
min = "1G"
max = 3221225472
shares = 2000
hint = true

[vm.web-1]
max = "1.5G"
""")
    inv = Inventory.load(directory=str(d), config=cfg, env=env)
    assert inv.names == ["db", "web-1", "web-2"]
    db = inv.get("db")
    assert (db.minimum, db.maximum, db.shares, db.hint, db.source) == (
        1 * GiB, 3 * GiB, 2000, True, "config")
    assert db.qga == f"{tmp_path}/db.qga"
    web1 = inv.get("web-1")  # found in the dir, limits from its table, defaults for the rest
    assert (web1.minimum, web1.maximum, web1.shares, web1.source) == (
        512 * MiB, 1536 * MiB, 500, "dir")
    web2 = inv.get("web-2")
    assert (web2.minimum, web2.maximum, web2.shares) == (512 * MiB, None, 500)
    assert inv.config.defaults.timeout == 5.0


def test_config_path_follows_xdg(tmp_path: Path) -> None:
    assert config.config_path({"BALLOONCTL_CONFIG": "/etc/b.toml"}) == Path("/etc/b.toml")
    assert config.config_path({"XDG_CONFIG_HOME": "/x"}) == Path(
        "/x/balloonctl/config.toml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[vm.a\n", "config"),
        ('[vm.a]\nmin = "lots"\n', "vm.a.min"),
        ("[vm.a]\nmin = 0\n", "vm.a.min"),
        ('[vm.a]\nmin = "2G"\nmax = "1G"\n', "min is above max"),
        ("[vm.a]\nshares = -1\n", "vm.a.shares"),
        ('[vm.a]\nhint = "yes"\n', "vm.a.hint"),
        ("[vm.a]\ncolour = 1\n", "unknown setting"),
        ('[defaults]\nqmp = "/x"\n', "defaults cannot set qmp"),
        ("[vms.a]\n", "unknown table"),
        ('[defaults]\ntimeout = "soon"\n', "defaults.timeout"),
    ],
)
def test_bad_config_names_the_setting(tmp_path: Path, text: str, message: str) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(text)
    with pytest.raises(UsageError, match=message):
        load_config(cfg)


def test_missing_default_config_is_empty(tmp_path: Path) -> None:
    assert load_config(env={"XDG_CONFIG_HOME": str(tmp_path)}).vms == ()
    assert load_config(env={"BALLOONCTL_CONFIG": str(tmp_path / "nope.toml")}).path is None


def test_a_config_the_user_named_must_exist(tmp_path: Path, env: dict[str, str]) -> None:
    with pytest.raises(UsageError, match=r"config .*nope\.toml: no such file"):
        Inventory.load(config=tmp_path / "nope.toml", env=env)
    with pytest.raises(UsageError, match="is a directory"):
        Inventory.load(config=tmp_path, env=env)


def test_a_dir_the_user_named_must_exist(tmp_path: Path, env: dict[str, str]) -> None:
    file = tmp_path / "f.qmp"
    file.touch()
    with pytest.raises(UsageError, match=r"--dir .*missing: no such directory"):
        Inventory.load(directory=str(tmp_path / "missing"), env=env)
    with pytest.raises(UsageError, match=r"--dir .*f\.qmp: not a directory"):
        Inventory.load(directory=str(file), env=env)
    with pytest.raises(UsageError, match=r"BALLOONCTL_DIR .*missing: no such directory"):
        Inventory.load(env={**env, "BALLOONCTL_DIR": str(tmp_path / "missing")})
    # an unset BALLOONCTL_DIR and absent Proxmox roots stay silent
    assert Inventory.load(env=env, roots=[tmp_path / "no-proxmox"]).names == []


def test_config_value_errors_name_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text('[vm.vm1]\nmax = "lots"\n')
    with pytest.raises(UsageError) as info:
        load_config(cfg)
    assert str(info.value).startswith(f"config {cfg}: vm.vm1.max: invalid size 'lots'")


def test_a_symlink_to_a_libvirt_monitor_is_libvirt(tmp_path: Path) -> None:
    link = tmp_path / "web1.sock"
    link.symlink_to("/var/lib/libvirt/qemu/domain-3-web1/monitor.sock")
    assert is_libvirt_socket(str(link))
    assert not is_libvirt_socket(str(tmp_path / "plain.sock"))


def test_select_by_name_glob_and_all() -> None:
    inv = Inventory([VmRef(n, f"/run/{n}.qmp") for n in ("web-1", "web-2", "db-1", "db-2")])
    assert [r.name for r in inv.select(["db-1", "web-*"])] == ["db-1", "web-1", "web-2"]
    assert [r.name for r in inv.select(["web-*", "web-1"])] == ["web-1", "web-2"]
    assert len(inv.select([])) == 4 and len(inv.select(["db-1"], all_vms=True)) == 4
    assert [r.name for r in inv.select(["*-2"])] == ["web-2", "db-2"]


def test_unknown_vm_suggests_close_matches() -> None:
    inv = Inventory([VmRef(n, f"/run/{n}.qmp") for n in ("web-1", "web-2", "db-1")])
    with pytest.raises(UnknownVM, match=r"unknown VM 'web3'; did you mean web-\d or web-\d\?"):
        inv.select(["web3"])
    with pytest.raises(UnknownVM, match="'mail-\\*'"):
        inv.select(["mail-*"])
    with pytest.raises(UnknownVM, match="known: web-1, web-2, db-1"):
        inv.get("zzz")


def test_empty_inventory_says_how_to_add_vms(tmp_path: Path) -> None:
    with pytest.raises(UnknownVM, match="--qmp PATH or --dir DIR"):
        Inventory().select([])


# ---- numbers out of range, each named with its file --------------------------------------


@pytest.mark.parametrize(
    ("text", "setting"),
    [
        ("[defaults]\ntimeout = -1\n", "defaults.timeout"),
        ("[defaults]\ntimeout = 0\n", "defaults.timeout"),
        ("[defaults]\ntimeout = 0.0\n", "defaults.timeout"),
        ("[defaults]\ntimeout = nan\n", "defaults.timeout"),
        ("[defaults]\ntimeout = inf\n", "defaults.timeout"),
        ("[defaults]\ntimeout = -inf\n", "defaults.timeout"),
        ("[defaults]\ntimeout = 86401\n", "defaults.timeout"),
        ('[defaults]\ntimeout = "25h"\n', "defaults.timeout"),
        ("[defaults]\ntimeout = 99999999999999999999999999\n", "defaults.timeout"),
        ("[vm.a]\nmin = 9223372036854775808\n", "vm.a.min"),
        ("[vm.a]\nmax = 9223372036854775808\n", "vm.a.max"),
        ("[defaults]\nmax = 99999999999999999999999999999\n", "defaults.max"),
        ('[defaults]\nmin = "1G"\n[vm.a]\nmax = "512M"\n',
         "defaults.min (1 GiB) is above vm.a.max"),
        ('[defaults]\nmax = "1G"\n[vm.a]\nmin = "2G"\n', "vm.a.min (2 GiB) is above defaults.max"),
    ],
)
def test_numbers_out_of_range_name_the_setting_and_file(
    tmp_path: Path, text: str, setting: str
) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(text)
    with pytest.raises(UsageError) as info:
        load_config(cfg)
    assert str(info.value).startswith(f"config {cfg}: {setting}")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "timeout"),
    [("[defaults]\ntimeout = 86400\n", 86400.0), ('[defaults]\ntimeout = "24h"\n', 86400.0),
     ("[defaults]\ntimeout = 0.001\n", 0.001), ('[defaults]\ntimeout = "1ms"\n', 0.001)],
)
def test_timeouts_at_the_edges_are_taken(tmp_path: Path, text: str, timeout: float) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(text)
    assert load_config(cfg).defaults.timeout == timeout


def test_the_largest_size_is_taken_and_min_may_equal_a_defaults_max(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text('[defaults]\nmax = 9223372036854775807\n[vm.a]\nmin = "1G"\n'
                   '[vm.b]\nmin = 9223372036854775807\n')
    loaded = load_config(cfg)
    assert loaded.defaults.maximum == 2**63 - 1
    assert loaded.overlays["b"]["minimum"] == 2**63 - 1


# ---- names from socket files are escaped in messages -------------------------------------

HOSTILE = ["evil\x1b[2J\x1b[31m", "two\nlines", "gnp.exe\u202e", "iso\u2066late\u2069"]


def test_unknown_vm_and_busy_advice_escape_socket_names(tmp_path: Path) -> None:
    inv = Inventory([VmRef(n, f"/run/{n}.qmp") for n in HOSTILE])
    with pytest.raises(UnknownVM) as info:
        inv.get("zzz")
    message = str(info.value)
    assert message.isprintable()
    assert "evil\\x1b[2J\\x1b[31m" in message and "two\\nlines" in message
    assert "gnp.exe\\u202e" in message and "iso\\u2066late\\u2069" in message
    with pytest.raises(UsageError) as info2:
        inv.select_one("*", command="wave")
    assert str(info2.value).isprintable() and "two\\nlines" in str(info2.value)
    ref = VmRef("web\x1b]0;pwned\x07", "/var/lib/libvirt/qemu/domain-3-web/monitor.sock")
    advice = busy_advice(ref)
    assert advice is not None and advice.isprintable() and "web\\x1b]0;pwned\\x07" in advice


def test_socket_files_with_control_characters_in_their_names(tmp_path: Path) -> None:
    d = touch(tmp_path / "socks", *(f"{n}.qmp" for n in HOSTILE))
    names = [r.name for r in scan_dir(d)]
    assert sorted(names) == sorted(HOSTILE)  # the names are kept as they are...
    with pytest.raises(UnknownVM) as info:
        Inventory(scan_dir(d)).get("nope")
    assert str(info.value).isprintable()  # ...and escaped where they are printed


def test_a_rescan_finds_sockets_that_appeared_with_the_configs_settings(
    tmp_path: Path, env: dict[str, str]
) -> None:
    d = touch(tmp_path / "run", "web-1.qmp")
    cfg = tmp_path / "c.toml"
    cfg.write_text('[defaults]\nmin = "512M"\n[vm.web-2]\nmax = "3G"\n')
    inv = Inventory.load(directory=str(d), config=cfg, env=env)
    assert [r.name for r in inv.rescan()] == ["web-1"]
    touch(d, "web-2.qmp", "web-2.qga", "db.sock")
    found = {r.name: r for r in inv.rescan()}
    assert sorted(found) == ["db", "web-1", "web-2"]
    assert found["web-2"].qga == str(d / "web-2.qga")
    assert found["web-2"].minimum == 512 * 2**20 and found["web-2"].maximum == 3 * 2**30
    assert [r.name for r in inv.rescan(["web-*"])] == ["web-1", "web-2"]
    assert inv.rescan(["nothing"]) == []
    # Without a directory there is nothing to rescan: its own VMs only.
    assert [r.name for r in Inventory.load(qmp=["/run/x.qmp"], env=env).rescan()] == ["x"]


def test_hint_mount_cgroup_from_defaults_and_per_vm(tmp_path: Path, env: dict[str, str]) -> None:
    from balloonctl.qmp import BalloonClient

    d = touch(tmp_path / "run", "a.qmp", "b.qmp", "c.qmp")
    cfg = tmp_path / "config.toml"
    cfg.write_text("[defaults]\nhint_mount_cgroup = true\n\n[vm.b]\nhint_mount_cgroup = false\n")
    inv = Inventory.load(directory=str(d), config=cfg, env=env)
    assert [inv.get(n).hint_mount_cgroup for n in ("a", "b", "c")] == [True, False, True]
    assert BalloonClient.from_ref(inv.get("a")).hint_mount_cgroup is True
    assert BalloonClient.from_ref(inv.get("b")).hint_mount_cgroup is False
    # Not set anywhere: balloonctl never mounts anything in a guest.
    cfg.write_text("[vm.b]\nshares = 2\n")
    plain = Inventory.load(directory=str(d), config=cfg, env=env)
    assert BalloonClient.from_ref(plain.get("a")).hint_mount_cgroup is False


@pytest.mark.parametrize("text", ['[defaults]\nhint_mount_cgroup = "yes"\n',
                                  "[vm.a]\nhint_mount_cgroup = 1\n"])
def test_hint_mount_cgroup_must_be_a_boolean(tmp_path: Path, text: str) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(text)
    with pytest.raises(UsageError, match="hint_mount_cgroup: expected true or false"):
        load_config(cfg)
