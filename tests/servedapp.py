"""A ``HostService`` served by a real uvicorn on a unix socket, inside a test's event loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import uvicorn

from balloonctl.serve import HostService, create_app
from balloonctl.serve.runner import bind_unix

__all__ = ["serving"]


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
