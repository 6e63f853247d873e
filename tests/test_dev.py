"""`./dev`, the README's first command, on a machine that has never run it."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_dev_demo_prints_only_its_own_progress_on_first_run(tmp_path: Path) -> None:
    """A fresh virtualenv: `./dev demo --once` installs balloonctl into it and shows the
    simulated fleet. stderr holds `dev: ...` progress lines and nothing else (no setuptools
    "Editable installation" banner, no pip warnings). The dependencies come from this test's
    own environment through a .pth file, so only balloonctl itself is built and installed."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    site = subprocess.run([str(venv / "bin" / "python"), "-c",
                           "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "deps-from-test.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("BALLOONCTL", "_BALLOONCTL", "VIRTUAL_ENV"))}
    env.update({"VENV": str(venv), "PYTHON": sys.executable,
                "BALLOONCTL_STATE": str(tmp_path / "state.json"), "BALLOONCTL_WELLKNOWN": "",
                "BALLOONCTL_CONFIG": str(tmp_path / "absent.toml")})
    r = subprocess.run([str(ROOT / "dev"), "demo", "--once", "--vms", "2"], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].split()[:2] == ["NAME", "STATE"]
    assert len(r.stdout.splitlines()) == 3
    lines = r.stderr.splitlines()
    assert lines and all(line.startswith("dev: ") for line in lines), r.stderr
    assert "installing balloonctl" in r.stderr


def test_dev_without_a_command_prints_its_usage_and_no_script_line() -> None:
    """`./dev` alone prints the usage from its header comment (exit 0); an unknown command is
    an error on stderr with the usage and exit 2. No line of the script itself shows."""
    r = subprocess.run([str(ROOT / "dev")], capture_output=True, text=True, timeout=30,
                       check=False)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("balloonctl's one entry point")
    assert any(line.strip().startswith("./dev demo") for line in lines)
    assert lines[-1].startswith("Environment:")
    assert not any("set -" in line or line.startswith(("#", "ROOT=")) for line in lines)
    bad = subprocess.run([str(ROOT / "dev"), "bogus"], capture_output=True, text=True,
                         timeout=30, check=False)
    assert bad.returncode == 2
    assert bad.stdout == ""
    assert bad.stderr.splitlines()[0] == "dev: error: unknown command 'bogus'"
