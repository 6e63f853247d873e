"""balloonctl's settings: the TOML config file (``[defaults]``, ``[vm.NAME]``, ``[policy]``,
``[journal]``, ``[hosts.URL]``, ``libvirt``), parsed in one place into typed values; every
wrong shape is a ``UsageError`` naming the file and the setting.

The config is at ``$BALLOONCTL_CONFIG`` or ``$XDG_CONFIG_HOME/balloonctl/config.toml``; which VMs
exist (the inventory, discovery of sockets) is ``balloonctl.config``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from balloonctl.errors import SizeError, UsageError
from balloonctl.model import VmRef
from balloonctl.policy.settings import PolicySettings, VmPolicy
from balloonctl.units import MAX_BYTES, format_size, parse_duration, parse_size

__all__ = ["ENV_CONFIG", "LIBVIRT_DEFAULT_URI", "MAX_TIMEOUT", "Config", "Defaults",
           "HostToken", "config_path", "host_keys", "load_config"]

ENV_CONFIG = "BALLOONCTL_CONFIG"
LIBVIRT_DEFAULT_URI = "qemu:///system"
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
class HostToken:
    """A ``[hosts.KEY]`` table: the bearer token for one ``balloonctl serve``, given as
    ``token`` or read from ``token_file`` when used; ``setting`` names the table in errors."""

    setting: str
    token: str | None = None
    token_file: str | None = None


def host_keys(url: str) -> tuple[str, ...]:
    """The ``[hosts]`` keys that name the service at ``url`` (``--host``), most specific
    first: ``http://hv1:9847``, ``hv1:9847``, ``hv1``; host names in lower case."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    try:
        port = parts.port
    except ValueError:
        return ()
    host = (parts.hostname or "").lower()
    if not host:
        return ()
    where = f"[{host}]" if ":" in host else host  # an IPv6 address keeps its brackets
    netloc = where if port is None else f"{where}:{port}"
    keys = (f"{parts.scheme.lower()}://{netloc}", netloc, where)
    return tuple(dict.fromkeys(keys))


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
    # [hosts.KEY]: tokens of balloonctl serve instances, by host_keys()' first key of KEY
    hosts: Mapping[str, HostToken] = field(default_factory=dict)

    def host_token(self, url: str) -> HostToken | None:
        """The ``[hosts]`` entry for the service at ``url``: by URL, else host:port, else
        host name."""
        for key in host_keys(url):
            if key in self.hosts:
                return self.hosts[key]
        return None


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
    unknown = set(doc) - {"defaults", "vm", "policy", "journal", "hosts", "libvirt"}
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
                  journal=_journal(doc.get("journal", {})), libvirt=libvirt,
                  hosts=_hosts(doc.get("hosts", {})))


def _hosts(raw: Any) -> dict[str, HostToken]:
    """The ``[hosts]`` table: ``[hosts."URL"]`` or ``[hosts.NAME]`` (``hv1``, ``hv1:9847``)
    tables, each with exactly one of ``token`` and ``token_file``.

    Raises:
        UsageError: not a table, a key that names no host, two keys for one host, an
            unknown setting, a value that is not a non-empty string, or both or neither of
            ``token`` and ``token_file`` (named ``hosts."KEY".SETTING``).
    """
    if not isinstance(raw, dict):
        raise UsageError("[hosts] must be a table of [hosts.\"URL\"] tables")
    out: dict[str, HostToken] = {}
    for key, table in raw.items():
        where = f"hosts.{_quoted(key)}"
        path = urlsplit(key).path if "://" in key else ""
        keys = () if any(c.isspace() or not c.isprintable() for c in key) else host_keys(key)
        if not keys or path not in ("", "/") or ("://" in key and not key.lower().startswith(
                ("http://", "https://"))):
            raise UsageError(f"{where}: expected a host name, host:port or an http(s) URL "
                             "such as http://hv1:9847")
        if not isinstance(table, dict):
            raise UsageError(f"{where} must be a table with token or token_file")
        unknown = sorted(set(table) - {"token", "token_file"})
        if unknown:
            raise UsageError(f"{where}.{unknown[0]}: unknown setting {unknown[0]!r}")
        if len(table) != 1:
            raise UsageError(f"{where}: give exactly one of token and token_file")
        (name, value), = table.items()
        if not isinstance(value, str) or not value.strip() or "\0" in value:
            if name == "token":  # never echo what may be a secret
                raise UsageError(f"{where}.token: expected a token (a non-empty string)")
            raise UsageError(f"{where}.token_file: expected a file path, got {value!r}")
        # a URL key names exactly that service; a name, every port of it
        first = keys[0] if "://" in key else keys[1]
        if first in out:
            raise UsageError(f"{where}: {out[first].setting} names the same host")
        out[first] = HostToken(
            setting=where, token=value if name == "token" else None,
            token_file=os.path.expanduser(value) if name == "token_file" else None)
    return out


def _quoted(key: str) -> str:
    """A TOML key as the user wrote it: bare when it can be, else quoted and escaped."""
    if key and all(c.isalnum() or c in "-_" for c in key) and key.isascii():
        return key
    import json

    return json.dumps(key)


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
