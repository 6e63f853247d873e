"""Waiting in a test's event loop for a condition the code under test makes true: a
deadline, never a fixed pause."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["wait_until"]


async def wait_until(predicate: Callable[[], bool], *, within: float,
                     what: str = "the condition") -> None:
    """Let the loop run until ``predicate()`` holds; fail (naming ``what``) after
    ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        assert loop.time() < deadline, f"never held: {what}"
        await asyncio.sleep(0.01)
