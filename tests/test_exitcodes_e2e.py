"""Every exit code of docs/cli.md's table, from a real ``balloonctl`` process.

Long-running commands are interrupted with a real SIGINT once they have shown (a line on
stdout, or with ``-v`` the QMP exchange on stderr) that they are where the test wants them:
no sleeps stand in for that.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, ClassVar

import pytest
from cliproc import BALLOONCTL, cli_env, on_vm_loop, run

from balloonctl.cli.exitcodes import ExitCode
from balloonctl.fake import FakeVM, run_in_thread
from balloonctl.units import GiB, MiB

FAST: dict[str, Any] = {"tick": 0.01, "rate": 4 * GiB}


@pytest.fixture
def env(fake_dir: Path, tmp_path: Path) -> dict[str, str]:
    return cli_env(fake_dir, tmp_path)


def one_error_line(r: subprocess.CompletedProcess[str], *needles: str) -> None:
    """stderr is exactly one ``balloonctl: error:`` line, no traceback, naming ``needles``."""
    assert r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("balloonctl: error: "), r.stderr
    assert "Traceback" not in r.stderr
    for needle in needles:
        assert needle in r.stderr, r.stderr


def read_until(stream: IO[str], predicate: Any, timeout: float = 30.0) -> list[str]:
    """Lines of a child's stream up to the first for which ``predicate`` holds."""
    os.set_blocking(stream.fileno(), True)
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    result: list[str] = []

    def reader() -> None:
        for line in stream:
            lines.append(line.rstrip("\n"))
            if predicate(lines[-1]):
                result.append(lines[-1])
                return

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    t.join(max(0.0, deadline - time.monotonic()))
    assert result, f"no such line within {timeout}s; the last lines: {lines[-5:]!r}"
    return lines


@pytest.fixture
def start(fake_dir: Path) -> Iterator[Any]:
    import contextlib

    with contextlib.ExitStack() as stack:

        def make(name: str = "vm1", **kwargs: Any) -> FakeVM:
            return stack.enter_context(run_in_thread(FakeVM(name, fake_dir,
                                                            **{**FAST, **kwargs})))

        yield make


# --- 0 .. 7 --------------------------------------------------------------------------------


def test_0_ok(env: dict[str, str], start: Any) -> None:
    start("vm1")
    r = run(env, "set", "vm1", "1G", "--wait")
    assert (r.returncode, r.stderr) == (ExitCode.OK, "")
    assert r.stdout.startswith("vm1: reached 1 GiB (target 1 GiB)")


class HostileQMP:
    """A QMP peer that greets and negotiates like QEMU but answers ``qom-list`` with a list
    of bare names instead of ``{"name", "type"}`` objects. Before balloonctl.replies this
    was an internal error (issue 12); now it is QEMU answering nonsense: exit 4.
    """

    REPLIES: ClassVar[dict[str, Any]] = {
        "qmp_capabilities": {},
        "query-cpus-fast": [{"cpu-index": 0, "thread-id": 4242}],
        "query-memory-size-summary": {"base-memory": 2 * GiB},
        "query-balloon": {"actual": 2 * GiB},
        "qom-list": ["balloon0"],
    }

    def __init__(self, path: Path) -> None:
        self.path = path
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b'{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 8}, '
                     b'"package": ""}, "capabilities": []}}\r\n')
        # QMP is a JSON stream, not lines: qemu.qmp sends no newline after a command
        buffer, decoder = "", json.JSONDecoder()
        while chunk := await reader.read(4096):
            buffer += chunk.decode()
            while buffer.strip():
                try:
                    msg, end = decoder.raw_decode(buffer.lstrip())
                except json.JSONDecodeError:
                    break
                buffer = buffer.lstrip()[end:]
                reply: dict[str, Any] = {"return": self.REPLIES.get(msg["execute"], {})}
                if "id" in msg:
                    reply["id"] = msg["id"]
                writer.write(json.dumps(reply).encode() + b"\r\n")
            await writer.drain()
        writer.close()

    def _run(self) -> None:
        async def main() -> None:
            server = await asyncio.start_unix_server(self._serve, str(self.path))
            self.ready.set()
            async with server:
                await server.serve_forever()

        self.task = self.loop.create_task(main())
        try:
            self.loop.run_until_complete(self.task)
        except asyncio.CancelledError:
            pass

    def __enter__(self) -> HostileQMP:
        self.thread.start()
        assert self.ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.task.cancel)
        self.thread.join(10)


# Every reply is parsed now, so no peer makes balloonctl fail with a bug any more: the test
# plants one (an exception outside the error tree, after the real qom-list went out) in a
# real balloonctl process to see how a bug is reported.
PLANTED_BUG = """
import sys
from balloonctl.qmp import BalloonClient
real = BalloonClient.device_properties
async def device_properties(self):
    await real(self)
    raise KeyError("planted by the test")
BalloonClient.device_properties = device_properties
from balloonctl.__main__ import main
sys.argv[0] = "balloonctl"
main()
"""


def run_with_bug(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", PLANTED_BUG, *args], env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def test_1_internal_error_is_one_line_and_v_shows_the_traceback(
    env: dict[str, str], start: Any,
) -> None:
    start("vm1")
    quiet = run_with_bug(env, "hint", "vm1", "status")
    loud = run_with_bug(env, "-v", "hint", "vm1", "status")
    assert quiet.returncode == ExitCode.FAILURE, quiet.stderr
    one_error_line(quiet, "internal error: ")
    assert loud.returncode == ExitCode.FAILURE, loud.stderr
    assert "Traceback (most recent call last):" in loud.stderr
    assert "planted by the test" in loud.stderr
    assert loud.stderr.rstrip("\n").splitlines()[-1].startswith("balloonctl: error: internal")
    assert 'balloonctl: vm1 -> {"execute":"qom-list"' in loud.stderr  # -v traces too


def test_4_a_reply_of_the_wrong_shape_is_one_line_naming_the_command(
    env: dict[str, str], fake_dir: Path,
) -> None:
    with HostileQMP(fake_dir / "odd.qmp"):
        r = run(env, "hint", "odd", "status")
    assert r.returncode == ExitCode.QMP_ERROR, r.stderr
    one_error_line(r, "odd", "qom-list", "entry 0 is not an object", '["balloon0"]')


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["frobnicate"], "No such command 'frobnicate'"),
        (["status", "--bogus"], "No such option: --bogus"),
        (["set", "vm1", "lots"], "invalid size 'lots'"),
        (["status", "--interval", "soon", "--watch"], "invalid duration 'soon'"),
        (["status", "nosuchvm"], "nosuchvm"),
        (["--config", "/nonexistent/balloonctl.toml", "status"], "/nonexistent/balloonctl.toml"),
    ],
)
def test_2_usage(env: dict[str, str], start: Any, args: list[str], needle: str) -> None:
    start("vm1")
    r = run(env, *args)
    assert r.returncode == ExitCode.USAGE, r.stderr
    one_error_line(r, needle)
    assert r.stdout == ""


def test_2_a_bad_config_file(env: dict[str, str], start: Any, tmp_path: Path) -> None:
    start("vm1")
    config = tmp_path / "bad.toml"
    config.write_text('[vm.vm1]\nmax = "lots"\n')
    r = run({**env, "BALLOONCTL_CONFIG": str(config)}, "status")
    assert r.returncode == ExitCode.USAGE
    one_error_line(r, str(config), "vm.vm1.max", "lots")


def test_3_unreachable(env: dict[str, str], fake_dir: Path) -> None:
    r = run(env, "--qmp", f"vm9={fake_dir}/vm9.qmp", "set", "vm9", "1G")
    assert r.returncode == ExitCode.UNREACHABLE
    one_error_line(r, "vm9", "no such socket")


def test_4_qmp_error(env: dict[str, str], start: Any) -> None:
    start("vm1", balloon=False)
    r = run(env, "set", "vm1", "1G")
    assert r.returncode == ExitCode.QMP_ERROR
    one_error_line(r, "no virtio-balloon device")


@pytest.mark.parametrize(
    ("size", "force", "needle"),
    [
        ("3G", False, "above guest RAM"),
        ("255M", False, "below the safe floor 256 MiB"),
        ("127M", True, "below the hard minimum 128 MiB"),
    ],
)
def test_5_unsafe_target(env: dict[str, str], start: Any, size: str, force: bool,
                         needle: str) -> None:
    vm = start("vm1")
    r = run(env, "set", "vm1", size, *(["--force"] if force else []))
    assert r.returncode == ExitCode.UNSAFE_TARGET
    one_error_line(r, needle)
    assert vm.guest.balloon_target == 0  # nothing was sent


def test_5_the_edges_themselves_pass(env: dict[str, str], start: Any) -> None:
    start("vm1")
    assert run(env, "set", "vm1", "256M").returncode == ExitCode.OK  # the floor of 2 GiB
    assert run(env, "set", "vm1", "128M", "--force").returncode == ExitCode.OK
    assert run(env, "set", "vm1", "2G").returncode == ExitCode.OK


def test_5_a_configured_min_below_a_tenth_of_ram(env: dict[str, str], start: Any,
                                                 tmp_path: Path) -> None:
    start("vm1", ram=8 * GiB)  # default floor 819.2 MiB
    config = tmp_path / "c.toml"
    config.write_text('[vm.vm1]\nmin = "300M"\nmax = "6G"\n')
    e = {**env, "BALLOONCTL_CONFIG": str(config)}
    assert run(e, "set", "vm1", "300M").returncode == ExitCode.OK
    low = run(e, "set", "vm1", "299M")
    assert low.returncode == ExitCode.UNSAFE_TARGET
    one_error_line(low, "safe floor 300 MiB")
    assert run(e, "set", "vm1", "6G").returncode == ExitCode.OK
    high = run(e, "set", "vm1", "6145M")
    assert high.returncode == ExitCode.UNSAFE_TARGET
    one_error_line(high, "above the VM's maximum (6 GiB)")


def test_6_timeout_of_a_stuck_balloon(env: dict[str, str], start: Any) -> None:
    vm = start("vm1")
    on_vm_loop(vm, lambda: setattr(vm.faults, "stuck", True))
    started = time.monotonic()
    r = run(env, "set", "vm1", "1G", "--wait", "--timeout", "2s")
    assert r.returncode == ExitCode.TIMEOUT
    one_error_line(r, "vm1")
    assert time.monotonic() - started < 30


def test_6_set_wait_timeout_bounds_a_moving_balloon(env: dict[str, str], start: Any) -> None:
    start("vm1", rate=64 * MiB)  # 1 GiB takes 16 s
    started = time.monotonic()
    r = run(env, "set", "vm1", "1G", "--wait", "--timeout", "1.5s")
    elapsed = time.monotonic() - started
    assert r.returncode == ExitCode.TIMEOUT, r.stderr
    one_error_line(r, "did not reach 1 GiB within 1.5s")
    assert 1.5 <= elapsed < 14  # the 60 s default or the 16 s move would take longer


def test_6_a_guest_without_the_driver(env: dict[str, str], start: Any) -> None:
    start("vm1", driver=False)
    r = run(env, "set", "vm1", "1G", "--wait", "--timeout", "30s")
    assert r.returncode == ExitCode.TIMEOUT
    one_error_line(r, "virtio_balloon")


def test_7_partial(env: dict[str, str], start: Any, fake_dir: Path) -> None:
    start("vm1")
    r = run(env, "--qmp", f"vm9={fake_dir}/vm9.qmp", "set", "vm1", "vm9", "1G")
    assert r.returncode == ExitCode.PARTIAL
    one_error_line(r, "vm9")
    assert r.stdout.startswith("vm1: target 1 GiB")


def test_several_vms_all_failing_give_the_highest_code(env: dict[str, str], start: Any,
                                                       fake_dir: Path) -> None:
    start("vm1")
    r = run(env, "--qmp", f"vm9={fake_dir}/vm9.qmp", "set", "vm1", "vm9", "3G")
    # vm1: 5 (above guest RAM), vm9: 3 (unreachable)
    assert r.returncode == ExitCode.UNSAFE_TARGET


# --- Ctrl-C ----------------------------------------------------------------------------------


def interrupt(child: subprocess.Popen[str]) -> tuple[str, str]:
    child.send_signal(signal.SIGINT)
    try:
        return child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()


def test_130_ctrl_c_in_set_wait(env: dict[str, str], start: Any) -> None:
    start("vm1", rate=16 * MiB)  # 1 GiB would take a minute
    child = subprocess.Popen([BALLOONCTL, "-v", "set", "vm1", "1G", "--wait"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert child.stderr is not None
    # -v: once the balloon command was sent, set --wait polls query-balloon
    sent: list[bool] = []

    def waiting(line: str) -> bool:
        if '"execute":"balloon"' in line:
            sent.append(True)
        return bool(sent) and '"execute":"query-balloon"' in line

    read_until(child.stderr, waiting)
    _, err = interrupt(child)
    assert child.returncode == ExitCode.INTERRUPTED, err
    assert "Traceback" not in err



@pytest.mark.parametrize("args", [["status", "--watch", "--interval", "0.2s"],
                                  ["watch", "--interval", "0.2s"],
                                  ["watch", "--no-events", "--interval", "0.2s"]])
def test_0_ctrl_c_ends_status_watch_and_watch(env: dict[str, str], start: Any,
                                              args: list[str]) -> None:
    # docs/cli.md: Ctrl-C is the normal way to stop these: they end with 0
    start("vm1")
    child = subprocess.Popen([BALLOONCTL, *args], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    assert child.stdout is not None
    read_until(child.stdout, lambda line: "vm1" in line)
    _, err = interrupt(child)
    assert child.returncode == ExitCode.OK, err
    assert "Traceback" not in err and err == ""
