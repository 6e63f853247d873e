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
import functools
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from balloonctl.errors import UnknownVM, UsageError
from balloonctl.host import host_root_for
from balloonctl.model import VmRef
from balloonctl.settings import (
    ENV_CONFIG,
    LIBVIRT_DEFAULT_URI,
    Config,
    Defaults,
    config_path,
    load_config,
)
from balloonctl.text import escape_text

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
ENV_WELLKNOWN = "BALLOONCTL_WELLKNOWN"

PROXMOX_ROOTS: tuple[Path, ...] = (Path("/var/run/qemu-server"),)
# Where Proxmox keeps each VM's config (<vmid>.conf, with its "name:").
PVE_CONF_DIRS: tuple[Path, ...] = (Path("/etc/pve/qemu-server"),)
# libvirt keeps each domain's monitor socket here and holds it for the domain's lifetime.
LIBVIRT_ROOTS: tuple[str, ...] = ("/var/lib/libvirt/qemu", "/run/libvirt", "/var/run/libvirt")

_SOCKET_SUFFIXES = (".qmp", ".sock")
_GLOB_CHARS = re.compile(r"[*?\[]")
_LIBVIRT_DOMAIN_DIR = re.compile(r"^domain-\d+-(?P<name>.+)$")
_PVE_NAME = re.compile(r"^name:\s*(?P<name>[A-Za-z0-9][A-Za-z0-9.-]*)\s*$", re.MULTILINE)


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


@functools.lru_cache(maxsize=4)
def _libvirt_roots(roots: tuple[str, ...]) -> tuple[str, ...]:
    # resolved once per process: every client made (each polite poll) asks
    return tuple({r for root in roots for r in (root, os.path.realpath(root))})


def is_libvirt_socket(path: str) -> bool:
    """True when the socket lives where libvirt keeps the monitors of its domains."""
    # a symlink (or /var/run -> /run) to libvirt's socket is still libvirt's
    real = os.path.realpath(path)
    return any(real == root or real.startswith(root + os.sep)
               for root in _libvirt_roots(LIBVIRT_ROOTS))


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


def uri_label(uri: str) -> str:
    """A short, name-safe label for a libvirt URI: its host and path
    (``qemu+ssh://hv2/system`` -> ``hv2-system``, ``qemu:///session`` -> ``session``)."""
    head, _, rest = uri.partition("://")
    host, _, path = rest.partition("/")
    host = host.rpartition("@")[2]  # no user name
    words = [w for w in re.split(r"[^A-Za-z0-9._-]+", f"{host}/{path.partition('?')[0]}") if w]
    return "-".join(words) or re.sub(r"[^A-Za-z0-9._-]+", "-", head) or "libvirt"


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
            taken: dict[str, str] = {}  # domain name -> the first URI that has it
            for uri in uris:
                refs = []
                for domain in lister(uri):
                    name = domain
                    if taken.setdefault(domain, uri) != uri:  # the same name on another URI
                        name = f"{domain}@{uri_label(uri)}"
                    refs.append(VmRef(name=name, qmp=f"{uri}#{domain}", source="libvirt",
                                      backend="libvirt", uri=uri))
                add(refs)

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


