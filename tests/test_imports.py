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
        "import sys, balloonctl.config, balloonctl.policy, balloonctl.wave, "
        "balloonctl.auto, balloonctl.changes, "
        "balloonctl.cli.fastcomplete, "
        "balloonctl.cli.exitcodes, balloonctl.cli.completers\n"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                         check=True, timeout=60).stdout.split()
    assert not set(out) & {*HEAVY, *TYPER}


def test_journal_and_history_import_only_the_core() -> None:
    # the CLI, the dashboard and serve all read the journal: it must stay below them
    program = (
        "import sys, balloonctl.journal, balloonctl.history\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('balloonctl') "
        "or m.split('.')[0] in {'qemu', 'typer', 'textual', 'httpx', 'starlette'})))"
    )
    out = set(subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                             check=True, timeout=60).stdout.split())
    assert out <= {"balloonctl", "balloonctl.errors", "balloonctl.store", "balloonctl.units",
                   "balloonctl.statefile", "balloonctl.text", "balloonctl.journal",
                   "balloonctl.history"}, sorted(out)


# ---- layering: who may import whom inside balloonctl ----------------------------------------

PACKAGE = Path(__file__).resolve().parent.parent / "balloonctl"
CORE = frozenset({"units", "model", "errors", "store", "statefile", "text", "replies",
                  "sockpeer", "deadline"})
# The QMP/QGA/host layer, each with the balloonctl modules it may import at load time.
PRIMITIVES = {
    "qmpsession": CORE,
    "runfacts": CORE | {"qmpsession"},
    "converge": CORE,
    "snapshots": CORE,
    "qmp": CORE | {"qmpsession", "runfacts", "converge", "qga", "snapshots"},
    "qga": CORE,
    "host": CORE,
}
# Imports inside a function, allowed where a lower module composes a higher one: a
# BalloonClient owns a CacheFirst and a RememberedTargets, both built on balloonctl.qmp.
LAZY = {"qmp": frozenset({"cachefirst", "targets"})}
FRONT_ENDS = ("cli", "http", "serve")  # the only ones that may import the frameworks below
FRAMEWORKS = frozenset({"typer", "click", "textual", "starlette", "httpx", "uvicorn"})


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """Top-level names imported by ``path``: (at load time, inside functions). Imports
    under ``if TYPE_CHECKING:`` are for annotations only and count as neither."""
    import ast

    tree = ast.parse(path.read_text(), str(path))
    loaded: set[str] = set()
    lazy: set[str] = set()

    def names(node: ast.Import | ast.ImportFrom) -> set[str]:
        if isinstance(node, ast.Import):
            return {alias.name for alias in node.names}
        assert node.level == 0, f"{path}: relative import"
        base = node.module or ""
        if base == "balloonctl":  # from balloonctl import x
            return {f"balloonctl.{alias.name}" for alias in node.names}
        return {base}

    def visit(node: ast.AST, into: set[str]) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for sub in child.orelse:
                    visit(sub, into)
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                into.update(names(child))
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                visit(child, lazy)
            else:
                visit(child, into)

    visit(tree, loaded)
    return loaded, lazy


def _unit(path: Path) -> str:
    """balloonctl/qmp.py -> "qmp"; balloonctl/fake/vm.py -> "fake"."""
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def _balloonctl_units(modules: set[str]) -> set[str]:
    return {m.split(".")[1] for m in modules if m.startswith("balloonctl.")}


def _sources() -> list[Path]:
    found = sorted(PACKAGE.rglob("*.py"))
    assert len(found) > 20 and PACKAGE / "qmp.py" in found  # the scan sees the package
    return found


def test_the_core_imports_only_the_core() -> None:
    for path in _sources():
        if _unit(path) in CORE:
            loaded, lazy = _imports(path)
            assert _balloonctl_units(loaded | lazy) <= CORE, path.name


def test_qmp_qga_and_host_import_only_the_core() -> None:
    seen = set()
    for path in _sources():
        unit = _unit(path)
        if unit in PRIMITIVES:
            seen.add(unit)
            loaded, lazy = _imports(path)
            assert _balloonctl_units(loaded) - {unit} <= PRIMITIVES[unit], path.name
            assert _balloonctl_units(lazy) <= PRIMITIVES[unit] | LAZY.get(unit, set()), path.name
    assert seen == set(PRIMITIVES)


def test_loading_the_primitives_loads_nothing_above_them() -> None:
    """What ``import balloonctl.qmp`` (and qga, host) pulls in, transitively."""
    program = (
        "import sys, balloonctl.qmp, balloonctl.qga, balloonctl.host\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('balloonctl.'))))"
    )
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                         check=True, timeout=60).stdout.split()
    assert "balloonctl.qmp" in out
    assert _balloonctl_units(set(out)) <= CORE | set(PRIMITIVES), out


def test_only_the_front_ends_import_the_frameworks() -> None:
    for path in _sources():
        if _unit(path) in FRONT_ENDS:
            continue
        loaded, lazy = _imports(path)
        assert not {m.split(".")[0] for m in loaded | lazy} & FRAMEWORKS, path


def test_no_cli_module_imports_the_app() -> None:
    """``app`` only wires the commands: nothing under ``balloonctl/cli`` imports it back
    (``spec`` gets the root command handed in), so there is no import cycle."""
    import ast

    cli = Path(__file__).resolve().parents[1] / "balloonctl" / "cli"
    offenders = []
    for path in sorted(cli.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            if any(n == "balloonctl.cli.app" or n.startswith("balloonctl.cli.app.")
                   for n in names):
                offenders.append(path.name)
    assert offenders == []


def test_status_of_a_vm_imports_no_pydantic_textual_or_httpx(tmp_path: Path,
                                                               fake_dir: Path) -> None:
    """``status VM --json`` against a fake VM, as a whole process: typer stays, but its
    pydantic coercion does not come along (``balloonctl.cli.params``), nor the dashboard's
    or the HTTP client's frameworks."""
    from balloonctl.fake import FakeVM, run_in_thread

    with run_in_thread(FakeVM("vm1", fake_dir)):
        found = roots(imported(fake_dir, ["status", "vm1", "--json"],
                               {"BALLOONCTL_STATE": str(tmp_path / "state.json")}))
    assert {"typer", "qemu"} <= found  # the probe really ran the command on the VM
    assert not found & {"pydantic", "pydantic_core", "textual", "httpx", "rich"}, sorted(
        found & {"pydantic", "pydantic_core", "textual", "httpx", "rich"})


def test_importing_the_app_imports_no_pydantic() -> None:
    program = ("import sys, balloonctl.cli.app\n"
               "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                         check=True, timeout=60).stdout.split()
    assert not set(out) & {"pydantic", "textual", "httpx"}
