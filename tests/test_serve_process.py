"""``balloonctl serve`` as a real process over a fake fleet: on its unix socket and on
loopback TCP, with the CLI going through it, the token (also from the config's
``[hosts]`` table: the environment variable wins over it, it over the local token file),
and a clean stop."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from test_cli_process import BALLOONCTL, read_lines

from balloonctl.cli.exitcodes import ExitCode
from balloonctl.fake import FakeFleet, run_in_thread
from balloonctl.units import GiB

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def fleet(fake_dir: Path) -> Iterator[FakeFleet]:
    with run_in_thread(FakeFleet(3, fake_dir, tick=0.01, rate=4 * GiB, ram=2 * GiB,
                                 host_mem=8 * GiB)) as f:
        yield f


@pytest.fixture
def env(fake_dir: Path, tmp_path: Path) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("_BALLOONCTL")}
    e.update({"BALLOONCTL_DIR": str(fake_dir), "BALLOONCTL_STATE": str(tmp_path / "state"),
              "BALLOONCTL_CONFIG": str(tmp_path / "absent.toml"), "BALLOONCTL_WELLKNOWN": "",
              "BALLOONCTL_SERVE_SOCKET": str(tmp_path / "run" / "serve.sock"),
              "BALLOONCTL_JOURNAL": str(tmp_path / "journal.jsonl")})
    e.pop("BALLOONCTL_TOKEN", None)
    return e


def wait_for_socket(path: Path, proc: subprocess.Popen[str], within: float = 20.0) -> None:
    """Until the service's socket appears (it is renamed into place once the service has
    started), or the process dies, or the deadline passes."""
    deadline = time.monotonic() + within
    while not path.is_socket():
        assert proc.poll() is None, f"serve exited: {proc.communicate()}"
        assert time.monotonic() < deadline, "the socket never appeared"
        time.sleep(0.02)


def stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    return proc.returncode, err


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BALLOONCTL, *args], env=env, capture_output=True, text=True,
                          timeout=60, check=False)


@pytest.fixture
def served(fleet: FakeFleet, env: dict[str, str]) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    sock = Path(env["BALLOONCTL_SERVE_SOCKET"])
    proc = subprocess.Popen([BALLOONCTL, "serve", "--interval", "0.2s"], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for_socket(sock, proc)
        yield proc, sock
    finally:
        if proc.poll() is None:
            stop(proc)


def test_unix_socket_is_private_and_the_cli_goes_through_it(
    served: tuple[subprocess.Popen[str], Path], env: dict[str, str], fleet: FakeFleet
) -> None:
    proc, sock = served
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
    # the service holds every QMP socket: a CLI that talked QMP itself would get "busy"
    status = cli(env, "status", "--json")
    assert status.returncode == 0, status.stderr
    assert [vm["name"] for vm in json.loads(status.stdout)] == ["vm1", "vm2", "vm3"]
    done = cli(env, "set", "vm2", "1.5G", "--wait", "--timeout", "20s")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("vm2: reached 1.5 GiB (target 1.5 GiB)")
    journal = [json.loads(line) for line in
               Path(env["BALLOONCTL_JOURNAL"]).read_text().splitlines()]
    assert [(e["vm"], e["target"]) for e in journal] == [("vm2", 1536 * 2**20)]
    # the same error text and exit code as the CLI on its own
    refused = cli(env, "set", "vm1", "3G")
    assert refused.returncode == ExitCode.UNSAFE_TARGET
    assert refused.stderr == "balloonctl: error: vm1: target 3 GiB is above guest RAM (2 GiB)\n"
    unknown = cli(env, "status", "ghost")
    assert unknown.returncode == ExitCode.USAGE and "ghost" in unknown.stderr
    hint = cli(env, "hint", "vm3", "on")
    assert hint.returncode == 0 and hint.stdout.startswith("vm3: hint on (agent mode")
    # a second service on the same socket is refused, the first one keeps it
    second = cli(env, "serve")
    assert second.returncode == ExitCode.USAGE and "already" not in second.stderr
    assert "another balloonctl serve is listening" in second.stderr
    code, err = stop(proc)
    assert code == 0 and "balloonctl serve stopped" in err
    assert not sock.exists()


def test_loopback_tcp_needs_the_token(fleet: FakeFleet, env: dict[str, str],
                                      tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    proc = subprocess.Popen([BALLOONCTL, "serve", "--listen", "127.0.0.1:0", "--token-file",
                             str(token_file), "--auto"], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        [url] = read_lines(proc.stdout, 1)
        assert url.startswith("http://127.0.0.1:")
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()
        bare = httpx.get(f"{url}/v1/vms", timeout=10)
        assert (bare.status_code, bare.json()["code"]) == (401, "unauthorized")
        refused = httpx.post(f"{url}/v1/vms/vm1/target", json={"size": "1G"},
                             headers={"authorization": "Bearer nope"}, timeout=10)
        assert refused.status_code == 401
        assert fleet["vm1"].guest.balloon_target == 0  # nothing changed
        ok = httpx.get(f"{url}/metrics", headers={"authorization": f"Bearer {token}"},
                       timeout=10)
        assert ok.status_code == 200 and "balloonctl_vm_actual_bytes" in ok.text
        assert "balloonctl_auto_enabled 1.0" in ok.text  # --auto: on from the start
        # auto's switch needs the token like everything else
        for bearer in ({}, {"authorization": "Bearer nope"}):
            off = httpx.post(f"{url}/v1/auto", json={"enabled": False}, headers=bearer,
                             timeout=10)
            assert (off.status_code, off.json()["code"]) == (401, "unauthorized")
        mine = {"authorization": f"Bearer {token}"}
        assert httpx.get(f"{url}/v1/auto", headers=mine, timeout=10).json()["enabled"] is True
        off = httpx.post(f"{url}/v1/auto", json={"enabled": False}, headers=mine, timeout=10)
        assert (off.status_code, off.json()["enabled"]) == (200, False)
        remote = {**env, "BALLOONCTL_TOKEN": token}
        status = cli(remote, "--host", url, "status", "--json", "vm1")
        assert status.returncode == 0, status.stderr
        assert [vm["name"] for vm in json.loads(status.stdout)] == ["vm1"]
        wrong = cli({**env, "BALLOONCTL_TOKEN": "wrong"}, "--host", url, "set", "vm1", "1G")
        assert wrong.returncode == ExitCode.USAGE and "bearer token" in wrong.stderr
        rotated = cli(env, "token", "rotate", "--token-file", str(token_file))
        new = rotated.stdout.strip()
        assert rotated.returncode == 0 and new and new != token
        assert cli(remote, "--host", url, "status").returncode == ExitCode.USAGE
        assert cli({**env, "BALLOONCTL_TOKEN": new}, "--host", url, "status").returncode == 0
    finally:
        stop(proc)


def test_no_auto_means_no_controller_and_the_config_can_turn_it_on(
        fleet: FakeFleet, env: dict[str, str], tmp_path: Path) -> None:
    sock = Path(env["BALLOONCTL_SERVE_SOCKET"])
    for flags, config, want in ((["--no-auto"], "", None), ([], "[policy]\nauto = true\n", True),
                                ([], "", False)):
        (tmp_path / "config.toml").write_text(config)
        proc = subprocess.Popen([BALLOONCTL, "serve", *flags], text=True,
                                env={**env, "BALLOONCTL_CONFIG": str(tmp_path / "config.toml")},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            wait_for_socket(sock, proc)
            with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)),
                              base_url="http://balloonctl") as client:
                got = client.get("/v1/auto")
            if want is None:
                assert (got.status_code, got.json()["code"]) == (503, "unavailable")
            else:
                assert (got.status_code, got.json()["enabled"]) == (200, want)
        finally:
            code, err = stop(proc)
        shown = {None: "not available", True: "on", False: "off"}[want]
        assert code == 0 and f"(auto {shown})" in err


def test_a_remote_address_needs_the_explicit_flag(env: dict[str, str]) -> None:
    done = cli(env, "serve", "--listen", "0.0.0.0:0")
    assert done.returncode == ExitCode.USAGE
    assert "--allow-remote" in done.stderr
    bad = cli(env, "serve", "--listen", "nowhere")
    assert bad.returncode == ExitCode.USAGE and "HOST:PORT" in bad.stderr


def test_a_socket_left_by_a_dead_service_is_ignored(fleet: FakeFleet,
                                                    env: dict[str, str]) -> None:
    import socket

    sock = Path(env["BALLOONCTL_SERVE_SOCKET"])
    sock.parent.mkdir(mode=0o700)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(sock))  # bound, never listening: what a crashed service leaves
    status = cli(env, "status", "--json", "vm1")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)[0]["reachable"] is True  # it talked QMP itself


# -- --host tokens from the config ---------------------------------------------------------
@pytest.fixture
def tcp(fleet: FakeFleet, env: dict[str, str], tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(URL, token) of a service on loopback TCP; its token file is not the local one."""
    token_file = tmp_path / "hv1.token"
    proc = subprocess.Popen([BALLOONCTL, "serve", "--listen", "127.0.0.1:0", "--token-file",
                             str(token_file), "--interval", "0.2s"], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        [url] = read_lines(proc.stdout, 1)
        yield url, token_file.read_text().strip()
    finally:
        stop(proc)


def with_config(env: dict[str, str], tmp_path: Path, text: str) -> dict[str, str]:
    config = tmp_path / "config.toml"
    config.write_text(text)
    return {**env, "BALLOONCTL_CONFIG": str(config)}


def test_the_configs_token_opens_the_service_and_a_wrong_one_is_refused(
        tcp: tuple[str, str], env: dict[str, str], tmp_path: Path) -> None:
    url, token = tcp
    port = url.rsplit(":", 1)[1]
    assert not (tmp_path / "serve.token").exists()  # no local token to fall back on
    bare = cli(env, "--host", url, "status")
    assert bare.returncode == ExitCode.USAGE and "bearer token" in bare.stderr
    # by URL, by host:port and by host name; as the token itself and as its file
    for key, value in ((f'"{url}"', f'token = "{token}"'),
                       (f'"127.0.0.1:{port}"', f'token_file = "{tmp_path / "hv1.token"}"'),
                       ('"127.0.0.1"', f'token = "{token}"')):
        mine = with_config(env, tmp_path, f"[hosts.{key}]\n{value}\n")
        done = cli(mine, "--host", url, "status", "--json")
        assert done.returncode == 0, (key, done.stderr)
        assert [vm["name"] for vm in json.loads(done.stdout)] == ["vm1", "vm2", "vm3"]
    wrong = with_config(env, tmp_path, f'[hosts."{url}"]\ntoken = "not-the-token"\n')
    refused = cli(wrong, "--host", url, "status")
    assert refused.returncode == ExitCode.USAGE
    [line] = refused.stderr.strip().splitlines()
    assert line.startswith("balloonctl: error: ") and "bearer token" in line
    assert "not-the-token" not in refused.stderr
    # the environment variable wins over the config (both ways round)
    assert cli({**wrong, "BALLOONCTL_TOKEN": token}, "--host", url, "status").returncode == 0
    right = with_config(env, tmp_path, f'[hosts."{url}"]\ntoken = "{token}"\n')
    overridden = cli({**right, "BALLOONCTL_TOKEN": "not-it"}, "--host", url, "status")
    assert overridden.returncode == ExitCode.USAGE and "bearer token" in overridden.stderr
    # another host's entry is not this one's
    other = with_config(env, tmp_path, f'[hosts."127.0.0.2:{port}"]\ntoken = "{token}"\n')
    assert cli(other, "--host", url, "status").returncode == ExitCode.USAGE


@pytest.mark.parametrize(("text", "named"), [
    ('hosts = "x"\n', "[hosts]"),
    ('[hosts]\nhv1 = "tok"\n', "hosts.hv1 must be a table"),
    ('[hosts.hv1]\n', "hosts.hv1: give exactly one of token and token_file"),
    ('[hosts.hv1]\ntoken = "a"\ntoken_file = "/x"\n', "hosts.hv1: give exactly one"),
    ('[hosts.hv1]\ntokn = "a"\n', "hosts.hv1.tokn: unknown setting"),
    ('[hosts.hv1]\ntoken = 5\n', "hosts.hv1.token: expected a token"),
    ('[hosts.hv1]\ntoken = ""\n', "hosts.hv1.token: expected a token"),
    ('[hosts.hv1]\ntoken_file = ""\n', "hosts.hv1.token_file: expected a file path"),
    ('[hosts."ftp://hv1"]\ntoken = "a"\n', 'hosts."ftp://hv1": expected a host name'),
    ('[hosts."http://hv1/v1"]\ntoken = "a"\n', 'hosts."http://hv1/v1": expected a host'),
    ('[hosts."hv1:http"]\ntoken = "a"\n', 'hosts."hv1:http": expected a host'),
    ('[hosts.hv1]\ntoken = "a"\n[hosts.HV1]\ntoken = "b"\n', "names the same host"),
])
def test_a_bad_hosts_table_is_one_line_naming_the_setting(
        env: dict[str, str], tmp_path: Path, text: str, named: str) -> None:
    done = cli(with_config(env, tmp_path, text), "--host", "http://hv1:9847", "status")
    assert done.returncode == ExitCode.USAGE
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("balloonctl: error: config ") and named in line, line


@pytest.mark.parametrize(("make", "named"), [
    (lambda p: None, "no such file"),
    (lambda p: p.write_text(""), "not a token"),
    (lambda p: p.write_text("a b c\n"), "not a token"),
    (lambda p: p.write_text("x" * 5000), "too large"),
    (lambda p: p.mkdir(), "not a regular file"),
    (lambda p: __import__("os").mkfifo(p), "not a regular file"),  # never blocks
])
def test_a_bad_token_file_is_one_line_naming_the_setting(
        env: dict[str, str], tmp_path: Path, make: object, named: str) -> None:
    path = tmp_path / "hv1.token"
    make(path)  # type: ignore[operator]
    config = f'[hosts.hv1]\ntoken_file = "{path}"\n'
    done = cli(with_config(env, tmp_path, config), "--host", "http://hv1:9847", "status")
    assert done.returncode == ExitCode.USAGE, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert "hosts.hv1.token_file: " in line and named in line, line
