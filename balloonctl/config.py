"""The VM inventory: which VMs exist, where their sockets are, and their limits.

Sources, merged in this order (a later source wins for the socket path of a name):

1. well-known places that exist on this host: Proxmox's ``/var/run/qemu-server/<vmid>.qmp``
   (with ``<vmid>.qga``), named by the ``name:`` of ``/etc/pve/qemu-server/<vmid>.conf`` where
   it can be read (else by the vmid; the socket path keeps the id alongside);
   ``$BALLOONCTL_WELLKNOWN`` (colon-separated dirs) replaces the roots, an empty value turns
   them off;
2. the TOML config at ``$BALLOONCTL_CONFIG`` or ``$XDG_CONFIG_HOME/balloonctl/config.toml``
   (``[defaults]`` and ``[vm.NAME]`` tables; ``[policy]`` holds the automatic-ballooning
   settings, docs/policy.md);
3. a directory of sockets (``--dir`` or ``$BALLOONCTL_DIR``): ``*.qmp`` and ``*.sock``, the name
   from the file stem, a sibling ``<stem>.qga`` as the guest-agent socket;
4. ``--qmp PATH`` (repeatable; ``NAME=PATH`` names it, otherwise the file stem);
5. the running domains of every libvirt URI given (``--libvirt URI``, repeatable, and the
   config's top-level ``libvirt = "URI"`` / ``["URI", ...]`` / ``true`` for qemu:///system),
   named by the domain, with ``backend="libvirt"``.

A ``[vm.NAME]`` table without ``qmp`` only adds limits to a VM found elsewhere.

The host whose memory ``plan``, ``auto``, ``status`` and the dashboard read
(``Inventory.host_root``, for ``balloonctl.host.read_host``) is ``/``, unless the directory of
sockets (3.) holds a fake fleet's simulated host: ``<dir>/host/proc/meminfo``
(``balloonctl.host.host_root_for``).

Discovery only lists directories and reads the config: it never connects to a QMP socket, so
shell completion can call it on every key press. Listing libvirt's domains asks libvirtd (one
local round trip), only when a libvirt URI is given. This module imports only the standard
library and the core (and ``balloonctl.libvirt`` when a libvirt URI is given).
"""

from __future__ import annotations

import difflib
import fnmatch
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from balloonctl.errors import SizeError, UnknownVM, UsageError
from balloonctl.host import host_root_for
from balloonctl.model import VmRef
from balloonctl.policy.settings import PolicySettings, VmPolicy
from balloonctl.text import escape_text
from balloonctl.units import MAX_BYTES, format_size, parse_duration, parse_size

__all__ = [
    "ENV_CONFIG",
    "ENV_DIR",
    "ENV_WELLKNOWN",
    "LIBVIRT_DEFAULT_URI",
    "LIBVIRT_ROOTS",
    "PROXMOX_ROOTS",
    "PVE_CONF_DIRS",
    "Config",
    "Defaults",
    "Inventory",
    "busy_advice",
    "check_dir",
    "config_path",
    "is_libvirt_socket",
    "libvirt_domain_of",
    "load_config",
    "scan_dir",
    "scan_proxmox",
    "wellknown_roots",
]

ENV_DIR = "BALLOONCTL_DIR"
ENV_CONFIG = "BALLOONCTL_CONFIG"
ENV_WELLKNOWN = "BALLOONCTL_WELLKNOWN"

PROXMOX_ROOTS: tuple[Path, ...] = (Path("/var/run/qemu-server"),)
# Where Proxmox keeps each VM's config (<vmid>.conf, with its "name:").
PVE_CONF_DIRS: tuple[Path, ...] = (Path("/etc/pve/qemu-server"),)
LIBVIRT_DEFAULT_URI = "qemu:///system"
# libvirt keeps each domain's monitor socket here and holds it for the domain's lifetime.
LIBVIRT_ROOTS: tuple[str, ...] = ("/var/lib/libvirt/qemu", "/run/libvirt", "/var/run/libvirt")

_SOCKET_SUFFIXES = (".qmp", ".sock")
_GLOB_CHARS = re.compile(r"[*?\[]")
_LIBVIRT_DOMAIN_DIR = re.compile(r"^domain-\d+-(?P<name>.+)$")
_PVE_NAME = re.compile(r"^name:\s*(?P<name>[A-Za-z0-9][A-Za-z0-9.-]*)\s*$", re.MULTILINE)
# A connect or command timeout longer than a day is a typo, and far larger ones overflow
# the event loop's timers.
MAX_TIMEOUT = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class Defaults:
    """``[defaults]`` of the config: applied to every VM that does not set its own."""

    directory: str | None = None
    timeout: float | None = None
    minimum: int | None = None
    maximum: int | None = None
    shares: int | None = None
    hint: bool | None = None
    hint_mount_cgroup: bool | None = None


@dataclass(frozen=True, slots=True)
class Config:
    path: Path | None = None
    defaults: Defaults = field(default_factory=Defaults)
    vms: tuple[VmRef, ...] = ()
    # the limits of every [vm.NAME] table (min, max, shares, hint), applied by name to the VM
    # wherever it was found; a table without qmp only adds limits to a VM found elsewhere
    overlays: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    libvirt: tuple[str, ...] = ()  # libvirt URIs whose running domains are VMs
    # [policy] with the per-VM reserves of the [vm.NAME] tables in ``policy.vms``
    policy: PolicySettings = field(default_factory=PolicySettings)
    journal: str | None = None  # [journal] path: where target changes are journaled


def config_path(env: Mapping[str, str] | None = None) -> Path:
    """Where the config lives: ``$BALLOONCTL_CONFIG``, else the XDG config dir."""
    env = os.environ if env is None else env
    explicit = env.get(ENV_CONFIG)
    if explicit:
        return Path(explicit).expanduser()
    base = env.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "balloonctl" / "config.toml"


def _size(value: Any, where: str) -> int:
    if isinstance(value, bool):
        raise UsageError(f"{where}: expected a size, got {value!r}")
    if isinstance(value, int):
        if value <= 0:
            raise UsageError(f"{where}: a size must be greater than zero")
        if value > MAX_BYTES:  # what QEMU's int64 takes; TOML readers may give more
            raise UsageError(f"{where}: {value} bytes is too large (at most {MAX_BYTES})")
        return value
    if isinstance(value, str):
        try:
            return parse_size(value)
        except SizeError as exc:
            raise UsageError(f"{where}: {exc}") from None
    raise UsageError(f"{where}: expected a size such as \"1G\", got {value!r}")


def _limits(table: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The per-VM (or default) settings of a table, as VmRef/Defaults field values."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        here = f"{where}.{key}"
        if key in ("min", "minimum"):
            out["minimum"] = _size(value, here)
        elif key in ("max", "maximum"):
            out["maximum"] = _size(value, here)
        elif key == "shares":
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise UsageError(f"{here}: expected a positive integer, got {value!r}")
            out["shares"] = value
        elif key in ("hint", "hint_mount_cgroup"):
            if not isinstance(value, bool):
                raise UsageError(f"{here}: expected true or false, got {value!r}")
            out[key] = value
        elif key in ("qmp", "qga", "dir"):
            if not isinstance(value, str) or not value:
                raise UsageError(f"{here}: expected a path, got {value!r}")
            out[key] = os.path.expanduser(value)
        elif key == "timeout":
            try:
                seconds = (
                    float(value)
                    if isinstance(value, int | float) and not isinstance(value, bool)
                    else parse_duration(str(value))
                )
            except SizeError as exc:
                raise UsageError(f"{here}: {exc}") from None
            except OverflowError:  # an int too large for a float
                seconds = math.inf
            # TOML has nan, inf and negative numbers; none of them is a timeout
            if not (math.isfinite(seconds) and 0 < seconds <= MAX_TIMEOUT):
                raise UsageError(f"{here}: expected a duration above 0 and at most 24h "
                                 f"(e.g. 5 or \"5s\"), got {value!r}")
            out["timeout"] = seconds
        else:
            raise UsageError(f"{here}: unknown setting {key!r}")
    if "minimum" in out and "maximum" in out and out["minimum"] > out["maximum"]:
        raise UsageError(f"{where}: min is above max")
    return out


def load_config(path: Path | None = None, *, env: Mapping[str, str] | None = None) -> Config:
    """Read the TOML config: ``path`` (given by the user: it must exist), else the default
    (``config_path``), where a missing file is an empty config.

    Raises:
        UsageError: ``path`` is missing or not a file, or the file is not valid TOML or has
            a bad setting (the message names the file and the setting).
    """
    explicit = path is not None
    path = config_path(env) if path is None else path
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if explicit:
            raise UsageError(f"config {path}: no such file") from None
        return Config(path=None)
    except IsADirectoryError:
        raise UsageError(f"config {path}: is a directory, not a file") from None
    except OSError as exc:
        raise UsageError(f"cannot read config {path}: {exc.strerror or exc}") from None
    import tomllib  # only when there is a config: completion stays cheap without one

    try:
        doc = tomllib.loads(data.decode("utf-8", errors="replace"))
        return _parse_config(doc, path)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config {path}: {exc}") from None
    except UsageError as exc:  # the one place a config error gets the file's name
        raise UsageError(f"config {path}: {exc.message}") from None


def _parse_config(doc: Mapping[str, Any], path: Path) -> Config:
    """Raises: UsageError: a bad setting (named, without the file)."""
    unknown = set(doc) - {"defaults", "vm", "policy", "journal", "libvirt"}
    if unknown:
        raise UsageError(f"unknown table(s) {', '.join(sorted(unknown))}")
    libvirt = _libvirt_uris(doc.get("libvirt", False))
    raw_defaults = doc.get("defaults", {})
    if not isinstance(raw_defaults, dict):
        raise UsageError("[defaults] must be a table")
    d = _limits(raw_defaults, "defaults")
    if "qmp" in d or "qga" in d:
        raise UsageError("defaults cannot set qmp or qga")
    defaults = Defaults(
        directory=d.get("dir"),
        timeout=d.get("timeout"),
        minimum=d.get("minimum"),
        maximum=d.get("maximum"),
        shares=d.get("shares"),
        hint=d.get("hint"),
        hint_mount_cgroup=d.get("hint_mount_cgroup"),
    )
    vms: list[VmRef] = []
    overlays: dict[str, dict[str, Any]] = {}
    reserves: dict[str, VmPolicy] = {}
    raw_vms = doc.get("vm", {})
    if not isinstance(raw_vms, dict):
        raise UsageError("[vm.NAME] entries must be tables")
    for name, table in raw_vms.items():
        if not isinstance(table, dict):
            raise UsageError(f"vm.{name} must be a table")
        table, reserve = _vm_reserves(table, f"vm.{name}")
        if reserve is not None:
            reserves[name] = reserve
        settings = _limits(table, f"vm.{name}")
        if "dir" in settings or "timeout" in settings:
            raise UsageError(f"vm.{name} cannot set dir or timeout")
        qmp = settings.pop("qmp", None)
        qga = settings.pop("qga", None)
        _check_range(settings, defaults, name)
        overlays[name] = settings
        if qmp is not None:
            vms.append(VmRef(name=name, qmp=qmp, qga=qga, source="config"))
        elif qga is not None:
            overlays[name]["qga"] = qga
    return Config(path=path, defaults=defaults, vms=tuple(vms), overlays=overlays,
                  policy=_policy(doc.get("policy", {}), reserves),
                  journal=_journal(doc.get("journal", {})), libvirt=libvirt)


def _journal(raw: Any) -> str | None:
    """The ``[journal]`` table: ``path`` (a non-empty string), nothing else.

    Raises:
        UsageError: not a table, an unknown key, or a path that is not a non-empty string.
    """
    if not isinstance(raw, dict):
        raise UsageError("[journal] must be a table")
    unknown = sorted(set(raw) - {"path"})
    if unknown:
        raise UsageError(f"journal.{unknown[0]}: unknown setting {unknown[0]!r}")
    path = raw.get("path")
    if path is not None and (not isinstance(path, str) or not path.strip() or "\0" in path):
        raise UsageError(f"journal.path: expected a file path, got {path!r}")
    return path


def _libvirt_uris(value: Any) -> tuple[str, ...]:
    """The config's ``libvirt``: true (qemu:///system), false, a URI or a list of URIs.

    Raises: UsageError: any other shape."""
    if value is True:
        return (LIBVIRT_DEFAULT_URI,)
    if value is False:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(u, str) and u for u in items):
        raise UsageError(f"libvirt: expected true, a URI or a list of URIs, got {value!r}")
    return tuple(items)


def _check_range(settings: Mapping[str, Any], defaults: Defaults, name: str) -> None:
    """A VM's floor above its maximum once ``[defaults]`` fill in what it does not set.

    Raises: UsageError naming both settings.
    """
    low, high = settings.get("minimum", defaults.minimum), settings.get("maximum",
                                                                          defaults.maximum)
    if low is not None and high is not None and low > high:
        low_from = f"vm.{name}.min" if "minimum" in settings else "defaults.min"
        high_from = f"vm.{name}.max" if "maximum" in settings else "defaults.max"
        raise UsageError(f"{low_from} ({format_size(low)}) is above {high_from} "
                         f"({format_size(high)}): vm.{name} could never be given a target")


def check_dir(directory: str, given_as: str) -> str:
    """``directory`` (``~`` expanded) when it is a readable directory.

    Raises:
        UsageError: it is missing, not a directory or unreadable; ``given_as`` says where
            the user gave it (``--dir``, ``BALLOONCTL_DIR``).
    """
    path = os.path.expanduser(directory)
    if not os.path.exists(path):
        raise UsageError(f"{given_as} {directory}: no such directory")
    if not os.path.isdir(path):
        raise UsageError(f"{given_as} {directory}: not a directory")
    if not os.access(path, os.R_OK | os.X_OK):
        raise UsageError(f"{given_as} {directory}: permission denied")
    return path


def scan_dir(directory: str | Path, *, source: str = "dir") -> list[VmRef]:
    """The VMs of a directory of sockets: ``*.qmp`` and ``*.sock`` (name = stem), with a
    sibling ``<stem>.qga`` as the guest agent. A missing directory has none.
    """
    try:
        entries = sorted(os.listdir(directory))
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return []
    present = set(entries)
    refs: list[VmRef] = []
    seen: set[str] = set()
    for entry in entries:
        stem, suffix = os.path.splitext(entry)
        if suffix not in _SOCKET_SUFFIXES or not stem or stem in seen:
            continue
        seen.add(stem)
        qga = f"{stem}.qga"
        refs.append(
            VmRef(
                name=stem,
                qmp=os.path.join(directory, entry),
                qga=os.path.join(directory, qga) if qga in present else None,
                source=source,
            )
        )
    return refs


def wellknown_roots(env: Mapping[str, str] | None = None) -> list[Path]:
    """Directories searched for Proxmox-style ``<vmid>.qmp`` sockets."""
    env = os.environ if env is None else env
    override = env.get(ENV_WELLKNOWN)
    if override is not None:
        return [Path(p) for p in override.split(":") if p]
    return list(PROXMOX_ROOTS)


def _pve_name(vmid: str, conf_dirs: Iterable[Path]) -> str | None:
    """The ``name:`` of a Proxmox VM's config, when one can be read (root only, usually)."""
    for conf_dir in conf_dirs:
        try:
            text = (conf_dir / f"{vmid}.conf").read_text(errors="replace")
        except OSError:
            continue
        # the current config comes before any [snapshot] section
        found = _PVE_NAME.search(text.split("\n[", 1)[0])
        if found is not None:
            return found.group("name")
    return None


def scan_proxmox(roots: Iterable[Path],
                 conf_dirs: Iterable[Path] = PVE_CONF_DIRS) -> list[VmRef]:
    """Proxmox keeps ``<vmid>.qmp`` and ``<vmid>.qga`` in /var/run/qemu-server. A VM is named
    by the ``name:`` in ``<conf_dir>/<vmid>.conf`` where readable and unique, else by its
    vmid; the socket path (``qmp``) keeps the vmid alongside."""
    conf_dirs = list(conf_dirs)
    refs: list[VmRef] = []
    for root in roots:
        refs.extend(r for r in scan_dir(root, source="proxmox") if r.qmp.endswith(".qmp"))
    named = [(r, _pve_name(r.name, conf_dirs)) for r in refs]
    counts: dict[str, int] = {}
    for _, name in named:
        if name is not None:
            counts[name] = counts.get(name, 0) + 1
    return [replace(r, name=name) if name is not None and counts[name] == 1 else r
            for r, name in named]


def is_libvirt_socket(path: str) -> bool:
    """True when the socket lives where libvirt keeps the monitors of its domains."""
    # a symlink (or /var/run -> /run) to libvirt's socket is still libvirt's
    real = os.path.realpath(path)
    roots = {r for root in LIBVIRT_ROOTS for r in (root, os.path.realpath(root))}
    return any(real == root or real.startswith(root + os.sep) for root in roots)


def libvirt_domain_of(path: str) -> str | None:
    """The domain of a libvirt monitor socket (``.../domain-3-web1/monitor.sock``), if the
    path says it (libvirt shortens long names in the directory)."""
    p = Path(path)
    found = _LIBVIRT_DOMAIN_DIR.match(p.parent.name)
    return found.group("name") if found is not None else None


def busy_advice(ref: VmRef) -> str | None:
    """What to tell an operator whose VM's socket is busy, when there is more to say."""
    if ref.backend == "qmp" and is_libvirt_socket(ref.qmp):
        return (
            "libvirt owns this monitor socket and holds it while the domain runs; reach it "
            f"through libvirt: `balloonctl --libvirt {LIBVIRT_DEFAULT_URI} status "
            f"{escape_text(ref.name)}`"
        )
    return None


def _name_for_path(path: str) -> str:
    if "/" not in path and ":" in path:
        return path  # host:port
    p = Path(path)
    domain = libvirt_domain_of(path)
    if domain is not None and p.stem == "monitor":
        return domain  # libvirt: .../domain-3-web1/monitor.sock
    return p.stem or path


def _parse_qmp_arg(arg: str) -> tuple[str, str]:
    name, sep, path = arg.partition("=")
    if sep and name and path and "/" not in name:
        return name, os.path.expanduser(path)
    return _name_for_path(arg), os.path.expanduser(arg)


class Inventory:
    """The VMs known from every source, in a stable order, selectable by name or glob.

    ``host_root`` is the root of the host they run on (``balloonctl.host.host_root_for``).
    """

    def __init__(
        self, refs: Iterable[VmRef] = (), *, config: Config | None = None,
        host_root: Path = Path("/"), watched: str | None = None,
    ) -> None:
        self.config = config or Config()
        self.host_root = host_root
        self.watched = watched  # the directory of sockets it was loaded from, if any
        self._refs: dict[str, VmRef] = {}
        for ref in refs:
            self._refs[ref.name] = ref

    @classmethod
    def load(
        cls,
        *,
        qmp: Sequence[str] = (),
        qga: str | None = None,
        directory: str | None = None,
        config: Path | None = None,
        roots: Sequence[Path] | None = None,
        env: Mapping[str, str] | None = None,
        libvirt: Sequence[str] = (),
        list_domains: Callable[[str], list[str]] | None = None,
    ) -> Inventory:
        """Merge every source (see the module docstring); never connects to a socket.

        Raises:
            UsageError: a bad config, a missing ``--config`` file, a ``directory`` (or
                ``$BALLOONCTL_DIR``) that is not a directory, or ``qga`` given without
                exactly one ``qmp``.
            LibvirtUnavailable, LibvirtDenied: a libvirt URI cannot be listed.
            BackendMissing: a libvirt URI is given and libvirt-python is not installed.

        ``list_domains(uri)`` lists a URI's running domains (default:
        ``balloonctl.libvirt.list_domains``, imported only when a URI is given).
        """
        env = os.environ if env is None else env
        if qga is not None and len(qmp) != 1:
            raise UsageError("--qga needs exactly one --qmp")
        cfg = load_config(config, env=env)
        found: dict[str, VmRef] = {}

        def add(refs: Iterable[VmRef]) -> None:
            for ref in refs:
                old = found.get(ref.name)
                if old is not None and ref.qga is None:
                    ref = replace(ref, qga=old.qga)
                found[ref.name] = ref

        add(scan_proxmox(wellknown_roots(env) if roots is None else roots))
        add(cfg.vms)
        # a directory the user named must exist; the config's standing default may not yet
        watched: str | None = None
        if directory:
            watched = check_dir(directory, "--dir")
        elif env.get(ENV_DIR):
            watched = check_dir(env[ENV_DIR], ENV_DIR)
        elif cfg.defaults.directory:
            watched = os.path.expanduser(cfg.defaults.directory)
        if watched is not None:
            add(scan_dir(watched))
        explicit = [_parse_qmp_arg(a) for a in qmp]
        add(
            VmRef(name=name, qmp=path, qga=os.path.expanduser(qga) if qga else None)
            for name, path in explicit
        )
        uris = list(dict.fromkeys([*libvirt, *cfg.libvirt]))
        if uris:
            lister: Callable[[str], list[str]]
            if list_domains is None:
                from balloonctl.libvirt import list_domains as lister
            else:
                lister = list_domains
            for uri in uris:
                add(VmRef(name=domain, qmp=f"{uri}#{domain}", source="libvirt",
                          backend="libvirt", uri=uri) for domain in lister(uri))

        inventory = cls(config=cfg, watched=watched)
        return cls([inventory._settled(ref) for ref in found.values()], config=cfg,
                   watched=watched, host_root=host_root_for(watched))

    def _settled(self, ref: VmRef) -> VmRef:
        """``ref`` with the config's defaults and its ``[vm.NAME]`` settings."""
        d = self.config.defaults
        settings: dict[str, Any] = {
            "minimum": d.minimum, "maximum": d.maximum, "hint": d.hint,
            "hint_mount_cgroup": d.hint_mount_cgroup,
            "shares": d.shares or ref.shares,
        }
        settings.update(self.config.overlays.get(ref.name, {}))
        return replace(ref, **settings)

    def rescan(self, patterns: Sequence[str] = ()) -> list[VmRef]:
        """The VMs of the watched directory as it is now (a socket may have appeared since
        the inventory was loaded), with the config's settings, that match ``patterns``
        (names or globs; every VM when empty). Known VMs keep their inventory entry. An
        inventory without a watched directory returns its own VMs."""
        found = [] if self.watched is None else scan_dir(self.watched)
        refs = [self._refs.get(ref.name) or self._settled(ref) for ref in found]
        refs += [ref for ref in self._refs.values() if ref.name not in {r.name for r in refs}]
        if not patterns:
            return refs
        return [ref for ref in refs
                if any(fnmatch.fnmatchcase(ref.name, p) for p in patterns)]

    @property
    def names(self) -> list[str]:
        return list(self._refs)

    @property
    def refs(self) -> list[VmRef]:
        return list(self._refs.values())

    def __len__(self) -> int:
        return len(self._refs)

    def __contains__(self, name: object) -> bool:
        return name in self._refs

    def get(self, name: str) -> VmRef:
        """The VM of that exact name.

        Raises:
            UnknownVM: no such VM; the message suggests close matches.
        """
        ref = self._refs.get(name)
        if ref is None:
            raise self._unknown(name)
        return ref

    def select(self, patterns: Sequence[str], *, all_vms: bool = False) -> list[VmRef]:
        """VMs by exact name or glob (``web-*``), in inventory order, without duplicates.
        No patterns (or ``all_vms``) selects every VM.

        Raises:
            UnknownVM: a name or pattern matches nothing, or the inventory is empty.
        """
        if not self._refs:
            raise UnknownVM(self._nothing_known())
        if all_vms or not patterns:
            return self.refs
        chosen: dict[str, VmRef] = {}
        for pattern in patterns:
            if pattern in self._refs:
                chosen.setdefault(pattern, self._refs[pattern])
                continue
            if _GLOB_CHARS.search(pattern):
                hits = [n for n in self._refs if fnmatch.fnmatchcase(n, pattern)]
                if hits:
                    for n in hits:
                        chosen.setdefault(n, self._refs[n])
                    continue
            raise self._unknown(pattern)
        return list(chosen.values())

    def select_one(self, pattern: str, *, command: str) -> VmRef:
        """The one VM ``pattern`` names, for a ``command`` that works on a single VM.

        Raises:
            UnknownVM: it matches nothing.
            UsageError: it is a glob matching several VMs.
        """
        refs = self.select([pattern])
        if len(refs) > 1:
            names = ", ".join(r.name for r in refs)
            raise UsageError(f"{command} takes one VM; {pattern!r} matches "
                             f"{escape_text(names)}")
        return refs[0]

    def matches(self, pattern: str) -> bool:
        """True when ``pattern`` names a known VM, exactly or as a glob."""
        if pattern in self._refs:
            return True
        return bool(_GLOB_CHARS.search(pattern)) and any(
            fnmatch.fnmatchcase(n, pattern) for n in self._refs)

    def suggestions(self, name: str) -> list[str]:
        return difflib.get_close_matches(name, self._refs, n=3, cutoff=0.5)

    def _nothing_known(self) -> str:
        where = self.config.path or config_path()
        return (
            "no VMs known: pass --qmp PATH or --dir DIR (or set BALLOONCTL_DIR), "
            f"or list them in {where}"
        )

    def _unknown(self, name: str) -> UnknownVM:
        if not self._refs:
            return UnknownVM(self._nothing_known())
        close = self.suggestions(name)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        known = ", ".join(list(self._refs)[:8]) + (", ..." if len(self._refs) > 8 else "")
        return UnknownVM(escape_text(f"unknown VM {name!r}{hint} (known: {known})"))


# ---- the policy's settings: the [policy] table and the reserves of [vm.NAME] ----------------

_VM_RESERVES = ("free_reserve", "cache_reserve")


def _percent(value: Any, where: str, *, of: float = 1.0) -> float:
    """A number, or ``"N%"`` as N/``of`` (``of=100`` for a fraction of host RAM: ``"15%"``
    is 0.15). Range checks (and NaN) are PolicySettings'."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            return float(value.strip()[:-1]) / of
        except ValueError:
            pass
    example = "0.15 or \"15%\"" if of == 100 else "10 or \"10%\""
    raise UsageError(f"{where}: expected a number such as {example}, got {value!r}")


def _fraction(value: Any, where: str) -> float:
    return _percent(value, where, of=100)


def _number(value: Any, where: str) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise UsageError(f"{where}: expected a number, got {value!r}")


def _size_or_zero(value: Any, where: str) -> int:
    if (isinstance(value, int) and not isinstance(value, bool) and value == 0) or value == "0":
        return 0
    if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
        raise UsageError(f"{where}: must be zero or more, got {value!r}")
    return _size(value, where)


def _rate(value: Any, where: str) -> int:
    """Bytes per second: ``"1M"``, ``"1M/s"`` or an integer."""
    if isinstance(value, str):
        value = value.strip().removesuffix("/s")
    return _size_or_zero(value, where)


def _bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    raise UsageError(f"{where}: expected true or false, got {value!r}")


def _seconds(value: Any, where: str) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)  # range (and NaN) checked by PolicySettings
    if not isinstance(value, str):
        raise UsageError(f"{where}: expected a duration such as \"10s\", got {value!r}")
    try:
        return parse_duration(value)
    except SizeError as exc:
        raise UsageError(f"{where}: {exc}") from None


_POLICY_KEYS: dict[str, Any] = {
    "target_available": _fraction,
    "hysteresis": _fraction,
    "deadband": _size_or_zero,
    "max_step": _size,
    "cycle": _seconds,
    "stale_after": _seconds,
    "emergency_free": _size,
    "free_reserve": _size,
    "cache_reserve": _size_or_zero,
    "swap_in_rate": _rate,
    "fault_rate": _number,
    "psi_threshold": _percent,
    "auto": _bool,
}


def _vm_reserves(table: Mapping[str, Any], where: str) -> tuple[dict[str, Any], VmPolicy | None]:
    """Split a ``[vm.NAME]`` table into its inventory settings and its policy reserves.

    Raises:
        UsageError: a reserve that is not a size (named ``vm.NAME.KEY``).
    """
    rest = {k: v for k, v in table.items() if k not in _VM_RESERVES}
    if len(rest) == len(table):
        return rest, None
    parsed = {k: (_size if k == "free_reserve" else _size_or_zero)(table[k], f"{where}.{k}")
              for k in _VM_RESERVES if k in table}
    return rest, VmPolicy(**parsed)


def _policy(raw: Any, reserves: Mapping[str, VmPolicy]) -> PolicySettings:
    """The ``[policy]`` table (every key optional) with the per-VM reserves.

    Raises:
        UsageError: not a table, an unknown key, or a wrong value (named ``policy.KEY`` or
            ``vm.NAME.KEY``): wrong type, negative, zero where that means nothing, NaN or
            infinite, or settings that contradict each other.
    """
    if not isinstance(raw, dict):
        raise UsageError("[policy] must be a table")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        parse = _POLICY_KEYS.get(key)
        if parse is None:
            raise UsageError(f"policy.{key}: unknown setting {key!r}")
        values[key] = parse(value, f"policy.{key}")
    try:
        return PolicySettings(**values, vms=dict(reserves))
    except UsageError as exc:
        if exc.message.startswith("vm."):
            raise
        raise UsageError(f"policy.{exc.message}") from None
