"""Shared by the tests that run the real ``balloonctl`` console script as a child process:
its path, the environment that points it at one test's fake fleet, and a way to act on a
fake VM from the test's thread."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from balloonctl.fake import FakeVM

__all__ = ["BALLOONCTL", "cli_env", "on_vm_loop", "run"]

BALLOONCTL = str(Path(sys.executable).with_name("balloonctl"))


def cli_env(fake_dir: Path, tmp_path: Path) -> dict[str, str]:
    """This process's environment, aimed at ``fake_dir`` with a state file and (absent)
    config of the test's own, and no well-known socket directories."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("_BALLOONCTL")}
    e.update({"BALLOONCTL_DIR": str(fake_dir), "BALLOONCTL_STATE": str(tmp_path / "state"),
              "BALLOONCTL_CONFIG": str(tmp_path / "absent.toml"), "BALLOONCTL_WELLKNOWN": ""})
    return e


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``balloonctl ARGS`` to completion (60 s at most), its output captured as text."""
    return subprocess.run([BALLOONCTL, *args], env=env, capture_output=True, text=True,
                          timeout=60, check=False)


def on_vm_loop(vm: FakeVM, fn: Callable[[], object]) -> None:
    """Run ``fn()`` on the fake VM's loop and wait until it has run."""
    done = threading.Event()

    def call() -> None:
        try:
            fn()
        finally:
            done.set()

    vm.call_threadsafe(call)
    assert done.wait(10)
