"""``--host URL`` takes its token from the config's ``[hosts]`` table: a real ``balloonctl
serve`` on loopback TCP requiring its token, the CLI as a real process. The environment
variable wins over the config, the config over the local token file."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_cli_process import BALLOONCTL, read_lines
from test_serve_process import cli, env, fleet, stop  # noqa: F401 - fixtures

from balloonctl.cli.exitcodes import ExitCode
from balloonctl.fake import FakeFleet

pytestmark = pytest.mark.timeout(120)


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
