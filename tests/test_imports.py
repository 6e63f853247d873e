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

# Runs balloonctl's entry point in a fresh interpreter, then lists the modules it imported.
PROBE = """
import json, sys
from balloonctl.__main__ import main
sys.argv = ["balloonctl", *json.loads(sys.argv[1])]
try:
    main()
except SystemExit:
    pass
import os
with open(os.environ["MODULES_OUT"], "w") as f:
    json.dump(sorted(sys.modules), f)
"""


def imported(tmp_path: Path, args: list[str], env: dict[str, str] | None = None) -> set[str]:
    out = tmp_path / "modules.json"
    full_env = {**os.environ, **(env or {}), "MODULES_OUT": str(out),
                "BALLOONCTL_DIR": str(tmp_path), "BALLOONCTL_WELLKNOWN": "",
                "BALLOONCTL_CONFIG": str(tmp_path / "absent.toml")}
    if env is None:
        full_env.pop("_BALLOONCTL_COMPLETE", None)
    subprocess.run([sys.executable, "-c", PROBE, json.dumps(args)], env=full_env,
                   capture_output=True, check=True, timeout=60)
    return set(json.loads(out.read_text()))


def roots(modules: set[str]) -> set[str]:
    return {m.split(".")[0] for m in modules}


@pytest.mark.parametrize(
    "request_env",
    [
        {"_BALLOONCTL_COMPLETE": "complete_bash", "COMP_WORDS": "balloonctl set vm1 ",
         "COMP_CWORD": "3"},
        {"_BALLOONCTL_COMPLETE": "complete_zsh", "_TYPER_COMPLETE_ARGS": "balloonctl st"},
        {"_BALLOONCTL_COMPLETE": "complete_fish", "_TYPER_COMPLETE_ARGS": "balloonctl st",
         "_TYPER_COMPLETE_FISH_ACTION": "get-args"},
        {"_BALLOONCTL_COMPLETE": "source_bash"},
    ],
)
def test_completion_imports_no_framework(tmp_path: Path, request_env: dict[str, str]) -> None:
    (tmp_path / "vm1.qmp").touch()
    found = roots(imported(tmp_path, [], request_env))
    assert not found & {*HEAVY, *TYPER}, sorted(found & {*HEAVY, *TYPER})


@pytest.mark.parametrize("args", [["--help"], ["status", "--help"], ["set", "--help"],
                                  ["dashboard", "--help"], ["demo", "--help"]])
def test_help_imports_nothing_heavy(tmp_path: Path, args: list[str]) -> None:
    found = roots(imported(tmp_path, args))
    assert "typer" in found  # the probe really ran the typer app
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
                   "balloonctl.text", "balloonctl.journal", "balloonctl.history"}, sorted(out)


# ---- layering: who may import whom inside balloonctl ----------------------------------------

PACKAGE = Path(__file__).resolve().parent.parent / "balloonctl"
CORE = frozenset({"units", "model", "errors", "store", "text", "replies", "sockpeer",
                  "deadline"})
# The QMP/QGA/host layer, each with the balloonctl modules it may import at load time.
PRIMITIVES = {
    "qmpsession": CORE,
    "runfacts": CORE | {"qmpsession"},
    "qmp": CORE | {"qmpsession", "runfacts"},
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
