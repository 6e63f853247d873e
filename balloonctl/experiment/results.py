"""What one run of an experiment measured, and the JSON scripts read.

A ``Recorder`` takes a sample of every VM (and the host) at a fixed interval; ``result()``
turns the samples into a ``RunResult``: the means in the RFC's terms, the swapping during
the run, the workload's run time, and the series a chart draws.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from balloonctl.host import HostMemory
from balloonctl.model import GuestStats

__all__ = [
    "EXPERIMENTS",
    "ExperimentResult",
    "HostResult",
    "Recorder",
    "RunResult",
    "Series",
    "VmResult",
]

EXPERIMENTS: Final = ("wave", "overcommit")


@dataclass(frozen=True, slots=True)
class VmResult:
    """One VM over one run: means of its samples (bytes), the swapping during the run
    (bytes), how long its workload took (seconds; None: no workload timed, or it did
    not finish before the run ended), and how the hint was honoured in a hint-on run
    (``hint_method``: ``reclaim`` or ``drop`` in agent mode, ``device`` for the patched
    device; None in a hint-off run, or when the VM did not say)."""

    name: str
    mean_free: int
    mean_cached: int
    mean_actual: int
    swap_in: int
    swap_out: int
    run_time: float | None
    hint_method: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "mean_free": self.mean_free, "mean_cached": self.mean_cached,
                "mean_actual": self.mean_actual, "swap_in": self.swap_in,
                "swap_out": self.swap_out,
                "run_time": None if self.run_time is None else round(self.run_time, 3),
                "hint_method": self.hint_method}


@dataclass(frozen=True, slots=True)
class HostResult:
    """The host over one run: means of its samples (bytes)."""

    mean_free: int
    mean_anon: int
    ksm_saved: int  # mean bytes KSM saved (0 without KSM)

    def to_json(self) -> dict[str, Any]:
        return {"mean_free": self.mean_free, "mean_anon": self.mean_anon,
                "ksm_saved": self.ksm_saved}


@dataclass(frozen=True, slots=True)
class Series:
    """Free memory and page cache over a run: ``t`` (seconds since the start) and, at each
    time, the mean over the VMs sampled then (bytes). For the chart; not in the JSON."""

    t: Sequence[float] = ()
    free: Sequence[int] = ()
    cached: Sequence[int] = ()


@dataclass(frozen=True, slots=True)
class RunResult:
    """One run: the hint off or on."""

    hint: bool
    vms: Sequence[VmResult]
    host: HostResult
    series: Series = field(default_factory=Series)
    seconds: float = 0.0  # how long the run lasted, on the experiment's clock

    def to_json(self) -> dict[str, Any]:
        return {"hint": self.hint, "vms": [v.to_json() for v in self.vms],
                "host": self.host.to_json()}


@dataclass(frozen=True, slots=True)
class ExperimentResult:
    """Both runs of an experiment; ``to_json()`` is what ``--json`` prints."""

    experiment: str
    clock: str  # "simulated" or "real"
    runs: Sequence[RunResult]

    def to_json(self) -> dict[str, Any]:
        return {"experiment": self.experiment, "clock": self.clock,
                "runs": [r.to_json() for r in self.runs]}

    def run(self, hint: bool) -> RunResult:
        """The run with the hint ``hint``. Raises: KeyError: there is none."""
        for r in self.runs:
            if r.hint is hint:
                return r
        raise KeyError(hint)


def _mean(values: Sequence[int]) -> int:
    return sum(values) // len(values) if values else 0


class _VmSamples:
    __slots__ = ("actual", "cached", "first", "free", "last")

    def __init__(self) -> None:
        self.free: list[int] = []
        self.cached: list[int] = []
        self.actual: list[int] = []
        self.first: GuestStats | None = None  # for the swap counters
        self.last: GuestStats | None = None


class Recorder:
    """Samples of one run. A VM sample without free memory or page cache (the driver has
    not reported yet) counts only its ``actual``."""

    def __init__(self, names: Sequence[str]) -> None:
        self._vms = {name: _VmSamples() for name in names}
        self._t: list[float] = []
        self._free: list[int] = []
        self._cached: list[int] = []
        self._host_free: list[int] = []
        self._host_anon: list[int] = []
        self._ksm: list[int] = []

    def sample(self, t: float, vms: Mapping[str, tuple[GuestStats, int]],
               host: HostMemory | None) -> None:
        """Record, at ``t`` seconds into the run, each VM's stats and actual (VMs that could
        not be read are left out) and the host's reading."""
        free: list[int] = []
        cached: list[int] = []
        for name, (stats, actual) in vms.items():
            s = self._vms[name]
            s.actual.append(actual)
            if stats.free_memory is None or stats.disk_caches is None:
                continue
            s.free.append(stats.free_memory)
            s.cached.append(stats.disk_caches)
            free.append(stats.free_memory)
            cached.append(stats.disk_caches)
            if stats.swap_in is not None and stats.swap_out is not None:
                if s.first is None:
                    s.first = stats
                s.last = stats
        if free:
            self._t.append(t)
            self._free.append(_mean(free))
            self._cached.append(_mean(cached))
        if host is not None:
            self._host_free.append(host.free)
            self._host_anon.append(host.anon)
            self._ksm.append(host.ksm.saved if host.ksm is not None else 0)

    def result(self, hint: bool, run_times: Mapping[str, float | None],
               seconds: float, hint_methods: Mapping[str, str | None] | None = None,
               ) -> RunResult:
        """The run's result; ``hint_methods`` says per VM how the hint was honoured."""
        methods = hint_methods or {}
        vms = []
        for name, s in self._vms.items():
            swap_in = swap_out = 0
            if s.first is not None and s.last is not None:
                assert s.first.swap_in is not None and s.last.swap_in is not None
                assert s.first.swap_out is not None and s.last.swap_out is not None
                # a counter that went back (the guest rebooted) counts from zero
                swap_in = max(0, s.last.swap_in - s.first.swap_in)
                swap_out = max(0, s.last.swap_out - s.first.swap_out)
            vms.append(VmResult(name, _mean(s.free), _mean(s.cached), _mean(s.actual),
                                swap_in, swap_out, run_times.get(name), methods.get(name)))
        host = HostResult(_mean(self._host_free), _mean(self._host_anon), _mean(self._ksm))
        series = Series(tuple(self._t), tuple(self._free), tuple(self._cached))
        return RunResult(hint, vms, host, series, seconds)
