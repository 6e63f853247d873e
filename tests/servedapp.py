"""A ``HostService`` served by a real uvicorn on a unix socket, inside a test's event loop."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import uvicorn

from balloonctl.serve import HostService, create_app
from balloonctl.serve.runner import bind_unix

__all__ = ["serving", "short_dir"]


@asynccontextmanager
async def serving(service: HostService, sock: Path) -> AsyncIterator[uvicorn.Server]:
    """Serve ``service`` on ``sock`` (bound, then renamed into place, as the runner does)
    until the block ends; then stop the server (its service stops with its lifespan)."""
    listener, temp = bind_unix(sock)
    temp.rename(sock)
    # as the runner: a dashboard's open stream must not hold the shutdown
    server = uvicorn.Server(uvicorn.Config(create_app(service), log_level="warning",
                                           lifespan="on", timeout_graceful_shutdown=1))
    task = asyncio.create_task(server.serve(sockets=[listener]))
    try:
        yield server
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 20)


@contextmanager
def short_dir(prefix: str) -> Iterator[Path]:
    """A new directory under /tmp, removed afterwards: short enough for the sockets of
    several hosts' fleets and services (a unix socket path has at most 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
