"""Exit codes: one documented enum, decided in one function."""

from __future__ import annotations

import pytest

from balloonctl import errors
from balloonctl.cli.exitcodes import ExitCode, combine, exit_code_for


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.UsageError("x"), ExitCode.USAGE),
        (errors.SizeError("x"), ExitCode.USAGE),
        (errors.UnknownVM("x"), ExitCode.USAGE),
        (errors.UnsafeTarget("x"), ExitCode.UNSAFE_TARGET),
        (errors.ConnectFailed("x"), ExitCode.UNREACHABLE),
        (errors.SocketBusy("x"), ExitCode.UNREACHABLE),
        (errors.Disconnected("x"), ExitCode.UNREACHABLE),
        (errors.HostReadError("x", path="/proc/meminfo"), ExitCode.UNREACHABLE),
        (errors.QMPTimeout("x"), ExitCode.TIMEOUT),
        (errors.WaitTimeout("x"), ExitCode.TIMEOUT),
        (errors.StuckBalloon("x"), ExitCode.TIMEOUT),
        (errors.DriverNotReady("x"), ExitCode.TIMEOUT),
        (errors.QMPCommandError("x"), ExitCode.QMP_ERROR),
        (errors.NoBalloonDevice("x"), ExitCode.QMP_ERROR),
        (errors.HintUnsupported("x"), ExitCode.QMP_ERROR),
        (errors.AgentError("x"), ExitCode.QMP_ERROR),
        (errors.AgentExecBlocked("x"), ExitCode.QMP_ERROR),
        (errors.JournalError("x", path="/j"), ExitCode.JOURNAL),
        (errors.BalloonError("x"), ExitCode.FAILURE),
        (RuntimeError("bug"), ExitCode.FAILURE),
        (KeyboardInterrupt(), ExitCode.INTERRUPTED),
    ],
)
def test_every_error_has_its_code(error: BaseException, code: ExitCode) -> None:
    assert exit_code_for(error) is code
    assert exit_code_for(type(error)) is code
    if isinstance(error, errors.BalloonError):
        assert exit_code_for(type(error).__name__) is code  # BalloonState.error_kind


def test_every_error_class_in_the_tree_is_mapped_deliberately() -> None:
    for name in errors.__all__:
        cls = getattr(errors, name)
        if cls is not errors.BalloonError:
            assert exit_code_for(cls) is not ExitCode.FAILURE, name


def test_unknown_error_kind_counts_as_unreachable() -> None:
    assert exit_code_for("TimeoutError") is ExitCode.UNREACHABLE


def test_combine() -> None:
    ok, bad = ExitCode.OK, ExitCode.UNSAFE_TARGET
    assert combine([]) is ok and combine([ok, ok]) is ok
    assert combine([ok, bad]) is ExitCode.PARTIAL
    assert combine([ExitCode.UNREACHABLE, bad]) is bad
    assert combine([bad]) is bad


def test_codes_are_documented() -> None:
    """docs/cli.md's exit-code table lists exactly ExitCode's codes, by the same names."""
    import re
    from pathlib import Path

    doc = (Path(__file__).parent.parent / "docs" / "cli.md").read_text()
    section = doc.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\d+) \| ([A-Z_]+) \| (.+) \|$", section, flags=re.M)
    assert rows, "no exit-code table under '## Exit codes' in docs/cli.md"
    documented = {int(code): name for code, name, _ in rows}
    assert documented == {code.value: code.name for code in ExitCode}
    assert len(rows) == len(documented)  # no code listed twice
    assert all(when.strip() for _, _, when in rows)
