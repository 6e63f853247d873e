"""Shell completion: the fast path agrees with the typer app, the generated files are fresh,
and real bash, zsh and fish complete through the checked-in scripts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from balloonctl.cli import fastcomplete, scripts, spec
from balloonctl.cli._spec import SPEC
from balloonctl.cli.app import app

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


@pytest.fixture
def inventory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A socket directory with web-1, web-2 and db (names only: completion never connects)."""
    d = tmp_path / "vms"
    d.mkdir()
    for name in ("web-1.qmp", "web-2.sock", "web-2.qga", "db.qmp", "notes.txt"):
        (d / name).touch()
    env = {
        "BALLOONCTL_DIR": str(d),
        "BALLOONCTL_CONFIG": str(tmp_path / "absent.toml"),
        "BALLOONCTL_WELLKNOWN": "",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    yield d


def values(args: list[str], incomplete: str) -> list[str]:
    return [v for v, _ in fastcomplete.candidates(SPEC, args, incomplete)]


# ---- the generated files --------------------------------------------------------------------


def test_spec_matches_the_live_typer_app() -> None:
    fresh = spec.render_spec(spec.build(typer.main.get_command(app)))
    assert spec.spec_path().read_text() == fresh, (
        "balloonctl/cli/_spec.py is stale: run `balloonctl completion --regen-spec`"
    )


@pytest.mark.parametrize("shell", scripts.SHELLS)
def test_checked_in_scripts_are_fresh(shell: str) -> None:
    path = ROOT / "completions" / scripts.FILENAMES[shell]
    assert path.read_text() == scripts.script(shell), (
        f"{path} is stale: run `balloonctl completion --regen-spec`"
    )


def test_spec_covers_every_visible_command() -> None:
    assert list(SPEC["commands"]) == [
        "status", "set", "hint", "stats", "preflight", "watch", "wave", "plan", "auto",
        "history", "undo", "fake", "dashboard", "top", "demo", "completion", "serve",
        "experiment", "token",  # typer lists groups after commands
    ]
    wave = {n for o in SPEC["commands"]["wave"]["options"] for n in o["names"]}
    assert "--speed" not in wave  # hidden options are not offered


# ---- what the fast path offers -----------------------------------------------------------


def test_commands_and_global_options(inventory: Path) -> None:
    assert values([], "st") == ["status", "stats"]
    assert "completion" in values([], "")
    assert values([], "--d") == ["--dir"]
    assert values([], "-") [:2] == ["--qmp", "--qga"]


def test_vm_names_and_sizes(inventory: Path) -> None:
    assert values(["status"], "") == ["db", "web-1", "web-2"]
    assert values(["status"], "web") == ["web-1", "web-2"]
    assert values(["set"], "") == ["db", "web-1", "web-2"]  # a VM comes first
    after_vm = values(["set", "web-1"], "")
    assert after_vm[:2] == ["db", "web-2"] and "1G" in after_vm and "75%" in after_vm
    assert values(["set", "web-1"], "+") == ["+256M"]
    assert values(["set", "web-1"], "-2") == ["-256M"]  # a negative size, not an option
    assert values(["wave", "web-1", "--min"], "5") == ["512M"]
    assert values(["hint", "db"], "o") == ["on", "off"]


@pytest.mark.parametrize("args", [["wave", "web-1", "--min"], ["wave", "web-1", "--max"],
                                  ["fake", "--mem"], ["demo", "--mem"], ["dashboard", "--step"]])
def test_absolute_size_options_suggest_absolute_sizes_only(inventory: Path,
                                                            args: list[str]) -> None:
    got = values(args, "")
    assert got == ["512M", "1G", "1.5G", "2G", "4G"]
    assert values(args, "+") == values(args, "-") == values(args, "7") == []


def test_options_and_choices(inventory: Path) -> None:
    assert values(["status"], "--f") == ["--format"]
    assert values(["status", "--format"], "") == ["table", "json", "ndjson", "csv"]
    assert values(["status", "-f"], "n") == ["ndjson"]
    assert "--json" not in values(["status", "--json"], "--")  # already given
    assert values(["set", "web-1", "1G"], "--w") == ["--wait"]
    assert values(["watch"], "--no") == ["--no-events"]
    assert values(["completion"], "") == ["bash", "zsh", "fish"]
    assert values(["fake", "--workload"], "") == ["none", "idle", "compile"]
    assert values(["status", "--interval"], "") == []  # free text: nothing to offer


def test_global_options_change_the_inventory(inventory: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "alpha.qmp").touch()
    assert values(["--dir", str(other), "status"], "") == ["alpha"]
    assert values([f"--dir={other}", "status"], "") == ["alpha"]
    assert values(["--dir", "=", str(other), "status"], "") == ["alpha"]  # bash's split
    assert values(["status", "--format", "="], "c") == ["csv"]
    assert values(["--qmp", "x=/nowhere.qmp", "status"], "x") == ["x"]
    assert values(["frobnicate"], "") == []


# ---- the fast path agrees with typer's own completion ------------------------------------

CASES = [
    ("balloonctl ", 1),
    ("balloonctl st", 1),
    ("balloonctl -", 1),
    ("balloonctl --dir /tmp -", 3),
    ("balloonctl status -", 2),
    ("balloonctl status --json -", 3),
    ("balloonctl status --format ", 3),
    ("balloonctl status ", 2),
    ("balloonctl status w", 2),
    ("balloonctl set ", 2),
    ("balloonctl set web-1 1", 3),
    ("balloonctl set web-1 -", 3),
    ("balloonctl watch --", 2),
    ("balloonctl wave web-1 --max ", 4),
    ("balloonctl completion ", 2),
    ("balloonctl fake --workload c", 3),
]


@pytest.mark.parametrize(("words", "cword"), CASES)
def test_fast_path_agrees_with_typer(
    inventory: Path, words: str, cword: int, capsys: pytest.CaptureFixture[str]
) -> None:
    from typer._completion_classes import completion_init

    completion_init()  # the app has add_completion=False; typer's classes answer here
    env = {"_BALLOONCTL_COMPLETE": "complete_bash", "COMP_WORDS": words,
           "COMP_CWORD": str(cword)}
    slow = CliRunner().invoke(app, [], prog_name="balloonctl", env=env)
    assert slow.exit_code == 0, slow.output
    assert fastcomplete.complete(env) == 0
    fast = capsys.readouterr().out
    # the same candidates; click orders the help option's two names at random (a set)
    assert sorted(fast.split()) == sorted(slow.stdout.split())


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_fast_path_agrees_with_typer_formats(
    inventory: Path, shell: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from typer._completion_classes import completion_init

    completion_init()
    for line in ("balloonctl st", "balloonctl status --f", "balloonctl status ", "balloonctl x",
                 "balloonctl watch --format "):
        env = {"_BALLOONCTL_COMPLETE": f"complete_{shell}", "_TYPER_COMPLETE_ARGS": line,
               "_TYPER_COMPLETE_FISH_ACTION": "get-args"}
        slow = CliRunner().invoke(app, [], prog_name="balloonctl", env=env)
        assert fastcomplete.complete(env) == 0
        fast = capsys.readouterr().out
        assert sorted(fast.strip().split("\n")) == sorted(slow.stdout.strip().split("\n")), line


def test_source_requests_print_the_scripts(capsys: pytest.CaptureFixture[str]) -> None:
    for shell in scripts.SHELLS:
        assert fastcomplete.complete({"_BALLOONCTL_COMPLETE": f"source_{shell}"}) == 0
        assert capsys.readouterr().out == scripts.script(shell)
    assert fastcomplete.complete({"_BALLOONCTL_COMPLETE": "source_tcsh"}) == 1
    assert fastcomplete.complete({"_BALLOONCTL_COMPLETE": "bogus"}) == 1


# ---- real shells ----------------------------------------------------------------------------


def shell_env(inventory: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("_BALLOONCTL_COMPLETE", None)
    return env


def need(shell: str) -> str:
    """The shell's path; a missing shell skips, or fails where it must be there (./dev test
    and CI set BALLOONCTL_REQUIRE_REALVM=1 and install zsh and fish)."""
    path = shutil.which(shell)
    if path is None:
        reason = f"{shell} is not installed (apt-get install {shell})"
        if os.environ.get("BALLOONCTL_REQUIRE_REALVM", "").strip() not in ("", "0"):
            pytest.fail(f"{reason} and BALLOONCTL_REQUIRE_REALVM is set")
        pytest.skip(reason)
    return path


def test_a_missing_shell_fails_where_shells_are_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BALLOONCTL_REQUIRE_REALVM", "1")
    with pytest.raises(pytest.fail.Exception, match="no-such-shell is not installed"):
        need("no-such-shell")
    monkeypatch.setenv("BALLOONCTL_REQUIRE_REALVM", "0")
    with pytest.raises(pytest.skip.Exception):
        need("no-such-shell")


def test_bash_end_to_end(inventory: Path) -> None:
    bash = need("bash")
    script = ROOT / "completions" / "balloonctl.bash"

    def complete(*words: str) -> list[str]:
        quoted = " ".join(f"'{w}'" for w in words)
        program = (
            f"source '{script}'\n"
            f"COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}\n"
            "_balloonctl_complete balloonctl\n"
            "printf '%s\\n' \"${COMPREPLY[@]}\"\n"
        )
        out = subprocess.run([bash, "--norc", "--noprofile", "-c", program], check=True,
                             capture_output=True, text=True, env=shell_env(inventory),
                             timeout=30)
        return [line for line in out.stdout.splitlines() if line]

    assert complete("balloonctl", "st") == ["status", "stats"]
    assert complete("balloonctl", "set", "w") == ["web-1", "web-2"]
    assert "1.5G" in complete("balloonctl", "set", "web-1", "")
    assert complete("balloonctl", "hint", "db", "") == ["web-1", "web-2", "on", "off", "status"]
    assert complete("balloonctl", "status", "--format", "j") == ["json"]


def test_zsh_end_to_end(inventory: Path) -> None:
    zsh = need("zsh")
    script = ROOT / "completions" / "_balloonctl"
    # Stand-ins for compsys: record what the completion function hands to _arguments.
    program = (
        "compdef() { : }\n"
        "_arguments() { print -rl -- \"$@\" }\n"
        f"source '{script}'\n"
        "words=(balloonctl set web-1 ''); CURRENT=4\n"
        "_balloonctl\n"
        "words=(balloonctl st); CURRENT=2\n"
        "_balloonctl\n"
    )
    out = subprocess.run([zsh, "-f", "-c", program], check=True, capture_output=True,
                         text=True, env=shell_env(inventory), timeout=30)
    first, second = out.stdout.split("*: :((", 2)[1:]
    assert '"web-2":"VM"' in first and '"75%":"three quarters of guest RAM"' in first
    assert second.startswith('"status":"A table') and '"stats":' in second


def test_fish_end_to_end(inventory: Path) -> None:
    fish = need("fish")
    script = ROOT / "completions" / "balloonctl.fish"
    program = (
        f"source '{script}'\n"
        "complete -C 'balloonctl st'\n"
        "echo ---\n"
        "complete -C 'balloonctl set web-1 +'\n"
    )
    out = subprocess.run([fish, "--no-config", "-c", program], check=True,
                         capture_output=True, text=True, env=shell_env(inventory), timeout=30)
    commands, sizes = out.stdout.split("---\n")
    assert [line.split("\t")[0] for line in commands.splitlines()] == ["stats", "status"]
    assert sizes.splitlines() == ["+256M\t256 MiB more than the current target"]
