"""The RFC's two experiments, rerun with one command each (``balloonctl experiment``).

    run_experiment   both runs (hint off, then on) of an experiment on a bench of each
    run_once         one run: hint, workloads, the control step and samples until the end
    WaveControl      test 1: every VM's target along the triangular wave
    PolicyControl    test 2: the automatic-ballooning policy every cycle (``policy_step``)
    sim_benches      the simulator: a fake fleet on simulated time, with a simulated host
    real_benches     real VMs in real time, a workload run and timed through qga
    ExperimentResult what was measured; ``to_json()`` is the ``--json`` output
    write_chart      free memory and page cache over time, both runs (matplotlib, optional)

Depends on the core, ``policy`` and ``wave``; the fake only on the simulator (imported
there), matplotlib only for a chart.
"""

from balloonctl.experiment.chart import check_chart_path, write_chart
from balloonctl.experiment.real import RealBench, real_benches
from balloonctl.experiment.results import (
    EXPERIMENTS,
    ExperimentResult,
    HostResult,
    Recorder,
    RunResult,
    Series,
    VmResult,
)
from balloonctl.experiment.runs import (
    STATS_INTERVAL,
    Bench,
    Clock,
    Control,
    PolicyControl,
    RealClock,
    WaveControl,
    policy_step,
    run_experiment,
    run_once,
)
from balloonctl.experiment.sim import OVERCOMMIT_SIM, WAVE_SIM, SimBench, SimSetup, sim_benches

__all__ = [
    "EXPERIMENTS",
    "OVERCOMMIT_SIM",
    "STATS_INTERVAL",
    "WAVE_SIM",
    "Bench",
    "Clock",
    "Control",
    "ExperimentResult",
    "HostResult",
    "PolicyControl",
    "RealBench",
    "RealClock",
    "Recorder",
    "RunResult",
    "Series",
    "SimBench",
    "SimSetup",
    "VmResult",
    "WaveControl",
    "check_chart_path",
    "policy_step",
    "real_benches",
    "run_experiment",
    "run_once",
    "sim_benches",
    "write_chart",
]
