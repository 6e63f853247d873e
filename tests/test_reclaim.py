"""The guest's cache-reclaim script: its output parser (the output comes from inside the
guest: every wrong shape is a clear AgentError) and its syntax under the shells guests have.
Running it for real is tests/realvm's job (busybox, a 6.1 kernel)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from balloonctl.errors import AgentError
from balloonctl.model import HintMethod
from balloonctl.reclaim import (
    RECLAIM_MARKER,
    RECLAIM_SCRIPT,
    parse_reclaim_output,
    reclaim_argv,
)
from balloonctl.units import KiB, MiB

GOOD = {
    "balloonctl-reclaim": "1",
    "before_free": "100000", "before_buffers": "20", "before_cached": "213408",
    "after_free": "165536", "after_buffers": "20", "after_cached": "147872",
    "method": "reclaim", "why": "no-swappiness-key", "mounted": "1", "result": "ok",
}


def render(fields: dict[str, str]) -> bytes:
    return "".join(f"{k}={v}\n" for k, v in fields.items()).encode()


def test_a_good_report_in_bytes_with_buffers_counted_as_cache() -> None:
    report = parse_reclaim_output(render(GOOD))
    assert report.method is HintMethod.RECLAIM and report.mounted and report.result == "ok"
    assert report.cache_before == (213408 + 20) * KiB
    assert report.cache_after == (147872 + 20) * KiB
    assert report.released == (213408 - 147872) * KiB
    assert (report.free_before, report.free_after) == (100000 * KiB, 165536 * KiB)
    assert "swappiness=0" in report.explanation and "mounted cgroup2" in report.explanation


def test_cache_that_grew_meanwhile_released_nothing() -> None:
    report = parse_reclaim_output(render({**GOOD, "after_cached": "300000"}))
    assert report.released == 0


@pytest.mark.parametrize(
    ("output", "message"),
    [
        (b"", "no 'balloonctl-reclaim=1' line"),
        (render({**GOOD, "balloonctl-reclaim": "2"}), "another version"),
        (render({k: v for k, v in GOOD.items() if k != "after_free"}), "missing after_free"),
        (render(GOOD) + b"before_free=1\n", "before_free twice"),
        (render(GOOD) + b"colour=blue\n", "unknown key 'colour'"),
        (render(GOOD) + b"just words\n", "a line without '='"),
        (render({**GOOD, "method": "zap"}), "method 'zap'"),
        (render({**GOOD, "why": "because"}), "why 'because' for method reclaim"),
        (render({**GOOD, "method": "drop"}), "why 'no-swappiness-key' for method drop"),
        (render({**GOOD, "mounted": "yes"}), "mounted 'yes'"),
        (render({**GOOD, "result": "maybe"}), "result 'maybe'"),
        (render({**GOOD, "before_cached": ""}), "before_cached '' is not a size"),
        (render({**GOOD, "after_free": "-5"}), "after_free '-5' is not a size"),
        (render({**GOOD, "after_free": "12 kB"}), "after_free '12 kB' is not a size"),
        (render({**GOOD, "after_free": str(2**50 + 1)}), "is not a size"),
        (render(GOOD) + "é=1\n".encode(), "not ASCII"),
    ],
)
def test_every_wrong_shape_is_a_clear_agent_error(output: bytes, message: str) -> None:
    with pytest.raises(AgentError, match="cache-reclaim script printed") as err:
        parse_reclaim_output(output, vm="vm1")
    assert message in str(err.value)
    assert err.value.vm == "vm1"


def test_the_largest_figure_accepted() -> None:
    report = parse_reclaim_output(render({**GOOD, "after_free": str(2**50)}))
    assert report.free_after == 2**50 * KiB


def test_argv_passes_size_and_mount_permission_as_positional_arguments() -> None:
    assert reclaim_argv(64 * MiB, mount_cgroup=True) == [
        "-c", RECLAIM_SCRIPT, RECLAIM_MARKER, str(64 * MiB), "1"]
    assert reclaim_argv(-5, mount_cgroup=False)[3:] == ["0", "0"]


_SHELLS = [["dash"], ["bash", "--posix"], ["busybox", "sh"]]


@pytest.mark.parametrize("shell", _SHELLS, ids=lambda s: s[0])
def test_the_script_parses_under_the_shells_guests_have(shell: list[str]) -> None:
    if shutil.which(shell[0]) is None:
        pytest.skip(f"{shell[0]} is not installed here")  # the others still run
    result = subprocess.run([*shell, "-n", "-c", RECLAIM_SCRIPT], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stderr


# /proc/meminfo as Linux 6.1 prints it, up to the last line the script needs, then more.
_MEMINFO_HEAD = """MemTotal:        1002244 kB
MemFree:          742240 kB
MemAvailable:     905120 kB
Buffers:              20 kB
Cached:           213408 kB
SwapCached:            0 kB
Active:            14284 kB
Inactive:         211880 kB
Active(anon):      12700 kB
Inactive(anon):        0 kB
Active(file):       1584 kB
Inactive(file):   211880 kB
"""


def _readmem(shell: list[str], meminfo: str, tmp_path: Path) -> str:
    """Run the script's own ``readmem`` on ``meminfo`` (only the file's path is changed)."""
    match = re.search(r"^readmem\(\) \{\n.*?^\}\n", RECLAIM_SCRIPT, re.S | re.M)
    assert match is not None, "the script has no readmem function"
    path = tmp_path / "meminfo"
    path.write_text(meminfo)
    function = match.group(0).replace("/proc/meminfo", str(path))
    result = subprocess.run([*shell, "-c", function + 'readmem; echo "$c $b $f $af $inf"'],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.mark.parametrize("shell", _SHELLS, ids=lambda s: s[0])
def test_meminfo_is_read_only_up_to_the_last_line_needed(shell: list[str],
                                                         tmp_path: Path) -> None:
    # A shell reads a file one byte per system call: the whole of /proc/meminfo cost ten
    # times the guest CPU, taken from the inflation on a one-vCPU guest. A later line with
    # a needed name must not be reached (the kernel prints each name once).
    if shutil.which(shell[0]) is None:
        pytest.skip(f"{shell[0]} is not installed here")  # the others still run
    later = "SwapTotal:       0 kB\nCached:          1 kB\nMemFree:         2 kB\n"
    assert _readmem(shell, _MEMINFO_HEAD + later, tmp_path) == "213408 20 742240 1584 211880"
    # In another order every field is still found (it stops only once it has all five).
    lines = _MEMINFO_HEAD.splitlines(keepends=True)
    assert _readmem(shell, "".join(lines[::-1]), tmp_path) == "213408 20 742240 1584 211880"
    # A kernel without the file LRU lines: no file pages known, the rest still read.
    no_lru = "".join(line for line in lines if "(file)" not in line)
    assert _readmem(shell, no_lru, tmp_path) == "213408 20 742240 0 0"
