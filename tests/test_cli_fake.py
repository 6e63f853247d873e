"""``balloonctl fake`` as a real process: signals with clients connected, the directory it
serves in (its own temp dir is gone afterwards), names and socket paths it refuses before it
creates anything. Everything is synchronised on the lines the processes print."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from balloonctl.cli.exitcodes import ExitCode

BALLOONCTL = str(Path(sys.executable).with_name("balloonctl"))
SERVING = "balloonctl: serving"
STOPPED = "balloonctl: fake fleet stopped"


@pytest.fixture
def tmpdir_env(fake_dir: Path, tmp_path: Path) -> dict[str, str]:
    """The child's environment: its temp dir is ``fake_dir / "tmp"`` (short, and empty so
    a test can see what the fake leaves behind), nothing from the user's own setup."""
    (fake_dir / "tmp").mkdir()
    e = {k: v for k, v in os.environ.items() if not k.startswith("_BALLOONCTL")}
    e.update({"TMPDIR": str(fake_dir / "tmp"), "BALLOONCTL_DIR": str(fake_dir / "none"),
              "BALLOONCTL_STATE": str(tmp_path / "state"),
              "BALLOONCTL_CONFIG": str(tmp_path / "absent.toml"), "BALLOONCTL_WELLKNOWN": ""})
    return e


class Fake:
    """A running ``balloonctl fake``: ``lines`` are its VM lines once it serves."""

    def __init__(self, env: dict[str, str], *args: str, vms: int = 2) -> None:
        self.proc = subprocess.Popen(
            [BALLOONCTL, "fake", "--vms", str(vms), "--mem", "1G", *args],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        assert self.proc.stdout is not None
        # one "NAME qmp=PATH qga=PATH" line per VM, printed once every socket listens
        self.lines = [self.proc.stdout.readline().rstrip("\n") for _ in range(vms)]
        assert all(line.startswith("vm") for line in self.lines), self.lines

    def path(self, vm: int, kind: str = "qmp") -> Path:
        for field in self.lines[vm - 1].split()[1:]:
            key, _, value = field.partition("=")
            if key == kind:
                return Path(value)
        raise AssertionError(f"no {kind}= in {self.lines[vm - 1]!r}")

    def stop(self, sig: signal.Signals) -> tuple[int, str]:
        """Send ``sig``; (exit code, stderr) once it ended."""
        self.proc.send_signal(sig)
        _, err = self.proc.communicate(timeout=20)
        return self.proc.returncode, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=20)


@pytest.fixture
def fakes() -> Iterator[list[Fake]]:
    started: list[Fake] = []
    yield started
    for fake in started:
        fake.kill()


def greeted(path: Path) -> socket.socket:
    """A raw client on ``path`` that has read the server's first line (served, not queued)."""
    client = socket.socket(socket.AF_UNIX)
    client.settimeout(20)
    client.connect(str(path))
    buf = b""
    while b"\n" not in buf:
        chunk = client.recv(4096)
        assert chunk, "the server closed before it greeted"
        buf += chunk
    return client


def queued(path: Path) -> socket.socket:
    """A raw client connected to ``path`` behind the one being served (QEMU serves one)."""
    client = socket.socket(socket.AF_UNIX)
    client.connect(str(path))
    return client


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_with_clients_connected_ends_the_fake_cleanly(
    tmpdir_env: dict[str, str], fake_dir: Path, fakes: list[Fake], sig: signal.Signals,
) -> None:
    where = fake_dir / "vms"
    fake = Fake(tmpdir_env, "--dir", str(where))
    fakes.append(fake)
    qmp = greeted(fake.path(1))
    qmp.sendall(b'{"execute": "qmp_capabilities"}')
    assert b'"return"' in qmp.recv(4096)  # a negotiated client, mid-session
    waiting = queued(fake.path(1))        # and one waiting for its turn
    qga = socket.socket(socket.AF_UNIX)   # a guest-agent client (qemu-ga sends no greeting)
    qga.connect(str(fake.path(1, "qga")))
    qga.sendall(b'{"execute": "guest-ping"}\n')
    assert qga.makefile("rb").readline() == b'{"return": {}}\n'
    try:
        code, err = fake.stop(sig)
        assert qmp.recv(4096) == b""  # the fake hung up on it
    finally:
        for client in (qmp, waiting, qga):
            client.close()
    assert code == ExitCode.OK, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert lines[0].startswith(SERVING) and lines[1:] == [STOPPED], err
    assert sorted(os.listdir(where)) == []  # every socket removed
