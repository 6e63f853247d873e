"""The dashboard as a real process in a real pseudo-terminal: a signal must leave the
terminal as it found it (main screen, cooked mode), not in the dashboard's alternate screen.

A separate ``balloonctl fake`` process serves the VMs, so the dashboard talks to real
sockets; nothing is mocked.
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ENTER_ALT = b"\x1b[?1049h"
LEAVE_ALT = b"\x1b[?1049l"


def _read(fd: int, until: bytes | None, deadline: float,
          proc: subprocess.Popen[bytes] | None = None) -> bytes:
    """Read from the pty until ``until`` has been seen (None: until ``proc`` has exited and
    everything it wrote is read) or the deadline."""
    out = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if not ready:
            if proc is not None and proc.poll() is not None:
                break
            continue
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: every process holding the pty's other side has exited
            break
        if not chunk:
            break
        out += chunk
        if until is not None and until in out:
            break
    return out


@pytest.fixture
def fake_fleet_dir(tmp_path: Path) -> Iterator[Path]:
    """Two fake VMs served by a ``balloonctl fake`` process until the test ends."""
    directory = tmp_path / "vms"
    proc = subprocess.Popen(
        [sys.executable, "-m", "balloonctl", "fake", "--vms", "2", "--dir", str(directory)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        assert proc.stdout is not None
        for _ in range(2):  # one "NAME qmp=PATH qga=PATH" line per VM once it serves
            assert proc.stdout.readline().startswith("vm"), "the fake fleet did not start"
        yield directory
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.parametrize("stop", [
    signal.SIGTERM, signal.SIGHUP, signal.SIGINT,
    b"q", b"\x03", b"\x1b[21~",  # the keys q, Ctrl-C (raw mode: a byte, not SIGINT), F10
], ids=["SIGTERM", "SIGHUP", "SIGINT", "q", "ctrl+c", "f10"])
def test_a_signal_or_a_quit_key_restores_the_terminal_and_ends_the_dashboard(
    fake_fleet_dir: Path, tmp_path: Path, stop: signal.Signals | bytes
) -> None:
    """docs/cli.md: the dashboard quits with q, Ctrl-C or F10, and SIGTERM, SIGHUP (and
    SIGINT) end it cleanly: exit 0, the terminal as it was."""
    main, side = pty.openpty()
    fcntl.ioctl(side, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    modes_before = termios.tcgetattr(side)
    env = dict(os.environ, TERM="xterm-256color", BALLOONCTL_WELLKNOWN="",
               XDG_CONFIG_HOME=str(tmp_path / "config"), XDG_STATE_HOME=str(tmp_path / "state"),
               HOME=str(tmp_path))
    proc = subprocess.Popen(
        [sys.executable, "-m", "balloonctl", "dashboard", "--dir", str(fake_fleet_dir)],
        stdin=side, stdout=side, stderr=side, env=env, start_new_session=True,
    )
    try:
        # Up and showing the fleet: the alternate screen entered and both rows drawn.
        shown = _read(main, b"vm2", time.monotonic() + 30)
        assert ENTER_ALT in shown and b"vm2" in shown, shown[-500:]
        if isinstance(stop, bytes):
            os.write(main, stop)
        else:
            proc.send_signal(stop)
        rest = _read(main, None, time.monotonic() + 15, proc)
        code = proc.wait(timeout=15)
        modes_after = termios.tcgetattr(side)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(main)
        os.close(side)
    assert LEAVE_ALT in rest, f"the alternate screen was left on: {rest[-300:]!r}"
    assert rest.rfind(LEAVE_ALT) > rest.rfind(ENTER_ALT)
    assert code == 0  # ended as q ends it, not killed by the signal
    assert modes_after == modes_before  # not left in raw mode (echo, canonical input)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_demo_ends_on_a_signal_and_leaves_no_temp_dir(
    tmp_path: Path, fake_dir: Path, signum: signal.Signals
) -> None:
    main, side = pty.openpty()
    fcntl.ioctl(side, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    tmp = fake_dir / "tmp"  # short: the demo's sockets go in a temp dir under it
    tmp.mkdir()
    env = dict(os.environ, TERM="xterm-256color", BALLOONCTL_WELLKNOWN="", TMPDIR=str(tmp),
               BALLOONCTL_DIR=str(tmp_path), HOME=str(tmp_path),
               XDG_CONFIG_HOME=str(tmp_path / "config"), XDG_STATE_HOME=str(tmp_path / "state"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "balloonctl", "demo", "--vms", "2", "--mem", "1G"],
        stdin=side, stdout=side, stderr=side, env=env, start_new_session=True,
    )
    try:
        shown = _read(main, b"vm2", time.monotonic() + 30)  # the dashboard shows the fleet
        assert b"vm2" in shown, shown[-500:]
        assert [p.name[:16] for p in tmp.iterdir()] == ["balloonctl-demo-"]
        proc.send_signal(signum)
        rest = _read(main, None, time.monotonic() + 15, proc)
        code = proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(main)
        os.close(side)
    assert code == 0, rest[-500:]
    assert b"Traceback" not in rest and b"Exception" not in rest, rest[-500:]
    assert list(tmp.iterdir()) == []
