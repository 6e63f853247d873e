"""The guest side of the agent-mode cache-first hint: one shell script, run with guest-exec,
and the one parser of what it prints.

The script reclaims as much clean page cache as an inflation needs, the way the RFC's
``__GFP_FREE_CACHE`` does per balloon page, with what a stock guest kernel offers:

1. the root cgroup v2 ``memory.reclaim`` (Linux 5.19 and later), file pages only where the
   kernel accepts ``swappiness=0`` (6.1 rejects the key with EINVAL: plain ``N`` then). A
   write that reclaimed less than asked fails with EAGAIN: that is "reclaimed less", not an
   error. cgroup2 is mounted at ``/sys/fs/cgroup`` first only when balloonctl is told to
   (``hint_mount_cgroup``) and nothing else is mounted there;
2. otherwise ``sync; echo 1 > /proc/sys/vm/drop_caches``, which empties the whole cache.

Whether the kernel takes ``swappiness=0`` is found by writing ``0 swappiness=0`` (reclaims
nothing; EINVAL on 6.1) so that no shell has to report errno. Without the key the request
is capped at the file pages (``Active(file) + Inactive(file)``) less 16 MiB, so that a
guest with swap does not swap anonymous memory to make up the rest (the RFC reclaims clean
cache only); a capped request counts as ``short``. The kernel reclaims in batches and
overshoots (on 6.1: 32M took 36 MiB, 64M 65-113 MiB), so the script asks for half of what
is still missing, at most 32 MiB at a time, reads the cache again, and repeats (at most 32
writes) until it is within 2 MiB of the request or the kernel answers EAGAIN.
``/proc/meminfo`` is read before and after, inside the same process, so what was released
is known at once; each read stops at the last line it needs (``Inactive(file)``, the 12th):
a shell ``read`` takes one byte per system call, and the whole file cost about ten times as
much guest CPU, which on a one-vCPU guest is taken from the inflation itself. With
``N = 0`` the script only finds the method (it reclaims or drops nothing then).

It is POSIX sh (busybox ash, dash, bash) and prints ``key=value`` lines; meminfo figures
are KiB as the kernel prints them. ``parse_reclaim_output`` is the only reader of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from balloonctl.errors import AgentError
from balloonctl.model import HintMethod
from balloonctl.units import KiB

__all__ = [
    "RECLAIM_MARKER",
    "RECLAIM_SCRIPT",
    "ReclaimReport",
    "parse_reclaim_output",
    "reclaim_argv",
]

# $0 of the script: how a process list (and the fake guest agent) recognises it.
RECLAIM_MARKER: Final = "balloonctl-reclaim"

RECLAIM_SCRIPT: Final = r"""
n=$1; may_mount=$2; g=/sys/fs/cgroup; r=$g/memory.reclaim
method=drop why=; mounted=0; result=ok; key=
readmem() {
  c=; b=; f=; af=; inf=
  while read -r k v u; do
    case $k in Cached:) c=$v ;; Buffers:) b=$v ;; MemFree:) f=$v ;;
      'Active(file):') af=$v ;; 'Inactive(file):') inf=$v ;; esac
    [ -n "$c" ] && [ -n "$b" ] && [ -n "$f" ] && [ -n "$af" ] && [ -n "$inf" ] && break
  done </proc/meminfo
  af=${af:-0} inf=${inf:-0}
}
show() { echo "${1}_cached=$c"; echo "${1}_buffers=$b"; echo "${1}_free=$f"; }
fstype() {
  t=
  while read -r d p ty o; do [ "$p" = "$g" ] && t=$ty; done </proc/mounts
  echo "$t"
}
echo "balloonctl-reclaim=1"
readmem
show before
c0=$((c + b))
t=$(fstype)
if [ -z "$t" ] && [ "$may_mount" = 1 ]; then
  if mount -t cgroup2 none "$g" 2>/dev/null; then mounted=1; t=cgroup2; else t=-; fi
fi
if [ -z "$t" ]; then why=no-cgroup2
elif [ "$t" = - ]; then why=mount-failed
elif [ "$t" != cgroup2 ]; then why=not-cgroup2
elif [ ! -e "$r" ]; then why=no-memory-reclaim
elif echo "0 swappiness=0" 2>/dev/null >"$r"; then method=reclaim why=file-pages
  key=" swappiness=0"
elif echo 0 2>/dev/null >"$r"; then method=reclaim why=no-swappiness-key
else why=reclaim-refused
fi
if [ "$method" = reclaim ] && [ -z "$key" ]; then
  cap=$(( (af + inf - 16384) * 1024 ))
  if [ "$n" -gt 0 ] && [ "$n" -gt "$cap" ]; then n=$cap; result=short; fi
fi
if [ "$n" -gt 0 ]; then
  if [ "$method" = reclaim ]; then
    i=0
    while [ $i -lt 32 ]; do
      left=$(( n - (c0 - c - b) * 1024 ))
      [ "$left" -le 2097152 ] && break
      ask=$(( left / 2 ))
      [ "$ask" -lt 1048576 ] && ask=1048576
      [ "$ask" -gt 33554432 ] && ask=33554432
      echo "$ask$key" 2>/dev/null >"$r" || { result=short; break; }
      readmem
      i=$((i + 1))
    done
  else
    sync
    echo 1 2>/dev/null >/proc/sys/vm/drop_caches || result=failed
  fi
fi
readmem
show after
echo "method=$method"
echo "why=$why"
echo "mounted=$mounted"
echo "result=$result"
"""

# Why a method applies, for hint status and the dashboard.
_WHY: Final = {
    (HintMethod.RECLAIM, "file-pages"): "memory.reclaim, file pages only (swappiness=0)",
    (HintMethod.RECLAIM, "no-swappiness-key"):
        "memory.reclaim (the kernel rejects swappiness=0: with swap, anonymous pages may "
        "go too)",
    (HintMethod.DROP, "no-cgroup2"):
        "cgroup2 not mounted at /sys/fs/cgroup (set hint_mount_cgroup to mount it)",
    (HintMethod.DROP, "mount-failed"): "mounting cgroup2 at /sys/fs/cgroup failed",
    (HintMethod.DROP, "not-cgroup2"):
        "/sys/fs/cgroup holds another file system (cgroup v1?), not cgroup2",
    (HintMethod.DROP, "no-memory-reclaim"):
        "memory.reclaim missing (kernel < 5.19, or no memory controller in cgroup2)",
    (HintMethod.DROP, "reclaim-refused"): "memory.reclaim refuses writes",
}
_RESULTS: Final = ("ok", "short", "failed")
_NUMBERS: Final = tuple(f"{when}_{what}" for when in ("before", "after")
                        for what in ("cached", "buffers", "free"))
_KEYS: Final = frozenset({"balloonctl-reclaim", "method", "why", "mounted", "result",
                          *_NUMBERS})
# Far above any guest's RAM in KiB: a bigger figure is garbage, not memory.
_MAX_KIB: Final = 2**50


def reclaim_argv(n: int, *, mount_cgroup: bool) -> list[str]:
    """The ``guest-exec`` ``arg`` list for ``/bin/sh``: reclaim ``n`` bytes (0: only find
    the method), mounting cgroup2 first when ``mount_cgroup``."""
    return ["-c", RECLAIM_SCRIPT, RECLAIM_MARKER, str(max(0, n)), "1" if mount_cgroup else "0"]


@dataclass(frozen=True, slots=True)
class ReclaimReport:
    """What the reclaim script did. Sizes are bytes; the page cache is meminfo's
    ``Cached + Buffers`` (what the balloon's ``stat-disk-caches`` reports).

    ``result`` is ``ok``, ``short`` (memory.reclaim reclaimed less than asked: EAGAIN) or
    ``failed`` (drop_caches refused the write).
    """

    method: HintMethod
    why: str
    mounted: bool
    result: str
    cache_before: int
    cache_after: int
    free_before: int
    free_after: int

    @property
    def released(self) -> int:
        """Page cache released between the two meminfo reads."""
        return max(0, self.cache_before - self.cache_after)

    @property
    def explanation(self) -> str:
        """Why this method, in words."""
        text = _WHY[(self.method, self.why)]
        if self.mounted:
            text += "; balloonctl mounted cgroup2 (hint_mount_cgroup)"
        return text


def explain(method: HintMethod, why: str) -> str:
    """The words for a stored ``(method, why)`` pair; the code itself when unknown."""
    return _WHY.get((method, why), why)


def parse_reclaim_output(stdout: bytes, *, vm: str | None = None) -> ReclaimReport:
    """Parse what the reclaim script printed (it comes from inside the guest).

    Raises:
        AgentError: the output has the wrong shape (the message says how).
    """
    def bad(problem: str) -> AgentError:
        return AgentError(f"the guest's cache-reclaim script printed something unexpected: "
                          f"{problem}", vm=vm)

    try:
        text = stdout.decode("ascii")
    except UnicodeDecodeError:
        raise bad("output that is not ASCII") from None
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        key, sep, value = line.strip().partition("=")
        if not sep:
            raise bad(f"a line without '=': {line[:60]!r}")
        if key not in _KEYS:
            raise bad(f"unknown key {key[:40]!r}")
        if key in fields:
            raise bad(f"{key} twice")
        fields[key] = value
    if fields.get("balloonctl-reclaim") != "1":
        raise bad("no 'balloonctl-reclaim=1' line (not balloonctl's script, or another "
                  "version)")
    missing = sorted(_KEYS - set(fields))
    if missing:
        raise bad(f"missing {', '.join(missing)}")
    try:
        method = HintMethod(fields["method"])
    except ValueError:
        raise bad(f"method {fields['method'][:20]!r} (expected reclaim or drop)") from None
    why = fields["why"]
    if (method, why) not in _WHY:
        raise bad(f"why {why[:40]!r} for method {method.value}")
    if fields["mounted"] not in ("0", "1"):
        raise bad(f"mounted {fields['mounted'][:20]!r} (expected 0 or 1)")
    result = fields["result"]
    if result not in _RESULTS:
        raise bad(f"result {result[:20]!r} (expected {', '.join(_RESULTS)})")
    kib: dict[str, int] = {}
    for key in _NUMBERS:
        value = fields[key]
        if not value.isdigit() or int(value) > _MAX_KIB:
            raise bad(f"{key} {value[:20]!r} is not a size in KiB")
        kib[key] = int(value)
    return ReclaimReport(
        method=method, why=why, mounted=fields["mounted"] == "1", result=result,
        cache_before=(kib["before_cached"] + kib["before_buffers"]) * KiB,
        cache_after=(kib["after_cached"] + kib["after_buffers"]) * KiB,
        free_before=kib["before_free"] * KiB,
        free_after=kib["after_free"] * KiB,
    )
