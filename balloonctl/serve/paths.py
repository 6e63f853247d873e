"""Where ``balloonctl serve`` listens and keeps its token; shared by the service and its
clients (stdlib only, so the CLI can ask "is a local service running?" cheaply).

- The unix socket: ``$BALLOONCTL_SERVE_SOCKET``, else ``/run/balloonctl/serve.sock`` for
  root, else ``$XDG_RUNTIME_DIR/balloonctl/serve.sock``, else
  ``/tmp/balloonctl-$UID/serve.sock``. The socket is mode 0600 in a 0700 directory.
- The bearer token (TCP only): ``serve.token`` beside the state file
  (``$XDG_STATE_HOME/balloonctl/``), mode 0600, created on first start, rotated with
  ``balloonctl serve --rotate-token`` or ``balloonctl token rotate``. Clients take it from
  ``$BALLOONCTL_TOKEN``, else that file when they can read it.
"""

from __future__ import annotations

import hmac
import os
import secrets
import socket
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from balloonctl.errors import UsageError
from balloonctl.store import default_state_path

if TYPE_CHECKING:
    from balloonctl.settings import HostToken

__all__ = [
    "ENV_SOCKET",
    "ENV_TOKEN",
    "client_token",
    "configured_token",
    "default_socket",
    "ensure_token",
    "listening",
    "read_token",
    "rotate_token",
    "token_matches",
    "token_path",
]

ENV_SOCKET = "BALLOONCTL_SERVE_SOCKET"
ENV_TOKEN = "BALLOONCTL_TOKEN"
TOKEN_NAME = "serve.token"
_TOKEN_BYTES = 32
_MAX_TOKEN = 256
_MAX_TOKEN_FILE = 4096  # a token and a newline; more is not a token file


def default_socket(env: Mapping[str, str] | None = None) -> Path:
    """The local service's unix socket path (see the module docstring)."""
    env = os.environ if env is None else env
    explicit = env.get(ENV_SOCKET)
    if explicit:
        return Path(explicit).expanduser()
    if os.geteuid() == 0:
        return Path("/run/balloonctl/serve.sock")
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "balloonctl" / "serve.sock"
    return Path(f"/tmp/balloonctl-{os.geteuid()}") / "serve.sock"


def token_path(explicit: str | Path | None = None) -> Path:
    return Path(explicit).expanduser() if explicit else default_state_path().parent / TOKEN_NAME


def _check_token(text: str, where: str) -> str:
    token = text.strip()
    if not token or len(token) > _MAX_TOKEN or not token.isascii() or not token.isprintable() \
            or " " in token:
        raise UsageError(f"{where}: not a token (1 to {_MAX_TOKEN} printable ASCII characters)")
    return token


def read_token(path: Path) -> str | None:
    """The token stored in ``path``; None when there is none.

    Raises:
        UsageError: the file is unreadable or holds no token.
    """
    try:
        # never blocks (a FIFO) and never reads more than a token file holds
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UsageError(f"cannot read the token file {path}: {exc.strerror or exc}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UsageError(f"token file {path}: not a regular file")
        data = os.read(fd, _MAX_TOKEN_FILE + 1)
    except OSError as exc:
        raise UsageError(f"cannot read the token file {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(data) > _MAX_TOKEN_FILE:
        raise UsageError(f"token file {path}: too large to hold a token")
    return _check_token(data.decode("ascii", errors="replace"), f"token file {path}")


def _write_token(path: Path) -> str:
    token = secrets.token_urlsafe(_TOKEN_BYTES)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, (token + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except OSError as exc:
        raise UsageError(f"cannot write the token file {path}: {exc.strerror or exc}") from None
    return token


def ensure_token(path: Path) -> str:
    """The stored token, created (mode 0600) when there is none.

    Raises:
        UsageError: the file cannot be read or written.
    """
    return read_token(path) or _write_token(path)


def rotate_token(path: Path) -> str:
    """Replace the stored token with a new one (atomically); returns it. A running service
    picks it up on its next request.

    Raises:
        UsageError: the file cannot be written.
    """
    return _write_token(path)


def client_token(env: Mapping[str, str] | None = None, path: Path | None = None,
                 configured: HostToken | None = None) -> str | None:
    """The token a client sends: ``$BALLOONCTL_TOKEN``, else ``configured`` (the config's
    ``[hosts]`` entry for the service), else the local token file if readable, else None.

    Raises:
        UsageError: ``$BALLOONCTL_TOKEN`` or the configured token is not a token, or the
            configured token file cannot be read or holds none (named by its setting).
    """
    env = os.environ if env is None else env
    given = env.get(ENV_TOKEN)
    if given:
        return _check_token(given, f"${ENV_TOKEN}")
    if configured is not None:
        return configured_token(configured)
    try:
        return read_token(path or token_path())
    except UsageError:
        return None


def configured_token(entry: HostToken) -> str:
    """The token of a config's ``[hosts]`` entry: its ``token``, or its ``token_file`` read
    as the service reads its own (a regular file, at most a few KiB, one token).

    Raises:
        UsageError: not a token, or a token file that is missing, unreadable, not a regular
            file or holds no token; the message names the setting.
    """
    if entry.token is not None:
        return _check_token(entry.token, f"{entry.setting}.token")
    assert entry.token_file is not None
    try:
        token = read_token(Path(entry.token_file))
    except UsageError as exc:
        raise UsageError(f"{entry.setting}.token_file: {exc.message}") from None
    if token is None:
        raise UsageError(f"{entry.setting}.token_file: {entry.token_file}: no such file")
    return token


def token_matches(given: str | bytes, expected: str) -> bool:
    """Constant-time comparison of a presented token with the expected one."""
    raw = given.encode("latin-1", "replace") if isinstance(given, str) else given
    return hmac.compare_digest(raw, expected.encode("ascii"))


def listening(path: Path) -> bool:
    """True when something accepts connections on the unix socket ``path`` (a service that
    runs), False for a missing file or a socket left by one that died (within 1 s)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError:
            return False
        return True
