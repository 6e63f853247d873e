"""What each path imports: completion and --help must stay light (a fresh process each)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("textual", "httpx", "qemu")  # never for --help or completion
TYPER = ("typer", "click", "pydantic", "rich")  # not even these for completion

# Runs balloonctl's entry point in a fresh interpreter, then lists the modules it imported
# and how the entry point ended (its exit code, or "returned").
PROBE = """
import json, sys
from balloonctl.__main__ import main
sys.argv = ["balloonctl", *json.loads(sys.argv[1])]
ended = "returned"
try:
    main()
except SystemExit as exc:
    ended = exc.code if isinstance(exc.code, int) or exc.code is None else str(exc.code)
sys.stdout.flush()
import os
with open(os.environ["MODULES_OUT"], "w") as f:
    json.dump({"modules": sorted(sys.modules), "ended": ended}, f)
"""


def probe(tmp_path: Path, args: list[str],
          env: dict[str, str] | None = None) -> tuple[set[str], str, object]:
    """(modules imported, stdout, how main ended) of one balloonctl run."""
    out = tmp_path / "modules.json"
    full_env = {**os.environ, **(env or {}), "MODULES_OUT": str(out),
                "BALLOONCTL_DIR": str(tmp_path), "BALLOONCTL_WELLKNOWN": "",
                "BALLOONCTL_CONFIG": str(tmp_path / "absent.toml")}
    if env is None:
        full_env.pop("_BALLOONCTL_COMPLETE", None)
    r = subprocess.run([sys.executable, "-c", PROBE, json.dumps(args)], env=full_env,
                       capture_output=True, text=True, check=True, timeout=60)
    data = json.loads(out.read_text())
    return set(data["modules"]), r.stdout, data["ended"]


def imported(tmp_path: Path, args: list[str], env: dict[str, str] | None = None) -> set[str]:
    return probe(tmp_path, args, env)[0]


def roots(modules: set[str]) -> set[str]:
    return {m.split(".")[0] for m in modules}


@pytest.mark.parametrize(
    ("request_env", "answer"),
    [
        ({"_BALLOONCTL_COMPLETE": "complete_bash", "COMP_WORDS": "balloonctl set vm1 ",
          "COMP_CWORD": "3"}, ["512M", "1G"]),
        ({"_BALLOONCTL_COMPLETE": "complete_zsh", "_TYPER_COMPLETE_ARGS": "balloonctl st"},
         ['"status":', '"stats":']),
        ({"_BALLOONCTL_COMPLETE": "complete_fish", "_TYPER_COMPLETE_ARGS": "balloonctl st",
          "_TYPER_COMPLETE_FISH_ACTION": "get-args"}, ["status\t", "stats\t"]),
        ({"_BALLOONCTL_COMPLETE": "source_bash"}, ["_balloonctl_complete()", "complete "]),
    ],
)
def test_completion_imports_no_framework(tmp_path: Path, request_env: dict[str, str],
                                         answer: list[str]) -> None:
    (tmp_path / "vm1.qmp").touch()
    modules, stdout, ended = probe(tmp_path, [], request_env)
    # the probe really completed: it answered, and ended as a completion does
    assert ended in (0, None, "returned"), ended
    for expected in answer:
        assert expected in stdout, stdout
    found = roots(modules)
    assert not found & {*HEAVY, *TYPER}, sorted(found & {*HEAVY, *TYPER})


def test_completion_of_vm_names_answers_from_the_socket_dir(tmp_path: Path) -> None:
    (tmp_path / "web-1.qmp").touch()
    (tmp_path / "db.sock").touch()
    _, stdout, _ = probe(tmp_path, [], {"_BALLOONCTL_COMPLETE": "complete_bash",
                                        "COMP_WORDS": "balloonctl status ", "COMP_CWORD": "2"})
    assert {"web-1", "db"} <= set(stdout.split()), stdout


@pytest.mark.parametrize("args", [["--help"], ["status", "--help"], ["set", "--help"],
                                  ["dashboard", "--help"], ["demo", "--help"]])
def test_help_imports_nothing_heavy(tmp_path: Path, args: list[str]) -> None:
    modules, stdout, ended = probe(tmp_path, args)
    found = roots(modules)
    assert "typer" in found  # the probe really ran the typer app
    assert ended in (0, None, "returned") and "Usage: balloonctl" in stdout, stdout
    assert not found & set(HEAVY), sorted(found & set(HEAVY))


def test_core_modules_import_no_framework() -> None:
    program = (
        "import sys, balloonctl.config, balloonctl.policy, balloonctl.cli.fastcomplete, "
        "balloonctl.cli.exitcodes, balloonctl.cli.completers\n"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                         check=True, timeout=60).stdout.split()
    assert not set(out) & {*HEAVY, *TYPER}
