"""``balloonctl experiment wave|overcommit``: the RFC's two tests, hint off then on.

Without VMs named (no VM argument, ``--qmp``, ``--dir`` or ``--config``) they run on the
simulator, on simulated time; otherwise on those VMs in real time. The command parses the
options, runs ``balloonctl.experiment`` and renders its result: a table per run and the
difference, or the JSON.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from balloonctl.cli import completers
from balloonctl.cli.common import (
    FormatOpt,
    JsonOpt,
    duration,
    out,
    output_format,
    run,
    settings,
    watching_stdout,
)
from balloonctl.cli.output import Format, note, table
from balloonctl.cli.wave import cancel_on_sigterm
from balloonctl.errors import UsageError
from balloonctl.model import VmRef
from balloonctl.units import format_size, parse_size

if TYPE_CHECKING:
    from balloonctl.experiment import Control, ExperimentResult, RunResult, SimSetup

__all__ = ["experiment_app", "render_result"]

experiment_app = typer.Typer(
    name="experiment", no_args_is_help=True, add_completion=False, rich_markup_mode=None,
    help="Rerun the RFC's experiments (hint off, then on): on the simulator, or on the VMs "
         "named with --qmp/--dir/--config.",
)

DurationOpt = Annotated[str | None, typer.Option(
    "--duration", "-d", metavar="DURATION",
    help="End each run after this long (simulated time on the simulator). Real VMs: needed "
         "unless --workload is given.",
)]
WorkloadOpt = Annotated[str | None, typer.Option(
    "--workload", "-w", metavar="CMD",
    help="Real VMs: a shell command run in each guest through qga and timed (e.g. a kernel "
         "build); the run ends when every guest's command has exited.",
)]
WorkOpt = Annotated[str | None, typer.Option(
    "--work", metavar="DURATION",
    help="Simulator: how much compile work each guest does, in seconds of unhindered "
         "compiling (default 200s).",
)]
ChartOpt = Annotated[Path | None, typer.Option(
    "--chart", metavar="FILE",
    help="Also draw free memory and page cache over time, both runs, into FILE (.png or "
         ".svg; needs matplotlib: pip install 'balloonctl[chart]').",
)]
SpeedOpt = Annotated[float | None, typer.Option("--speed", hidden=True, min=0.001)]
SampleOpt = Annotated[str, typer.Option("--sample", hidden=True, metavar="DURATION")]
SeedOpt = Annotated[int | None, typer.Option("--seed", hidden=True)]


# --- rendering -------------------------------------------------------------------------


def _signed(n: int) -> str:
    return f"+{format_size(n)}" if n > 0 else format_size(n)


def _seconds(t: float | None) -> str:
    return "-" if t is None else f"{t:.1f} s"


def _run_table(result: ExperimentResult, r: RunResult) -> str:
    head = (f"experiment {result.experiment} ({result.clock} clock): hint "
            f"{'on' if r.hint else 'off'}, {r.seconds:.0f} s")
    rows = [[v.name, format_size(v.mean_free), format_size(v.mean_cached),
             format_size(v.mean_actual), format_size(v.swap_in), format_size(v.swap_out),
             _seconds(v.run_time), v.hint_method or "-"] for v in r.vms]
    body = table(["VM", "MEAN FREE", "MEAN CACHED", "MEAN ACTUAL", "SWAP IN", "SWAP OUT",
                  "RUN TIME", "HINT METHOD"], rows)
    h = r.host
    host = (f"host: mean free {format_size(h.mean_free)}, mean anon {format_size(h.mean_anon)}"
            f", KSM saved {format_size(h.ksm_saved)}")
    return "\n".join([head, body, host])


def _diff_table(off: RunResult, on: RunResult) -> str:
    rows = []
    before = {v.name: v for v in off.vms}
    for v in on.vms:
        b = before.get(v.name)
        if b is None:
            continue
        rt = "-"
        if v.run_time is not None and b.run_time is not None:
            rt = f"{v.run_time - b.run_time:+.1f} s"
            if b.run_time > 0:
                rt += f" ({(v.run_time / b.run_time - 1) * 100:+.1f} %)"
        rows.append([v.name, _signed(v.mean_free - b.mean_free),
                     _signed(v.mean_cached - b.mean_cached),
                     _signed(v.mean_actual - b.mean_actual), _signed(v.swap_in - b.swap_in),
                     _signed(v.swap_out - b.swap_out), rt])
    body = table(["VM", "FREE", "CACHED", "ACTUAL", "SWAP IN", "SWAP OUT", "RUN TIME"], rows)
    a, b2 = on.host, off.host
    host = (f"host: free {_signed(a.mean_free - b2.mean_free)}, anon "
            f"{_signed(a.mean_anon - b2.mean_anon)}, KSM saved "
            f"{_signed(a.ksm_saved - b2.ksm_saved)}")
    return "\n".join(["difference, hint on - off", body, host])


def render_result(result: ExperimentResult) -> str:
    """The tables: one per run, then the difference on - off."""
    parts = [_run_table(result, r) for r in result.runs]
    try:
        parts.append(_diff_table(result.run(False), result.run(True)))
    except KeyError:
        pass
    return "\n\n".join(parts)


# --- running ---------------------------------------------------------------------------


def _real_requested(vms: Sequence[str]) -> bool:
    s = settings()
    return bool(vms or s.qmp or s.directory or s.config)


def _sim_setup(base: SimSetup, work: str | None, speed: float | None,
               seed: int | None) -> SimSetup:
    setup = base
    if work is not None:
        setup = replace(setup, work=duration(work, "--work") or setup.work)
    if speed is not None:
        setup = replace(setup, speed=speed)
    if seed is not None:
        setup = replace(setup, seed=seed)
    return setup


def _execute(
    name: str,
    refs: list[VmRef] | None,
    control: Callable[[], Control],
    *,
    sim: SimSetup,
    workload: str | None,
    work: str | None,
    limit: str | None,
    chart: Path | None,
    fmt: Format,
    speed: float | None,
    sample: str,
    seed: int | None,
) -> None:
    """Check the options, run the experiment (``refs``: real VMs; None: the simulator),
    print the result and draw the chart.

    Raises:
        UsageError: an option that does not fit the run.
        BalloonError: the experiment failed.
    """
    from balloonctl import experiment

    if fmt not in (Format.TABLE, Format.JSON):
        raise UsageError(f"--format {fmt.value}: experiment prints a table or json")
    bound = duration(limit, "--duration")
    every = duration(sample, "--sample") or 1.0
    if chart is not None:
        experiment.check_chart_path(chart)

    async def go() -> ExperimentResult:
        def done(r: RunResult) -> None:
            if sys.stderr.isatty():
                on = "on" if r.hint else "off"
                note(f"experiment {name}: hint {on}: {r.seconds:.0f} s")

        if refs is None:
            if workload is not None:
                raise UsageError("--workload runs a command in real guests (name them with "
                                 "--qmp, --dir or --config); the simulator runs its own "
                                 "compile workload (see --work)")
            setup = _sim_setup(sim, work, speed, seed)
            return await experiment.run_experiment(
                name, "simulated", experiment.sim_benches(setup), control,
                duration=bound, sample=every, on_run=done)
        if work is not None or speed is not None or seed is not None:
            raise UsageError("--work is for the simulator; on real VMs give --workload CMD")
        if bound is None and workload is None:
            raise UsageError("on real VMs, give --duration or --workload (or both)")
        from balloonctl.host import host_root_for

        clients = {r.name: settings().client(r) for r in refs}
        benches, restore = experiment.real_benches(
            clients, workload=workload, host_root=host_root_for(settings().directory))
        try:
            return await experiment.run_experiment(
                name, "real", benches, control, duration=bound, sample=every,
                on_run=done)
        finally:
            try:
                await restore()
            finally:
                for c in clients.values():
                    await c.close()

    result = run(cancel_on_sigterm(watching_stdout(go())))
    if chart is not None:
        experiment.write_chart(result, chart)
    if fmt is Format.JSON:
        import json

        out(json.dumps(result.to_json(), indent=2))
    else:
        out(render_result(result))


@experiment_app.command("wave")
def wave(
    vm: Annotated[str | None, typer.Argument(
        metavar="[VM]", help="A real VM to balloon (default: the simulator's one 2 GiB VM).",
        autocompletion=completers.typer_callback("vm"), show_default=False,
    )] = None,
    minimum: Annotated[str, typer.Option("--min", metavar="SIZE",
                                         help="The bottom of the wave.")] = "500M",
    maximum: Annotated[str, typer.Option("--max", metavar="SIZE",
                                         help="The top of the wave.")] = "1500M",
    period: Annotated[str, typer.Option("--period", "-p", metavar="DURATION",
                                        help="One full cycle, top to top.")] = "60s",
    step: Annotated[str | None, typer.Option(
        "--step", metavar="DURATION", help="Time between targets (default: period/20).",
    )] = None,
    limit: DurationOpt = None,
    workload: WorkloadOpt = None,
    work: WorkOpt = None,
    chart: ChartOpt = None,
    fmt: FormatOpt = None,
    as_json: JsonOpt = False,
    speed: SpeedOpt = None,
    sample: SampleOpt = "1s",
    seed: SeedOpt = None,
) -> None:
    """The RFC's first test: one VM running a compile workload, ballooned along a
    triangular wave (500 MB to 1500 MB), once with the cache-first hint off, once on."""
    from balloonctl import experiment
    from balloonctl.wave import check_wave

    fmt = output_format(fmt, as_json)
    low, high = parse_size(minimum), parse_size(maximum)
    cycle = duration(period, "--period") or 60.0
    every = duration(step, "--step") or cycle / 20
    check_wave(minimum=low, maximum=high, period=cycle, step=every)
    refs: list[VmRef] | None = None
    if _real_requested([vm] if vm else []):
        single = settings().single() if vm is None else None
        if vm is None and single is None:
            raise UsageError("name the VM (the wave experiment takes one VM)")
        refs = [single or settings().inventory().select_one(vm or "", command="experiment")]

    def control() -> Control:
        return experiment.WaveControl(low, high, cycle, every)

    _execute("wave", refs, control, sim=experiment.WAVE_SIM, workload=workload, work=work,
             limit=limit, chart=chart, fmt=fmt, speed=speed, sample=sample, seed=seed)


@experiment_app.command("overcommit")
def overcommit(
    vms: Annotated[list[str] | None, typer.Argument(
        metavar="[VM...]", help="Real VMs to manage (default: the simulator's six 2 GiB VMs "
                                "on an 8 GiB host).",
        autocompletion=completers.typer_callback("vms"), show_default=False,
    )] = None,
    limit: DurationOpt = None,
    workload: WorkloadOpt = None,
    work: WorkOpt = None,
    chart: ChartOpt = None,
    fmt: FormatOpt = None,
    as_json: JsonOpt = False,
    speed: SpeedOpt = None,
    sample: SampleOpt = "1s",
    seed: SeedOpt = None,
) -> None:
    """The RFC's second test: VMs running a compile workload on a host with less memory
    than they add up to, managed by the automatic-ballooning policy every cycle (KSM on),
    once with the cache-first hint off, once on."""
    from balloonctl import experiment
    from balloonctl.policy import PolicySettings

    fmt = output_format(fmt, as_json)
    names = list(vms or [])
    refs: list[VmRef] | None = None
    policy = PolicySettings()
    if _real_requested(names):
        refs = settings().select(names)
        if not refs:
            raise UsageError("no VMs to manage (name them, or give --qmp, --dir or --config)")
        policy = settings().inventory().config.policy

    def control() -> Control:
        return experiment.PolicyControl(policy)

    _execute("overcommit", refs, control, sim=experiment.OVERCOMMIT_SIM, workload=workload,
             work=work, limit=limit, chart=chart, fmt=fmt, speed=speed, sample=sample,
             seed=seed)
