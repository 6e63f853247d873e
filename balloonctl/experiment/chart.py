"""The chart of an experiment: free memory and page cache over time, hint off and on.

Drawn with matplotlib, an optional extra (``pip install 'balloonctl[chart]'``); the format
follows the file name (``.png`` or ``.svg``). Written atomically.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Final

from balloonctl.errors import UsageError
from balloonctl.experiment.results import ExperimentResult
from balloonctl.units import MiB

__all__ = ["CHART_FORMATS", "MISSING_MATPLOTLIB", "check_chart_path", "write_chart"]

CHART_FORMATS: Final = ("png", "svg")
MISSING_MATPLOTLIB: Final = (
    "--chart needs matplotlib, which is not installed: pip install 'balloonctl[chart]'"
)


def check_chart_path(path: Path) -> str:
    """The format of a chart file from its name, checked before an experiment starts (so a
    long run does not end without its chart).

    Raises:
        UsageError: not .png or .svg, its directory does not exist, or matplotlib is
            missing.
    """
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in CHART_FORMATS:
        raise UsageError(f"--chart: {path.name!r} must end in .png or .svg")
    if not path.parent.is_dir():
        raise UsageError(f"--chart: no directory {str(path.parent)!r}")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError(MISSING_MATPLOTLIB) from None
    return fmt


def write_chart(result: ExperimentResult, path: Path) -> None:
    """Draw ``result``'s free memory and page cache (the mean over its VMs) against time,
    both runs on one chart, into ``path``.

    Raises:
        UsageError: as ``check_chart_path``.
        OSError: the file cannot be written.
    """
    fmt = check_chart_path(path)
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for run in result.runs:
        label = "hint on" if run.hint else "hint off"
        style = "-" if run.hint else "--"
        s = run.series
        ax.plot(s.t, [v / MiB for v in s.free], style, color="tab:green",
                label=f"free, {label}")
        ax.plot(s.t, [v / MiB for v in s.cached], style, color="tab:blue",
                label=f"cached, {label}")
    n = len(result.runs[0].vms) if result.runs else 0
    per = "" if n == 1 else f" (mean over {n} VMs)"
    ax.set_title(f"balloonctl experiment {result.experiment}: guest free memory and page "
                 f"cache{per}")
    ax.set_xlabel(f"{result.clock} time (s)")
    ax.set_ylabel("MiB")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right", fontsize="small")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        mask = os.umask(0)
        os.umask(mask)
        os.fchmod(fd, 0o666 & ~mask)  # a chart is for sharing: not mkstemp's 0600
        with os.fdopen(fd, "wb") as fh:
            fig.savefig(fh, format=fmt)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
