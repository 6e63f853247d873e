"""How one run goes, whatever the VMs are: set the hint, start the workloads, then, on the
bench's clock, drive the balloons (the control step) and sample every VM and the host until
the workloads end or the duration is up.

A bench is where a run happens (``Bench``): the simulated fleet (``sim.SimBench``) or real
VMs (``real.RealBench``). A control step is what moves the balloons (``Control``): the
RFC's triangular wave (``WaveControl``) or the automatic-ballooning policy
(``PolicyControl``, whose per-cycle work is ``policy_step``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

from balloonctl.auto import plan_cycle
from balloonctl.errors import BalloonError
from balloonctl.experiment.results import ExperimentResult, Recorder, RunResult
from balloonctl.host import HostMemory
from balloonctl.model import BalloonState, GuestStats
from balloonctl.policy import Decision, PolicySettings
from balloonctl.wave import triangle_wave

if TYPE_CHECKING:
    from balloonctl.backend import VmClient

__all__ = [
    "STATS_INTERVAL",
    "Bench",
    "Clock",
    "Control",
    "PolicyControl",
    "RealClock",
    "WaveControl",
    "policy_step",
    "run_experiment",
    "run_once",
]

log = logging.getLogger(__name__)

# The guest pushes a stats sample this often (seconds, on the bench's clock) during a run.
STATS_INTERVAL: Final = 1


class Clock(Protocol):
    """Time as a run sees it: seconds since some start, the matching ``time.time()``, and
    a wait until a time."""

    def now(self) -> float: ...

    def wall(self) -> float: ...

    async def sleep_until(self, t: float) -> None: ...


class RealClock:
    """Real time (``time.monotonic`` from creation)."""

    def __init__(self) -> None:
        self._origin = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self._origin

    def wall(self) -> float:
        return time.time()

    async def sleep_until(self, t: float) -> None:
        await asyncio.sleep(max(0.0, t - self.now()))


class Bench(Protocol):
    """The VMs of one run. ``clients`` are connected lazily and closed by whoever opened
    the bench."""

    @property
    def clock(self) -> Clock: ...

    @property
    def clients(self) -> Mapping[str, VmClient]: ...

    def read_host(self) -> HostMemory | None:
        """The host's memory now (None: not known). Raises: HostReadError."""
        ...

    async def start_workloads(self) -> None:
        """Start each VM's workload (the run's time starts just before)."""
        ...

    def finished(self) -> bool:
        """Every workload has ended (always False without workloads: the duration ends
        the run)."""
        ...

    async def stop_workloads(self) -> dict[str, float | None]:
        """End the run's timing: each VM's workload run time (None: none, or unfinished)."""
        ...


class Control(Protocol):
    """What moves the balloons during a run: called every ``every`` seconds of the run,
    first at 0."""

    every: float

    async def __call__(self, bench: Bench, t: float) -> None: ...


@dataclass(slots=True)
class WaveControl:
    """The RFC's first test: every VM's target follows ``triangle_wave`` (from ``maximum``
    down to ``minimum`` and back each ``period``), set every ``every`` seconds."""

    minimum: int
    maximum: int
    period: float
    every: float

    async def __call__(self, bench: Bench, t: float) -> None:
        target = triangle_wave(t, minimum=self.minimum, maximum=self.maximum,
                               period=self.period)
        await asyncio.gather(*(c.set_target(target) for c in bench.clients.values()))


async def policy_step(
    clients: Mapping[str, VmClient],
    previous: Mapping[str, BalloonState],
    host: HostMemory,
    settings: PolicySettings,
    *,
    wall: float,
) -> tuple[list[Decision], dict[str, BalloonState]]:
    """One cycle of automatic ballooning, as ``auto`` does it: snapshot every VM, decide
    as ``AutoController`` does (``balloonctl.auto.plan_cycle``) and send each changed target
    through ``BalloonClient.set_target`` (the ``set`` command's path: validated, the
    agent-mode hint's reclaim alongside an inflation). ``wall`` is the time the snapshots
    count as taken (the bench's ``time.time()``: simulated time on the simulator). Returns
    the decisions and the snapshots (the next cycle's ``previous``).

    Raises:
        BalloonError: sending a target failed.
    """
    names = list(clients)
    states = await asyncio.gather(*(clients[n].snapshot() for n in names))
    now = {s.name: s.with_changes(taken_at=wall) for s in states}
    decisions = plan_cycle(list(now.values()), previous, host, settings)
    await asyncio.gather(*(clients[d.name].set_target(d.target)
                           for d in decisions if d.target is not None))
    return decisions, now


class PolicyControl:
    """The RFC's second test: the policy (``decide``) every ``settings.cycle`` seconds."""

    def __init__(self, settings: PolicySettings) -> None:
        self.settings = settings
        self.every = settings.cycle
        self.previous: dict[str, BalloonState] = {}
        self.decisions: list[list[Decision]] = []  # every cycle's, for whoever wants them

    async def __call__(self, bench: Bench, t: float) -> None:
        host = bench.read_host()
        if host is None:
            return
        decisions, self.previous = await policy_step(
            bench.clients, self.previous, host, self.settings, wall=bench.clock.wall())
        self.decisions.append(decisions)


async def _sample(bench: Bench) -> dict[str, tuple[GuestStats, int]]:
    async def one(c: VmClient) -> tuple[GuestStats, int]:
        return await c.stats(), await c.query_actual()

    names = list(bench.clients)
    got = await asyncio.gather(*(one(bench.clients[n]) for n in names), return_exceptions=True)
    out: dict[str, tuple[GuestStats, int]] = {}
    for name, r in zip(names, got, strict=True):
        if isinstance(r, BalloonError):
            log.warning("%s: not sampled: %s", name, r)
        elif isinstance(r, BaseException):
            raise r
        else:
            out[name] = r
    return out


async def run_once(bench: Bench, hint: bool, control: Control, *, duration: float | None,
                   sample: float) -> RunResult:
    """One run with the cache-first hint ``hint``: until every workload has ended or
    ``duration`` seconds have passed (on the bench's clock), whichever comes first; the
    control step every ``control.every`` seconds, a sample every ``sample`` seconds.

    Raises:
        BalloonError: setting the hint, a target, or reading the host failed.
    """
    clock = bench.clock
    clients = bench.clients
    await asyncio.gather(*(c.enable_stats(STATS_INTERVAL) for c in clients.values()))
    await asyncio.gather(*(c.set_hint(hint) for c in clients.values()))
    recorder = Recorder(list(clients))
    start = clock.now()
    await bench.start_workloads()
    end = float("inf") if duration is None else duration
    next_control = next_sample = 0.0
    try:
        while True:
            t = clock.now() - start
            if t >= next_control:
                await control(bench, t)
                while next_control <= t:
                    next_control += control.every
            if t >= next_sample:
                recorder.sample(t, await _sample(bench), bench.read_host())
                while next_sample <= t:
                    next_sample += sample
            if bench.finished() or t >= end:
                break
            await clock.sleep_until(start + min(next_control, next_sample, end))
    finally:
        run_times = await bench.stop_workloads()
    seconds = clock.now() - start
    methods = await _hint_methods(clients) if hint else {}
    return recorder.result(hint, run_times, seconds, methods)


async def _hint_methods(clients: Mapping[str, VmClient]) -> dict[str, str | None]:
    """How each VM honoured the hint, from its hint state (what ``status`` shows):
    ``reclaim`` or ``drop`` in agent mode, ``device`` in device mode, else None."""
    names = list(clients)
    got = await asyncio.gather(*(clients[n].hint_status() for n in names),
                               return_exceptions=True)
    out: dict[str, str | None] = {}
    for name, r in zip(names, got, strict=True):
        if isinstance(r, BalloonError):
            log.warning("%s: hint method not known: %s", name, r)
            out[name] = None
        elif isinstance(r, BaseException):
            raise r
        else:
            out[name] = r.honoured_by
    return out


async def run_experiment(
    experiment: str,
    clock: str,
    benches: Callable[[], AbstractAsyncContextManager[Bench]],
    control: Callable[[], Control],
    *,
    duration: float | None,
    sample: float,
    hints: Sequence[bool] = (False, True),
    on_run: Callable[[RunResult], Awaitable[None] | None] | None = None,
) -> ExperimentResult:
    """Run the experiment once per hint setting (off, then on), each on a bench of its own
    (``benches()``) with a fresh control step; ``on_run`` sees each run as it ends.

    Raises:
        BalloonError: as ``run_once``, or opening a bench failed.
    """
    runs: list[RunResult] = []
    for hint in hints:
        async with benches() as bench:
            result = await run_once(bench, hint, control(), duration=duration, sample=sample)
        runs.append(result)
        if on_run is not None:
            maybe = on_run(result)
            if maybe is not None:
                await maybe
    return ExperimentResult(experiment, clock, runs)
